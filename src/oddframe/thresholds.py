"""Alarm thresholds calibrated from the scores of normal frames only, for every model.

No anomalous example is needed: the threshold is a high percentile (or mean + k std) of normal frame scores,
so it fixes the false-positive rate on normal footage. Part of the normal scores can be held out to check
that rate on frames the calibration did not see. Pure functions (DESIGN rule 6): arrays in, numbers out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

from oddframe.scoring import to_numpy

#: Calibration methods of :func:`calibrate_threshold`.
METHODS = ("percentile", "meanstd")
#: Hold-out split modes of :func:`split_holdout`.
SPLITS = ("block", "random")

ArrayLike = np.ndarray | torch.Tensor


def _finite(scores: ArrayLike, what: str) -> np.ndarray:
    """Flattened float64 scores without NaN (frames no window covered); +-inf is an error."""
    s = to_numpy(scores).astype(np.float64).ravel()
    if np.isinf(s).any():
        raise ValueError(f"{what} hold {int(np.isinf(s).sum())} infinite values")
    return s[~np.isnan(s)]


def calibrate_threshold(
    normal_scores: ArrayLike, *, method: str = "percentile", q: float = 99.0, k: float = 3.0
) -> float:
    """Threshold from normal frame scores; a frame is flagged when its score is above it.

    Args:
        normal_scores: ``(N,)`` scores of normal frames (NaN entries are ignored).
        method: ``"percentile"``: the ``q``-th percentile (linear interpolation), so about ``1 - q/100`` of
            normal frames lie above it; ``"meanstd"``: ``mean + k * std`` (population std), the classic
            Gaussian rule (k = 3: about 0.13% false positives if the scores were Gaussian).
        q: percentile in [0, 100] for ``"percentile"``.
        k: number of standard deviations for ``"meanstd"``.

    Returns:
        The threshold.
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; allowed: {', '.join(METHODS)}")
    s = _finite(normal_scores, "normal scores")
    if s.size == 0:
        raise ValueError("cannot calibrate a threshold from zero (finite) normal scores")
    if method == "percentile":
        if not 0 <= q <= 100:
            raise ValueError(f"percentile q must be in [0, 100], got {q}")
        return float(np.percentile(s, q))
    return float(s.mean() + k * s.std())


def false_positive_rate(normal_scores: ArrayLike, threshold: float) -> float:
    """Fraction of normal frames flagged (score > threshold), NaN scores ignored; NaN if none remain."""
    s = _finite(normal_scores, "normal scores")
    return float((s > threshold).mean()) if s.size else math.nan


def flag(scores: ArrayLike, threshold: float) -> np.ndarray:
    """Alarms: ``scores > threshold`` as a bool array of the same shape; NaN scores are not flagged."""
    s = to_numpy(scores).astype(np.float64)
    return np.greater(s, threshold, where=~np.isnan(s), out=np.zeros(s.shape, dtype=bool))


