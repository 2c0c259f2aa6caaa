"""st_diffusion: AUROC and frames per second against the number of DDIM sampling steps.

Trains a small st_diffusion on the synthetic longitudinal sequences (length 4, 3rd frame zeroed at test time),
then evaluates the same weights with 200, 50, 20 and 10 DDIM steps (timestep respacing of the 1000-step process).

Usage: python benchmarks/diffusion_steps.py --out runs/diff_steps [--size 32] [--epochs 20] [--steps 200 50 20 10]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from oddframe import api


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-test", type=int, default=16)
    p.add_argument("--prediction", default="v", help="eps | x0 | v")
    p.add_argument("--steps", type=int, nargs="+", default=[200, 50, 20, 10])
    p.add_argument("--set", action="append", default=[], dest="overrides")
    args = p.parse_args()
    out = Path(args.out)
    data = out / "data"
    api.write_synthetic_dataset(data, n_train=args.n_train, n_test=args.n_test, length=4, size=args.size,
                                anomaly="zeroed", seed=0, fmt="npy", overwrite=True)
    config = api.load_config(None, [
        f"data.path={data}", f"data.size=[{args.size},{args.size}]", "data.clip_length=4", "data.train_stride=1",
        "model.name=st_diffusion", "model.params.base_channels=16", "model.params.channel_mult=[1,2]",
        "model.params.num_res_blocks=1", "model.params.attention_resolutions=[2]", "model.params.num_heads=2",
        f"model.params.prediction={args.prediction}", "model.params.ema_decay=0.995",
        f"train.epochs={args.epochs}", "train.batch_size=8", "train.lr=0.001",
        "score.stride=4", "score.batch_size=16", "render.top_frames=0", *args.overrides,
    ])
    run = out / "run"
    t0 = time.perf_counter()
    if not (run / "model.safetensors").is_file():
        api.train(config, run)
    train_s = time.perf_counter() - t0
    rows = []
    for k in args.steps:
        m = api.evaluate(run, data, out / f"eval_{k}", overrides=[f"model.params.sampling_steps={k}"], report=False)
        rows.append({"ddim_steps": k, "frame_auroc_micro": m["frame_auroc_micro"],
                     "frame_auroc_macro": m["frame_auroc_macro"], "pixel_auroc": m["pixel_auroc"],
                     "detect_fps": m["detect_fps"]})
        print(json.dumps(rows[-1]))
    summary = {"train_seconds": train_s, "size": args.size, "prediction": args.prediction, "rows": rows,
               "threads": torch.get_num_threads()}
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
