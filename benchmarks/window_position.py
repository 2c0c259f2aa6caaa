"""Does the place of a frame in its window explain what non-overlapping windows cost in AUROC?

A run (a reconstruction model) is scored with windows that do not overlap (``score.stride = clip_length``), once as
it is and once with each window position's map divided by that position's mean error on normal training windows
(every ``--train-every``-th training video), and the frame AUROC (micro, macro) of both is printed beside the
per-position scale. Frame scores are the run's rule and smoothing; the calibrated normalisation is affine, so it
does not change these AUROCs. An experiment for docs/BENCHMARKS.md, not a feature.

Usage:
    python benchmarks/window_position.py runs/ped2_c3d10 [--threads 2] [--train-every 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from oddframe.data.layouts import load_dataset
from oddframe.pipeline.engine import detector_for, stream_video
from oddframe.runs import load_run, read_run_config
from oddframe.scoring import smooth_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-every", type=int, default=4, help="use every N-th normal training video")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip_length = read_run_config(Path(args.run)).data.clip_length
    model, config = load_run(args.run, overrides=[f"score.stride={clip_length}"])
    dataset = load_dataset(config.data.path)
    plain = model.anomaly_map
    sums = torch.zeros(config.data.clip_length, dtype=torch.float64)
    windows = 0

    def recording(batch):
        nonlocal sums, windows
        maps = plain(batch)  # (B, T, H, W)
        sums += maps.mean(dim=(2, 3)).sum(0).double()
        windows += maps.shape[0]
        return maps

    model.anomaly_map = recording
    detector = detector_for(model, config)
    for video in dataset.train[:: args.train_every]:
        for _ in stream_video(detector, video, config):
            pass
    scale = (sums / windows).float()
    scale = scale / scale.mean()
    print("mean normal error by window position (mean 1):", " ".join(f"{x:.3f}" for x in scale.tolist()))
    for weighted in (False, True):
        model.anomaly_map = (lambda b: plain(b) / scale[None, :, None, None]) if weighted else plain
        detector = detector_for(model, config)
        labels, scores, per_video = [], [], []
        for video in dataset.test:
            s = smooth_scores(np.array([r.score for r in stream_video(detector, video, config)]),
                              config.score.smoothing_sigma)
            y = video.labels[: len(s)]
            labels.append(y)
            scores.append(s)
            if 0 < y.mean() < 1:
                per_video.append(roc_auc_score(y, s))
        micro = roc_auc_score(np.concatenate(labels), np.concatenate(scores))
        print(f"windows every {config.score.stride} frames, position-weighted={weighted}: "
              f"micro {micro:.4f}, macro {np.mean(per_video):.4f}")


if __name__ == "__main__":
    main()
