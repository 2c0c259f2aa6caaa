"""Image maths of what a person sees: frames for display, heatmaps, boxes around anomalous regions, outlines.

Pure functions, arrays in and arrays out (DESIGN rule 6); :mod:`oddframe.render.panel` composes them into one
video frame and :mod:`oddframe.render.video` streams the panels into an MP4. The look follows the solar 3D-AE eval videos (seed 001): the frame on the left, the residual
heatmap on the right, red boxes for low-level anomalies (``threshold_low <= loss < threshold_high``, 2% and
8% by default), light-blue boxes for high-level ones (``loss >= threshold_high``), the number of boxes and the
live reconstruction loss top left, and the global residual statistics (mean, max, std) of the frame.

Conventions: frames are ``(C, H, W)`` (``C`` = 1 or 3) or ``(H, W)`` floats in ``[-1, 1]``; anomaly maps are
``(H, W)`` floats ``>= 0`` equal to ``|error| ** map_power`` for data in ``[-1, 1]``; RGB images are
``(H, W, 3)`` uint8.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Mapping, Sequence

import cv2
import matplotlib
import numpy as np


FRAME_SCALES = ("low", "high", "linear")
MODES = ("both", "boxes", "heatmap")
STYLES = ("standard", "diagnostic")
LEVELS = ("low", "high")

# Box colours of the seed videos, in RGB: red for low-level, light blue (CSS "lightblue") for high-level.
BOX_COLOURS: dict[str, tuple[int, int, int]] = {"low": (255, 0, 0), "high": (173, 216, 230)}
OUTLINE_COLOUR = (0, 255, 0)
_FONT, _FONT_SCALE, _LINE_H = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 17


def _to_numpy(x: Any) -> np.ndarray:
    """Float32 numpy copy of an array or a (possibly GPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def unit_loss(amap: Any, map_power: float) -> np.ndarray:
    """Per-pixel squared error of ``[0, 1]``-scaled images, the scale the box thresholds are set on.

    The seed system works on images in ``[0, 1]`` and thresholds their squared reconstruction error. Our maps
    are ``|e| ** map_power`` with ``e`` the error of data in ``[-1, 1]``, so ``|e| = amap ** (1 / map_power)``
    and the ``[0, 1]`` error is ``|e| / 2``.

    Args:
        amap: ``(H, W)`` (or any shape) anomaly map ``>= 0``. Non-finite values (missing pixels) count as 0.
        map_power: the power the map was made with (2: squared error, 1: absolute error).

    Returns:
        float32 array of ``amap``'s shape, ``(amap ** (1 / map_power) / 2) ** 2`` clipped to ``[0, 1]``.

    Raises:
        ValueError: ``map_power <= 0`` or a clearly negative map value.
    """
    if not map_power > 0:
        raise ValueError(f"map_power must be > 0 (2: squared error, 1: absolute error), got {map_power}")
    a = np.nan_to_num(_to_numpy(amap), nan=0.0, posinf=0.0, neginf=0.0)
    if a.size and a.min() < -1e-6:
        raise ValueError(f"anomaly maps must be >= 0, got a minimum of {a.min():.4g}")
    e01 = np.clip(a, 0.0, None) ** (1.0 / map_power) / 2.0
    return np.clip(e01 * e01, 0.0, 1.0).astype(np.float32)


# asinh stretch asinh(x / a) / asinh(1 / a) with astropy's default softening a = 0.1 (near-linear below ~0.1,
# logarithmic above), tabulated: 4096 steps change the output by < 0.3 grey levels and cost a lookup per pixel.
_ASINH_LUT = (np.arcsinh(np.linspace(0.0, 1.0, 4096) / 0.1) / np.arcsinh(1.0 / 0.1)).astype(np.float32)


@lru_cache(maxsize=32)
def _lut(cmap: str) -> np.ndarray:
    """``(256, 3)`` uint8 lookup table of a matplotlib colormap (one call per colormap, then indexing)."""
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(
            f"unknown colormap {cmap!r}; use a matplotlib colormap name, e.g. inferno, magma, viridis, afmhot, gray"
        ) from None
    rgba = colormap(np.linspace(0.0, 1.0, 256))
    return np.rint(rgba[:, :3] * 255).astype(np.uint8)


def colorize(values: Any, *, vmin: float = 0.0, vmax: float | None = None, cmap: str = "inferno") -> np.ndarray:
    """Map values to colours through a matplotlib colormap.

    Args:
        values: ``(H, W)`` floats; non-finite values get the colour of ``vmin``.
        vmin: value shown with the colormap's first colour.
        vmax: value shown with its last colour; ``None`` uses the maximum of ``values``.
        cmap: matplotlib colormap name.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    v = np.nan_to_num(_to_numpy(values), nan=vmin, posinf=vmin, neginf=vmin)
    if vmax is None:
        vmax = float(v.max()) if v.size else vmin
    span = max(float(vmax) - float(vmin), 1e-12)
    idx = np.rint(np.clip((v - vmin) / span, 0.0, 1.0) * 255).astype(np.uint8)
    return _lut(cmap)[idx]


def _as_hwc(frame: Any) -> np.ndarray:
    """``(H, W, C)`` float32 view of a ``(H, W)`` or ``(C, H, W)`` frame with ``C`` in {1, 3}."""
    f = _to_numpy(frame)
    if f.ndim == 2:
        return f[:, :, None]
    if f.ndim == 3 and f.shape[0] in (1, 3):
        return np.moveaxis(f, 0, -1)
    raise ValueError(f"frames must be (H, W) or (C, H, W) with C = 1 or 3, got shape {f.shape}")


def frame_to_rgb(frame: Any, *, scale: str = "low", cmap: str | None = None) -> np.ndarray:
    """Render a frame for the left panel with a colour scale chosen for what one wants to see.

    Args:
        frame: ``(H, W)`` or ``(C, H, W)`` floats in ``[-1, 1]``, ``C`` = 1 or 3, or a decoded 8-bit frame
            ``(H, W)`` / ``(H, W, 3)`` uint8 (0..255 read as ``[-1, 1]``; the same result, much faster).
        scale: ``"low"`` stretches the 1st-99th percentile range through an asinh curve (Lupton et al. 1999,
            the ``AsinhStretch`` of astropy.visualization) so faint, subtle activity stays visible;
            ``"high"`` shows only the top of the range (black below the 90th percentile, linear up to the
            maximum) to single out intense events such as flares; ``"linear"`` maps ``[-1, 1]`` to ``[0, 255]``.
        cmap: matplotlib colormap for grey frames (e.g. ``"afmhot"``, close to SDO/AIA 171's colour table);
            ``None`` keeps grey. Colour frames keep their own colours.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: unknown ``scale`` or a bad frame shape.
    """
    if scale not in FRAME_SCALES:
        raise ValueError(f"scale must be one of {FRAME_SCALES}, got {scale!r}")
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and (frame.ndim == 2 or frame.shape[-1] == 3):
        # A decoded 8-bit frame: the same colour scale, computed for the 256 possible values and looked up per
        # pixel (a few ms at 768x576 instead of ~50 in floating point).
        sample = frame.ravel()[:: max(1, frame.size // 16384)].astype(np.float32) / np.float32(127.5) - 1.0
        lo, hi = _limits(scale, sample, float(frame.max()) / 127.5 - 1.0)
        levels = np.arange(256, dtype=np.float32)[:, None, None] / np.float32(127.5) - 1.0
        out = cv2.LUT(frame, _stretch(levels, scale, lo, hi, cmap=None)[:, 0, 0])
        if frame.ndim == 3:
            return out
        return colorize(out.astype(np.float32) / 255, vmin=0.0, vmax=1.0, cmap=cmap) if cmap else (
            cv2.cvtColor(out, cv2.COLOR_GRAY2RGB))
    f = np.nan_to_num(_as_hwc(frame), nan=-1.0, posinf=1.0, neginf=-1.0)
    # Percentiles of a strided sample (<= ~16k pixels) are as good for display and much cheaper on big frames.
    lo, hi = _limits(scale, f.ravel()[:: max(1, f.size // 16384)], float(f.max()))
    return _stretch(f, scale, lo, hi, cmap=cmap)


def _limits(scale: str, sample: np.ndarray, top: float) -> tuple[float, float]:
    """The values shown black and white by each scale of :func:`frame_to_rgb` (``top``: the frame's maximum)."""
    if scale == "low":
        lo, hi = np.percentile(sample, [1.0, 99.0])
        return float(lo), float(hi)
    if scale == "high":
        return float(np.percentile(sample, 90.0)), top
    return -1.0, 1.0


def _stretch(f: np.ndarray, scale: str, lo: float, hi: float, *, cmap: str | None) -> np.ndarray:
    """The colour scale of :func:`frame_to_rgb` on ``(H, W, C)`` floats: ``(H, W, 3)`` uint8."""
    x = np.clip((f - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    u = _ASINH_LUT[np.rint(x * (len(_ASINH_LUT) - 1)).astype(np.int32)] if scale == "low" else x
    if u.shape[2] == 1 and cmap is not None:
        return colorize(u[:, :, 0], vmin=0.0, vmax=1.0, cmap=cmap)
    out = np.rint(u * 255).astype(np.uint8)
    return np.repeat(out, 3, axis=2) if out.shape[2] == 1 else out


@dataclass(frozen=True)
class Box:
    """An axis-aligned box around one connected anomalous region, in map pixel coordinates.

    Attributes:
        x0, y0: first column and row inside the box.
        x1, y1: one past the last column and row (inclusive-exclusive, like slices).
        level: ``"low"`` (peak below ``threshold_high``) or ``"high"``.
        peak: largest ``[0, 1]`` loss in the region.
        area: number of pixels in the region (not the box).
    """

    x0: int
    y0: int
    x1: int
    y1: int
    level: str
    peak: float
    area: int

    def scaled(self, factor: int) -> "Box":
        """The same box on an image upscaled ``factor`` times (nearest neighbour)."""
        return replace(self, x0=self.x0 * factor, y0=self.y0 * factor, x1=self.x1 * factor, y1=self.y1 * factor)


def find_boxes(
    loss01: Any, *, threshold_low: float = 0.02, threshold_high: float = 0.08, min_area: int = 4
) -> list[Box]:
    """Boxes around connected regions of pixels whose ``[0, 1]`` loss reaches ``threshold_low``.

    Args:
        loss01: ``(H, W)`` per-pixel loss on the ``[0, 1]`` scale (:func:`unit_loss`).
        threshold_low: a pixel belongs to a region when its loss is ``>= threshold_low``.
        threshold_high: a region whose peak is ``>= threshold_high`` is ``"high"``, otherwise ``"low"``.
        min_area: regions of fewer pixels are dropped (isolated noisy pixels).

    Returns:
        The boxes, most severe (highest peak) first.

    Raises:
        ValueError: ``not 0 <= threshold_low < threshold_high``, ``min_area < 1`` or a map that is not 2-D.
    """
    if not 0.0 <= threshold_low < threshold_high:
        raise ValueError(
            f"need 0 <= threshold_low < threshold_high, got threshold_low={threshold_low}, "
            f"threshold_high={threshold_high}"
        )
    if min_area < 1:
        raise ValueError(f"min_area must be >= 1, got {min_area}")
    loss = np.nan_to_num(_to_numpy(loss01), nan=0.0)
    if loss.ndim != 2:
        raise ValueError(f"loss01 must be (H, W), got shape {loss.shape}")
    mask = (loss >= threshold_low).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    peaks = np.zeros(n, dtype=np.float64)
    np.maximum.at(peaks, labels.ravel(), loss.ravel().astype(np.float64))
    boxes = []
    for i in range(1, n):  # label 0 is the background
        x, y, w, h, area = (int(s) for s in stats[i])
        if area < min_area:
            continue
        level = "high" if peaks[i] >= threshold_high else "low"
        boxes.append(Box(x0=x, y0=y, x1=x + w, y1=y + h, level=level, peak=float(peaks[i]), area=area))
    return sorted(boxes, key=lambda b: -b.peak)


def draw_boxes(
    rgb: np.ndarray,
    boxes: Sequence[Box],
    *,
    colours: Mapping[str, tuple[int, int, int]] | None = None,
    thickness: int = 1,
) -> np.ndarray:
    """Draw box outlines on a copy of an RGB image.

    Args:
        rgb: ``(H, W, 3)`` uint8.
        boxes: boxes in ``rgb``'s pixel coordinates (use :meth:`Box.scaled` after upscaling).
        colours: RGB colour per level; defaults to :data:`BOX_COLOURS` (low red, high light blue).
        thickness: line width in pixels, drawn inwards from the box edge so the edge pixels are coloured.

    Returns:
        ``(H, W, 3)`` uint8, a new array.
    """
    palette = dict(BOX_COLOURS if colours is None else colours)
    out = np.ascontiguousarray(rgb, dtype=np.uint8).copy()
    for box in boxes:
        if box.level not in palette:
            raise ValueError(f"no colour for box level {box.level!r}; colours has {sorted(palette)}")
        colour = tuple(int(c) for c in palette[box.level])
        for k in range(max(thickness, 1)):  # concentric 1-pixel rectangles: exact edges, no anti-aliasing
            p0, p1 = (box.x0 + k, box.y0 + k), (box.x1 - 1 - k, box.y1 - 1 - k)
            if p0[0] > p1[0] or p0[1] > p1[1]:
                break
            cv2.rectangle(out, p0, p1, colour, thickness=1, lineType=cv2.LINE_8)
    return out


def draw_outline(
    rgb: np.ndarray, gt_mask: Any, *, colour: tuple[int, int, int] = OUTLINE_COLOUR, thickness: int = 1
) -> np.ndarray:
    """Draw the contour of the true anomalous region on a copy of an RGB image.

    Args:
        rgb: ``(H, W, 3)`` uint8.
        gt_mask: ``(h, w)`` ground-truth mask (nonzero = anomalous); resized (nearest) to ``rgb``'s size.
        colour: RGB contour colour (green by default).
        thickness: contour width in pixels.

    Returns:
        ``(H, W, 3)`` uint8, a new array.
    """
    out = np.ascontiguousarray(rgb, dtype=np.uint8).copy()
    mask = (_to_numpy(gt_mask) > 0).astype(np.uint8)
    if mask.ndim != 2:
        raise ValueError(f"gt_mask must be (H, W), got shape {mask.shape}")
    if mask.shape != out.shape[:2]:
        mask = cv2.resize(mask, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), thickness=thickness)
    return out