def split_holdout(
    scores: ArrayLike | Sequence[ArrayLike],
    *,
    holdout_fraction: float = 0.3,
    seed: int = 0,
    by: str = "block",
    block: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Split normal frame scores into a calibration part and a held-out part.

    Neighbouring video frames are strongly correlated, so a random split of single frames puts near-copies
    of the calibration frames into the held-out part and makes its false-positive rate look too good.
    ``by="block"`` (default) therefore holds out whole runs of ``block`` consecutive frames; blocks never
    cross from one video to the next when ``scores`` is a list of per-video arrays.

    Args:
        scores: ``(N,)`` scores in time order, or a list of per-video ``(T_i,)`` arrays.
        holdout_fraction: share of frames (``"random"``) or of blocks (``"block"``) held out, in (0, 1).
        seed: seed of the random choice.
        by: ``"block"`` or ``"random"``.
        block: frames per block for ``"block"``.

    Returns:
        ``(calib, held)``: two 1-D float64 arrays, each in the original time order; both non-empty.
    """
    if by not in SPLITS:
        raise ValueError(f"unknown split {by!r}; allowed: {', '.join(SPLITS)}")
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if block < 1:
        raise ValueError(f"block must be >= 1 frame, got {block}")
    videos = [scores] if isinstance(scores, (np.ndarray, torch.Tensor)) else list(scores)
    arrays = [to_numpy(v).astype(np.float64).ravel() for v in videos]
    s = np.concatenate(arrays) if arrays else np.zeros(0)
    rng = np.random.default_rng(seed)
    if by == "random":
        groups = [np.array([i]) for i in range(s.size)]
    else:
        groups, start = [], 0
        for a in arrays:
            groups += [np.arange(start + b, start + min(b + block, a.size)) for b in range(0, a.size, block)]
            start += a.size
    if len(groups) < 2:
        raise ValueError(f"need at least 2 {'frames' if by == 'random' else 'blocks'} to split, got {len(groups)}")
    n_held = min(max(round(holdout_fraction * len(groups)), 1), len(groups) - 1)
    held_groups = rng.choice(len(groups), size=n_held, replace=False)
    held = np.zeros(s.size, dtype=bool)
    held[np.concatenate([groups[g] for g in held_groups])] = True
    return s[~held], s[held]


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """A calibrated threshold and how it was obtained (written beside a run, read back by detection).

    Attributes:
        method: ``"percentile"`` or ``"meanstd"``.
        q: percentile used by ``"percentile"``.
        k: number of standard deviations used by ``"meanstd"``.
        threshold: flag frames whose score is above this.
        n_calib: normal frames used to set the threshold.
        n_heldout: normal frames held out to check it (0 = none).
        heldout_fpr: false-positive rate on the held-out frames (NaN if none).
    """

    method: str
    q: float
    k: float
    threshold: float
    n_calib: int
    n_heldout: int
    heldout_fpr: float

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able dict (NaN becomes None)."""
        d = asdict(self)
        if not math.isfinite(d["heldout_fpr"]):
            d["heldout_fpr"] = None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        """Inverse of :meth:`to_dict`; missing or unknown keys raise ``ValueError`` naming them."""
        names = [f.name for f in fields(cls)]
        missing, unknown = sorted(set(names) - set(d)), sorted(set(d) - set(names))
        if missing or unknown:
            raise ValueError(f"calibration dict: missing keys {missing}, unknown keys {unknown}; expected {names}")
        if d["method"] not in METHODS:
            raise ValueError(f"calibration dict: unknown method {d['method']!r}; allowed: {', '.join(METHODS)}")
        fpr = d["heldout_fpr"]
        return cls(
            method=str(d["method"]),
            q=float(d["q"]),
            k=float(d["k"]),
            threshold=float(d["threshold"]),
            n_calib=int(d["n_calib"]),
            n_heldout=int(d["n_heldout"]),
            heldout_fpr=math.nan if fpr is None else float(fpr),
        )


def calibrate(
    normal_scores: ArrayLike | Sequence[ArrayLike],
    *,
    method: str = "percentile",
    q: float = 99.0,
    k: float = 3.0,
    holdout_fraction: float = 0.3,
    seed: int = 0,
    by: str = "block",
    block: int = 50,
) -> Calibration:
    """Calibrate a threshold on part of the normal scores and measure its false-positive rate on the rest.

    Args:
        normal_scores: ``(N,)`` normal frame scores in time order, or a list of per-video arrays.
        method, q, k: as in :func:`calibrate_threshold`.
        holdout_fraction: share held out (see :func:`split_holdout`); 0 = use everything, no check.
        seed, by, block: as in :func:`split_holdout`.

    Returns:
        The :class:`Calibration`.
    """
    if holdout_fraction == 0:
        videos = [normal_scores] if isinstance(normal_scores, (np.ndarray, torch.Tensor)) else list(normal_scores)
        calib = np.concatenate([to_numpy(v).astype(np.float64).ravel() for v in videos])
        held = np.zeros(0)
    else:
        calib, held = split_holdout(normal_scores, holdout_fraction=holdout_fraction, seed=seed, by=by, block=block)
    threshold = calibrate_threshold(calib, method=method, q=q, k=k)
    return Calibration(
        method=method,
        q=float(q),
        k=float(k),
        threshold=threshold,
        n_calib=int(np.isfinite(calib).sum()),
        n_heldout=int(np.isfinite(held).sum()),
        heldout_fpr=false_positive_rate(held, threshold),
    )


# --- Per-pixel thresholds of anomaly maps: where a map is unusual relative to normal footage ------------------


def smooth_map(amap: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an ``(H, W)`` map (``sigma`` in map pixels, 0 = none): pools each pixel with its neighbours,
    so single noisy pixels do not make regions. Non-finite values count as 0."""
    a = np.nan_to_num(np.asarray(amap, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return ndimage.gaussian_filter(a, sigma, mode="nearest") if sigma > 0 else a


class PixelThresholdFit:
    """Per-pixel thresholds of anomaly maps from maps of normal frames, in one streaming pass.

    Each pixel's threshold starts as the ``quantile`` of its (smoothed) values over normal frames, estimated from a
    uniform reservoir sample of at most ``capacity`` maps (Vitter's algorithm R, so memory stays bounded on long
    footage), smoothed spatially by the same Gaussian (neighbouring pixels share their evidence) and floored at the
    ``floor_quantile`` of all normal values (the median by default: a pixel whose normal maps are exactly 0, such as
    a black border, would otherwise flag any change; the floor stays low on purpose, as a high one would hide
    anomalies in quiet areas behind the errors of busy ones).

    A per-pixel quantile from a few hundred maps is close to their maximum, and a frame has thousands of pixels: some
    would still exceed theirs in most normal frames. So the map is then raised by one factor, the ``margin``, set on
    normal maps the quantile did not see (half the reservoir) so that at most ``normal_rate`` of them have
    ``min_area`` (a fraction of the frame) pixels or more above threshold: few normal frames can show a box.

    Args:
        quantile: per-pixel quantile in (0, 1), e.g. 0.999.
        floor_quantile: quantile of all normal pixel values used as the lowest threshold, in [0, 1).
        smoothing: Gaussian sigma in map pixels applied to every map (and to the threshold map).
        normal_rate: share of normal frames allowed a region of ``min_area`` above threshold, in (0, 1).
        min_area: smallest region counted, as a fraction of the map's pixels.
        capacity: maps kept in the reservoir.
        seed: seed of the reservoir's random choice.
    """

    def __init__(self, *, quantile: float = 0.999, floor_quantile: float = 0.5, smoothing: float = 1.0,
                 normal_rate: float = 0.01, min_area: float = 0.002, capacity: int = 256, seed: int = 0) -> None:
        if not 0 < quantile < 1 or not 0 <= floor_quantile < 1 or not 0 < normal_rate < 1:
            raise ValueError(f"need 0 < quantile < 1, 0 <= floor_quantile < 1 and 0 < normal_rate < 1, got {quantile}, "
                             f"{floor_quantile}, {normal_rate}")
        if capacity < 1 or smoothing < 0 or not 0 <= min_area < 1:
            raise ValueError(f"need capacity >= 1, smoothing >= 0 and 0 <= min_area < 1, got {capacity}, {smoothing}, "
                             f"{min_area}")
        self.quantile, self.floor_quantile, self.smoothing = quantile, floor_quantile, smoothing
        self.normal_rate, self.min_area = normal_rate, min_area
        self.capacity, self.n = capacity, 0
        self.margin = float("nan")
        self._rng = np.random.default_rng(seed)
        self._kept: list[np.ndarray] = []

    def add(self, amap: np.ndarray) -> None:
        """Take one normal frame's ``(H, W)`` map; every map must have the shape of the first."""
        m = smooth_map(amap, self.smoothing)
        if self._kept and m.shape != self._kept[0].shape:
            raise ValueError(f"maps of one fit must share a shape: {self._kept[0].shape} then {m.shape}")
        self.n += 1
        if len(self._kept) < self.capacity:
            self._kept.append(m)
        else:
            j = int(self._rng.integers(0, self.n))
            if j < self.capacity:
                self._kept[j] = m

    def _quantile_map(self, stack: np.ndarray, floor: float) -> np.ndarray:
        per_pixel = smooth_map(np.quantile(stack, self.quantile, axis=0), self.smoothing)
        return np.maximum(per_pixel, max(floor, 1e-12))

    def result(self) -> tuple[np.ndarray, float]:
        """``(threshold map (H, W) float32, floor)``, with :attr:`margin` set; ValueError before any map was added."""
        if not self._kept:
            raise ValueError("no normal map was added: cannot set per-pixel thresholds")
        stack = np.stack(self._kept)
        floor = float(np.quantile(stack, self.floor_quantile))
        # The margin is measured on maps the quantile did not see (with too few maps, on all of them).
        fit, check = (stack[0::2], stack[1::2]) if len(stack) >= 20 else (stack, stack)
        ratio = (check / self._quantile_map(fit, floor)).reshape(len(check), -1)
        k = max(1, math.ceil(self.min_area * ratio.shape[1]))  # the k-th largest ratio: a region of k pixels
        kth = -np.partition(-ratio, k - 1, axis=1)[:, k - 1]
        self.margin = max(1.0, float(np.quantile(kth, 1.0 - self.normal_rate)))
        return (self._quantile_map(stack, floor) * self.margin).astype(np.float32), floor
