"""The annotated video on real footage: boxes per frame (frames the model was trained on, unseen frames) and what
the video costs detection (frames/s with and without ``--video``, where every second goes, and the CPU time per
frame of the whole process and of the detecting thread, which bounds what two idle cores can do).

Usage: python benchmarks/video_readability.py RUN INPUT --out DIR [--set ...] [--threads 1]

Detects INPUT twice with RUN (scores + maps only, then with the video), counts the boxes the video draws on each
frame from the saved maps and the run's calibrated per-pixel thresholds, and writes a few frames of the video as
PNG into DIR for a person to look at.
"""

from __future__ import annotations

import argparse
import csv
import platform
import time

import cv2
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from oddframe import api
from oddframe.pipeline.outputs import render_kwargs
from oddframe.render.regions import exceedance, find_regions
from oddframe.render.video import read_rgb_frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run")
    p.add_argument("input")
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--frames", default="100,300,520,650,760", help="frames to save as PNG")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, config = api.load_run(args.run, overrides=args.overrides)
    rule = render_kwargs(config, model, args.run)["box_rule"]
    if rule is None:
        raise SystemExit(f"{args.run} has no per-pixel thresholds: run oddframe calibrate first")
    cpu: dict[str, tuple[float, float]] = {}

    def timed(label: str, **kwargs):
        # CPU seconds of the whole process (every thread, x264's included) and of this (the detecting) thread:
        # on a machine shared with other jobs wall time says little, CPU time says what two idle cores could do.
        p0, t0 = time.process_time(), time.thread_time()
        summary = api.detect(args.run, args.input, f"{args.out}/{label}", overrides=args.overrides, progress=False,
                             overwrite=True, **kwargs)
        cpu[label] = (time.process_time() - p0, time.thread_time() - t0)
        return summary

    plain = timed("plain", maps=True)
    shown = timed("video", video=f"{args.out}/video/anomaly.mp4")

    seen_until = config.data.stop_frame or 0
    counts: dict[str, list[int]] = {"trained on": [], "unseen": []}
    for path in sorted((plain.out / "maps").glob("*.npy")):
        maps = np.load(path)
        frames = [int(r["frame"]) for r in csv.DictReader((plain.out / "scores.csv").open())]
        for f, m in zip(frames, maps):
            counts["trained on" if f < seen_until else "unseen"].append(len(find_regions(exceedance(m, rule), rule)))
    table = Table(title=f"boxes per frame, {args.input} ({platform.node()}, {args.threads} torch thread(s))")
    for col in ("frames", "n", "mean boxes", "frames with no box", "frames with >= 3 boxes"):
        table.add_column(col)
    for name, c in counts.items():
        if c:
            a = np.asarray(c)
            table.add_row(name, str(a.size), f"{a.mean():.2f}", f"{(a == 0).mean():.1%}", f"{(a >= 3).mean():.1%}")
    console = Console()
    console.print(table)
    for label, key, s in (("scores + maps", "plain", plain), ("scores + video", "video", shown)):
        t = s.timing
        parts = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in t.items() if k.endswith("_s") and k not in ("wall_s",))
        console.print(f"{label}: {s.n_frames} frames, {t['fps']:.1f} frames/s, wall {t['wall_s']:.1f} s ({parts})")
        total, main_thread = (v / s.n_frames for v in cpu[key])
        console.print(f"  CPU per frame: {1000 * total:.1f} ms in all, {1000 * main_thread:.1f} ms in the detecting "
                      f"thread -> on 2 idle cores at most {1 / max(main_thread, total / 2):.0f} frames/s")
    wanted = {int(f) for f in args.frames.split(",")}
    for i, rgb in enumerate(read_rgb_frames(shown.out / "anomaly.mp4")):
        if i in wanted:
            cv2.imwrite(f"{args.out}/frame_{i:04d}.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    main()
