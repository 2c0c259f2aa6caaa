"""Quality benchmark: train, calibrate and evaluate a config, then print AUROC and timings.

Usage: python benchmarks/quality.py configs/ped2_conv3d_ae.yaml --out runs/ped2_conv3d_ae [--set ...] [--eval-only]

The threshold is calibrated on normal training frames only; AUROC needs no threshold. On ../shared/data/ped2
the numbers are on the Ped2 development split (test videos 01-06), not full Ped2.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import torch

from oddframe import api
from oddframe.metrics import summarise


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("config")
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--eval-set", action="append", default=[], help="overrides for evaluation only (score.*)")
    p.add_argument("--eval-only", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    config = api.load_config(args.config, args.overrides)
    train_s = None
    if not args.eval_only:
        result = api.train(config, out)
        train_s = result.seconds
        print(f"training: {result.seconds:.0f} s, {result.train_frames_per_second:.1f} frames/s, "
              f"final loss {result.final_loss:.5f}")
        api.calibrate(out)
    t0 = time.perf_counter()
    metrics = api.evaluate(out, config.data.path, out / "eval", overrides=args.eval_set)
    summary = {
        "config": args.config,
        "overrides": args.overrides + args.eval_set,
        "frame_auroc_micro": metrics["frame_auroc_micro"],
        "frame_auroc_macro": metrics["frame_auroc_macro"],
        "pixel_auroc": metrics["pixel_auroc"],
        "frame_ap": metrics["frame_ap"],
        "eer": metrics["eer"],
        "train_seconds": train_s,
        "detect_fps": metrics["detect_fps"],
        "eval_seconds": time.perf_counter() - t0,
        "timing": metrics["timing"],
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}",
    }
    members = member_metrics(out / "eval" / "scores.csv")
    if members:  # a fused run: each member's AUROC on the same frames, from its calibrated score column
        summary["members"] = members
    print(json.dumps(summary, indent=2))
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2))


def member_metrics(path: Path) -> dict[str, dict]:
    """Frame AUROC of each ``member:<name>`` column of a fused run's scores.csv (empty for other runs)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    names = [k for k in (rows[0] if rows else {}) if k.startswith("member:")]
    videos = list(dict.fromkeys(r["video"] for r in rows))
    labels = [[int(r["label"]) for r in rows if r["video"] == v] for v in videos]
    out = {}
    for name in names:
        scores = [[float(r[name]) for r in rows if r["video"] == v] for v in videos]
        m = summarise(labels, scores)
        out[name.removeprefix("member:")] = {k: m[k] for k in ("frame_auroc_micro", "frame_auroc_macro", "frame_ap")}
    return out


if __name__ == "__main__":
    main()
