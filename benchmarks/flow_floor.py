"""The training-free optical-flow floor: score each frame by a high percentile of its dense-flow magnitude.

Usage: python benchmarks/flow_floor.py DATA [--preset medium] [--q 99.9] [--sigma 3] [--size H W] [--threads 1]

No training, no normal data: OpenCV DIS flow from the previous frame (oddframe's ``flow`` derived input), the
``q``-th percentile of its magnitude per frame, Gaussian smoothing of the curve (``sigma`` frames), frame AUROC
against the test labels; the magnitude itself is the pixel map for pixel AUROC. A learnt model that does not beat
this on a dataset has learnt nothing about its motion that a few lines of optical flow do not already say.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import cv2
import numpy as np

from oddframe.data.layouts import load_dataset
from oddframe.data.loading import iter_frames
from oddframe.data.transforms import FrameTransform
from oddframe.features import with_features
from oddframe.features.regions import flow_magnitude
from oddframe.metrics import PixelAUROC, summarise
from oddframe.scoring import smooth_scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="a labelled dataset folder (its test split is scored)")
    p.add_argument("--preset", default="medium", choices=["ultrafast", "fast", "medium"])
    p.add_argument("--q", type=float, default=99.9, help="percentile of the flow magnitude per frame")
    p.add_argument("--sigma", type=float, default=3.0, help="Gaussian smoothing of the score curve, frames")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="resize frames (default: native)")
    p.add_argument("--threads", type=int, default=1, help="OpenCV threads")
    args = p.parse_args()
    cv2.setNumThreads(args.threads)
    tests = [v for v in load_dataset(args.data).test if v.labels is not None]
    transform = FrameTransform(size=tuple(args.size) if args.size else None, channels=1)
    pixel = PixelAUROC() if all(v.masks is not None for v in tests) else None
    labels, scores, n = [], [], 0
    t0 = time.perf_counter()
    for v in tests:
        idx, raw = [], []
        for f in with_features(iter_frames(v.source, transform), {"flow": {"method": "dis", "preset": args.preset}}):
            mag = flow_magnitude(f.features["flow"])
            idx.append(f.index)
            raw.append(float(np.percentile(mag, args.q)))
            if pixel is not None and f.index < len(v.masks):
                gt = np.asarray(v.masks[f.index], dtype=bool)
                if gt.shape != mag.shape:
                    mag = cv2.resize(mag, gt.shape[::-1], interpolation=cv2.INTER_LINEAR)
                pixel.update(mag[None], gt[None])
        labels.append(np.asarray(v.labels)[idx])
        scores.append(smooth_scores(np.asarray(raw), args.sigma))
        n += len(idx)
    seconds = time.perf_counter() - t0
    metrics = summarise(labels, scores)
    metrics.update({
        "pixel_auroc": pixel.compute() if pixel is not None else None,
        "data": args.data, "preset": args.preset, "q": args.q, "sigma": args.sigma,
        "frames": n, "fps": n / seconds, "seconds": seconds,
        "machine": f"{platform.machine()}, {args.threads} OpenCV thread(s)",
    })
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
