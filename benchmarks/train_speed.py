"""Training speed and where its time goes: decode, data loading, model steps; and the per-step loss curve.

Trains CONFIG for a few capped epochs with the given threads and DataLoader workers, prints training frames/s
(wall and per CPU-second, which survives a shared machine better), the time spent decoding the training videos
and loading batches, and writes the per-step losses to OUT/losses.csv so that two runs (e.g. before and after a
change, or 1 vs 2 threads) can be compared step by step with --compare.

Usage:
    python benchmarks/train_speed.py configs/ped2_conv3d_ae.yaml --out runs/ts_a --threads 1 --workers 0 \
        --epochs 2 --steps 20
    python benchmarks/train_speed.py --compare runs/ts_a runs/ts_b
"""

from __future__ import annotations

import argparse
import csv
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _losses(run: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return [e.value for e in sorted(acc.Scalars("loss/train"), key=lambda e: e.step)]


def compare(a: Path, b: Path) -> None:
    la, lb = (np.loadtxt(p / "losses.csv", delimiter=",", skiprows=1, ndmin=1) for p in (a, b))
    n = min(len(la), len(lb))
    diff = np.abs(la[:n] - lb[:n]) / np.abs(la[:n])
    print(f"{n} steps: loss {la[0]:.5f} -> {la[n - 1]:.5f} vs {lb[0]:.5f} -> {lb[n - 1]:.5f}; "
          f"largest relative difference per step {diff.max():.2e} (median {np.median(diff):.2e})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?")
    p.add_argument("--out", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="optimiser steps per epoch")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("RUN_A", "RUN_B"))
    args = p.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    torch.set_num_threads(args.threads)
    import oddframe
    from oddframe import api
    from oddframe.data.clips import collate
    from oddframe.data.loading import WindowDataset
    from oddframe.pipeline.train import training_videos

    overrides = [f"train.epochs={args.epochs}", f"train.max_steps_per_epoch={args.steps}",
                 f"train.num_workers={args.workers}", *args.overrides]
    config = api.load_config(args.config, overrides)
    t0, c0 = time.perf_counter(), time.process_time()
    videos = training_videos(config, progress=False)
    decode_s, decode_cpu = time.perf_counter() - t0, time.process_time() - c0
    dataset = WindowDataset(videos, clip_length=config.data.clip_length, stride=config.data.train_stride)
    t0 = time.perf_counter()
    n_batches = args.steps
    for i in range(n_batches):  # what one epoch's batches cost to make, without the model
        idx = np.random.default_rng(i).integers(0, len(dataset), config.train.batch_size)
        collate([dataset[int(j)] for j in idx], config.data.clip_length)
    load_s = time.perf_counter() - t0
    if args.out.exists():
        shutil.rmtree(args.out)
    t0, c0 = time.perf_counter(), time.process_time()
    result = api.train(config, args.out, videos=videos, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    losses = _losses(args.out)
    with (args.out / "losses.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["loss"])
        w.writerows([[x] for x in losses])
    frames = len(losses) * config.train.batch_size * config.data.clip_length
    print(f"oddframe {oddframe.__file__}")
    print(f"{config.model.name}: {len(losses)} steps of {config.train.batch_size} x {config.data.clip_length} frames, "
          f"{args.threads} thread(s), {args.workers} worker(s)")
    print(f"  training: {frames / wall:.1f} frames/s wall, {frames / cpu:.1f} frames per CPU-second of this process "
          f"({wall:.1f} s wall, {cpu:.1f} s CPU; trainer's own figure {result.train_frames_per_second:.1f} frames/s)")
    print(f"  decoding the {len(videos)} training videos once: {decode_s:.1f} s ({decode_cpu:.1f} s CPU); "
          f"making {n_batches} batches without the model: {load_s:.2f} s")
    print(f"  loss: first {losses[0]:.5f}, last {losses[-1]:.5f}; per step in {args.out / 'losses.csv'}")
    print(f"machine: {platform.machine()}, torch {torch.__version__}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
