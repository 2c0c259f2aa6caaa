"""Every registered model through train -> calibrate -> eval on a GPU with bf16 mixed precision, on tiny data.

For the machines that have a GPU (CI has none): checks that each model's CUDA path runs (Fabric ``bf16-mixed``
training, bf16 autocast in the detector), that maps stay finite, and how long each stage takes. One line:

    PYTHONPATH=src python benchmarks/gpu_smoke.py --out gpu_smoke

Writes ``smoke.json`` (one entry per model: status, seconds, micro AUROC, detect frames/s) and prints a table.
A model that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch

from oddframe import api
from oddframe.data.synthetic import write_synthetic_dataset

#: Small settings per model family, so every model runs in seconds (fitted models ignore the training ones).
TINY: dict[str, list[str]] = {
    "conv3d_ae": ["model.params.width=0.25"],
    "convlstm_ae": [],
    "st_diffusion": ["model.params.base_channels=16", "model.params.channel_mult=[1,2]",
                     "model.params.num_res_blocks=1", "model.params.attention_resolutions=[2]",
                     "model.params.sampling_steps=10", "model.params.prediction=v"],
    "mamba_diffusion": ["model.params.base_channels=16", "model.params.channel_mult=[1,2]",
                        "model.params.num_res_blocks=1", "model.params.attention_resolutions=[2]",
                        "model.params.sampling_steps=10", "model.params.prediction=v"],
}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--models", nargs="*", default=None, help="default: every registered model")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    out = Path(args.out)
    data = out / "data"
    write_synthetic_dataset(data, n_train=64, n_test=8, length=8, size=32, anomaly="object", seed=0, overwrite=True)
    rows = []
    for name in args.models or api.list_models():
        row: dict = {"model": name, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
        t0 = time.perf_counter()
        try:
            overrides = [f"model.name={name}", f"data.path={data}", "data.size=[32,32]", "data.clip_length=4",
                         "data.train_stride=2", f"train.epochs={args.epochs}", "train.batch_size=16",
                         "score.normalise=calibrated", "render.top_frames=0"] + TINY.get(name, [])
            run = out / name
            result = api.train(api.load_config(None, overrides), run, progress=False)
            row["train_s"] = result.seconds
            api.calibrate(run, progress=False)
            metrics = api.evaluate(run, data, out / f"{name}_eval", progress=False, report=False)
            row.update(status="ok", micro=metrics["frame_auroc_micro"], pixel=metrics["pixel_auroc"],
                       detect_fps=metrics["detect_fps"])
        except Exception as exc:  # noqa: BLE001 - record and go on with the next model
            row.update(status=f"failed: {exc!r}"[:300], traceback=traceback.format_exc()[-1500:])
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        (out / "smoke.json").write_text(json.dumps(rows, indent=2, default=str))
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}, default=str), flush=True)
    return rows


if __name__ == "__main__":
    main()
