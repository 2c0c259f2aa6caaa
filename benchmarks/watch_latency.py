"""Latency and memory of ``oddframe watch``: arrival -> score for every frame of a source played at its frame rate.

Usage:
    python benchmarks/watch_latency.py RUN SOURCE [--threads 1] [--backend openvino-int8] [--loop --duration 600 --rss-every 60]

SOURCE is played with ``--realtime`` (a file at its own frame rate, as a camera would send it; ``--loop`` starts it
again at its end, for a long run). Prints the latency from a frame's arrival to its model score (the raw score) and
to its final score (after the run's smoothing, which waits for later frames), against the issue's target of one
window length + 100 ms, the frames dropped, and the process's resident memory (RSS) over time.
"""

from __future__ import annotations

import argparse
import csv
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from oddframe.pipeline.watch import watch
from oddframe.runs import load_run


def rss_mib() -> float:
    """Resident memory of this process (Linux /proc), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("source")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--loop", action="store_true", help="start the file again at its end")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--rss-every", type=float, default=30.0, help="seconds between RSS samples")
    p.add_argument("--max-latency", type=float, default=1.0)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--backend", default="torch", help="torch or an exported runtime (oddframe export RUN first)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    _, config = load_run(args.run, overrides=args.overrides)
    samples: list[tuple[float, float]] = []
    done = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not done.wait(args.rss_every):
            samples.append((time.monotonic() - t0, rss_mib()))

    threading.Thread(target=sample, daemon=True).start()
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        scores = Path(tmp) / "scores.csv"
        s = watch(args.run, args.source, realtime=True, loop=args.loop, duration=args.duration, scores=scores,
                  events=Path(tmp) / "events.jsonl", max_latency=args.max_latency, overrides=args.overrides,
                  backend=args.backend, log=lambda line: None)
        rows = list(csv.DictReader(scores.open()))
    cpu = time.process_time() - cpu0  # every thread of the process: decoding, model, scoring, outputs
    done.set()
    samples.append((time.monotonic() - t0, rss_mib()))
    fps = 10.0
    try:
        import av

        with av.open(args.source) as c:
            fps = float(c.streams.video[0].average_rate or fps)
    except Exception:  # noqa: BLE001 - an array or image folder: played at 10 frames/s
        pass
    window = config.data.clip_length / fps
    model_ms = np.array([float(r["model_latency_ms"]) for r in rows])
    final_ms = np.array([float(r["latency_ms"]) for r in rows])
    stride = config.score.stride or config.data.clip_length
    print(f"{config.model.name}, clip {config.data.clip_length} frames, stride {stride}, "
          f"size {'x'.join(map(str, config.data.size))}, smoothing sigma {config.score.smoothing_sigma} frames; "
          f"source {args.source} at {fps:g} frames/s; backend {args.backend}; {torch.get_num_threads()} torch thread(s), "
          f"{platform.machine()}")
    print(f"frames: {s.received} arrived, {s.scored} scored, {s.dropped_late} dropped late, {s.dropped_queue} dropped "
          f"(queue full); {s.events} event(s); {s.wall_s:.0f} s; CPU time {cpu:.1f} s = "
          f"{1000 * cpu / max(1, s.received):.1f} ms per arrived frame ({cpu / s.wall_s:.2f} cores busy on average)")
    windows = max(1, s.timing.get("frames", 0) // stride)
    print(f"model: {s.timing.get('model_s', 0):.1f} s in {windows} forward passes (one window each) = "
          f"{1000 * s.timing.get('model_s', 0) / windows:.0f} ms wall per window")
    print(f"target: one window ({window * 1000:.0f} ms) + 100 ms = {window * 1000 + 100:.0f} ms")
    for name, a in (("arrival -> model score", model_ms), ("arrival -> final score", final_ms)):
        print(f"{name}: p50 {np.percentile(a, 50):.0f} ms, p95 {np.percentile(a, 95):.0f} ms, max {a.max():.0f} ms, "
              f"share within target {np.mean(a <= window * 1000 + 100):.3f}")
    print("RSS (MiB) over time: " + ", ".join(f"{t:.0f} s: {m:.0f}" for t, m in samples))


if __name__ == "__main__":
    main()
