"""Frame transforms: resize, grey/colour, and scaling to ``[-1, 1]`` (the range every model takes).

A :class:`FrameTransform` turns one :class:`~oddframe.data.sources.Frame` into the per-frame slice of the
model layout: ``(C, H, W)`` float32 in ``[-1, 1]`` and an ``(H, W)`` bool valid mask. Invalid pixels are
``-1`` (black) and stay marked invalid, so no model is scored on them.

Scaling. Camera footage is 8-bit, so a fixed map ``[0, 255] -> [-1, 1]`` keeps brightness comparable
across frames. Scientific images (16-bit, float FITS) have no fixed range: a robust per-frame percentile
clip (or fixed ``vmin``/``vmax``) maps them, optionally through a log or asinh stretch because solar EUV
intensities span orders of magnitude (asinh as in Lupton et al. 2004, AJ 127, 1821; the same stretches as
astropy.visualization's ``LogStretch(a=1000)`` and ``AsinhStretch(a=0.1)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
from einops import rearrange

from oddframe.data.sources import Frame

SCALINGS = ("auto", "uint8", "robust", "minmax")
STRETCHES = ("linear", "log", "asinh")
CHANNELS = (1, 3)
# ITU-R BT.601 luma weights for R, G, B: what cv2.cvtColor(..., COLOR_RGB2GRAY) uses.
BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)
LOG_A = 1000.0  # log stretch: log(a*u + 1) / log(a + 1)
ASINH_A = 0.1  # asinh stretch: asinh(u / a) / asinh(1 / a); linear below ~a, logarithmic above


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """Luma of an RGB(A) image with ITU-R BT.601 weights (as OpenCV's ``COLOR_RGB2GRAY``, without rounding).

    Args:
        rgb: ``(H, W, 3)`` or ``(H, W, 4)`` (alpha ignored), any numeric dtype, channels in RGB order.

    Returns:
        ``(H, W)`` float32 ``0.299 R + 0.587 G + 0.114 B``.
    """
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise ValueError(f"to_grey expects (H, W, 3) or (H, W, 4) RGB(A), got shape {rgb.shape}")
    return rgb[:, :, :3].astype(np.float32) @ BT601


def scale_uint8(x: np.ndarray) -> np.ndarray:
    """Map 8-bit values ``[0, 255]`` linearly onto ``[-1, 1]`` (0 -> -1, 127.5 -> 0, 255 -> 1), clipped.

    Args:
        x: any shape, values nominally in ``[0, 255]``.

    Returns:
        float32 array of the same shape.
    """
    return np.clip(x.astype(np.float32) / 127.5 - 1.0, -1.0, 1.0)


def stretch_unit(u: np.ndarray, stretch: str) -> np.ndarray:
    """Apply a monotone stretch that maps ``[0, 1]`` onto ``[0, 1]`` (0 -> 0, 1 -> 1).

    Args:
        u: any shape, values in ``[0, 1]``.
        stretch: ``"linear" | "log" | "asinh"``.
    """
    if stretch == "linear":
        return u
    if stretch == "log":
        return np.log1p(LOG_A * u) / np.log1p(LOG_A)
    if stretch == "asinh":
        return np.arcsinh(u / ASINH_A) / np.arcsinh(1.0 / ASINH_A)
    raise ValueError(f"stretch must be one of {', '.join(STRETCHES)}; got {stretch!r}")


def robust_scale(
    x: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    percentiles: tuple[float, float] = (0.5, 99.5),
    stretch: str = "linear",
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Clip to robust limits, stretch, and map onto ``[-1, 1]``.

    The limits are ``vmin``/``vmax`` where given, else the ``percentiles`` of the valid pixels (all channels
    together, so colour balance is kept). ``percentiles=(0, 100)`` is min-max scaling.

    Args:
        x: ``(H, W)`` or ``(H, W, C)`` numeric.
        valid: ``(H, W)`` bool or None (all valid). Invalid pixels are ignored by the percentiles and set to -1.
        percentiles: ``(low, high)`` in ``[0, 100]``, low < high.
        stretch: ``"linear" | "log" | "asinh"``, applied between clipping and the final map.
        vmin, vmax: fixed limits replacing the low/high percentile.

    Returns:
        float32, the shape of ``x``, in ``[-1, 1]``. A frame with equal limits (constant) maps to 0;
        a frame with no valid pixel to -1.
    """
    if stretch not in STRETCHES:
        raise ValueError(f"stretch must be one of {', '.join(STRETCHES)}; got {stretch!r}")
    x = x.astype(np.float32, copy=False)
    values = x[valid] if valid is not None else x
    if values.size == 0:
        return np.full(x.shape, -1.0, dtype=np.float32)
    lo, hi = vmin, vmax
    if lo is None or hi is None:
        p_lo, p_hi = np.percentile(values, percentiles)
        lo = float(p_lo) if lo is None else lo
        hi = float(p_hi) if hi is None else hi
    if hi <= lo:
        out = np.zeros(x.shape, dtype=np.float32)
    else:
        u = np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
        # Clip again: float32 rounding in the stretch can overshoot 1 by an ulp.
        out = np.clip(2.0 * stretch_unit(u, stretch) - 1.0, -1.0, 1.0).astype(np.float32)
    if valid is not None:
        out[~valid] = -1.0
    return out


def resize(data: np.ndarray, valid: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image and its valid mask to ``size = (H, W)``.

    Area interpolation when shrinking (it averages, so no aliasing), bilinear when enlarging. The mask is
    resized with nearest neighbour and, to be conservative, a pixel is also invalid if any invalid source
    pixel contributed to it (its value mixes in the 0 that invalid pixels hold).

    Args:
        data: ``(H0, W0)`` or ``(H0, W0, C)`` float32.
        valid: ``(H0, W0)`` bool.
        size: ``(H, W)`` output size.

    Returns:
        ``(H, W)`` or ``(H, W, C)`` float32 and ``(H, W)`` bool.
    """
    h0, w0 = data.shape[:2]
    h, w = size
    if (h, w) == (h0, w0):
        return data, valid
    shrink = h * w < h0 * w0
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = cv2.resize(data, (w, h), interpolation=interpolation)  # OpenCV takes (width, height)
    if out.ndim == 2 and data.ndim == 3:  # OpenCV drops a trailing axis of length 1
        out = out[:, :, None]
    nearest = cv2.resize(valid.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    if valid.all():
        return out, nearest
    weight = cv2.resize(valid.astype(np.float32), (w, h), interpolation=interpolation)
    return out, nearest & (weight >= 1.0 - 1e-4)


@dataclass(frozen=True, kw_only=True)
class FrameTransform:
    """Frame -> ``(C, H, W)`` float32 in ``[-1, 1]`` and ``(H, W)`` bool valid mask.

    Steps: colour conversion (grey by BT.601 luma, or grey repeated to 3 channels; alpha dropped), resize,
    scaling, invalid pixels to -1.

    Attributes:
        size: ``(H, W)`` output size; None keeps the source size.
        channels: 1 (grey) or 3 (colour; grey sources are repeated).
        scaling: ``"uint8"`` ([0, 255] -> [-1, 1]), ``"robust"`` (percentile clip + stretch), ``"minmax"``
            (min-max + stretch), or ``"auto"``: uint8 for uint8 data, robust for everything else.
        percentiles: ``(low, high)`` percentiles for robust scaling, on valid pixels only.
        stretch: ``"linear" | "log" | "asinh"``, applied to the clipped values mapped onto ``[0, 1]``
            (with uint8 scaling: to ``x / 255``).
        vmin, vmax: fixed limits for robust/minmax scaling instead of per-frame ones (comparable across
            frames); uint8 scaling always uses 0 and 255.
    """

    size: tuple[int, int] | None = None
    channels: int = 1
    scaling: str = "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)
    stretch: str = "linear"
    vmin: float | None = None
    vmax: float | None = None

    def __post_init__(self) -> None:
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}; got {self.scaling!r}")
        if self.stretch not in STRETCHES:
            raise ValueError(f"stretch must be one of {', '.join(STRETCHES)}; got {self.stretch!r}")
        if self.channels not in CHANNELS:
            raise ValueError(f"channels must be one of {CHANNELS}; got {self.channels!r}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"size must be None or (H, W) with H, W >= 1; got {self.size!r}")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100; got {self.percentiles!r}")
        if self.vmin is not None and self.vmax is not None and self.vmin >= self.vmax:
            raise ValueError(f"vmin must be below vmax; got vmin={self.vmin}, vmax={self.vmax}")

    def __call__(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """Transform one frame.

        Args:
            frame: ``data`` ``(H0, W0)`` or ``(H0, W0, C0)`` with C0 in {1, 3, 4}; ``valid`` ``(H0, W0)`` or None.

        Returns:
            ``(C, H, W)`` float32 in ``[-1, 1]`` (invalid pixels -1) and ``(H, W)`` bool valid mask.
        """
        data = frame.data
        scaling = self.scaling
        if scaling == "auto":
            scaling = "uint8" if data.dtype == np.uint8 else "robust"
        if data.ndim == 3 and data.shape[2] == 1:
            data = data[:, :, 0]
        if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[2] not in (3, 4)):
            raise ValueError(f"frame {frame.index}: data must be (H, W) or (H, W, C) with C in {{1, 3, 4}}, "
                             f"got shape {frame.data.shape}")
        valid = frame.valid if frame.valid is not None else np.ones(data.shape[:2], dtype=bool)
        if valid.shape != data.shape[:2]:
            raise ValueError(f"frame {frame.index}: valid mask {valid.shape} does not match data {data.shape}")
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            # Sources already mask NaN, but a hand-made Frame may not: NaN would poison percentiles and resizing.
            finite = np.isfinite(data) if data.ndim == 2 else np.isfinite(data).all(axis=2)
            valid = valid & finite
            data = np.where(np.isfinite(data), data, 0)
        # Colour first: resizing one grey plane is cheaper than three, and luma is linear, so the order
        # does not change the result.
        if self.channels == 1:
            data = to_grey(data) if data.ndim == 3 else data.astype(np.float32)
        else:
            data = data[:, :, :3].astype(np.float32) if data.ndim == 3 else data.astype(np.float32)[:, :, None]
        if self.size is not None:
            data, valid = resize(data, valid, self.size)
        # Resizing before scaling averages intensities (physical flux), not stretched values.
        if scaling == "uint8" and self.stretch == "linear":
            out = scale_uint8(data)
        elif scaling == "uint8":  # the same map, through the stretch: [0, 255] -> [0, 1] -> stretch -> [-1, 1]
            out = robust_scale(data, valid, stretch=self.stretch, vmin=0.0, vmax=255.0)
        else:
            percentiles = (0.0, 100.0) if scaling == "minmax" else self.percentiles
            out = robust_scale(data, valid, percentiles=percentiles, stretch=self.stretch,
                               vmin=self.vmin, vmax=self.vmax)
        out = out if out.ndim == 3 else out[:, :, None]
        if self.channels == 3 and out.shape[2] == 1:
            out = np.repeat(out, 3, axis=2)  # grey -> colour by repetition
        out[~valid] = -1.0
        return np.ascontiguousarray(rearrange(out, "h w c -> c h w")), valid


def conversion_note(frame_shape: tuple[int, ...], channels: int) -> str | None:
    """What :class:`FrameTransform` does to frames of ``frame_shape`` for a model of ``channels``, when it converts.

    Returns:
        ``None`` when the frames already have the model's channels, else one sentence (colour to grey by BT.601
        luma, alpha dropped, or grey repeated to 3 channels).
    """
    have = frame_shape[2] if len(frame_shape) == 3 else 1
    if have == 1 and channels == 3:
        return "grey frames are repeated to the 3 channels of a colour model"
    if have in (3, 4) and channels == 1:
        return f"{'RGBA' if have == 4 else 'colour'} frames are converted to grey (BT.601 luma) for a 1-channel model"
    if have == 4:
        return "the alpha channel of RGBA frames is dropped"
    return None


class _InputSettings(Protocol):
    """The settings that decide a model input (the config's data section; prep's options carry the same)."""

    size: tuple[int, int]
    channels: int
    scaling: str
    percentiles: tuple[float, float]
    stretch: str


def frame_transform(data: _InputSettings) -> FrameTransform:
    """The one raw-frame -> model-input transform of a run, used alike by training, detection and prep.

    Args:
        data: the config's data section (:class:`oddframe.config.DataConfig`) or anything with its ``size``,
            ``channels``, ``scaling``, ``percentiles`` and ``stretch``.
    """
    return FrameTransform(
        size=tuple(data.size), channels=data.channels, scaling=data.scaling, percentiles=tuple(data.percentiles),
        stretch=data.stretch,
    )
