"""Both diffusion models on a GPU, within a time budget: short bf16 training on Ped2, then the DDIM step sweep.

One line on the GPU machine (from the repository root, ../shared/data beside it; about 8 minutes in all):

    PYTHONPATH=src python benchmarks/gpu_diffusion.py --out gpu_results --budget 450

For ``st_diffusion`` (temporal attention) and ``mamba_diffusion`` (bidirectional Mamba; ``mamba_ssm``'s fused scan
where it imports, else the pure-PyTorch scan) with the same U-Net, data and masking (seed 003: 30-frame windows,
selective anchors, detection windows every 15 frames, max over windows, v-prediction), it

1. trains each model for ``--train-seconds`` (Fabric ``bf16-mixed`` on CUDA; epochs of ``--epoch-steps`` steps,
   stopped at the first epoch end past the time), and
2. evaluates the same weights on the test split with 10, 20, 50 and 200 DDIM steps (cheapest first; a step
   count whose predicted time does not fit the model's share of the budget is skipped and says so); detection
   runs under bf16 autocast on CUDA. Each model gets an equal share of the time left when it starts. AUROC needs no threshold and is unchanged by the calibrated z-score (one affine map for
   every video), so the sweep scores with ``normalise=none`` and needs no calibration pass.

Every stage is timed and caught on its own (an out-of-memory error in one model does not lose the other's
numbers); ``results.json`` and ``results.md`` in ``--out`` are rewritten after every stage, so a run stopped at
any point leaves what it measured. Also runs on a CPU with tiny sizes (the test suite does, in seconds).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from oddframe import api
from oddframe.config import config_from_dict
from oddframe.runs import read_history

MODELS = ("st_diffusion", "mamba_diffusion")


class _OutOfTime(Exception):
    """Raised from the epoch callback to stop training once its time is spent (the epoch's checkpoint is saved)."""


def _config(args: argparse.Namespace, model: str) -> Any:
    params = {
        "base_channels": args.base, "channel_mult": args.channel_mult, "num_res_blocks": args.res_blocks,
        "attention_resolutions": args.attention_resolutions, "dropout": 0.0,
        "diffusion_steps": args.diffusion_steps, "schedule": "linear", "prediction": "v",
        "sampling_steps": min(args.steps), "sampler": "ddim", "train_masks": "anchors", "score_masks": "anchors",
        "ema_decay": 0.995,
    }
    if model == "mamba_diffusion":
        params.update({"d_state": 16, "expand": 2})
    data = {"path": args.data, "size": [args.size, args.size], "channels": 1, "clip_length": args.clip_length,
            "train_stride": 5, "holdout_videos": 0}
    train = {"epochs": 10_000, "max_steps_per_epoch": args.epoch_steps, "batch_size": args.batch_size,
             "lr": args.lr, "seed": 0}
    score = {"rule": "mse", "stride": max(1, args.clip_length // 2), "aggregate": "max", "smoothing_sigma": 3,
             "normalise": "none", "batch_size": args.detect_batch}
    return config_from_dict({"data": data, "model": {"name": model, "params": params}, "train": train, "score": score})


class Results:
    """Stage results, written as JSON and Markdown after every change."""

    def __init__(self, out: Path, args: argparse.Namespace) -> None:
        self.out = out
        self.doc: dict[str, Any] = {
            "command": "python benchmarks/gpu_diffusion.py " + " ".join(args.argv),
            "machine": _machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": [],
        }
        self.write()

    def add(self, **stage: Any) -> None:
        self.doc["stages"].append(stage)
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.json").write_text(json.dumps(self.doc, indent=2))
        lines = [f"# GPU diffusion benchmark ({self.doc['started']})", "", f"Machine: {self.doc['machine']}", "",
                 f"Command: `{self.doc['command']}`", "",
                 "| model | stage | DDIM steps | status | seconds | train steps | frame AUROC micro | macro | "
                 "pixel AUROC | frames/s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for s in self.doc["stages"]:
            f = lambda k: "" if s.get(k) is None else (f"{s[k]:.3f}" if isinstance(s[k], float) else str(s[k]))  # noqa: E731
            lines.append(f"| {s['model']} | {s['stage']} | {f('ddim_steps')} | {s['status']} | {f('seconds')} | "
                         f"{f('train_steps')} | {f('frame_auroc_micro')} | {f('frame_auroc_macro')} | "
                         f"{f('pixel_auroc')} | {f('detect_fps')} |")
        (self.out / "results.md").write_text("\n".join(lines) + "\n")


def _machine() -> str:
    from oddframe.models.selective_scan import fused_scan_fn

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.node()}, {gpu}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
            f"mamba_ssm fused scan {'available' if fused_scan_fn() else 'absent (pure-PyTorch scan)'}")


def run_model(model: str, args: argparse.Namespace, results: Results, deadline: float, videos: Any) -> None:
    """Train one model for its share of the time, then sweep the DDIM steps while the budget lasts."""
    config = _config(args, model)
    run = Path(args.out) / model
    t0 = time.perf_counter()

    def stop_when_spent(epoch: int, loss: float) -> None:
        if time.perf_counter() - t0 > args.train_seconds or time.perf_counter() > deadline:
            raise _OutOfTime

    try:
        try:
            api.train(config, run, videos=videos, progress=False, on_epoch_end=stop_when_spent)
        except _OutOfTime:
            pass
        last = read_history(run)[-1]
        results.add(model=model, stage="train", status="ok", seconds=time.perf_counter() - t0,
                    train_steps=int(last["step"]), final_loss=last["loss"])
    except Exception as exc:  # noqa: BLE001 (record it, go on with the other model)
        results.add(model=model, stage="train", status=f"failed: {exc!r}"[:300], seconds=time.perf_counter() - t0,
                    traceback=traceback.format_exc()[-2000:])
        return
    per_step = None  # seconds per DDIM step of the last evaluation, to predict the next one
    for k in sorted(args.steps):
        left = deadline - time.perf_counter()
        if per_step is not None and per_step * k > left:
            results.add(model=model, stage="eval", ddim_steps=k, status=f"skipped: needs ~{per_step * k:.0f} s, "
                        f"{left:.0f} s left", seconds=0.0)
            continue
        t1 = time.perf_counter()
        try:
            m = api.evaluate(run, args.data, run / f"eval_{k}", overrides=[f"model.params.sampling_steps={k}"],
                             progress=False, report=False)
            seconds = time.perf_counter() - t1
            per_step = seconds / k
            results.add(model=model, stage="eval", ddim_steps=k, status="ok", seconds=seconds,
                        frame_auroc_micro=m["frame_auroc_micro"], frame_auroc_macro=m["frame_auroc_macro"],
                        pixel_auroc=m["pixel_auroc"], detect_fps=m["detect_fps"])
        except Exception as exc:  # noqa: BLE001
            results.add(model=model, stage="eval", ddim_steps=k, status=f"failed: {exc!r}"[:300],
                        seconds=time.perf_counter() - t1, traceback=traceback.format_exc()[-2000:])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for results.json, results.md and the two runs")
    p.add_argument("--budget", type=float, default=450, help="seconds for everything (training + sweeps)")
    p.add_argument("--train-seconds", type=float, default=None, help="per model (default: budget / 6)")
    p.add_argument("--data", default="../shared/data/ped2")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--clip-length", type=int, default=30)
    p.add_argument("--base", type=int, default=32, help="U-Net channels at full resolution")
    p.add_argument("--channel-mult", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--res-blocks", type=int, default=2)
    p.add_argument("--attention-resolutions", type=int, nargs="+", default=[4])
    p.add_argument("--diffusion-steps", type=int, default=1000)
    p.add_argument("--steps", type=int, nargs="+", default=[200, 50, 20, 10], help="DDIM steps to sweep")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epoch-steps", type=int, default=20, help="steps between time checks")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--detect-batch", type=int, default=34, help="windows per sampling pass (Ped2 dev: 67 in all)")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    args.train_seconds = args.train_seconds if args.train_seconds is not None else args.budget / 6
    start = time.perf_counter()
    deadline = start + args.budget
    out = Path(args.out)
    results = Results(out, args)
    try:  # load the frames once for both models
        from oddframe.pipeline.train import training_videos

        videos = training_videos(_config(args, args.models[0]), progress=False)
    except Exception as exc:  # noqa: BLE001
        results.add(model="-", stage="load data", status=f"failed: {exc!r}"[:300], seconds=0.0)
        return results.doc
    for i, model in enumerate(args.models):
        now = time.perf_counter()
        if now > deadline:
            results.add(model=model, stage="train", status="skipped: time budget spent", seconds=0.0)
            continue
        # Each model gets an equal share of what is left, so the first one's sweep cannot starve the second.
        run_model(model, args, results, now + (deadline - now) / (len(args.models) - i), videos)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    results.doc["total_seconds"] = time.perf_counter() - start
    results.write()
    print((out / "results.md").read_text())
    return results.doc


if __name__ == "__main__":
    main()
