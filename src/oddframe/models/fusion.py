"""``fusion``: several trained models judged together, as seed 004 combines reconstruction error and embedding
distance.

Each member's raw frame scores are calibrated against its own scores on normal training frames (a z-score:
``(s - mean) / std``) and each member's maps against its own normal pixels (divided by their 99th percentile, so
1 means "as high as the top 1 % of normal pixels"); the calibrated values are then combined by a rule:

- ``sum`` (default): the sum of the members' calibrated values;
- ``max``: the largest of them;
- ``weighted``: ``sum_m weights[m] * value_m``.

The statistics are fitted state (:meth:`FusionModel.set_calibration`, saved in ``model.safetensors`` with the
members' weights), estimated by the pipeline on normal training frames only, each member under its own data
settings (size, clip length, derived inputs): see :mod:`oddframe.pipeline.fusion`, which also runs the members on a
video (each member once per frame, whatever their windows). A fused run folder is self-contained: its
``config.yaml`` embeds every member's config and its weights file holds every member's weights.

At the level of one batch (the model contract) the members must share the batch's clip length and frame size;
the pipeline has no such restriction.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from oddframe.config import Config, config_from_dict
from oddframe.data.clips import Batch
from oddframe.errors import ConfigError
from oddframe.models.base import AnomalyModel
from oddframe.registry import build_model, register_model

RULES = ("sum", "max", "weighted")
FUSION = "fusion"
#: Quantile of normal map values that becomes 1 after map calibration.
MAP_QUANTILE = 99.0


def combine(values: torch.Tensor, rule: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Combine calibrated member values along the first axis: ``(M, ...)`` -> ``(...)``.

    Args:
        values: calibrated scores ``(M, N)`` or maps ``(M, ..., H, W)``.
        rule: ``"sum"``, ``"max"`` or ``"weighted"``.
        weights: ``(M,)``, used by ``"weighted"``.
    """
    if rule == "sum":
        return values.sum(0)
    if rule == "max":
        return values.max(0).values
    if rule == "weighted":
        if weights is None or len(weights) != len(values):
            raise ValueError(f"rule 'weighted' needs one weight per member ({len(values)}), got {weights}")
        return (weights.to(values).reshape(-1, *[1] * (values.ndim - 1)) * values).sum(0)
    raise ValueError(f"unknown fusion rule {rule!r}; allowed: {', '.join(RULES)}")


