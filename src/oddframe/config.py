"""Typed configuration, one section per concern: data / model {name, params} / train / score / render.

Loaded from YAML, overridden by ``--set a.b=c`` (the value is parsed as YAML, so ``--set train.lr=1e-4`` is a
float and ``--set data.size=[64,64]`` a list), validated with pydantic, and written beside every run. An unknown
key is a :class:`~oddframe.errors.ConfigError` that names the allowed keys.

The whole config is checked at load, before any work: each field, then the settings that must agree with each
other (:func:`check_config`: window stride and clip length, model parameters and the data section, sampling).
Every error names the setting and where its value came from: the ``--set`` override, the file, or the default
(:func:`origin`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from oddframe.errors import ConfigError
from oddframe.files import atomic_write


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
    scenes: list[str] | None = Field(None, description="only these scenes (ShanghaiTech 01..13, UBnormal 1..29); null = all")
    eval_split: Literal["test", "validation"] = Field("test", description="split to evaluate (validation: UBnormal only)")

    @field_validator("scenes", mode="before")
    @classmethod
    def _scenes_as_text(cls, v: Any) -> Any:
        # --set data.scenes=[1,2] parses as ints; scenes are names like "01".
        return [str(x) for x in v] if isinstance(v, (list, tuple)) else v
    start_frame: int = Field(0, ge=0, description="first frame of each video of data.path used (training, calibration)")
    stop_frame: int | None = Field(None, ge=1, description="frames of data.path from start_frame up to (excluding) "
                                   "this one; null = to the end (e.g. train on the first 500 frames of one video)")


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

    rule: Literal["mse", "l1", "psnr", "max", "topk", "blob", "ssim"] = "mse"
    blob_weighting: Literal["area", "log_area", "area_log_area"] = Field(
        "area", description="rule blob: weight each blob's pixels by its area, log(1 + area) or area log(area)"
    )
    stride: int | None = Field(None, ge=1, description="frames between detection windows; null = clip_length")
    aggregate: Literal["max", "mean"] = "max"
    smoothing_sigma: float = Field(0.0, ge=0, description="Gaussian smoothing of the score curve, in frames")
    normalise: Literal["none", "minmax", "regularity", "calibrated"] = "none"
    batch_size: int = Field(8, ge=1, description="windows per forward pass")
    min_valid_fraction: float = Field(0.5, ge=0, le=1, description="frames with a smaller share of valid pixels "
                                      "(NaN, blank FITS pixels) get no score: NaN and invalid=1 in scores.csv")
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
    box_quantile: float = Field(0.999, gt=0, lt=1, description="a pixel is unusual above this quantile of its values "
                                "in normal maps (per-pixel thresholds set by oddframe calibrate)")
    box_floor_quantile: float = Field(0.5, ge=0, lt=1, description="lowest per-pixel threshold: this quantile of "
                                      "all normal map values (where normal maps are exactly 0, e.g. black borders, "
                                      "any change would be unusual otherwise)")
    box_normal_rate: float = Field(0.01, gt=0, lt=1, description="share of normal frames that may show a box: "
                                   "calibration raises the per-pixel thresholds until no more do")
    box_smoothing: float = Field(1.0, ge=0, description="Gaussian sigma (model pixels) of maps before thresholding")
    box_high_ratio: float = Field(3.0, gt=1, description="a region is high-level (light blue) where the map "
                                  "reaches this multiple of its threshold; low-level (red) from 1x")
    box_min_area: float = Field(0.002, ge=0, lt=1, description="smallest region boxed, fraction of the frame area")
    box_merge: float = Field(0.03, ge=0, lt=1, description="regions closer than this fraction of the frame "
                             "diagonal are merged into one box")
    max_boxes: int = Field(5, ge=0, description="boxes drawn per frame, strongest regions first")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = Field(
        "ultrafast", description="x264 speed/size trade-off of oddframe detect --video (faster = bigger file)")

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

    #: dotted key -> where its value came from ("--set a.b=c", a file, "default"); see :func:`origin`.
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    def __eq__(self, other: object) -> bool:  # the values decide, not where they came from
        return isinstance(other, Config) and self.model_dump() == other.model_dump()

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


class _Origins:
    """Where each value of a config came from: the last ``--set`` that touched the key, else the file, else the default."""

    def __init__(self, file_data: dict[str, Any], source: str | None, overrides: list[tuple[str, str]]) -> None:
        self.file_data, self.source, self.overrides = file_data, source, overrides  # overrides: (text, dotted key)

    def __call__(self, key: str) -> str:
        for text, okey in reversed(self.overrides):
            if okey == key or key.startswith(okey + ".") or okey.startswith(key + "."):
                return f"--set {text}"
        node: Any = self.file_data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return "default"
            node = node[part]
        return self.source or "default"


def origin(config: Config, key: str) -> str:
    """Where the value of dotted ``key`` of a loaded config came from: ``"--set a.b=c"``, a file path, or ``"default"``
    (``"the config given"`` for a config built in Python rather than loaded)."""
    if not config._origins:
        return "the config given"
    return config._origins.get(key) or _origin_from_parents(config._origins, key)


def _origin_from_parents(origins: dict[str, str], key: str) -> str:
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:n]) in origins:
            return origins[".".join(parts[:n])]
    return "default"


def setting(config: Config, key: str) -> str:
    """``key=value (origin)`` for messages, e.g. ``score.stride=8 (--set score.stride=8)``."""
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part)
    value = list(node) if isinstance(node, tuple) else node
    return f"{key}={value} ({origin(config, key)})"


def _dotted_keys(model: BaseModel, prefix: str = "") -> list[str]:
    out = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        out.append(key)
        if isinstance(value, BaseModel):
            out += _dotted_keys(value, key + ".")
        elif isinstance(value, dict):
            out += [f"{key}.{k}" for k in value]
    return out


def check_config(config: Config) -> None:
    """Settings that must agree with each other, checked before any work (each field is checked by pydantic).

    Raises:
        ConfigError: naming every setting involved and where its value came from.
    """
    d, s = config.data, config.score
    problems = []
    if s.stride is not None and s.stride > d.clip_length:
        problems.append(
            f"{setting(config, 'score.stride')} is larger than {setting(config, 'data.clip_length')}: detection "
            f"windows would skip frames; use score.stride <= {d.clip_length} (or null = clip_length)"
        )
    if min(d.size) < 1:
        problems.append(f"{setting(config, 'data.size')}: height and width must be >= 1")
    lo, hi = d.percentiles
    if not 0.0 <= lo < hi <= 100.0:
        problems.append(f"{setting(config, 'data.percentiles')}: need 0 <= low < high <= 100")
    if d.sample_interval_sec is not None and d.sample_interval != 1:
        problems.append(
            f"{setting(config, 'data.sample_interval')} and {setting(config, 'data.sample_interval_sec')} both choose "
            "which frames to use; set only one"
        )
    if d.stop_frame is not None and d.stop_frame <= d.start_frame:
        problems.append(f"{setting(config, 'data.stop_frame')} must be after {setting(config, 'data.start_frame')}")
    from oddframe.registry import model_params

    shared = {"in_channels": "data.channels", "clip_length": "data.clip_length", "image_size": "data.size"}
    allowed = model_params(config.model.name)
    for param, data_key in shared.items():
        if param in config.model.params and param in allowed:
            mine = config.model.params[param]
            theirs = getattr(d, data_key.split(".")[1])
            if _plain(mine) != _plain(theirs):
                problems.append(
                    f"{setting(config, 'model.params.' + param)} contradicts {setting(config, data_key)}: the model "
                    f"would be built for other input than the data it gets; set {data_key} only"
                )
    if problems:
        raise ConfigError("conflicting settings:\n  " + "\n  ".join(problems))


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def _check_keys(data: Any, model: type[BaseModel], where: str, origins: _Origins | None = None) -> None:
    """Raise ConfigError naming the allowed keys for the first unknown key (pydantic's message does not list them)."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            came = f" ({origins(where + str(key))})" if origins is not None else ""
            raise ConfigError(
                f"unknown config key '{where}{key}'{came}; allowed keys in this section: {', '.join(fields)}"
            )
        ann = fields[key].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            _check_keys(value, ann, f"{where}{key}.", origins)


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
    """Validate a config dict after applying ``overrides`` (``["train.epochs=5", ...]``), then check it as a whole
    (:func:`check_config`). Errors name each setting and where it came from (``source`` for the dict's values)."""
    data = yaml.safe_load(yaml.safe_dump(data)) if data else {}  # deep copy through YAML types
    origins = _Origins(yaml.safe_load(yaml.safe_dump(data)) or {}, source if source != "config" else None, [])
    for text in overrides:
        key, value = parse_override(text)
        origins.overrides.append((text.strip(), key))
        _set_dotted(data, key, value)
    _check_keys(data, Config, "", origins)
    try:
        config = Config.model_validate(data)
    except ConfigError as exc:  # raised by a validator of ours (model name and params)
        raise ConfigError(f"{exc} ({origins('model')})") from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
            lines.append(f"  {loc or '(top)'}: {err['msg']} ({origins(loc) if loc else source})")
        where = sorted({origins(".".join(str(p) for p in e["loc"] if not isinstance(p, int))) for e in exc.errors()})
        raise ConfigError(f"invalid setting(s) from {', '.join(where)}:\n" + "\n".join(lines)) from None
    config._origins = {key: origins(key) for key in _dotted_keys(config)}
    check_config(config)
    return config


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
    """Write ``config`` as YAML (atomically)."""
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))
