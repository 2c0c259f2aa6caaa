"""What a person sees in one frame: the frame, its anomaly heatmap, boxes around anomalous regions, text.

Pure functions, arrays in and arrays out (DESIGN rule 6); :mod:`oddframe.render.video` streams the panels
into an MP4. The look follows the solar 3D-AE eval videos (seed 001): the frame on the left, the residual
heatmap on the right, red boxes for low-level anomalies (``threshold_low <= loss < threshold_high``, 2% and
8% by default), light-blue boxes for high-level ones (``loss >= threshold_high``), the number of boxes and the
live reconstruction loss top left, and the global residual statistics (mean, max, std) of the frame.

Conventions: frames are ``(C, H, W)`` (``C`` = 1 or 3) or ``(H, W)`` floats in ``[-1, 1]``; anomaly maps are
``(H, W)`` floats ``>= 0`` equal to ``|error| ** map_power`` for data in ``[-1, 1]``; RGB images are
``(H, W, 3)`` uint8.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class _Line:
    """One line of header text and its RGB colour."""

    text: str
    colour: tuple[int, int, int] = (255, 255, 255)


def _text_header(lines: Sequence[_Line], width: int) -> np.ndarray:
    """``(len(lines) * 17 + 6, width, 3)`` black band with the lines written top-left.

    Text goes in a band above the panels rather than over the image so it never hides an anomaly.
    """
    out = np.zeros((len(lines) * _LINE_H + 6, width, 3), dtype=np.uint8)
    for i, line in enumerate(lines):
        y = (i + 1) * _LINE_H
        cv2.putText(out, line.text, (6, y), _FONT, _FONT_SCALE, line.colour, 1, cv2.LINE_AA)
    return out


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
        frame: ``(H, W)`` or ``(C, H, W)`` floats in ``[-1, 1]``, ``C`` = 1 or 3.
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
    f = np.nan_to_num(_as_hwc(frame), nan=-1.0, posinf=1.0, neginf=-1.0)
    # Percentiles of a strided sample (<= ~65k pixels) are as good for display and much cheaper on big frames.
    sample = f.ravel()[:: max(1, f.size // 65536)]
    if scale == "linear":
        u = np.clip((f + 1.0) / 2.0, 0.0, 1.0)
    elif scale == "low":
        lo, hi = np.percentile(sample, [1.0, 99.0])
        x = np.clip((f - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        u = _ASINH_LUT[np.rint(x * (len(_ASINH_LUT) - 1)).astype(np.int32)]
    else:
        lo, hi = np.percentile(sample, 90.0), float(f.max())
        u = np.clip((f - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
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


def _colour_bar(height: int, vmax: float, thresholds: Sequence[float], cmap: str) -> np.ndarray:
    """``(height, 64, 3)`` vertical colour bar for ``[0, vmax]`` (top = vmax) with labelled ticks."""
    bar_w, width, pad = 14, 64, 4
    out = np.zeros((height, width, 3), dtype=np.uint8)
    ramp = np.linspace(vmax, 0.0, height, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    out[:, pad : pad + bar_w] = colorize(ramp, vmin=0.0, vmax=vmax, cmap=cmap)

    def row(v: float) -> int:
        return int(round((1.0 - v / vmax) * (height - 1))) if vmax > 0 else height - 1

    # Threshold ticks across the bar, in the box colours, show where red and light-blue boxes start.
    for level, t in zip(LEVELS, thresholds):
        if 0.0 <= t <= vmax:
            cv2.line(out, (0, row(t)), (pad + bar_w + 3, row(t)), BOX_COLOURS[level], 1)
    lines = [(f"{vmax:.3g}", 10), (f"{vmax / 2:.3g}", row(vmax / 2) + 4), ("0", height - 3)]
    for text, y in lines:
        cv2.putText(out, text, (pad + bar_w + 3, y), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def compose_panel(
    frame: Any,
    amap: Any,
    *,
    map_power: float = 2.0,
    mode: str = "both",
    style: str = "standard",
    frame_scale: str = "low",
    frame_cmap: str | None = None,
    cmap: str = "inferno",
    threshold_low: float = 0.02,
    threshold_high: float = 0.08,
    min_area: int = 4,
    vmax: float | None = None,
    gt_mask: Any = None,
    frame_loss: float | None = None,
    title: str | None = None,
    scale: int = 1,
    min_height: int = 256,
) -> np.ndarray:
    """One video frame of the anomaly video: frame | heatmap + colour bar, boxes, and a text header.

    Args:
        frame: ``(H, W)`` or ``(C, H, W)`` floats in ``[-1, 1]``.
        amap: ``(H, W)`` anomaly map ``>= 0`` (``|error| ** map_power``).
        map_power: power the map was made with; converts it to the ``[0, 1]`` loss (:func:`unit_loss`).
        mode: ``"both"``: boxes on the frame and the heatmap; ``"boxes"``: boxes on the frame only (clean
            heatmap); ``"heatmap"``: no boxes.
        style: ``"standard"`` (box count, frame loss, global stats) or ``"diagnostic"`` (adds the title or
            frame index, thresholds, frame scale and the raw map range).
        frame_scale: colour scale of the frame panel (see :func:`frame_to_rgb`).
        frame_cmap: colormap for grey frames, ``None`` for grey.
        cmap: colormap of the heatmap.
        threshold_low, threshold_high, min_area: box thresholds on the ``[0, 1]`` loss (:func:`find_boxes`).
        vmax: loss shown at the top of the heatmap's scale. ``None`` uses the frame's maximum but at least
            ``threshold_high``, so a normal frame's noise is not stretched to full brightness; pass a fixed
            value for a video whose colours mean the same thing in every frame.
        gt_mask: ``(H, W)`` ground-truth anomaly mask, outlined in green on both panels.
        frame_loss: the live frame loss or score to print; ``None`` prints the mean ``[0, 1]`` loss (the
            seed's reconstruction MSE).
        title: text for the diagnostic header (e.g. ``"video 03 frame 121"``).
        scale: nearest-neighbour upscale factor.
        min_height: small frames are upscaled by a larger integer factor until panels are at least this tall,
            so boxes and text are readable.

    Returns:
        ``(H', W', 3)`` uint8 RGB; the size depends only on the frame size and the options, not the data.

    Raises:
        ValueError: unknown ``mode``/``style``/``frame_scale``, bad thresholds, or mismatched shapes.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if int(scale) < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    left = frame_to_rgb(frame, scale=frame_scale, cmap=frame_cmap)
    loss = unit_loss(amap, map_power)
    if loss.shape != left.shape[:2]:
        raise ValueError(f"anomaly map shape {loss.shape} does not match frame size {left.shape[:2]}")
    h, w = loss.shape
    boxes = find_boxes(loss, threshold_low=threshold_low, threshold_high=threshold_high, min_area=min_area)
    top = max(float(loss.max()), threshold_high) if vmax is None else float(vmax)
    right = colorize(loss, vmin=0.0, vmax=top, cmap=cmap)

    f = max(int(scale), math.ceil(min_height / h) if h < min_height else 1)
    if f > 1:
        left = cv2.resize(left, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
        right = cv2.resize(right, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
    thick = max(1, f // 2)
    if gt_mask is not None:  # truth first, so detections drawn on top stay visible where they coincide
        left, right = draw_outline(left, gt_mask, thickness=thick), draw_outline(right, gt_mask, thickness=thick)
    shown = [b.scaled(f) for b in boxes]
    if mode in ("both", "boxes"):
        left = draw_boxes(left, shown, thickness=thick)
    if mode == "both":
        right = draw_boxes(right, shown, thickness=thick)

    gap = np.zeros((h * f, 6, 3), dtype=np.uint8)
    bar = _colour_bar(h * f, top, (threshold_low, threshold_high), cmap)
    body = np.concatenate([left, gap, right, gap, bar], axis=1)

    n_low = sum(b.level == "low" for b in boxes)
    shown_loss = float(loss.mean()) if frame_loss is None else float(frame_loss)
    lines: list[_Line] = [
        _Line(f"boxes {len(boxes)} (low {n_low}, high {len(boxes) - n_low})   loss {shown_loss:.4f}"),
        _Line(f"global loss  mean {loss.mean():.4f}  max {loss.max():.4f}  std {loss.std():.4f}", (200, 200, 200)),
    ]
    if style == "diagnostic":
        raw = np.nan_to_num(_to_numpy(amap))
        lines.insert(0, _Line(title if title else "(untitled frame)", (255, 255, 0)))
        lines.append(_Line(f"low >= {threshold_low:g}", BOX_COLOURS["low"]))
        lines.append(_Line(f"high >= {threshold_high:g}", BOX_COLOURS["high"]))
        lines.append(
            _Line(f"frame scale {frame_scale}   map^{map_power:g} range [{raw.min():.4g}, {raw.max():.4g}]   "
                 f"heat vmax {top:.3g}", (200, 200, 200))
        )
    return np.concatenate([_text_header(lines, body.shape[1]), body], axis=0)
