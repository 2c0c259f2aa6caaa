"""Region- and track-based detection criteria, RBDC and TBDC (Ramachandra & Jones, WACV 2020), from anomaly maps.

Definitions (the paper's, with the reference implementations' conventions):

- A **ground-truth region** is one anomalous object in one frame (a box); a **track** is the sequence of regions of
  one object. A **predicted region** is a connected component (8-connected) of ``map >= level``.
- At a level, a ground-truth region is **detected** when a predicted region of its frame overlaps it with box
  IoU ``>= iou`` (0.1); a predicted region that overlaps no ground-truth region of its frame that well is a
  **false positive**. The region-based detection rate RBDR is detected regions / all regions; the false-positive
  rate FPR is false-positive regions per frame, over every test frame (normal videos included).
- A track is detected when ``>= track_fraction`` (10 %) of its regions are; TBDR is detected tracks / all tracks.
- RBDC (TBDC) is the area under RBDR (TBDR) against FPR for FPR in [0, 1], so a value in [0, 1].

Predicted regions at many levels: a map is thresholded at every level of a fixed log-spaced ladder over the whole
float range (the top 12 bits of an order-preserving bit pattern: 8 levels per octave, no range to choose and no
test statistic involved) that falls within the frame's values. FPR is not monotone in the level (regions merge as
the level falls), so the curve is the upper envelope of the operating points, sorted by FPR (for every
false-positive budget, the best detection rate one global level reaches within it), closed at (0, 0), held flat
from the last point with FPR <= 1 to FPR = 1 as in the corrected evaluation of Georgescu et al. (TPAMI 2021), and
integrated as a step function (see :func:`envelope_area`). Compared with the references:

- py-ssvad-metrics (``current_criteria``) sweeps 103 thresholds on region scores in [0, 1], keeps the points with
  FPR in [0, 1] and does not extend the curve to FPR = 1 (an area that stops early is smaller), and allows one
  track id per frame; here levels need no [0, 1] scores, the curve reaches FPR = 1 and tracks may overlap in time.
- Georgescu et al. sort predicted regions by score and add them one at a time (FPR and detections cumulative,
  hence monotone); with regions from maps, the regions of a lower level are not a superset of a higher level's,
  so a level is one operating point here. Both count a ground-truth region once however many predictions hit it,
  and neither counts a prediction that hits an already detected region as a false positive.
- Boxes are compared in continuous pixel coordinates ``[x0, x1) x [y0, y1)``: ``x1 = x0 + width`` (the references'
  inclusive corners with their ``+ 1``); a map coarser than the masks has its boxes scaled to mask pixels.

Maps larger than 128 pixels on their long side are area-averaged down to that first (``max_side``): one region grid
for models of any map resolution, and a bounded cost per frame (one connected-component pass per level).
Memory stays bounded whatever the number of frames: per level, counts only (two difference arrays over the 4096
levels and, per track, the levels at which its detected count changes), never the maps.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Hashable, Sequence

import cv2
import numpy as np

from oddframe.metrics import ArrayLike, order_keys
from oddframe.scoring import to_numpy

LEVEL_BITS = 12  # 2 ** 12 levels: sign, exponent and 3 mantissa bits, i.e. 8 log-spaced levels per octave
REGION_SIDE = 128  # the region grid: maps are area-averaged down to at most this many pixels on their long side
Region = tuple[Hashable, np.ndarray]  # (track key, box [x0, y0, x1, y1]) of one ground-truth region


def boxes_iou(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Intersection over union of every pair of boxes.

    Args:
        a: ``(N, 4)`` boxes ``[x0, y0, x1, y1]`` with ``x0 < x1``, ``y0 < y1`` (exclusive ends).
        b: ``(M, 4)`` boxes.

    Returns:
        ``(N, M)`` float64 IoU in [0, 1].
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def components(mask: ArrayLike, *, min_area: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components of a boolean mask.

    Args:
        mask: ``(H, W)`` bool.
        min_area: components of fewer pixels are dropped (their pixels get label 0).

    Returns:
        ``(labels (H, W) int32 with 0 = background and 1..K the kept components, boxes (K, 4) float64
        [x0, y0, x1, y1], areas (K,) int64)``.
    """
    m = np.ascontiguousarray(to_numpy(mask), dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area) + 1
    relabel = np.zeros(n, dtype=np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return relabel[labels], _corners(stats[keep]), stats[keep, cv2.CC_STAT_AREA].astype(np.int64)


def _corners(stats: np.ndarray) -> np.ndarray:
    """``(K, 4)`` boxes ``[x0, y0, x1, y1]`` from OpenCV component stats (left, top, width, height, ...)."""
    box = stats[:, :4].astype(np.float64).reshape(-1, 4)
    box[:, 2:] += box[:, :2]
    return box


def instance_regions(ids: ArrayLike) -> list[Region]:
    """Ground-truth regions of an id image (UBnormal: pixel value = track id, 0 = normal).

    An object split by an occluder keeps the part whose box is largest, as UBnormal's official
    ``create_tracks_for_tbdc_rbdc.py`` does.

    Returns:
        ``[(track id, box)]``, one per id present, in id order.
    """
    img = to_numpy(ids)
    out: list[Region] = []
    for track in np.unique(img[img != 0]):
        _, boxes, _ = components(img == track)
        sizes = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        out.append((int(track), boxes[int(np.argmax(sizes))]))
    return out


class TrackLinker:
    """Ground-truth tracks where masks carry no ids: components linked frame to frame by pixel overlap.

    Each component of a frame continues the track of the previous frame's component it overlaps most (one
    component per track and frame, largest overlaps first); a component that overlaps none starts a new track.
    Call :meth:`reset` between videos.

    Args:
        min_area: mask components of fewer pixels are not regions (annotation specks).
    """

    def __init__(self, *, min_area: int = 1) -> None:
        self.min_area = min_area
        self._next = 0
        self.reset()

    def reset(self) -> None:
        """Forget the previous frame (a new video starts)."""
        self._labels: np.ndarray | None = None
        self._tracks = np.zeros(1, dtype=np.int64)  # track of each previous label (index 0 unused)

    def __call__(self, mask: ArrayLike) -> list[Region]:
        """Regions of one frame's ``(H, W)`` bool mask, each with its track id (an int, unique per linker)."""
        labels, boxes, _ = components(mask, min_area=self.min_area)
        k = len(boxes)
        tracks = np.full(k + 1, -1, dtype=np.int64)
        if k and self._labels is not None and self._labels.shape == labels.shape:
            both = (labels > 0) & (self._labels > 0)
            n_prev = len(self._tracks)
            pairs = np.bincount(labels[both] * n_prev + self._labels[both], minlength=(k + 1) * n_prev)
            cur, prev = np.divmod(np.flatnonzero(pairs), n_prev)
            taken: set[int] = set()
            for i in np.argsort(-pairs[cur * n_prev + prev], kind="stable"):
                c, t = int(cur[i]), int(self._tracks[prev[i]])
                if tracks[c] < 0 and t not in taken:
                    tracks[c] = t
                    taken.add(t)
        for c in range(1, k + 1):
            if tracks[c] < 0:
                tracks[c], self._next = self._next, self._next + 1
        self._labels, self._tracks = labels, tracks
        return [(int(tracks[c]), boxes[c - 1]) for c in range(1, k + 1)]


def envelope_area(fpr: ArrayLike, rate: ArrayLike, *, max_fpr: float = 1.0) -> float:
    """Area under a detection rate against false positives per frame, for FPR in ``[0, max_fpr]``.

    The operating points are sorted by FPR and the rate made non-decreasing (upper envelope: the best rate some
    level reaches within each false-positive budget); the curve starts at (0, 0) and is a step function: a rate
    counts from the FPR at which a level reaches it, held to ``max_fpr``. The trapezoid between levels would
    credit detections that no level makes (a level that jumps from no region to whole-frame regions would earn
    half its detection rate over the whole jump); with the references' dense sweeps the two agree.

    Args:
        fpr: ``(K,)`` false positives per frame at each operating point.
        rate: ``(K,)`` detection rate in [0, 1] at the same points.
        max_fpr: the right end of the integral.

    Returns:
        The area (in [0, ``max_fpr``]); 0 for no points.
    """
    x = np.concatenate([[0.0], np.asarray(fpr, dtype=np.float64).ravel()])
    y = np.concatenate([[0.0], np.asarray(rate, dtype=np.float64).ravel()])
    if x.shape != y.shape:
        raise ValueError(f"fpr and rate must have one length, got {x.size - 1} and {y.size - 1}")
    order = np.argsort(x, kind="stable")
    x, y = x[order], np.maximum.accumulate(y[order])
    inside = x <= max_fpr
    x, y = np.append(x[inside], max_fpr), y[inside]
    return float(np.sum(y * np.diff(x)))


class RegionDetection:
    """Streaming RBDC and TBDC over every test frame, from anomaly maps and ground-truth regions.

    Args:
        iou: box IoU that makes a prediction hit a ground-truth region (beta = 0.1 in the paper).
        track_fraction: share of a track's regions that must be detected (alpha = 0.1 in the paper).
        bits: level ladder resolution (12: 8 levels per octave).
        max_side: maps larger than this (longest side, pixels) are area-averaged down to it before regions are
            found, so that models with different map resolutions are compared on one region grid and the cost per
            frame stays bounded; None keeps every map as it is.
    """

    def __init__(self, *, iou: float = 0.1, track_fraction: float = 0.1, bits: int = LEVEL_BITS,
                 max_side: int | None = REGION_SIDE) -> None:
        if not 0 < iou <= 1 or not 0 < track_fraction <= 1:
            raise ValueError(f"iou and track_fraction must be in (0, 1], got {iou} and {track_fraction}")
        if not 8 <= bits <= 16:
            raise ValueError(f"bits must be in 8..16, got {bits}")
        self.iou, self.track_fraction, self.bits, self.max_side = iou, track_fraction, bits, max_side
        n = 2**bits
        # Difference arrays over levels: the count at level k is the sum of entries at levels >= k.
        self._fp = np.zeros(n, dtype=np.int64)
        self._det = np.zeros(n, dtype=np.int64)
        self._track_changes: dict[Hashable, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
        self._track_length: dict[Hashable, int] = defaultdict(int)
        self.n_frames = 0
        self.n_regions = 0

    def update(
        self,
        amap: ArrayLike,
        regions: Sequence[Region],
        *,
        gt_shape: tuple[int, int] | None = None,
        valid: ArrayLike | None = None,
    ) -> None:
        """Add one frame.

        Args:
            amap: ``(h, w)`` anomaly map, higher = more anomalous.
            regions: the frame's ground-truth regions ``(track key, box)`` in mask pixels; track keys must be
                unique across videos (e.g. ``(video, id)``).
            gt_shape: ``(H, W)`` of the masks the boxes come from; None = the map's shape.
            valid: ``(h, w)`` bool, pixels that may belong to a predicted region; None = all.
        """
        m = np.asarray(to_numpy(amap), dtype=np.float32)
        if m.ndim != 2:
            raise ValueError(f"amap must be (h, w), got shape {m.shape}")
        v = np.ones(m.shape, dtype=bool) if valid is None else to_numpy(valid).astype(bool)
        if not np.isfinite(m[v]).all():
            raise ValueError("the anomaly map holds non-finite values at valid pixels")
        big_h, big_w = gt_shape or m.shape
        if self.max_side is not None and max(m.shape) > self.max_side:
            f = self.max_side / max(m.shape)
            size = (max(1, round(m.shape[1] * f)), max(1, round(m.shape[0] * f)))
            m = cv2.resize(np.where(v, m, 0).astype(np.float32), size, interpolation=cv2.INTER_AREA)
            v = cv2.resize(v.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        h, w = m.shape
        scale = np.array([big_w / w, big_h / h, big_w / w, big_h / h])
        gt = np.array([np.asarray(b, dtype=np.float64) for _, b in regions]).reshape(-1, 4)
        tracks = [t for t, _ in regions]
        self.n_frames += 1
        self.n_regions += len(tracks)
        for t in tracks:
            self._track_length[t] += 1
        if not v.any():
            return
        keys = np.where(v, order_keys(m, self.bits), -1).astype(np.int32)
        levels = np.unique(keys[v])  # ascending; the frame's regions change only at these levels
        fp = np.zeros(len(levels) + 1, dtype=np.int64)  # entry j: at levels[j]; the last: above every value
        det = np.zeros((len(levels) + 1, len(tracks)), dtype=np.int64)
        for j, level in enumerate(levels):
            n, _, stats, _ = cv2.connectedComponentsWithStats((keys >= level).view(np.uint8), connectivity=8)
            if not tracks:  # a frame without ground truth: every region is a false positive
                fp[j] = n - 1
                continue
            hit = boxes_iou(_corners(stats[1:]) * scale, gt) >= self.iou
            fp[j] = int((~hit.any(axis=1)).sum())
            det[j] = hit.any(axis=0)
        # A level between two of the frame's levels sees the regions of the next one up: differences at levels.
        self._fp[levels] += fp[:-1] - fp[1:]
        d_det = det[:-1] - det[1:]
        self._det[levels] += d_det.sum(axis=1)
        for g, t in enumerate(tracks):
            changed = np.flatnonzero(d_det[:, g])
            if changed.size:
                self._track_changes[t].append((levels[changed], d_det[changed, g]))

    def curve(self) -> dict[str, np.ndarray]:
        """The operating points, from the highest level down: ``level`` (ladder index), ``fpr``, ``rbdr``, ``tbdr``
        (each ``(K,)``; NaN rates where there is no region or track)."""
        fp = np.cumsum(self._fp[::-1])[::-1]
        det = np.cumsum(self._det[::-1])[::-1]
        detected_tracks = np.zeros(len(fp), dtype=np.int64)
        change = (self._fp != 0) | (self._det != 0)
        for t, changes in self._track_changes.items():
            counts = np.zeros(len(fp), dtype=np.int64)
            for levels, deltas in changes:
                np.add.at(counts, levels, deltas)
                change[levels] = True
            counts = np.cumsum(counts[::-1])[::-1]
            detected_tracks += counts >= self.track_fraction * self._track_length[t] - 1e-9
        levels = np.flatnonzero(change)[::-1]
        n_tracks = len(self._track_length)
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "level": levels,
                "fpr": fp[levels] / max(self.n_frames, 1),
                "rbdr": det[levels] / self.n_regions if self.n_regions else np.full(len(levels), np.nan),
                "tbdr": detected_tracks[levels] / n_tracks if n_tracks else np.full(len(levels), np.nan),
            }

    def compute(self) -> dict[str, Any]:
        """``rbdc``, ``tbdc`` (NaN without regions or tracks), ``n_frames``, ``n_regions``, ``n_tracks``."""
        c = self.curve()
        rbdc = envelope_area(c["fpr"], c["rbdr"]) if self.n_regions else math.nan
        tbdc = envelope_area(c["fpr"], c["tbdr"]) if self._track_length else math.nan
        return {"rbdc": rbdc, "tbdc": tbdc, "n_frames": self.n_frames, "n_regions": self.n_regions,
                "n_tracks": len(self._track_length)}
