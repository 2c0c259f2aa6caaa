"""Typed configuration, one section per concern: data / model {name, params} / train / score / render.

Loaded from YAML, overridden by ``--set a.b=c`` (the value is parsed as YAML, so ``--set train.lr=1e-4`` is a
float and ``--set data.size=[64,64]`` a list), validated with pydantic, and written beside every run. An unknown
key is a :class:`~oddframe.errors.ConfigError` that names the allowed keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from oddframe.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the frames come from and how they are turned into clips."""

    path: str | None = Field(None, description="dataset folder (any layout), a single source, or a prepared folder")
    size: tuple[int, int] = Field((112, 112), description="(H, W) every frame is resized to")
    channels: Literal[1, 3] = Field(1, description="1 = grey, 3 = colour")
    clip_length: int = Field(16, ge=1, description="frames per clip (T)")
    train_stride: int = Field(4, ge=1, description="frames between the starts of training clips")
    sample_interval: int = Field(1, ge=1, description="use every n-th frame")
    sample_interval_sec: float | None = Field(None, gt=0, description="or frames at least this many seconds apart")
    scaling: Literal["auto", "uint8", "robust", "minmax"] = "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)
    stretch: Literal["linear", "log", "asinh"] = "linear"
    holdout_videos: int = Field(0, ge=0, description="last n training videos kept out of training, for calibration")
    start_frame: int = Field(0, ge=0, description="first frame of each normal source used (training, calibration)")
    stop_frame: int | None = Field(
        None, ge=1, description="frame where each normal source stops (exclusive; null = its end); detection takes "
        "its own range (oddframe detect --start-frame/--stop-frame)"
    )


class AugmentConfig(_Section):
    """Training augmentations (same random transform for every frame of a clip)."""

    rotation_deg: float = Field(0.0, ge=0)
    hflip: float = Field(0.0, ge=0, le=1)
    vflip: float = Field(0.0, ge=0, le=1)
    brightness: float = Field(0.0, ge=0, le=1)


class ModelConfig(_Section):
    """A registered model and its constructor parameters (checked against the constructor)."""

    name: str = "conv3d_ae"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_params(self) -> "ModelConfig":
        from oddframe.registry import check_params

        check_params(self.name, self.params)
        return self


class TrainConfig(_Section):
    """The training loop (Lightning Fabric)."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm; null = no clipping")
    seed: int = 0
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on optimiser steps per epoch")
    num_workers: int = Field(0, ge=0)
    accelerator: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    devices: int = Field(1, ge=1)
    num_nodes: int = Field(1, ge=1)
    precision: str | None = Field(None, description="Fabric precision; null = bf16-mixed on GPU, 32-true on CPU")
    log_images_every: int = Field(5, ge=1, description="epochs between reconstruction images in TensorBoard")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class ThresholdConfig(_Section):
    """Calibration of the alarm threshold from normal frames."""

    method: Literal["percentile", "meanstd"] = "percentile"
    q: float = Field(99.0, gt=0, lt=100, description="percentile of normal scores")
    k: float = Field(3.0, description="mean + k std")
    holdout_fraction: float = Field(0.3, gt=0, lt=1, description="share of normal frames kept to measure the FPR")


class ScoreConfig(_Section):
    """From per-pixel maps to frame scores."""

    rule: Literal["mse", "l1", "psnr", "max", "topk", "blob"] = "mse"
    stride: int | None = Field(None, ge=1, description="frames between detection windows; null = clip_length")
    aggregate: Literal["max", "mean"] = "max"
    smoothing_sigma: float = Field(0.0, ge=0, description="Gaussian smoothing of the score curve, in frames")
    normalise: Literal["none", "minmax", "regularity", "calibrated"] = "none"
    batch_size: int = Field(8, ge=1, description="windows per forward pass")
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)


class RenderConfig(_Section):
    """Videos and pictures of the anomalies."""

    threshold_low: float = Field(0.02, ge=0, le=1, description="low-level anomaly, loss on its 0-1 scale")
    threshold_high: float = Field(0.08, ge=0, le=1, description="high-level anomaly")
    mode: Literal["both", "boxes", "heatmap"] = "both"
    style: Literal["standard", "diagnostic"] = "standard"
    frame_scale: Literal["low", "high", "linear"] = Field(
        "low", description="low: stretch that shows subtle activity; high: shifted to intense events"
    )
    frame_cmap: str | None = Field(None, description="matplotlib colormap for grey frames, e.g. afmhot for solar data")
    vmax: float | None = Field(None, gt=0, description="top of the heatmap colour scale (0-1 loss); null = per frame")
    fps: float | None = Field(None, gt=0, description="video frame rate; null = the source's or 10")
    top_frames: int = Field(8, ge=0, description="most anomalous frames shown in the report")

    @model_validator(mode="after")
    def _order(self) -> "RenderConfig":
        if self.threshold_low >= self.threshold_high:
            raise ValueError(
                f"threshold_low ({self.threshold_low}) must be below threshold_high ({self.threshold_high})"
            )
        return self


class Config(_Section):
    """The whole configuration of a run."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)

    @field_validator("model", mode="before")
    @classmethod
    def _model_name_only(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor arguments for the model: its params, with clip length, size and channels from ``data``."""
        from oddframe.registry import model_params

        allowed = model_params(self.model.name)
        shared = {"in_channels": self.data.channels, "clip_length": self.data.clip_length, "image_size": self.data.size}
        kwargs = {k: v for k, v in shared.items() if k in allowed}
        kwargs.update(self.model.params)
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe dict (tuples as lists)."""
        return self.model_dump(mode="json")


def _check_keys(data: Any, model: type[BaseModel], where: str) -> None:
    """Raise ConfigError naming the allowed keys for the first unknown key (pydantic's message does not list them)."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{where}{key}'; allowed keys in this section: {', '.join(fields)}")
        ann = fields[key].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            _check_keys(value, ann, f"{where}{key}.")


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = d
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted!r}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=c`` into the dotted key and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key, value


def config_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), source: str = "config") -> Config:
    """Validate a config dict after applying ``overrides`` (``["train.epochs=5", ...]``)."""
    data = yaml.safe_load(yaml.safe_dump(data)) if data else {}  # deep copy through YAML types
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    _check_keys(data, Config, "")
    try:
        return Config.model_validate(data)
    except ConfigError:
        raise
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {loc or '(top)'}: {err['msg']}")
        raise ConfigError(f"invalid {source}:\n" + "\n".join(lines)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, score, render)")
        data = loaded or {}
    return config_from_dict(data, overrides, source=str(path) if path else "config")


def save_config(config: Config, path: str | Path) -> None:
    """Write ``config`` as YAML."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
