"""Clip augmentations usable by every model: rotation, flips and a brightness shift.

Every transform is applied identically to all frames of a clip, so motion stays coherent: a clip rotated by a
different angle per frame would show a spinning scene, which normal footage never does and which the model
would then learn as normal. The ``valid`` mask goes through the same geometric transform, so pixels rotated in
from outside the frame become invalid (and are set to -1, black, as the clip contract wants for invalid pixels).

Layout: ``frames (C, T, H, W)`` floats in ``[-1, 1]`` and ``valid (1, T, H, W)`` bool, as in
:class:`oddframe.data.clips.Clip`. The pure functions :func:`rotate`, :func:`flip` and :func:`shift_brightness`
do one transform each with explicit parameters; :class:`ClipAugment` draws the random parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.data
from einops import rearrange

from oddframe.data.clips import Clip

# A rotated pixel stays valid only if every input pixel its bilinear sample mixes is valid, so no value from
# outside the frame (or from a NaN pixel) leaks in; the tolerance absorbs the float error of exact right angles.
_VALID_TOL = 1e-3


def _check(frames: torch.Tensor, valid: torch.Tensor) -> None:
    if frames.ndim != 4:
        raise ValueError(f"frames must be (C, T, H, W), got shape {tuple(frames.shape)}")
    _, t, h, w = frames.shape
    if tuple(valid.shape) != (1, t, h, w) or valid.dtype != torch.bool:
        raise ValueError(
            f"valid must be a bool tensor of shape {(1, t, h, w)}, got {valid.dtype} {tuple(valid.shape)}"
        )


def rotate(frames: torch.Tensor, valid: torch.Tensor, angle_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate every frame of a clip by the same angle about the image centre, counter-clockwise as displayed.

    Counter-clockwise with row 0 at the top, i.e. ``angle_deg = 90`` on a square image equals
    ``torch.rot90(x, 1, dims=(-2, -1))``. Bilinear for the frames; a pixel is valid afterwards only if all the
    input pixels it is interpolated from were valid; invalid pixels are set to -1.

    Args:
        frames: ``(C, T, H, W)`` float.
        valid: ``(1, T, H, W)`` bool.
        angle_deg: rotation angle in degrees.

    Returns:
        Rotated ``(frames, valid)`` with the input shapes.
    """
    _check(frames, valid)
    _, t, h, w = frames.shape
    a = math.radians(angle_deg)
    cos, sin = math.cos(a), math.sin(a)
    # affine_grid maps each output pixel to the input point to sample, in coordinates normalised to [-1, 1]
    # per axis. In centred pixel units the inverse of a counter-clockwise rotation (y pointing down) is
    # [[cos, -sin], [sin, cos]]; rescaling to normalised units multiplies the off-diagonal terms by the aspect
    # ratio, so non-square frames rotate rigidly instead of shearing.
    theta = torch.tensor(
        [[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=torch.float32, device=frames.device
    )
    grid = F.affine_grid(theta.expand(t, 2, 3), [t, 1, h, w], align_corners=False)
    x = rearrange(frames, "c t h w -> t c h w").float()
    v = rearrange(valid, "one t h w -> t one h w").float()
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    v = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False) >= 1.0 - _VALID_TOL
    x = torch.where(v, x, torch.full_like(x, -1.0))
    return rearrange(x, "t c h w -> c t h w").to(frames.dtype), rearrange(v, "t one h w -> one t h w")


def flip(
    frames: torch.Tensor, valid: torch.Tensor, *, horizontal: bool = False, vertical: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror every frame left-right (``horizontal``) and/or top-bottom (``vertical``); exact, no resampling.

    Args:
        frames: ``(C, T, H, W)``.
        valid: ``(1, T, H, W)`` bool.

    Returns:
        Flipped ``(frames, valid)``.
    """
    _check(frames, valid)
    dims = ([-1] if horizontal else []) + ([-2] if vertical else [])
    if not dims:
        return frames, valid
    return torch.flip(frames, dims), torch.flip(valid, dims)


def shift_brightness(frames: torch.Tensor, valid: torch.Tensor, offset: float) -> torch.Tensor:
    """Add ``offset`` to every valid pixel and clamp to ``[-1, 1]``; invalid pixels keep their value (-1).

    Args:
        frames: ``(C, T, H, W)`` in ``[-1, 1]``.
        valid: ``(1, T, H, W)`` bool.
        offset: brightness offset in the ``[-1, 1]`` intensity scale.

    Returns:
        The shifted frames ``(C, T, H, W)``.
    """
    _check(frames, valid)
    return torch.where(valid, (frames + offset).clamp(-1.0, 1.0), frames)


class ClipAugment:
    """Random clip augmentation: flips, one rotation angle per clip, one brightness offset per clip.

    Applied in the order flips, rotation, brightness. With every argument 0 it returns the clip unchanged.

    Args:
        rotation_deg: the angle is drawn uniformly from ``[-rotation_deg, rotation_deg]`` (0 to 180).
        hflip: probability of a left-right flip.
        vflip: probability of a top-bottom flip.
        brightness: the offset is drawn uniformly from ``[-brightness, brightness]`` (0 to 2, the width of
            the ``[-1, 1]`` range), added to valid pixels and clamped to ``[-1, 1]``.
        seed: seed of a private random generator, for reproducible augmentation in the main process. With
            ``None``, and always inside ``DataLoader`` workers, the draws come from torch's global generator,
            which the ``DataLoader`` seeds differently for every worker and every epoch (reproducibly when the
            main process is seeded). A private generator copied into each worker would give every worker, and
            every epoch, the same sequence of draws.
    """

    def __init__(
        self,
        *,
        rotation_deg: float = 0.0,
        hflip: float = 0.0,
        vflip: float = 0.0,
        brightness: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= rotation_deg <= 180.0:
            raise ValueError(f"rotation_deg must be in [0, 180], got {rotation_deg}")
        for name, p in (("hflip", hflip), ("vflip", vflip)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability and must be in [0, 1], got {p}")
        if not 0.0 <= brightness <= 2.0:
            raise ValueError(f"brightness must be in [0, 2] (the width of the [-1, 1] range), got {brightness}")
        self.rotation_deg = float(rotation_deg)
        self.hflip = float(hflip)
        self.vflip = float(vflip)
        self.brightness = float(brightness)
        self.seed = seed
        self._generator: torch.Generator | None = None
        if seed is not None:
            self._generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the private generator from ``seed`` (the trainer does so every epoch, so a resumed run draws the
        same augmentations as an uninterrupted one); no effect without a private generator."""
        if self._generator is not None:
            self._generator.manual_seed(seed)

    def __repr__(self) -> str:
        return (
            f"ClipAugment(rotation_deg={self.rotation_deg}, hflip={self.hflip}, vflip={self.vflip}, "
            f"brightness={self.brightness}, seed={self.seed})"
        )

    def _uniform(self) -> float:
        in_worker = torch.utils.data.get_worker_info() is not None
        return float(torch.rand((), generator=None if in_worker else self._generator))

    def sample_params(self) -> dict[str, float | bool]:
        """Draw one set of parameters: ``hflip``, ``vflip`` (bool), ``angle_deg`` and ``offset`` (float)."""
        # Always four draws in a fixed order, so the sequence does not depend on which transforms are enabled.
        u_h, u_v, u_a, u_b = (self._uniform() for _ in range(4))
        return {
            "hflip": u_h < self.hflip,
            "vflip": u_v < self.vflip,
            "angle_deg": (2.0 * u_a - 1.0) * self.rotation_deg,
            "offset": (2.0 * u_b - 1.0) * self.brightness,
        }

    def apply(self, frames: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one clip given as tensors.

        Args:
            frames: ``(C, T, H, W)`` float in ``[-1, 1]``.
            valid: ``(1, T, H, W)`` bool.

        Returns:
            Augmented ``(frames, valid)`` of the same shapes.
        """
        _check(frames, valid)
        p = self.sample_params()
        frames, valid = flip(frames, valid, horizontal=bool(p["hflip"]), vertical=bool(p["vflip"]))
        if p["angle_deg"] != 0.0:
            frames, valid = rotate(frames, valid, float(p["angle_deg"]))
        if p["offset"] != 0.0:
            frames = shift_brightness(frames, valid, float(p["offset"]))
        return frames, valid

    def __call__(self, clip: Clip) -> Clip:
        """Augment a :class:`Clip`; ``video``, ``frame_index`` and derived inputs (``extras``) are kept.

        Derived inputs (optical flow) are photometric-invariant but would need their own geometric transform (a
        flipped flow field also changes sign), so a clip with extras accepts brightness shifts only.
        """
        if clip.extras and (self.rotation_deg or self.hflip or self.vflip):
            raise ValueError(
                f"clips with derived inputs ({', '.join(clip.extras)}) take brightness augmentation only: set "
                "train.augment.rotation_deg, hflip and vflip to 0"
            )
        frames, valid = self.apply(clip.frames, clip.valid)
        return Clip(frames, valid, clip.video, clip.frame_index, clip.extras)
