"""Run folders: self-describing, safe checkpoints (DESIGN rule 5).

A run folder holds ``config.yaml`` (the resolved config), ``model.safetensors`` (weights, with the package
version and model name in its metadata), ``state.pt`` (optimiser, scheduler and epoch, for ``--resume``; our own
file, still read with ``weights_only=True``), ``history.csv``, ``loss.png``, ``tb/`` (TensorBoard) and, once
calibrated, ``calibration.json``. Every file is written atomically (temporary file, then rename), so a killed run
never leaves a half-written checkpoint.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import oddframe
from oddframe.config import Config, load_config, save_config
from oddframe.errors import CheckpointError
from oddframe.files import atomic_write, write_json
from oddframe.models.base import AnomalyModel
from oddframe.registry import build_model

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
HISTORY = "history.csv"
CALIBRATION = "calibration.json"
HISTORY_FIELDS = ["epoch", "step", "loss", "lr", "seconds"]


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Write the model's state dict as safetensors with the package version and model name as metadata."""
    # clone: safetensors refuses tensors that share storage (e.g. tied or EMA views).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"oddframe_version": oddframe.__version__, "model": getattr(model, "model_name", type(model).__name__)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into ``model``; a CheckpointError names the file if it is broken or mismatched."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc})") from None
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
        raise CheckpointError(f"{path}: cannot read training state ({exc})") from None


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
    model = build_model(config.model.name, **config.model_kwargs())
    load_weights(model, run / WEIGHTS)
    model.to(map_location).eval()
    return model, config  # type: ignore[return-value]


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


def read_calibration(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``calibration.json`` (threshold and reference statistics), or None if not calibrated."""
    path = Path(run_dir) / CALIBRATION
    return read_json(path) if path.is_file() else None
