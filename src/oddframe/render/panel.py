"""One frame of the anomaly video: the frame | its heatmap and a colour bar, boxes, and a header that says which
frame it is, its score and whether it is flagged.

Two ways to decide where boxes go. With a calibrated run (``box_rule``, per-pixel thresholds set on normal maps by
``oddframe calibrate``) the heatmap shows how unusual each pixel is relative to normal footage (``map /
threshold``, 1 = as high as normal footage gets there) and boxes surround the few strongest unusual regions
(:mod:`oddframe.render.regions`). Without it, the seed 001 look: the ``[0, 1]`` loss, red boxes where it reaches
``threshold_low`` and light blue where it reaches ``threshold_high``. Pure: arrays in, an RGB image out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Sequence

import cv2
import numpy as np

from oddframe.render.overlay import (
    _FONT,
    _FONT_SCALE,
    _LINE_H,
    BOX_COLOURS,
    LEVELS,
    Box,
    MODES,
    STYLES,
    _to_numpy,
    colorize,
    draw_boxes,
    draw_outline,
    find_boxes,
    frame_to_rgb,
    unit_loss,
)
from oddframe.render.regions import BoxRule, exceedance, find_regions

FLAG_COLOUR = (255, 60, 60)
NORMAL_COLOUR = (140, 220, 140)
NO_SCORE_COLOUR = (255, 170, 0)


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


@lru_cache(maxsize=16)
def _colour_bar(height: int, vmax: float, ticks: tuple[tuple[float, tuple[int, int, int]], ...], cmap: str,
                unit: str = "") -> np.ndarray:
    """``(height, 64, 3)`` vertical colour bar for ``[0, vmax]`` (top = vmax) with labelled ticks (cached: a video's
    frames share one; read-only)."""
    bar_w, width, pad = 14, 64, 4
    out = np.zeros((height, width, 3), dtype=np.uint8)
    ramp = np.linspace(vmax, 0.0, height, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    out[:, pad : pad + bar_w] = colorize(ramp, vmin=0.0, vmax=vmax, cmap=cmap)

    def row(v: float) -> int:
        return int(round((1.0 - v / vmax) * (height - 1))) if vmax > 0 else height - 1

    # Threshold ticks across the bar, in the box colours, show where red and light-blue boxes start.
    for t, colour in ticks:
        if 0.0 <= t <= vmax:
            cv2.line(out, (0, row(t)), (pad + bar_w + 3, row(t)), colour, 1)
    # A ratio scale labels its ticks (where boxes start); a loss scale its middle.
    marks = [t for t, _ in ticks if 0.0 < t < vmax] if unit else [vmax / 2]
    lines = [(f"{vmax:.3g}{unit}", 10)] + [(f"{t:.3g}{unit}", row(t) + 4) for t in marks] + [("0", height - 3)]
    for text, y in lines:
        cv2.putText(out, text, (pad + bar_w + 3, y), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
    out.flags.writeable = False
    return out


def _scale_box(box: Box, sx: float, sy: float, w: int, h: int) -> Box:
    """A box of a map shown ``sx`` x ``sy`` times larger, still covering its pixels, inside ``w`` x ``h``."""
    return replace(box, x0=int(box.x0 * sx), y0=int(box.y0 * sy), x1=min(w, math.ceil(box.x1 * sx)),
                   y1=min(h, math.ceil(box.y1 * sy)))


def _status_line(title: str | None, flagged: bool | None, invalid: bool) -> _Line | None:
    """The frame's name and verdict: FLAGGED (red), normal (green), or no score (too few valid pixels)."""
    if title is None and flagged is None and not invalid:
        return None
    name = title or ""
    if invalid:
        return _Line(f"{name}   NO SCORE (too few valid pixels)".strip(), NO_SCORE_COLOUR)
    if flagged is None:
        return _Line(name, (255, 255, 0))
    return _Line(f"{name}   FLAGGED".strip(), FLAG_COLOUR) if flagged else _Line(f"{name}   normal".strip(), NORMAL_COLOUR)


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
    box_rule: BoxRule | None = None,
    flagged: bool | None = None,
    invalid: bool = False,
) -> np.ndarray:
    """One video frame of the anomaly video: frame | heatmap + colour bar, boxes, and a text header.

    Args:
        frame: ``(H, W)`` or ``(C, H, W)`` floats in ``[-1, 1]``, or a decoded 8-bit frame ``(H, W)`` /
            ``(H, W, 3)`` uint8 (see :func:`frame_to_rgb`).
        amap: anomaly map ``>= 0`` (``|error| ** map_power``): ``(H, W)``, or with ``box_rule`` any size (the
            model's resolution: it is compared with the thresholds there, and boxes and colours are scaled to the
            frame).
        map_power: power the map was made with; converts it to the ``[0, 1]`` loss (:func:`unit_loss`).
        mode: ``"both"``: boxes on the frame and the heatmap; ``"boxes"``: boxes on the frame only (clean
            heatmap); ``"heatmap"``: no boxes.
        style: ``"standard"`` or ``"diagnostic"`` (adds the thresholds, frame scale and the raw map range).
        frame_scale: colour scale of the frame panel (see :func:`frame_to_rgb`).
        frame_cmap: colormap for grey frames, ``None`` for grey.
        cmap: colormap of the heatmap.
        threshold_low, threshold_high, min_area: without ``box_rule``, box thresholds on the ``[0, 1]`` loss
            (:func:`find_boxes`).
        vmax: without ``box_rule``, the loss at the top of the heatmap's scale; ``None`` uses the frame's maximum
            but at least ``threshold_high``. With ``box_rule`` the scale is fixed, 0 to ``2 * high_ratio``.
        gt_mask: ``(H, W)`` ground-truth anomaly mask, outlined in green on both panels.
        frame_loss: the frame's score to print; ``None`` prints the mean ``[0, 1]`` loss.
        title: the frame's name, e.g. ``"video 03 #121"``, printed first.
        scale: nearest-neighbour upscale factor.
        min_height: small frames are upscaled by a larger integer factor until panels are at least this tall.
        box_rule: calibrated per-pixel thresholds and box settings (:class:`~oddframe.render.regions.BoxRule`).
        flagged: the frame's verdict against the run's threshold (None: unknown, not shown); a flagged frame
            also gets a red border.
        invalid: the frame had too few valid pixels to be scored; said in the header.

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
    h, w = left.shape[:2]
    if box_rule is not None:
        # Regions and colours at the model's resolution (where the thresholds live), then scaled to the frame:
        # min_area and merge are fractions of the frame, so they mean the same at both sizes.
        heat = exceedance(_to_numpy(amap), box_rule)
        sy, sx = h / heat.shape[0], w / heat.shape[1]
        boxes = [_scale_box(b, sx, sy, w, h) for b in find_regions(heat, box_rule)]
        top = 2.0 * box_rule.high_ratio
        ticks, unit = ((1.0, BOX_COLOURS["low"]), (box_rule.high_ratio, BOX_COLOURS["high"])), "x"
        right = colorize(heat, vmin=0.0, vmax=top, cmap=cmap)
        if right.shape[:2] != (h, w):
            right = cv2.resize(right, (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        heat = unit_loss(amap, map_power)
        if heat.shape != (h, w):
            raise ValueError(f"anomaly map shape {heat.shape} does not match frame size {(h, w)}")
        boxes = find_boxes(heat, threshold_low=threshold_low, threshold_high=threshold_high, min_area=min_area)
        top = max(float(heat.max()), threshold_high) if vmax is None else float(vmax)
        ticks, unit = tuple(zip((threshold_low, threshold_high), (BOX_COLOURS[k] for k in LEVELS))), ""
        right = colorize(heat, vmin=0.0, vmax=top, cmap=cmap)

    f = max(int(scale), math.ceil(min_height / h) if h < min_height else 1)
    if f > 1:
        left = cv2.resize(left, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
        right = cv2.resize(right, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
    thick = max(1, f // 2, round(max(h, w) * f / 400))
    if gt_mask is not None:  # truth first, so detections drawn on top stay visible where they coincide
        left, right = draw_outline(left, gt_mask, thickness=thick), draw_outline(right, gt_mask, thickness=thick)
    shown = [b.scaled(f) for b in boxes]
    if mode in ("both", "boxes"):
        left = draw_boxes(left, shown, thickness=thick)
    if mode == "both":
        right = draw_boxes(right, shown, thickness=thick)
    if flagged and not invalid:
        cv2.rectangle(left, (0, 0), (left.shape[1] - 1, left.shape[0] - 1), FLAG_COLOUR, 2 * thick)

    bar = _colour_bar(h * f, float(top), ticks, cmap, unit)

    n_low = sum(b.level == "low" for b in boxes)
    lines: list[_Line] = []
    status = _status_line(title if (title or style != "diagnostic") else "(untitled frame)", flagged, invalid)
    if status is not None:
        lines.append(status)
    if box_rule is not None:
        peak = float(heat.max()) if heat.size else 0.0
        score = "-" if frame_loss is None or not math.isfinite(frame_loss) else f"{frame_loss:.4g}"
        lines.append(_Line(f"score {score}   boxes {len(boxes)} (strong {len(boxes) - n_low})   "
                           f"peak {peak:.1f}x the normal maximum here"))
    else:
        shown_loss = float(heat.mean()) if frame_loss is None else float(frame_loss)
        lines += [
            _Line(f"boxes {len(boxes)} (low {n_low}, high {len(boxes) - n_low})   loss {shown_loss:.4f}"),
            _Line(f"global loss  mean {heat.mean():.4f}  max {heat.max():.4f}  std {heat.std():.4f}", (200, 200, 200)),
        ]
    if style == "diagnostic":
        raw = np.nan_to_num(_to_numpy(amap))
        if box_rule is not None:
            lines.append(_Line(f"unusual >= 1x, strong >= {box_rule.high_ratio:g}x per-pixel normal threshold",
                               BOX_COLOURS["low"]))
        else:
            lines.append(_Line(f"low >= {threshold_low:g}", BOX_COLOURS["low"]))
            lines.append(_Line(f"high >= {threshold_high:g}", BOX_COLOURS["high"]))
        lines.append(
            _Line(f"frame scale {frame_scale}   map^{map_power:g} range [{raw.min():.4g}, {raw.max():.4g}]   "
                  f"heat vmax {top:.3g}", (200, 200, 200))
        )
    # One canvas, each piece copied once: header | frame, gap, heatmap, gap, colour bar.
    width = 2 * w * f + 12 + bar.shape[1]
    header = _text_header(lines, width)
    out = np.zeros((header.shape[0] + h * f, width, 3), dtype=np.uint8)
    out[: header.shape[0]] = header
    x = 0
    for piece in (left, None, right, None, bar):
        if piece is None:
            x += 6
            continue
        out[header.shape[0]:, x : x + piece.shape[1]] = piece
        x += piece.shape[1]
    return out
