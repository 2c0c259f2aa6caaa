"""Where a map is unusual relative to normal footage: calibrated per-pixel thresholds -> a few readable boxes.

A raw anomaly map is high wherever the model is imprecise: edges, textures, borders, busy areas. Boxes drawn
where it crosses a fixed value cover a normal frame with them. Here each pixel is compared with its own threshold,
set on normal maps by ``oddframe calibrate`` (:class:`oddframe.thresholds.PixelThresholdFit`): the ratio
``map / threshold`` is 1 where the map is as high as the normal footage ever makes it there. Regions where it
exceeds 1 are merged when close (one person is one box, not five), dropped when tiny, ranked by their excess
``sum(ratio - 1)`` and capped, strongest first. Pure functions, arrays in and arrays out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from oddframe.render.overlay import Box
from oddframe.thresholds import smooth_map


@dataclass(frozen=True, eq=False)
class BoxRule:
    """How boxes are found from calibrated per-pixel thresholds.

    Attributes:
        threshold: ``(h, w)`` float32 per-pixel thresholds at model resolution (``calibration.safetensors``).
        smoothing: Gaussian sigma in model pixels applied to a map before the comparison (as in calibration).
        high_ratio: a region whose peak ratio reaches this is ``"high"``, otherwise ``"low"``.
        min_area: smallest region kept, as a fraction of the frame area.
        merge: regions closer than this fraction of the frame diagonal become one.
        max_boxes: regions kept per frame, strongest first.
    """

    threshold: np.ndarray
    smoothing: float = 1.0
    high_ratio: float = 3.0
    min_area: float = 0.002
    merge: float = 0.03
    max_boxes: int = 5

    def __post_init__(self) -> None:
        t = np.asarray(self.threshold)
        if t.ndim != 2 or not np.isfinite(t).all() or (t <= 0).any():
            raise ValueError(f"threshold must be an (h, w) map of finite values > 0, got shape {t.shape}")
        if not self.high_ratio > 1 or self.smoothing < 0 or not 0 <= self.min_area < 1 or not 0 <= self.merge < 1:
            raise ValueError("need high_ratio > 1, smoothing >= 0, 0 <= min_area < 1 and 0 <= merge < 1")
        if self.max_boxes < 0:
            raise ValueError(f"max_boxes must be >= 0, got {self.max_boxes}")


def exceedance(amap: np.ndarray, rule: BoxRule) -> np.ndarray:
    """``smooth(map) / threshold`` at the threshold's (model) resolution: 1 = as high as normal footage gets there.

    Args:
        amap: ``(H, W)`` anomaly map; resized to the threshold's shape when it differs (a map shown upscaled).

    Returns:
        ``(h, w)`` float32 ratio ``>= 0``.
    """
    t = np.asarray(rule.threshold, dtype=np.float32)
    a = np.asarray(amap, dtype=np.float32)
    if a.shape != t.shape:
        interp = cv2.INTER_AREA if a.shape[0] * a.shape[1] > t.size else cv2.INTER_LINEAR
        a = cv2.resize(np.nan_to_num(a), (t.shape[1], t.shape[0]), interpolation=interp)
    return smooth_map(a, rule.smoothing) / t


@lru_cache(maxsize=8)
def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def find_regions(ratio: np.ndarray, rule: BoxRule) -> list[Box]:
    """Boxes around the unusual regions of an exceedance map (any resolution: the display's, usually).

    Pixels with ``ratio >= 1`` form regions; regions within ``merge`` of each other are merged (a dilation joins
    them, the box still hugs the unusual pixels), regions under ``min_area`` are dropped, and at most ``max_boxes``
    are kept, by decreasing excess ``sum(ratio - 1)`` over their pixels.

    Args:
        ratio: ``(H, W)`` exceedance (:func:`exceedance`, resized to the frame shown).
        rule: the box settings.

    Returns:
        Boxes in ``ratio``'s pixel coordinates, strongest first; ``peak`` is the region's largest ratio.
    """
    r = np.nan_to_num(np.asarray(ratio, dtype=np.float32), nan=0.0)
    if r.ndim != 2:
        raise ValueError(f"ratio must be (H, W), got shape {r.shape}")
    hot = (r >= 1.0).astype(np.uint8)
    if rule.max_boxes == 0 or not hot.any():
        return []
    h, w = r.shape
    radius = int(round(rule.merge * math.hypot(h, w) / 2))
    joined = cv2.dilate(hot, _disk(radius)) if radius > 0 else hot
    n, labels = cv2.connectedComponents(joined, connectivity=8)
    labels = np.where(hot > 0, labels, 0).ravel()  # boxes hug the unusual pixels, not the dilation
    area = np.bincount(labels, minlength=n)
    excess = np.bincount(labels, weights=np.clip(r.ravel() - 1.0, 0.0, None), minlength=n)
    keep = [i for i in range(1, n) if area[i] > 0 and area[i] >= rule.min_area * h * w]
    keep = sorted(keep, key=lambda i: -excess[i])[: rule.max_boxes]
    boxes = []
    grid = labels.reshape(h, w)
    for i in keep:
        y, x = np.nonzero(grid == i)
        peak = float(r[y, x].max())
        boxes.append(Box(x0=int(x.min()), y0=int(y.min()), x1=int(x.max()) + 1, y1=int(y.max()) + 1,
                         level="high" if peak >= rule.high_ratio else "low", peak=peak, area=int(area[i])))
    return boxes
