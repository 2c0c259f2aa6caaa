"""Run folders: self-describing, safe checkpoints (DESIGN rule 5).

A run folder holds ``config.yaml`` (the resolved config), ``model.safetensors`` (weights, with the package
version, model name and input settings in its metadata), ``state.pt`` (optimiser, scheduler and epoch, for
``--resume``; our own file, still read with ``weights_only=True``), ``history.csv``, ``loss.png``, ``tb/``
(TensorBoard) and, once calibrated, ``calibration.json`` and ``calibration.safetensors`` (per-pixel thresholds of the
anomaly maps). Every file is written atomically (temporary file, then rename), so a killed run never leaves a
half-written checkpoint. Weights with NaN or infinite values are refused at load, by name.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import oddframe
from oddframe.config import Config, load_config, save_config, setting
from oddframe.data.clips import Batch
from oddframe.data.sources import torch_load_error
from oddframe.errors import CheckpointError, ConfigError
from oddframe.features import make_extractors
from oddframe.files import atomic_write, write_json
from oddframe.models.base import AnomalyModel
from oddframe.registry import build_model
from oddframe.thresholds import PixelThresholdFit

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
HISTORY = "history.csv"
CALIBRATION = "calibration.json"
PIXEL_THRESHOLDS = "calibration.safetensors"
HISTORY_FIELDS = ["epoch", "step", "loss", "lr", "seconds"]


#: The data settings a model is trained at: detection must feed it the same input (checked by :func:`load_run`).
INPUT_SETTINGS = ("data.size", "data.channels", "data.clip_length", "data.scaling", "data.percentiles", "data.stretch")


def _value(config: Config, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return list(node) if isinstance(node, tuple) else node


def save_weights(model: torch.nn.Module, path: Path, config: Config | None = None) -> None:
    """Write the model's state dict as safetensors with the package version, model name and (given ``config``) the
    input settings it was trained at (:data:`INPUT_SETTINGS`) as metadata."""
    # clone: safetensors refuses tensors that share storage (e.g. tied or EMA views).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"oddframe_version": oddframe.__version__, "model": getattr(model, "model_name", type(model).__name__)}
    if config is not None:
        meta.update({key: json.dumps(_value(config, key)) for key in INPUT_SETTINGS})
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def weights_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file (empty if unreadable: :func:`load_weights` reports that)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return {}


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into ``model``; a CheckpointError names the file if it is broken or mismatched."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc})") from None
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()}
    if bad:
        names = ", ".join(f"{k} ({n} of {state[k].numel()})" for k, n in list(bad.items())[:5])
        raise CheckpointError(
            f"{path}: refused: {len(bad)} tensor(s) hold NaN or infinite values: {names}"
            f"{' ...' if len(bad) > 5 else ''} (training diverged or the file is damaged; retrain, or resume from an "
            "earlier copy)"
        )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: the config describes another architecture
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{path}: weights do not fit model {getattr(model, 'model_name', '?')} ({first})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit model {getattr(model, 'model_name', '?')}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )


def save_state(state: dict[str, Any], path: Path) -> None:
    """Write the resumable training state atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    """Read the resumable state with ``weights_only=True`` (never unpickle arbitrary objects)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for broken or unsafe files
        raise CheckpointError(f"{path}: cannot read training state: {torch_load_error(exc)}") from None


def open_run_backend(
    run_dir: str | Path, config: Config, backend: str, *, threads: int | None = None, batch: int | None = None
) -> Any:
    """The exported map runner ``backend`` of a run loaded with ``config`` (None for ``torch``), checked against the
    clip shape the config feeds and the run's weights (:func:`oddframe.backends.open_backend`); ``batch``: windows
    per full batch (default ``score.batch_size``)."""
    from oddframe.backends import open_backend

    shape = (config.data.channels, config.data.clip_length, *config.data.size)
    return open_backend(backend, run_dir, clip_shape=shape, weights=Path(run_dir) / WEIGHTS, threads=threads,
                        batch=batch or config.score.batch_size)


def load_run(
    run_dir: str | Path, *, overrides: tuple[str, ...] | list[str] = (), map_location: str = "cpu"
) -> tuple[AnomalyModel, Config]:
    """Rebuild the trained model of a run folder from its config and weights (eval mode).

    ``overrides`` (``["score.rule=l1", "model.params.sampling_steps=10"]``) apply before the model is built, so
    inference-time model settings take effect; one that changes the architecture fails with a CheckpointError.
    """
    run = Path(run_dir)
    for name in (CONFIG, WEIGHTS):
        if not (run / name).is_file():
            raise CheckpointError(f"{run}: not a finished run folder ({name} is missing)")
    config = load_config(run / CONFIG, overrides)
    check_inference_settings(config, run)
    model = build_checked_model(config, dry_run=False)
    try:
        load_weights(model, run / WEIGHTS)
    except CheckpointError as exc:
        touched = [o for o in overrides if o.split("=", 1)[0].strip().startswith(("model.", "data."))]
        raise CheckpointError(f"{exc}" + (f" (after {', '.join('--set ' + o for o in touched)})" if touched else "")) from None
    model.to(map_location).eval()
    return model, config  # type: ignore[return-value]


def read_run_config(run_dir: Path) -> Config:
    """The config a run was trained with (its ``config.yaml``)."""
    return load_config(Path(run_dir) / CONFIG)


def check_inference_settings(config: Config, run_dir: Path) -> None:
    """Refuse to score a run's model with other input than it was trained on (size, channels, clip length, scaling).

    The reference is the weights' own metadata (what training saw) where present, else the run's ``config.yaml``;
    a difference names the setting, its value and where it came from (an ``--set`` override or an edited file).
    Grey/colour conversion of the input itself is not refused: sources are converted to ``data.channels``.
    """
    meta = weights_metadata(Path(run_dir) / WEIGHTS)
    saved = read_run_config(run_dir)
    problems = []
    for key in INPUT_SETTINGS:
        now = _value(config, key)
        if key in meta:
            trained, where = json.loads(meta[key]), f"{Path(run_dir) / WEIGHTS} metadata"
        else:
            trained, where = _value(saved, key), str(Path(run_dir) / CONFIG)
        if now != trained:
            problems.append(f"{setting(config, key)} but the model was trained at {key}={trained} ({where})")
    if problems:
        raise ConfigError(
            f"{run_dir}: refused, this model would see other input than it was trained on:\n  " + "\n  ".join(problems)
            + "\nIts maps and threshold are only valid for that input: drop the override (or retrain at the new setting)."
        )


def check_same_training(config: Config, saved: Config, run_dir: Path) -> None:
    """Refuse to resume a run with a config that changes the model or its input (``--resume`` continues one run)."""
    keys = ["model.name", *INPUT_SETTINGS]
    diff = [f"{setting(config, k)} vs {_value(saved, k)} in {Path(run_dir) / CONFIG}" for k in keys
            if _value(config, k) != _value(saved, k)]
    if config.model.params != saved.model.params:
        diff.append(f"{setting(config, 'model.params')} vs {saved.model.params} in {Path(run_dir) / CONFIG}")
    if diff:
        raise ConfigError(
            f"{run_dir}: --resume continues the run as it was configured, but these settings differ:\n  "
            + "\n  ".join(diff) + "\nResume without a CONFIG (the run's own is used) or start a new run."
        )


def build_checked_model(config: Config, *, dry_run: bool = True) -> AnomalyModel:
    """Build the config's model, checking its own constraints against the data settings before any work.

    The constructor's checks run first; with ``dry_run`` a gradient-trained model then computes its training loss
    once on a blank clip of the configured shape ``(1, C, T, H, W)`` (in eval mode, without gradients, with the
    random state restored), which catches sizes or clip lengths the architecture cannot take.

    Raises:
        ConfigError: naming the model, what it refused and the settings involved with where each came from.
    """
    involved = ", ".join(setting(config, k) for k in ("model.name", "data.size", "data.channels", "data.clip_length"))
    if config.model.params:
        involved += f", {setting(config, 'model.params')}"
    try:
        model = build_model(config.model.name, **config.model_kwargs())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model {config.model.name} refuses its settings: {exc}\n  settings: {involved}") from None
    trainable = any(p.requires_grad for p in model.parameters())
    if not (dry_run and trainable and model.fit_before_epoch is None):
        return model  # fitted models need their fit before they can compute anything
    c, t, (h, w) = config.data.channels, config.data.clip_length, config.data.size
    extras = {name: torch.zeros(1, ex.channels, t, h, w) for name, ex in make_extractors(model.derived_inputs()).items()}
    batch = Batch(torch.zeros(1, c, t, h, w), torch.ones(1, 1, t, h, w, dtype=torch.bool), ["check"],
                  torch.arange(t)[None], extras)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            loss = model.training_loss(batch)
        if not torch.isfinite(loss):
            raise ValueError(f"the loss of a blank clip is {loss.item()}")
    except (RuntimeError, ValueError) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(
            f"model {config.model.name} cannot take clips of shape (1, {c}, {t}, {h}, {w}) (B, C, T, H, W): {first}\n"
            f"  settings: {involved}"
        ) from None
    finally:
        model.train(was_training)
    return model


def write_config(config: Config, run_dir: Path) -> None:
    """Write the resolved config beside the run."""
    atomic_write(run_dir / CONFIG, lambda tmp: save_config(config, tmp))


def read_history(run_dir: Path) -> list[dict[str, float]]:
    """Rows of ``history.csv`` as floats (empty if absent)."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def write_history(rows: list[dict[str, float]], run_dir: Path) -> None:
    """Rewrite ``history.csv`` atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
            w.writeheader()
            w.writerows([{k: r.get(k, "") for k in HISTORY_FIELDS} for r in rows])

    atomic_write(Path(run_dir) / HISTORY, write)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON file written by oddframe; a CheckpointError names a broken file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from None


def write_pixel_thresholds(run_dir: Path, fit: PixelThresholdFit, config: Config) -> dict[str, Any]:
    """Write the per-pixel map thresholds of a calibration to ``calibration.safetensors``; return what to record of
    them in ``calibration.json``."""
    tmap, floor = fit.result()
    atomic_write(Path(run_dir) / PIXEL_THRESHOLDS,
                 lambda tmp: save_file({"threshold": torch.from_numpy(np.ascontiguousarray(tmap))}, str(tmp)))
    return {"file": PIXEL_THRESHOLDS, "quantile": fit.quantile, "floor_quantile": fit.floor_quantile, "floor": floor,
            "margin": fit.margin, "normal_rate": fit.normal_rate, "min_area": fit.min_area, "smoothing": fit.smoothing,
            "shape": list(tmap.shape), "n_maps": fit.n}


def read_pixel_thresholds(run_dir: str | Path) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The per-pixel map thresholds ``(h, w)`` of a calibrated run and their record, or None (not calibrated, or
    calibrated before oddframe kept them)."""
    cal = read_calibration(run_dir)
    info = (cal or {}).get("pixel_thresholds")
    if not info:
        return None
    path = Path(run_dir) / info.get("file", PIXEL_THRESHOLDS)
    try:
        tmap = load_file(str(path))["threshold"].numpy()
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the per-pixel thresholds ({exc}); run oddframe calibrate again") from None
    if tmap.ndim != 2 or not np.isfinite(tmap).all() or (tmap <= 0).any():
        raise CheckpointError(f"{path}: per-pixel thresholds must be a finite positive (h, w) map; calibrate again")
    return tmap, info


def read_calibration(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``calibration.json`` (threshold and reference statistics), or None if not calibrated."""
    path = Path(run_dir) / CALIBRATION
    return read_json(path) if path.is_file() else None
