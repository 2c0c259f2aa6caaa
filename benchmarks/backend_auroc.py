"""Does a faster backend cost AUROC? The same run detected with each backend on a labelled dataset's test split.

For each backend: ``oddframe detect DATA --backend B`` (the detection a user runs, scores post-processed as the run's
config says), then frame AUROC (micro and macro) of its ``scores.csv`` against the dataset's labels, the difference
from PyTorch's, and the detection's frames/s.

Usage:
    python benchmarks/backend_auroc.py RUN ../shared/data/ped2 --out runs/auroc \
        --backends torch onnxruntime openvino onnxruntime-int8 openvino-int8 [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

from oddframe import api
from oddframe.metrics import frame_auroc_macro, frame_auroc_micro


def scores_by_video(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {}
    with path.open() as f:
        for r in csv.DictReader(f):
            out.setdefault(r["video"], []).append(float(r["score"]))
    return {k: np.asarray(v) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "openvino", "onnxruntime-int8",
                                                      "openvino-int8"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    test = api.load_dataset(args.data).test
    labels = [v.labels for v in test]
    rows = []
    for backend in args.backends:
        s = api.detect(args.run, args.data, args.out / backend, backend=backend, progress=False, overwrite=True)
        by_video = scores_by_video(args.out / backend / "scores.csv")
        scores = [by_video[v.name] for v in test]
        micro = frame_auroc_micro(labels, scores)
        macro, n = frame_auroc_macro(labels, scores)
        rows.append({"backend": backend, "micro": micro, "macro": macro, "videos": n, "frames": s.n_frames,
                     "fps": s.timing["fps"], "model_s": s.timing["model_s"]})
        print(f"{backend}: AUROC micro {micro:.4f}, macro {macro:.4f} ({n} videos); {s.n_frames} frames at "
              f"{s.timing['fps']:.1f} frames/s (model {s.timing['model_s']:.1f} s)", flush=True)
    ref = rows[0]
    print(f"\n| backend | frame AUROC micro | macro | micro - {ref['backend']} | macro - {ref['backend']} | "
          f"detect frames/s ({args.threads} thread(s)) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['micro']:.4f} | {r['macro']:.4f} | {r['micro'] - ref['micro']:+.4f} | "
              f"{r['macro'] - ref['macro']:+.4f} | {r['fps']:.1f} |")
    (args.out / "auroc.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
