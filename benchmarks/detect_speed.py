"""Detection speed: decode-only and end-to-end frames/s measured back to back in the same run, and their ratio.

For every run (model), backend and thread count, on every input: first the frames are only decoded (the source's
raw frames, nothing else), then decoded and transformed (the model input), then detected end to end (decode ->
transform -> model -> scores, with the engine's background decoding thread), each on the same frames. On a shared
machine the absolute rates move with the load; the ratio end-to-end / decode-only, measured seconds apart, moves
far less. CPU time per frame (all threads of this process) is printed too.

Usage:
    python benchmarks/detect_speed.py RUN [RUN ...] --input ../shared/data/ped2 --input ../shared/data/video/vtest.avi \
        --threads 1 2 --backends torch onnxruntime openvino onnxruntime-int8 openvino-int8 [--max-frames 400] \
        [--json results.json]

A backend that is not installed, not exported (``oddframe export RUN [--int8]``) or refused for the model is
skipped with its reason. Speed does not depend on the weights' values: a run trained for one step
(``oddframe train --out runs/x --set train.epochs=1 --set train.max_steps_per_epoch=1 --no-calibrate``) is enough
for the speed of a config.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from oddframe.data.layouts import open_input
from oddframe.data.loading import iter_frames
from oddframe.data.transforms import frame_transform
from oddframe.errors import OddframeError
from oddframe.pipeline.engine import detector_for, stream_video
from oddframe.runs import load_run, open_run_backend


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _timed(streams, limit: int | None) -> tuple[int, float, float]:
    """Frames, wall s and CPU s to exhaust ``streams`` (one iterator per video, made lazily so that opening them is
    timed too; each closed after use), stopping after ``limit`` frames in all."""
    (t0, c0), n = _clock(), 0
    for stream in streams:
        for _ in stream:
            n += 1
            if limit and n >= limit:
                break
        if hasattr(stream, "close"):  # stops a prefetching thread, closes a container
            stream.close()
        if limit and n >= limit:
            break
    t1, c1 = _clock()
    return n, t1 - t0, c1 - c0


def decode_only(videos, limit: int | None) -> tuple[int, float, float]:
    """Frames, wall s and CPU s to decode the raw frames of ``videos`` (up to ``limit`` frames)."""
    return _timed((iter(v.source) for v in videos), limit)


def decode_transform(videos, config, limit: int | None) -> tuple[int, float, float]:
    """The same with the run's frame transform (resize, grey, scaling to [-1, 1])."""
    transform = frame_transform(config.data)
    return _timed((iter_frames(v.source, transform, sample_interval=config.data.sample_interval,
                               sample_interval_sec=config.data.sample_interval_sec) for v in videos), limit)


def end_to_end(detector, videos, config, limit: int | None) -> tuple[int, float, float]:
    """Frames, wall s and CPU s of the engine's detection (decode -> transform -> model -> scores)."""
    return _timed((stream_video(detector, v, config) for v in videos), limit)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--input", action="append", required=True, dest="inputs")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "openvino", "onnxruntime-int8",
                                                      "openvino-int8"])
    p.add_argument("--max-frames", type=int, default=None, help="stop each measurement after this many frames")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--json", type=Path, help="also write every row here")
    args = p.parse_args()
    console = Console(width=170)
    results = []
    table = Table(title="detection speed: decode-only and end to end, same run")
    for col in ("input", "run (model)", "backend", "thr", "frames", "decode fps", "decode+transform fps",
                "end-to-end fps", "ratio e2e/decode", "model s", "waiting for frames s", "CPU ms/frame"):
        table.add_column(col, justify="right")
    for input_path in args.inputs:
        dataset = open_input(input_path)
        videos = dataset.test or dataset.train
        for run in args.runs:
            model, config = load_run(run, overrides=args.overrides)
            for threads in args.threads:
                torch.set_num_threads(threads)
                for backend in args.backends:
                    try:
                        runner = open_run_backend(run, config, backend, threads=threads)
                        detector = detector_for(model, config, device="cpu", backend=runner)
                    except OddframeError as exc:
                        console.print(f"skipped {run.name} {backend}: {exc}", markup=False, highlight=False)
                        continue
                    n_d, wall_d, _ = decode_only(videos, args.max_frames)
                    n_t, wall_t, _ = decode_transform(videos, config, args.max_frames)
                    n_e, wall_e, cpu_e = end_to_end(detector, videos, config, args.max_frames)
                    t = detector.timing
                    row = {"input": input_path, "run": str(run), "model": config.model.name, "backend": backend,
                           "threads": threads, "frames": n_e, "decode_fps": n_d / wall_d,
                           "decode_transform_fps": n_t / wall_t, "end_to_end_fps": n_e / wall_e,
                           "ratio": (n_e / wall_e) / (n_d / wall_d), "model_s": t.model, "wait_s": t.decode,
                           "cpu_ms_per_frame": 1000 * cpu_e / max(n_e, 1)}
                    results.append(row)
                    table.add_row(Path(input_path).name, f"{run.name} ({config.model.name})", backend, str(threads),
                                  str(n_e), f"{row['decode_fps']:.0f}", f"{row['decode_transform_fps']:.0f}",
                                  f"{row['end_to_end_fps']:.1f}", f"{row['ratio']:.3f}", f"{t.model:.1f}",
                                  f"{t.decode:.1f}", f"{row['cpu_ms_per_frame']:.1f}")
                    console.print(f"{Path(input_path).name} {run.name} {backend} {threads} thread(s): "
                                  f"{row['end_to_end_fps']:.1f} frames/s end to end, decode-only "
                                  f"{row['decode_fps']:.0f}", markup=False, highlight=False)
    console.print(table)
    console.print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
