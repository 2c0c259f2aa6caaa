"""Moving regions and their attributes, as pure functions: arrays in, arrays out.

Objects without a detector: pixels that move (optical-flow magnitude) and, optionally, changed (frame
difference, background model) form a mask; morphology cleans it; connected components with their boxes are the
objects. Each region then gets the attributes of Reiss & Hoshen's AI-VAD (TMLR 2023, arXiv 2212.00789, Sec. 3):
velocity as a histogram of flow orientations holding the mean flow magnitude, the box's geometry, and an
appearance descriptor (here HOG of the crop, Dalal & Triggs 2005, instead of their pretrained CLIP features).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

COMBINE = ("flow", "and", "or")


@dataclass
class Regions:
    """Connected moving regions of one frame.

    Attributes:
        labels: ``(H, W)`` int32; 0 = background, ``i + 1`` = region ``i``.
        boxes: ``(N, 4)`` int32 boxes ``(x0, y0, x1, y1)``, ends exclusive.
        areas: ``(N,)`` int64 pixels of each region.
        dropped: connected components smaller than the minimum area (not regions, but counted).
    """

    labels: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.areas)


def flow_magnitude(flow: np.ndarray) -> np.ndarray:
    """Euclidean magnitude of a flow field ``(2, H, W)`` -> ``(H, W)``, pixels per frame."""
    return np.sqrt(flow[0] * flow[0] + flow[1] * flow[1])


def motion_mask(
    magnitude: np.ndarray,
    *,
    flow_threshold: float,
    change: np.ndarray | None = None,
    change_threshold: float = 0.0,
    combine: str = "flow",
) -> np.ndarray:
    """Pixels that move, ``(H, W)`` bool.

    Args:
        magnitude: ``(H, W)`` flow magnitude in pixels per frame.
        flow_threshold: a pixel moves when its magnitude exceeds this.
        change: optional ``(H, W)`` evidence that the image changed there (frame difference in grey levels, or a
            background model's 0/1 foreground).
        change_threshold: a pixel changed when ``change`` exceeds this.
        combine: ``"flow"`` (flow alone), ``"and"`` (moving and changed: drops flow noise on flat areas) or
            ``"or"`` (either).
    """
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {', '.join(COMBINE)}; got {combine!r}")
    moving = magnitude > flow_threshold
    if combine == "flow" or change is None:
        return moving
    changed = change > change_threshold
    return moving & changed if combine == "and" else moving | changed


def _disk(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def clean_mask(mask: np.ndarray, *, close: int = 5, open_: int = 3, fill_holes: bool = True) -> np.ndarray:
    """Morphological cleaning of a motion mask ``(H, W)`` bool: closing (``close`` px disk) joins the parts of one
    object, opening (``open_`` px disk) removes specks (0 or 1 skips a step), and holes are filled (the frame
    difference marks an object's textured outline but not its flat inside).
    """
    m = mask.astype(np.uint8)
    if close > 1:
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, _disk(close))
    if open_ > 1:
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, _disk(open_))
    if fill_holes:
        outside = np.pad(m, 1)  # flood the background from the border: what stays 0 is enclosed
        cv2.floodFill(outside, None, (0, 0), 1)
        m |= 1 - outside[1:-1, 1:-1]
    return m.astype(bool)


def find_regions(mask: np.ndarray, *, min_area: int) -> Regions:
    """Connected regions (8-connectivity) of a mask ``(H, W)`` with at least ``min_area`` pixels.

    Smaller components are dropped from the labels and counted in ``Regions.dropped``.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    stats = stats[1:]  # row 0 is the background
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    new_id = np.zeros(n, np.int32)
    new_id[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    kept = stats[keep]
    x, y = kept[:, cv2.CC_STAT_LEFT], kept[:, cv2.CC_STAT_TOP]
    boxes = np.stack([x, y, x + kept[:, cv2.CC_STAT_WIDTH], y + kept[:, cv2.CC_STAT_HEIGHT]], axis=1).astype(np.int32)
    return Regions(new_id[labels], boxes.reshape(-1, 4), kept[:, cv2.CC_STAT_AREA].astype(np.int64),
                   int((~keep).sum()))


def velocity_histograms(flow: np.ndarray, regions: Regions, *, bins: int = 1) -> np.ndarray:
    """AI-VAD's velocity descriptor of every region, ``(N, bins)``.

    Each pixel's flow direction falls in one of ``bins`` equal orientation sectors; a sector holds the sum of
    its pixels' L1 flow magnitudes ``|dx| + |dy|`` divided by the region's area, so the bins add up to the
    region's mean L1 speed (AI-VAD's ``extract_velocity``, over the region's pixels instead of a detector's box).
    ``bins=1`` is the plain mean speed.

    Args:
        flow: ``(2, H, W)`` (dx, dy) in pixels per frame.
        regions: the frame's regions.
        bins: orientation sectors (AI-VAD: 1 on Ped2, 8 on Avenue).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    n = len(regions)
    if n == 0:
        return np.zeros((0, bins), np.float32)
    inside = regions.labels > 0
    lab = regions.labels[inside].astype(np.int64) - 1
    dx, dy = flow[0][inside], flow[1][inside]
    l1 = np.abs(dx) + np.abs(dy)
    if bins == 1:
        sector = np.zeros_like(lab)
    else:
        angle = np.mod(np.arctan2(dy, dx), 2 * np.pi)  # image coordinates: y points down
        sector = np.minimum((angle * (bins / (2 * np.pi))).astype(np.int64), bins - 1)
    sums = np.bincount(lab * bins + sector, weights=l1, minlength=n * bins).reshape(n, bins)
    return (sums / regions.areas[:, None]).astype(np.float32)


def box_geometry(regions: Regions) -> np.ndarray:
    """Box height, width, centre x and centre y of every region, ``(N, 4)`` float32 in pixels."""
    b = regions.boxes.astype(np.float32)
    h, w = b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]
    return np.stack([h, w, (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1).reshape(-1, 4)


def hog_size(size: int, *, cell: int = 8) -> int:
    """Length of :func:`hog_descriptors` for ``size``-pixel crops: blocks of 2 x 2 cells, one-cell stride, 9 bins."""
    n = size // cell
    return (n - 1) ** 2 * 4 * 9


def hog(crops: np.ndarray, *, cell: int = 8) -> np.ndarray:
    """Histograms of oriented gradients (Dalal & Triggs, CVPR 2005) of square crops ``(N, S, S)`` -> ``(N, D)``.

    Centred [-1, 0, 1] gradients; 9 unsigned orientation bins over [0, 180) degrees with linear interpolation
    between neighbouring bins; ``cell`` x ``cell`` cells; blocks of 2 x 2 cells with a one-cell stride, each
    L2-Hys normalised (L2, clipped at 0.2, L2 again), as in the paper's default R-HOG. ``S`` must be a multiple
    of ``cell``; ``D = (S / cell - 1)^2 * 36``.
    """
    crops = np.asarray(crops, dtype=np.float32)
    n, s, _ = crops.shape
    if s % cell or s < 2 * cell:
        raise ValueError(f"HOG crops must be a multiple of the cell size {cell} and at least 2 cells; got {s}")
    if n == 0:
        return np.zeros((0, hog_size(s, cell=cell)), np.float32)
    p = np.pad(crops, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gx = p[:, 1:-1, 2:] - p[:, 1:-1, :-2]
    gy = p[:, 2:, 1:-1] - p[:, :-2, 1:-1]
    mag = np.hypot(gx, gy)
    angle = np.arctan2(gy, gx)
    angle = np.where(angle < 0, angle + np.float32(np.pi), angle)  # unsigned: [0, pi]
    pos = angle * np.float32(9 / np.pi) - np.float32(0.5)  # bin centres at 10, 30, ... 170 degrees
    low = np.floor(pos)
    w_high = pos - low
    low = low.astype(np.int64) % 9
    c = s // cell
    # Votes summed per (crop, cell, bin) by two bincounts (the lower and the upper bin of each pixel): one
    # C loop over the pixels instead of a (N, S, S, 9) array of one-hot votes.
    cell_of = (np.arange(s) // cell)[:, None] * c + (np.arange(s) // cell)[None, :]  # (S, S)
    base = (np.arange(n)[:, None, None] * (c * c) + cell_of[None]) * 9  # (N, S, S)
    m = n * c * c * 9
    cells = np.bincount((base + low).ravel(), weights=(mag * (1 - w_high)).ravel(), minlength=m)
    cells += np.bincount((base + (low + 1) % 9).ravel(), weights=(mag * w_high).ravel(), minlength=m)
    cells = cells.reshape(n, c, c, 9).astype(np.float32)
    blocks = np.concatenate(
        [cells[:, :-1, :-1], cells[:, :-1, 1:], cells[:, 1:, :-1], cells[:, 1:, 1:]], axis=-1
    ).reshape(n, (c - 1) ** 2, 36)
    eps = 1e-3
    blocks = blocks / np.sqrt((blocks**2).sum(axis=-1, keepdims=True) + eps**2)
    blocks = np.minimum(blocks, 0.2)
    blocks = blocks / np.sqrt((blocks**2).sum(axis=-1, keepdims=True) + eps**2)
    return blocks.reshape(n, -1)


def crops(grey: np.ndarray, boxes: np.ndarray, *, size: int) -> np.ndarray:
    """Every box's crop of ``grey`` ``(H, W)`` resized to ``size`` x ``size``: ``(N, size, size)`` float32."""
    out = np.empty((len(boxes), size, size), np.float32)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=np.int64)):
        out[i] = cv2.resize(grey[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)
    return out


def hog_descriptors(grey: np.ndarray, boxes: np.ndarray, *, size: int = 32) -> np.ndarray:
    """HOG (:func:`hog`, 8-pixel cells) of every box's crop resized to ``size`` x ``size``: ``(N, D)`` float32,
    ``D = 324`` for 32-pixel crops.

    Args:
        grey: ``(H, W)`` frame (uint8 or float).
        boxes: ``(N, 4)`` ``(x0, y0, x1, y1)``.
        size: crop side, a multiple of 8.
    """
    if len(boxes) == 0:
        return np.zeros((0, hog_size(size)), np.float32)
    return hog(crops(grey, boxes, size=size))


def paint(regions: Regions, values: np.ndarray, *, background: float, boxes: bool = False) -> np.ndarray:
    """A map ``(H, W)`` float32 holding each region's value on its pixels and ``background`` elsewhere.

    With ``boxes``, each region's value fills its whole box instead (the larger value where boxes overlap): the
    extent of the object the region belongs to, whose still parts (a rider's body on a moving bicycle) the motion
    mask leaves out.
    """
    values = np.asarray(values, dtype=np.float32).ravel()
    if boxes:
        out = np.full(regions.labels.shape, background, np.float32)
        for (x0, y0, x1, y1), v in zip(regions.boxes, values):
            np.maximum(out[y0:y1, x0:x1], v, out=out[y0:y1, x0:x1])
        return out
    table = np.concatenate([[background], values]).astype(np.float32)
    return table[regions.labels]
