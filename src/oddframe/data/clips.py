"""Clips: fixed-length windows over frame sequences, padding/cropping, and the batch every model takes.

Layout everywhere: frames ``(B, C, T, H, W)`` floats in ``[-1, 1]``; ``valid`` ``(B, 1, T, H, W)`` bool,
False for padded frames, missing pixels (NaN in FITS) and frames the user flagged as zeroed out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch


@dataclass
class Clip:
    """One window of one video, before batching.

    Attributes:
        frames: ``(C, T, H, W)`` float32 in ``[-1, 1]``.
        valid: ``(1, T, H, W)`` bool.
        video: name of the video the clip comes from.
        frame_index: ``(T,)`` int64, the frame numbers in the video; ``-1`` marks padding.
        extras: derived inputs by name (:mod:`oddframe.features`), each ``(C_k, T, H, W)`` float32.
    """

    frames: torch.Tensor
    valid: torch.Tensor
    video: str
    frame_index: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Batch:
    """A batch of clips, the only thing models see.

    Attributes:
        frames: ``(B, C, T, H, W)`` float in ``[-1, 1]``.
        valid: ``(B, 1, T, H, W)`` bool.
        video: ``B`` video names.
        frame_index: ``(B, T)`` int64 frame numbers, ``-1`` for padded frames.
        extras: derived inputs a model asked for (:attr:`AnomalyModel.requires`), by name, each
            ``(B, C_k, T, H, W)`` float32 at the frames' resolution (e.g. ``"flow"``: ``C_k = 2``, dx and dy in
            pixels from the previous frame).
    """

    frames: torch.Tensor
    valid: torch.Tensor
    video: list[str] = field(default_factory=list)
    frame_index: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Batch":
        """Copy of the batch with tensors on ``device`` (frames cast to ``dtype`` if given)."""
        frames = self.frames.to(device, dtype=dtype) if dtype else self.frames.to(device)
        index = self.frame_index.to(device) if self.frame_index is not None else None
        extras = {k: v.to(device) for k, v in self.extras.items()}
        return Batch(frames, self.valid.to(device), list(self.video), index, extras)

    @classmethod
    def from_frames(cls, frames: torch.Tensor, valid: torch.Tensor | None = None) -> "Batch":
        """Batch from a ``(B, C, T, H, W)`` tensor; all pixels valid unless ``valid`` is given."""
        if frames.ndim != 5:
            raise ValueError(f"frames must be (B, C, T, H, W), got shape {tuple(frames.shape)}")
        b, _, t, h, w = frames.shape
        if valid is None:
            valid = torch.ones(b, 1, t, h, w, dtype=torch.bool, device=frames.device)
        index = torch.arange(t).expand(b, t).clone()
        return cls(frames, valid, [""] * b, index)

    def __len__(self) -> int:
        return self.frames.shape[0]


def window_starts(n_frames: int, length: int, stride: int) -> list[int]:
    """Start indices of windows of ``length`` frames every ``stride`` frames, covering all ``n_frames``.

    The last window is aligned to the end so every frame is covered; a sequence shorter than ``length``
    gets one window starting at 0 (to be padded).

    >>> window_starts(10, 4, 3)
    [0, 3, 6]
    >>> window_starts(11, 4, 3)
    [0, 3, 6, 7]
    """
    if length < 1 or stride < 1:
        raise ValueError(f"length and stride must be >= 1, got length={length}, stride={stride}")
    if n_frames <= length:
        return [0] if n_frames > 0 else []
    starts = list(range(0, n_frames - length + 1, stride))
    if starts[-1] != n_frames - length:
        starts.append(n_frames - length)
    return starts


def sample_by_interval(times: Sequence[float | None], interval_sec: float) -> list[int]:
    """Indices of frames at least ``interval_sec`` seconds apart (greedy from the first frame).

    Used to subsample sequences with a cadence in seconds (e.g. solar images every minute -> every 5 minutes).
    Frames without a timestamp raise ``ValueError``.
    """
    if interval_sec <= 0:
        raise ValueError(f"interval_sec must be > 0, got {interval_sec}")
    keep: list[int] = []
    last: float | None = None
    for i, t in enumerate(times):
        if t is None:
            raise ValueError(f"frame {i} has no timestamp; sample by frames instead of seconds")
        # Small tolerance: cadences jitter by a fraction of a second.
        if last is None or t - last >= interval_sec - 1e-3 * interval_sec:
            keep.append(i)
            last = t
    return keep


def pad_or_crop(clip: Clip, length: int) -> Clip:
    """Pad (repeating nothing: zeros, marked invalid) or crop ``clip`` to ``length`` frames.

    Padded frames are ``-1`` (black in ``[-1, 1]``), ``valid=False`` and ``frame_index=-1``; derived inputs are
    padded with zeros.
    """
    c, t, h, w = clip.frames.shape
    if t == length:
        return clip
    if t > length:
        extras = {k: v[:, :length] for k, v in clip.extras.items()}
        return Clip(clip.frames[:, :length], clip.valid[:, :length], clip.video, clip.frame_index[:length], extras)
    pad = length - t
    frames = torch.cat([clip.frames, clip.frames.new_full((c, pad, h, w), -1.0)], dim=1)
    valid = torch.cat([clip.valid, clip.valid.new_zeros((1, pad, h, w))], dim=1)
    index = torch.cat([clip.frame_index, clip.frame_index.new_full((pad,), -1)])
    extras = {k: torch.cat([v, v.new_zeros((v.shape[0], pad, *v.shape[2:]))], dim=1) for k, v in clip.extras.items()}
    return Clip(frames, valid, clip.video, index, extras)


def collate(clips: Sequence[Clip], length: int | None = None) -> Batch:
    """Stack clips into a :class:`Batch`, padding or cropping each to ``length`` (default: the longest)."""
    if not clips:
        raise ValueError("cannot collate an empty list of clips")
    length = length or max(c.frames.shape[1] for c in clips)
    fixed = [pad_or_crop(c, length) for c in clips]
    names = set(fixed[0].extras)
    if any(set(c.extras) != names for c in fixed):
        raise ValueError("cannot collate clips with different derived inputs (extras)")
    return Batch(
        frames=torch.stack([c.frames for c in fixed]),
        valid=torch.stack([c.valid for c in fixed]),
        video=[c.video for c in fixed],
        frame_index=torch.stack([c.frame_index for c in fixed]),
        extras={k: torch.stack([c.extras[k] for c in fixed]) for k in sorted(names)},
    )


def clip_from_arrays(frames: np.ndarray, valid: np.ndarray, video: str, frame_index: Sequence[int]) -> Clip:
    """Clip from numpy arrays ``frames (T, C, H, W)`` float and ``valid (T, H, W)`` bool."""
    f = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).permute(1, 0, 2, 3)
    v = torch.from_numpy(np.ascontiguousarray(valid, dtype=bool)).unsqueeze(0)
    return Clip(f, v, video, torch.as_tensor(list(frame_index), dtype=torch.long))
