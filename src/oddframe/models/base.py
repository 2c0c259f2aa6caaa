"""The contract every oddframe model meets.

A model is an ``nn.Module`` that takes a :class:`~oddframe.data.clips.Batch` (clips ``(B, C, T, H, W)`` in
``[-1, 1]`` and a boolean ``valid`` mask ``(B, 1, T, H, W)``) and offers:

- ``training_loss(batch) -> Tensor``: a scalar to minimise on normal data;
- ``anomaly_map(batch) -> Tensor``: ``(B, T, H, W)``, higher is more anomalous, finite at every valid pixel.

Two optional extensions, both off by default so a plain autoencoder needs neither:

- **Fitting** (the scikit-learn idea: ``fit`` on normal data, then score). A model whose state is estimated in
  one pass over normal clips (densities, a Deep SVDD centre, statistics) implements ``fit(batches)`` and keeps
  that state in buffers made with :meth:`AnomalyModel.register_fitted`, which go into ``model.safetensors`` with
  the weights (never pickle) and may change shape when fitted or loaded. The trainer calls ``fit`` before epoch
  :attr:`AnomalyModel.fit_before_epoch` (0 = before any gradient step); a model without trainable parameters is
  only fitted.
- **Derived inputs**. :meth:`AnomalyModel.derived_inputs` names per-frame inputs computed by
  :mod:`oddframe.features` (e.g. optical flow), with their parameters; the stream computes each once per frame
  and batches carry them in ``batch.extras``.

A fitted model may also offer :meth:`AnomalyModel.held_out_training`: ``oddframe calibrate`` then scores the
training frames as held out (each by the state fitted without its group), so thresholds and calibrated scores come
from scores of footage the model did not fit.

The trainer, detector, evaluator and CLI see nothing else. Frame scores come from maps in
:mod:`oddframe.scoring`, so every scoring rule works with every model.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterable, Iterator

import torch
from torch import nn

from oddframe.data.clips import Batch


class AnomalyModel(nn.Module, ABC):
    """Base class of registered models.

    Class attributes describe the input a model expects so that data loading can be set up from the model:
    ``clip_length`` frames of ``image_size`` (H, W) with ``in_channels`` channels. Every model takes these three as
    keyword-only constructor arguments (the config fills them from its data section) and stores them as attributes.
    """

    model_name: ClassVar[str]
    #: The map is |error| ** map_power: 2 for squared reconstruction error, 1 for absolute error. Scoring rules
    #: (MSE, L1, PSNR) and the 0-1 "loss" scale of the video boxes use it to convert maps consistently.
    map_power: ClassVar[int] = 2
    #: Whether ``reconstruct`` costs about one forward pass. Samplers (diffusion) set False, so the trainer does
    #: not run a whole reverse process to log pictures.
    cheap_reconstruction: ClassVar[bool] = True
    in_channels: int
    clip_length: int
    image_size: tuple[int, int]
    #: Epoch (0-based) before which the trainer calls :meth:`fit` over the normal training clips; None = never.
    #: An instance may set it from its parameters (Deep SVDD fits its centre after the autoencoder pretraining).
    fit_before_epoch: int | None = None

    @abstractmethod
    def training_loss(self, batch: Batch) -> torch.Tensor:
        """Scalar loss on a batch of normal clips."""

    @abstractmethod
    def anomaly_map(self, batch: Batch) -> torch.Tensor:
        """Per-pixel anomaly map ``(B, T, H, W)``; higher is more anomalous."""

    def reconstruct(self, batch: Batch) -> torch.Tensor | None:
        """What the model expected to see, ``(B, C, T, H, W)`` in ``[-1, 1]``, for display; None if it has no such notion."""
        return None

    def derived_inputs(self) -> dict[str, dict[str, Any]]:
        """Per-frame inputs this model needs besides the frames, ``{name: params}`` (names of
        :data:`oddframe.features.FEATURES`); they arrive as ``batch.extras[name]`` ``(B, C_k, T, H, W)``."""
        return {}

    def fit(self, batches: Iterable[Batch]) -> None:
        """Estimate fitted state from normal clips (one pass over ``batches``); models with ``fit_before_epoch``
        set implement it."""
        raise NotImplementedError(f"{self.model_name} has no fit step")

    @contextlib.contextmanager
    def held_out_training(self) -> Iterator[bool]:
        """Inside, frames the model was fitted on score as if it had been fitted without them (leave-one-group-out),
        for calibration on normal training frames; yields whether the model can (default: no, scores stay
        in-sample and a threshold set on them is optimistic)."""
        yield False

    def register_fitted(self, name: str, value: torch.Tensor) -> None:
        """Register a buffer of fitted state: saved with the weights, and free to change shape on fit and load."""
        self.register_buffer(name, value)
        self._fitted_names = getattr(self, "_fitted_names", set()) | {name}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # Fitted buffers take the saved shape (a density bank's size is known only after fitting); everything
        # else must match exactly, as nn.Module checks.
        for name in getattr(self, "_fitted_names", ()):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                current = getattr(self, name)
                setattr(self, name, torch.empty(saved.shape, dtype=saved.dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the pixels where ``valid`` is True (broadcast to ``x``); 0 if none are valid.

    Args:
        x: any shape, e.g. ``(B, C, T, H, W)``.
        valid: boolean, broadcastable to ``x``.
    """
    w = valid.to(x.dtype).expand_as(x)
    return (x * w).sum() / w.sum().clamp_min(1.0)


class ReconstructionModel(AnomalyModel):
    """An autoencoder: ``forward(frames) -> reconstruction``; loss and map are the squared reconstruction error.

    Shared by ``conv3d_ae`` and ``convlstm_ae`` (Yan et al. 2020 and Chong & Tay 2017 both train with a Euclidean
    loss and read anomalies off the reconstruction error), so subclasses only define ``forward``.
    """

    map_power = 2

    def _prepare(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked ``(frames, valid)`` with every invalid pixel set to -1 (black), as the contract says."""
        frames, valid = batch.frames, batch.valid
        if frames.ndim != 5 or frames.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.model_name} expects frames (B, {self.in_channels}, T, H, W), got shape {tuple(frames.shape)}"
            )
        b, _, t, h, w = frames.shape
        if tuple(valid.shape) != (b, 1, t, h, w):
            raise ValueError(f"valid must have shape {(b, 1, t, h, w)}, got {tuple(valid.shape)}")
        x = torch.where(valid, frames, torch.full_like(frames, -1.0))
        if torch.isnan(x).any():
            raise ValueError("frames contain NaN at pixels marked valid; mark them invalid in the valid mask")
        return x, valid

    def training_loss(self, batch: Batch) -> torch.Tensor:
        """Euclidean reconstruction loss: mean squared error over valid pixels (scalar)."""
        x, valid = self._prepare(batch)
        return masked_mean((self(x) - x) ** 2, valid)

    def anomaly_map(self, batch: Batch) -> torch.Tensor:
        """Squared reconstruction error averaged over channels, ``(B, T, H, W)``; 0 at invalid pixels."""
        x, valid = self._prepare(batch)
        err = ((self(x) - x) ** 2).mean(dim=1)
        return err * valid[:, 0].to(err.dtype)

    def reconstruct(self, batch: Batch) -> torch.Tensor:
        """The reconstruction ``(B, C, T, H, W)`` in ``[-1, 1]``."""
        x, _ = self._prepare(batch)
        return self(x)
