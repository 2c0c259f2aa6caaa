"""``oddframe export``: a run's anomaly map as an ONNX graph beside the run, for ``detect --backend``.

Writes ``model.onnx`` (fp32) and, with ``int8``, ``model.int8.onnx`` (static int8 quantisation calibrated on normal
training clips), then checks every exported file against PyTorch on normal clips and records the agreement,
the clip shape and the weights' digest in ``export.json`` (``detect`` refuses an export of other weights or
another clip shape). The graph and runtimes are :mod:`oddframe.backends`'.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

import oddframe
from oddframe import backends
from oddframe.config import Config
from oddframe.data.clips import Batch, Clip, collate
from oddframe.data.loading import iter_frames, normal_videos
from oddframe.data.prepared import is_prepared, prepared_dataset
from oddframe.data.transforms import frame_transform
from oddframe.errors import BackendError, ConfigError
from oddframe.files import atomic_write, write_json
from oddframe.models.base import AnomalyModel
from oddframe.runs import WEIGHTS, load_run
from oddframe.scoring import frame_scores

FORMATS = ("onnx",)


@dataclass
class ExportSummary:
    """What :func:`export` wrote and how well each file agrees with PyTorch."""

    files: list[Path]
    agreement: dict[str, dict[str, Any]]  #: per backend: max_map_diff, max_score_diff_rel, within_tolerance
    seconds: float


def normal_clips(config: Config, data: str | Path | None, n: int) -> list[Clip]:
    """About ``n`` windows of normal training footage, spread over the training videos (or prepared clips).

    Raises:
        ConfigError: no normal data is named or found.
    """
    path = data or config.data.path
    if not path or not Path(path).exists():
        raise ConfigError(
            f"normal clips are needed to calibrate and check the export, but data path {path!r} is not found: "
            "pass --data FOLDER (the run's training data)"
        )
    L, transform = config.data.clip_length, frame_transform(config.data)
    if is_prepared(path):
        clips = prepared_dataset(path, clip_length=L, augment=None, transform=transform)
        picks = np.unique(np.linspace(0, len(clips) - 1, min(n, len(clips))).round().astype(int))
        return [clips[int(i)] for i in picks]
    # The normal videos training read: a dataset's training videos, or a single source (one camera's footage)
    # within the run's data.start_frame/stop_frame.
    _, videos = normal_videos(path, start_frame=config.data.start_frame, stop_frame=config.data.stop_frame,
                              scenes=config.data.scenes)
    if not videos:
        raise ConfigError(f"{path}: no training videos to take normal clips from")
    per_video = max(1, -(-n // len(videos)))
    out: list[Clip] = []
    for v in videos:
        n_frames = max(1, len(v.source) // config.data.sample_interval)
        starts = set(np.linspace(0, max(0, n_frames - L), per_video).round().astype(int).tolist())
        window: list = []
        frames = iter_frames(v.source, transform, sample_interval=config.data.sample_interval,
                             sample_interval_sec=config.data.sample_interval_sec)
        for pos, f in enumerate(frames):  # decode only up to the last window needed
            window = (window + [f])[-L:]
            if pos - L + 1 in starts:
                out.append(Clip(torch.from_numpy(np.stack([w.data for w in window], axis=1)),
                                torch.from_numpy(np.stack([w.valid for w in window]))[None], v.name,
                                torch.as_tensor([w.index for w in window])))
                starts.discard(pos - L + 1)
                if not starts:
                    break
        if starts and window and len(out) < n:  # a video shorter than a window: one padded clip
            out.append(Clip(torch.from_numpy(np.stack([w.data for w in window], axis=1)),
                            torch.from_numpy(np.stack([w.valid for w in window]))[None], v.name,
                            torch.as_tensor([w.index for w in window])))
    return out[:n] if len(out) > n else out


def _batches(clips: list[Clip], size: int, length: int) -> Iterator[Batch]:
    for i in range(0, len(clips), size):
        yield collate(clips[i : i + size], length)


def agreement(model: AnomalyModel, runner: Any, clips: list[Clip], config: Config) -> dict[str, Any]:
    """How closely ``runner.anomaly_map`` follows the PyTorch model on ``clips``.

    Returns:
        ``max_map_diff`` (largest absolute map difference), ``max_score_diff_rel`` (largest frame-score difference
        over the range of PyTorch's frame scores) and ``score_corr`` (their Pearson correlation).
    """
    maps_t, maps_r, valid = [], [], []
    for batch in _batches(clips, config.score.batch_size, config.data.clip_length):
        with torch.inference_mode():
            maps_t.append(model.anomaly_map(batch).float().numpy())
        maps_r.append(runner.anomaly_map(batch).numpy())
        valid.append(batch.valid[:, 0].numpy())
    a, b, v = (np.concatenate(x) for x in (maps_t, maps_r, valid))
    a, b, v = (x.reshape(-1, *x.shape[-2:]) for x in (a, b, v))  # (frames, H, W)
    power = getattr(model, "map_power", 2)
    sa = frame_scores(a, v, rule=config.score.rule, map_power=power)
    sb = frame_scores(b, v, rule=config.score.rule, map_power=power)
    spread = float(np.ptp(sa)) or 1.0
    return {
        "max_map_diff": float(np.abs(a - b).max()),
        "max_score_diff_rel": float(np.abs(sa - sb).max() / spread),
        "score_corr": float(np.corrcoef(sa, sb)[0, 1]) if len(sa) > 1 and np.std(sa) > 0 and np.std(sb) > 0 else 1.0,
    }


def _within(name: str, result: dict[str, Any]) -> bool:
    if name.endswith("-int8"):
        return result["max_score_diff_rel"] <= backends.INT8_RTOL
    return result["max_map_diff"] <= backends.FP32_ATOL


def export(
    run_dir: str | Path,
    *,
    fmt: str = "onnx",
    int8: bool = False,
    data: str | Path | None = None,
    calibration_clips: int = 64,
    check_clips: int = 16,
) -> ExportSummary:
    """Export a run's map to ONNX (and int8), beside the run, checked against PyTorch.

    Args:
        run_dir: a finished run folder.
        fmt: export format (only ``"onnx"``, which both runtimes read).
        int8: also write ``model.int8.onnx``, statically quantised with ``calibration_clips`` normal clips.
        data: normal footage for calibration and checks (default: the run's ``data.path``).
        check_clips: normal clips on which each exported file is compared with PyTorch.

    Raises:
        BackendError: the model cannot be exported (a sampler, derived inputs, fitted state), a runtime is missing,
            or an fp32 export disagrees with PyTorch beyond :data:`oddframe.backends.FP32_ATOL`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    model, config = load_run(run_dir)
    reason = backends.export_refusal(model)
    if reason:
        raise BackendError(f"{run_dir}: cannot export {config.model.name}: {reason}; detect with --backend torch")
    backends.require("onnxruntime")  # needed to check (and quantise) the export
    clip_shape = (config.data.channels, config.data.clip_length, *config.data.size)
    clips = normal_clips(config, data, max(check_clips, calibration_clips if int8 else 0))
    step = max(1, len(clips) // check_clips)
    check = clips[::step][:check_clips]
    onnx_path, int8_path = run_dir / backends.ONNX_FILE, run_dir / backends.INT8_FILE
    atomic_write(onnx_path, lambda tmp: backends.export_onnx(model, tmp, clip_shape=clip_shape))
    files = [onnx_path]
    if int8:
        batches = _batches(clips[:calibration_clips], config.score.batch_size, config.data.clip_length)
        atomic_write(int8_path, lambda tmp: backends.quantize_int8(onnx_path, tmp, batches))
        files.append(int8_path)
    runtimes = {"onnxruntime": backends.OnnxRuntimeMap}
    if backends.installed("openvino"):  # optional: checked when installed
        runtimes["openvino"] = backends.OpenVinoMap
    results: dict[str, dict[str, Any]] = {}
    for path in files:
        for runtime, cls in runtimes.items():
            name = runtime + ("-int8" if path == int8_path else "")
            results[name] = agreement(model, cls(path), check, config)
            results[name]["within_tolerance"] = _within(name, results[name])
    bad = [n for n, r in results.items() if not n.endswith("-int8") and not r["within_tolerance"]]
    if bad:
        raise BackendError(f"{onnx_path}: the fp32 export disagrees with PyTorch ({', '.join(bad)}: {results[bad[0]]})")
    info = {
        "format": fmt,
        "opset": backends.OPSET,
        "files": [p.name for p in files],
        "clip_shape": list(clip_shape),
        "model": config.model.name,
        "weights_sha256": backends.weights_digest(run_dir / WEIGHTS),
        "calibration_clips": min(calibration_clips, len(clips)) if int8 else 0,
        "check_clips": len(check),
        "tolerance": {"fp32_max_map_diff": backends.FP32_ATOL, "int8_max_score_diff_rel": backends.INT8_RTOL},
        "agreement": results,
        "torch": torch.__version__,
        "oddframe_version": oddframe.__version__,
    }
    write_json(info, run_dir / backends.EXPORT_JSON)
    return ExportSummary(files, results, time.perf_counter() - t0)