@register_model(FUSION)
class FusionModel(AnomalyModel):
    """Calibrated scores and maps of several trained models combined by a rule (seed 004's fusion).

    Args:
        members: the members' resolved run configs (dicts with ``data``, ``model``, ``score`` sections), as the
            fused run's ``config.yaml`` stores them. A user config may name trained run folders instead;
            ``oddframe train`` / ``oddframe fuse`` resolve them (and copy their weights in).
        rule: ``"sum"``, ``"max"`` or ``"weighted"``.
        weights: one weight per member, for ``"weighted"``.
        in_channels, clip_length, image_size: the fused run's data settings; ``image_size`` is the resolution of
            the fused map.
    """

    map_power = 1  # calibrated maps are unitless levels, combined linearly

    def __init__(
        self,
        *,
        members: Sequence[Mapping[str, Any] | str],
        rule: str = "sum",
        weights: Sequence[float] | None = None,
        in_channels: int = 1,
        clip_length: int = 1,
        image_size: Sequence[int] = (112, 112),
    ) -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"fusion rule must be one of {', '.join(RULES)}; got {rule!r}")
        if len(members) < 1:
            raise ConfigError("model.params.members: a fusion needs at least one member")
        unresolved = [m for m in members if not isinstance(m, Mapping)]
        if unresolved:
            raise ConfigError(
                f"fusion members {unresolved} are run folders: fuse trained runs with `oddframe train CONFIG` or "
                "`oddframe fuse RUN RUN ... --out DIR`, which embed their configs and weights in the fused run"
            )
        if rule == "weighted" and (weights is None or len(weights) != len(members)):
            raise ConfigError(f"model.params.weights: rule 'weighted' needs one weight per member ({len(members)})")
        self.in_channels, self.clip_length, self.image_size = in_channels, clip_length, tuple(image_size)
        self.rule = rule
        self.member_configs: list[Config] = [config_from_dict(dict(m), source="fusion member config") for m in members]
        if any(c.model.name == FUSION for c in self.member_configs):
            raise ConfigError("a fusion cannot be a member of a fusion")
        self.members = nn.ModuleList(build_model(c.model.name, **c.model_kwargs()) for c in self.member_configs)
        self.register_buffer("weights", torch.tensor(list(weights or [1.0] * len(members)), dtype=torch.float32))
        m = len(members)
        self.register_fitted("score_mean", torch.zeros(m))
        self.register_fitted("score_std", torch.ones(m))
        self.register_fitted("map_scale", torch.zeros(0))  # empty until calibrated

    @property
    def member_names(self) -> list[str]:
        """Unique display names: ``<index>_<model name>``."""
        return [f"{i}_{c.model.name}" for i, c in enumerate(self.member_configs)]

    @property
    def fitted(self) -> bool:
        """Whether the members' normal statistics are set."""
        return self.map_scale.numel() == len(self.members)

    def set_calibration(self, score_mean: Sequence[float], score_std: Sequence[float], map_scale: Sequence[float]) -> None:
        """Store each member's normal statistics: mean and std of raw frame scores, and the map scale."""
        as_t = lambda v: torch.as_tensor(list(v), dtype=torch.float32, device=self.weights.device)  # noqa: E731
        self.score_mean, self.score_std = as_t(score_mean), as_t(score_std).clamp_min(1e-12)
        self.map_scale = as_t(map_scale).clamp_min(1e-12)

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("fusion: the members are not calibrated on normal frames (fit the fusion first)")

    def calibrated_scores(self, raw: torch.Tensor) -> torch.Tensor:
        """Members' raw frame scores ``(M, N)`` -> z-scores against their normal frames ``(M, N)``."""
        self._check_fitted()
        return (raw - self.score_mean[:, None]) / self.score_std[:, None]

    def fuse_scores(self, raw: torch.Tensor) -> torch.Tensor:
        """The fused frame score ``(N,)`` from the members' raw frame scores ``(M, N)``."""
        return combine(self.calibrated_scores(raw), self.rule, self.weights)

    def fuse_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """The fused map from the members' maps at one resolution, ``(M, ..., H, W)`` -> ``(..., H, W)`` (>= 0)."""
        self._check_fitted()
        scaled = maps / self.map_scale.reshape(-1, *[1] * (maps.ndim - 1))
        return combine(scaled, self.rule, self.weights).clamp_min(0)

    # --- the contract, for members that share a batch's clip length and size ---------------------------------

    def derived_inputs(self) -> dict[str, dict]:
        wanted: dict[str, dict] = {}
        for member in self.members:
            for name, params in member.derived_inputs().items():
                if wanted.setdefault(name, params) != params:
                    raise ConfigError(f"fusion members ask for derived input {name!r} with different settings")
        return wanted

    def _check_batch(self, batch: Batch) -> None:
        _, _, t, h, w = batch.frames.shape
        for name, member in zip(self.member_names, self.members):
            if member.clip_length != t or tuple(member.image_size) != (h, w):
                raise ValueError(
                    f"fusion member {name} takes clips of {member.clip_length} frames of {tuple(member.image_size)}, "
                    f"the batch has {t} of {(h, w)}: score such fusions through the pipeline (oddframe detect/eval)"
                )

    def training_loss(self, batch: Batch) -> torch.Tensor:
        """Sum of the members' losses on the batch (fine-tuning them jointly; ``oddframe train`` fits a fusion of
        trained runs instead of training it)."""
        self._check_batch(batch)
        return sum(member.training_loss(batch) for member in self.members)

    def anomaly_map(self, batch: Batch) -> torch.Tensor:
        """The members' calibrated maps combined by the rule, ``(B, T, H, W)``; the raw maps before calibration."""
        self._check_batch(batch)
        maps = torch.stack([member.anomaly_map(batch).float() for member in self.members])
        if not self.fitted:
            return combine(maps, self.rule, self.weights).clamp_min(0)
        return self.fuse_maps(maps)
