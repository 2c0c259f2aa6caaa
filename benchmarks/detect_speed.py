"""End-to-end detection speed: decode -> transform -> model -> scores, with where the time goes.

Usage: python benchmarks/detect_speed.py RUN INPUT [--set score.stride=16] [--threads 2]

Reports wall time and the process's CPU time (on a machine shared with other jobs, CPU time says what the
detection itself costs; wall time what this run waited).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from rich.console import Console
from rich.table import Table

from oddframe.data.layouts import open_input
from oddframe.pipeline.engine import detector_for, stream_video
from oddframe.runs import load_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run")
    p.add_argument("input")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--max-frames", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        import cv2  # optical flow and the other derived inputs run in OpenCV

        cv2.setNumThreads(args.threads)
    model, config = load_run(args.run, overrides=args.overrides)
    dataset = open_input(args.input)
    videos = dataset.test or dataset.train
    detector = detector_for(model, config)
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for v in videos:
        for _ in stream_video(detector, v, config):
            n += 1
            if args.max_frames and n >= args.max_frames:
                break
        if args.max_frames and n >= args.max_frames:
            break
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0  # CPU time: what contention inflates least
    t = detector.timing.as_dict()
    table = Table(title=f"detection speed: {config.model.name} on {args.input}")
    derived = list(detector.timing.extra)  # derived inputs (flow, ...), computed in the stream
    for col in ("frames", "wall s", "fps (wall)", "CPU s", "fps (CPU)", "decode s", *(f"{k} s" for k in derived), "model s", "scoring s",
                "clip", "size", "stride"):
        table.add_column(col, justify="right")
    table.add_row(
        str(n), f"{wall:.1f}", f"{n / wall:.1f}", f"{cpu:.1f}", f"{n / cpu:.1f}", f"{t['decode_s']:.1f}", *(f"{t[k + '_s']:.1f}" for k in derived),
        f"{t['model_s']:.1f}", f"{t['scoring_s']:.1f}",
        str(config.data.clip_length), "x".join(map(str, config.data.size)), str(config.score.stride or config.data.clip_length),
    )
    Console(width=150).print(table)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {detector.device}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
