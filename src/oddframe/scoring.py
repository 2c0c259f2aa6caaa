"""From per-pixel anomaly maps to frame scores: scoring rules, window aggregation, smoothing, normalisation.

Pure functions (DESIGN rule 6): arrays in, arrays out. Models return maps ``|error| ** p`` with
``p = model.map_power`` (2: squared reconstruction error, 1: absolute error), ``(T, H, W)`` per video or
``(B, T, H, W)`` per batch, and a boolean ``valid`` mask of the same shape. Every rule here works with every
model because the rules first convert the map back to ``|e|`` or ``|e|^2`` using ``map_power``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
import torch
from einops import rearrange
from scipy import ndimage

#: Frame scoring rules of :func:`frame_scores`.
RULES = ("mse", "l1", "psnr", "max", "topk", "blob", "ssim")
#: Score normalisations of :func:`normalise_scores`.
NORMALISATIONS = ("none", "minmax", "regularity", "calibrated")
#: How overlapping windows are combined (:func:`aggregate_windows`, :class:`MapAccumulator`).
AGGREGATIONS = ("max", "mean")
#: Blob weightings of the ``"blob"`` rule.
BLOB_WEIGHTINGS = ("area", "log_area", "area_log_area")

# Keyword arguments each rule accepts, so a typo is an error and not silently ignored.
_RULE_KWARGS: dict[str, tuple[str, ...]] = {
    "mse": (),
    "l1": (),
    "psnr": ("data_range",),
    "max": (),
    "topk": ("k",),
    "blob": ("threshold", "n_std", "min_area", "weighting"),
    "ssim": (),
}
# Floor on the MSE inside the PSNR log, so a perfect reconstruction gives a large finite PSNR instead of inf.
_PSNR_EPS = 1e-10


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device, detached) or a nested sequence."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _valid_mask(valid: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean ``valid`` broadcast to ``shape``; also accepts a Batch-style ``(B, 1, T, H, W)`` mask."""
    if valid is None:
        return np.ones(shape, dtype=bool)
    v = to_numpy(valid).astype(bool)
    if v.ndim == len(shape) + 1 and v.shape[-4] == 1:
        v = rearrange(v, "b 1 t h w -> b t h w")
    try:
        return np.broadcast_to(v, shape)
    except ValueError:
        raise ValueError(f"valid has shape {v.shape}, which does not match maps of shape {shape}") from None


def frame_scores(
    maps: np.ndarray | torch.Tensor,
    valid: np.ndarray | torch.Tensor | None = None,
    *,
    rule: str = "mse",
    map_power: float = 2,
    **rule_kwargs: Any,
) -> np.ndarray:
    """One anomaly score per frame from a per-pixel map; higher = more anomalous.

    Rules (``e`` is the per-pixel error, recovered from the map as ``map ** (1 / map_power)``):

    - ``"mse"``: mean of ``|e|^2`` over valid pixels.
    - ``"l1"``: mean of ``|e|``.
    - ``"psnr"``: negative PSNR, ``-10 log10(MAX^2 / mse)`` with ``MAX = data_range = 2`` because frames are
      in ``[-1, 1]``. PSNR as a frame score follows Mathieu et al. 2016 (ICLR, video prediction quality) and
      Liu et al. 2018 (FFP, CVPR, PSNR eq. and its per-video min-max normalisation); it is negated so that
      higher = more anomalous. The MSE is floored at 1e-10.
    - ``"max"``: max of ``|e|^2``.
    - ``"topk"``: mean of the top ``k`` fraction (default 0.01, at least one pixel) of ``|e|^2``.
    - ``"blob"``: blob-weighted MSE of the Mamba-diffusion system (seed 003, section 10), see :func:`blob_score`;
      kwargs ``threshold``, ``n_std``, ``min_area``, ``weighting``.
    - ``"ssim"``: ``1 - SSIM`` of the frame, the mean over valid pixels of a ``1 - SSIM`` map from
      :func:`oddframe.ssim.ssim_map` (not an error map: ``map_power`` does not apply). The detection engine makes
      these maps from the observed and the reconstructed clip when ``score.rule`` is ``ssim``.

    Frames with no valid pixel (padding) score 0: they carry no evidence. (For ``"psnr"`` 0 means PSNR = 0 dB;
    padded frames have ``frame_index == -1`` and are dropped by :func:`aggregate_windows` anyway.)

    Args:
        maps: ``(T, H, W)`` or ``(B, T, H, W)``, ``|e| ** map_power``, finite and >= 0 at valid pixels.
        valid: bool, same shape (or ``(B, 1, T, H, W)`` as in a Batch); None = all valid.
        rule: one of :data:`RULES`.
        map_power: the model's ``map_power`` (> 0).
        **rule_kwargs: options of the chosen rule (see above); unknown ones raise ``ValueError``.

    Returns:
        ``(T,)`` or ``(B, T)`` float64 scores.
    """
    if rule not in RULES:
        raise ValueError(f"unknown scoring rule {rule!r}; allowed: {', '.join(RULES)}")
    unknown = sorted(set(rule_kwargs) - set(_RULE_KWARGS[rule]))
    if unknown:
        allowed = ", ".join(_RULE_KWARGS[rule]) or "none"
        raise ValueError(f"rule {rule!r} got unknown option(s) {unknown}; allowed: {allowed}")
    if not map_power > 0:
        raise ValueError(f"map_power must be > 0 (1: absolute error, 2: squared error), got {map_power}")
    m = to_numpy(maps)
    if m.ndim not in (3, 4):
        raise ValueError(f"maps must be (T, H, W) or (B, T, H, W), got shape {m.shape}")
    if not np.issubdtype(m.dtype, np.floating):
        m = m.astype(np.float64)
    v = _valid_mask(valid, m.shape)
    lead, (h, w) = m.shape[:-2], m.shape[-2:]
    flat = rearrange(m, "... h w -> (...) (h w)")
    fv = rearrange(v, "... h w -> (...) (h w)")
    bad = fv & ~(np.isfinite(flat) & (flat >= 0))
    if bad.any():
        raise ValueError(
            f"maps must be finite and >= 0 at valid pixels (they are |error|**map_power); found {int(bad.sum())} "
            "negative or non-finite values"
        )
    x = np.where(fv, flat, 0)
    # The map is |e|**p; rules are defined on |e| or |e|**2, so convert (exactly, without a power, when p matches).
    sq = x if map_power == 2 else x ** (2.0 / map_power)
    n = fv.sum(axis=1)
    denom = np.maximum(n, 1)
    if rule == "ssim":
        out = x.sum(axis=1, dtype=np.float64) / denom
    elif rule == "mse":
        out = sq.sum(axis=1, dtype=np.float64) / denom
    elif rule == "l1":
        ab = x if map_power == 1 else x ** (1.0 / map_power)
        out = ab.sum(axis=1, dtype=np.float64) / denom
    elif rule == "psnr":
        data_range = float(rule_kwargs.get("data_range", 2.0))
        if not data_range > 0:
            raise ValueError(f"data_range must be > 0, got {data_range}")
        mse = sq.sum(axis=1, dtype=np.float64) / denom
        out = 10.0 * np.log10(np.maximum(mse, _PSNR_EPS) / data_range**2)
    elif rule == "max":
        out = sq.max(axis=1).astype(np.float64)
    elif rule == "topk":
        out = _topk_scores(sq, fv, float(rule_kwargs.get("k", 0.01)))
    else:
        ab = x if map_power == 1 else x ** (1.0 / map_power)
        ab2 = rearrange(ab, "n (h w) -> n h w", h=h, w=w)
        sq2 = rearrange(sq, "n (h w) -> n h w", h=h, w=w)
        v2 = rearrange(fv, "n (h w) -> n h w", h=h, w=w)
        out = np.array([blob_score(a, s, vv, **rule_kwargs) for a, s, vv in zip(ab2, sq2, v2)], dtype=np.float64)
    out = np.where(n > 0, out, 0.0)
    return out.reshape(lead)


def _topk_scores(sq: np.ndarray, valid: np.ndarray, k: float) -> np.ndarray:
    """Mean of the top ``k`` fraction of each row's valid values; ``sq``/``valid`` are ``(N, P)``."""
    if not 0 < k <= 1:
        raise ValueError(f"topk fraction k must be in (0, 1], got {k}")
    out = np.zeros(sq.shape[0], dtype=np.float64)
    for i, (row, vrow) in enumerate(zip(sq, valid)):
        vals = row if vrow.all() else row[vrow]
        if vals.size == 0:
            continue
        kk = max(1, math.ceil(k * vals.size - 1e-9))
        # np.partition is O(P), cheaper than a full sort for the small k used in practice.
        out[i] = np.partition(vals, vals.size - kk)[vals.size - kk :].mean(dtype=np.float64)
    return out


def blob_score(
    abs_error: np.ndarray,
    sq_error: np.ndarray,
    valid: np.ndarray,
    *,
    threshold: float | None = None,
    n_std: float = 2.0,
    min_area: int = 25,
    weighting: str = "area",
) -> float:
    """Blob-weighted MSE of one frame (seed 003, section 10: "weighted mean squared error").

    The seed's five steps: (1) the absolute difference ``|e|`` (for grey frames exactly the grey absolute
    difference; for colour, the map's channel mean); (2) threshold it (an absolute ``threshold``, or by default the
    frame's ``mean + n_std * std`` of ``|e|`` over valid pixels); (3) group active pixels into 8-connected
    components, dropping those smaller than ``min_area`` pixels (the original code's ``min_block_size``, default
    25: isolated noisy pixels must not count); (4) weight each component's pixels by ``area`` or by
    ``log(1 + area)`` (``log_area``; ``log(area)`` shifted so that a one-pixel blob keeps a weight), or
    ``area * log(area)`` (the original's ``exp > 1`` variant), chosen by ``score.blob_weighting``; (5) return the
    weighted mean of ``|e|^2`` over those pixels ("weighted MSE"). 0 when no blob survives.

    Args:
        abs_error: ``(H, W)`` ``|e|``.
        sq_error: ``(H, W)`` ``|e|^2``.
        valid: ``(H, W)`` bool.
        threshold: absolute threshold on ``|e|``; None = adaptive.
        n_std: number of standard deviations of the adaptive threshold.
        min_area: smallest blob, in pixels, that counts (>= 1).
        weighting: one of :data:`BLOB_WEIGHTINGS`.

    Returns:
        The score, a float >= 0.
    """
    if weighting not in BLOB_WEIGHTINGS:
        raise ValueError(f"unknown blob weighting {weighting!r}; allowed: {', '.join(BLOB_WEIGHTINGS)}")
    if min_area < 1:
        raise ValueError(f"min_area must be >= 1 pixel, got {min_area}")
    vals = abs_error[valid]
    if vals.size == 0:
        return 0.0
    thr = float(threshold) if threshold is not None else float(vals.mean() + n_std * vals.std())
    active = valid & (abs_error > thr)
    labels, n_blobs = ndimage.label(active, structure=np.ones((3, 3), dtype=bool))  # 8-connectivity
    if n_blobs == 0:
        return 0.0
    area = np.bincount(labels.ravel(), minlength=n_blobs + 1).astype(np.float64)
    if weighting == "area":
        weight = area.copy()
    elif weighting == "log_area":
        weight = np.log1p(area)
    else:
        weight = area * np.log(np.maximum(area, 1.0))
    weight[0] = 0.0  # label 0 is the background
    weight[area < min_area] = 0.0
    w = weight[labels]
    total = w.sum()
    if total <= 0:
        return 0.0
    return float((w * sq_error).sum(dtype=np.float64) / total)


def _check_errors(errors: Any) -> np.ndarray:
    e = to_numpy(errors).astype(np.float64)
    if e.ndim == 0:
        raise ValueError("errors must have a time axis, e.g. (T,), got a scalar")
    if np.any(e < 0):
        raise ValueError(
            "the regularity score needs non-negative errors (e.g. the 'mse' rule); "
            "for signed scores such as -PSNR use normalise_scores(..., 'minmax')"
        )
    return e


def abnormality_score(errors: np.ndarray | torch.Tensor) -> np.ndarray:
    """Abnormality score of Chong & Tay 2017 (arXiv 1701.01546, regularity score): ``s_a(t) = (e(t) - min e) / max e``.

    Computed per video along the last axis (``min``/``max`` over that video's frames, NaN ignored). A video
    whose errors are all 0 gets 0. Higher = more anomalous.

    Args:
        errors: ``(T,)`` (or ``(V, T)``) non-negative reconstruction errors ``e(t)``, e.g. summed squared error.

    Returns:
        Same shape, float64, in ``[0, 1]``.
    """
    e = _check_errors(errors)
    with warnings.catch_warnings():  # all-NaN videos give NaN, which is the honest answer
        warnings.simplefilter("ignore", RuntimeWarning)
        emin = np.nanmin(e, axis=-1, keepdims=True)
        emax = np.nanmax(e, axis=-1, keepdims=True)
    safe = np.where(emax > 0, emax, 1.0)
    return np.where(emax > 0, (e - emin) / safe, np.where(np.isnan(e), np.nan, 0.0))


def regularity_score(errors: np.ndarray | torch.Tensor) -> np.ndarray:
    """Regularity score of Chong & Tay 2017: ``s_r(t) = 1 - s_a(t)`` (1 = perfectly regular), for plotting.

    Args:
        errors: ``(T,)`` (or ``(V, T)``) non-negative errors.

    Returns:
        Same shape, float64.
    """
    return 1.0 - abnormality_score(errors)


def smooth_scores(scores: np.ndarray | torch.Tensor, sigma: float) -> np.ndarray:
    """Gaussian smoothing of score curves along the last (time) axis; ``sigma`` in frames, 0 = none.

    Uses ``scipy.ndimage.gaussian_filter1d(mode="nearest")``. NaN frames (no window covered them) stay NaN and
    do not leak into their neighbours: the filter is normalised by the smoothed mask of finite frames.

    Args:
        scores: ``(T,)`` or ``(V, T)``.
        sigma: standard deviation of the Gaussian in frames (>= 0).

    Returns:
        Same shape, float64.
    """
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0 frames, got {sigma}")
    s = to_numpy(scores).astype(np.float64)
    if sigma == 0 or s.size == 0:
        return s.copy()
    finite = np.isfinite(s)
    if finite.all():
        return ndimage.gaussian_filter1d(s, sigma, axis=-1, mode="nearest")
    num = ndimage.gaussian_filter1d(np.where(finite, s, 0.0), sigma, axis=-1, mode="nearest")
    den = ndimage.gaussian_filter1d(finite.astype(np.float64), sigma, axis=-1, mode="nearest")
    out = num / np.where(den > 0, den, 1.0)
    return np.where(finite, out, np.nan)


def normalise_scores(
    scores: np.ndarray | torch.Tensor, method: str, *, reference: np.ndarray | torch.Tensor | None = None
) -> np.ndarray:
    """Normalise one video's frame scores (along the last axis).

    Methods: ``"none"`` (a copy); ``"minmax"`` (``(s - min) / (max - min)`` per video, 0 if constant; as in
    Liu et al. 2018 for PSNR); ``"regularity"`` (:func:`abnormality_score`); ``"calibrated"`` (z-score
    ``(s - mean) / std`` against ``reference``, the scores of normal training frames, so that scores of
    different videos share one scale and one threshold).

    Args:
        scores: ``(T,)`` or ``(V, T)``.
        method: one of :data:`NORMALISATIONS`.
        reference: ``(N,)`` normal scores; required for ``"calibrated"``.

    Returns:
        Same shape as ``scores``, float64.
    """
    if method not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {method!r}; allowed: {', '.join(NORMALISATIONS)}")
    s = to_numpy(scores).astype(np.float64)
    if method == "none":
        return s.copy()
    if method == "regularity":
        return abnormality_score(s)
    if method == "minmax":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo = np.nanmin(s, axis=-1, keepdims=True)
            span = np.nanmax(s, axis=-1, keepdims=True) - lo
        return np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), np.where(np.isnan(s), np.nan, 0.0))
    if reference is None:
        raise ValueError("normalisation 'calibrated' needs reference= the scores of normal (training) frames")
    ref = to_numpy(reference).astype(np.float64).ravel()
    ref = ref[np.isfinite(ref)]
    if ref.size < 2:
        raise ValueError(f"'calibrated' needs at least 2 finite reference scores, got {ref.size}")
    std = ref.std()
    if std == 0:
        raise ValueError("'calibrated' reference scores are all equal; their std is 0, so no z-score exists")
    return (s - ref.mean()) / std


def aggregate_windows(
    frame_index: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor, n_frames: int, how: str = "max"
) -> np.ndarray:
    """Combine scores of overlapping windows into one score per frame of a video.

    Args:
        frame_index: ``(N, T)`` frame numbers of each window's frames, ``-1`` for padding.
        scores: ``(N, T)`` the matching frame scores.
        n_frames: number of frames of the video.
        how: ``"max"`` or ``"mean"`` over the windows covering a frame.

    Returns:
        ``(n_frames,)`` float64; frames covered by no window are NaN.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; allowed: {', '.join(AGGREGATIONS)}")
    idx = to_numpy(frame_index).astype(np.int64)
    s = to_numpy(scores).astype(np.float64)
    if idx.shape != s.shape:
        raise ValueError(f"frame_index {idx.shape} and scores {s.shape} must have the same shape (N, T)")
    keep = idx >= 0
    i, x = idx[keep], s[keep]
    if i.size and i.max() >= n_frames:
        raise ValueError(f"frame_index holds frame {int(i.max())} but the video has only n_frames={n_frames}")
    count = np.bincount(i, minlength=n_frames)
    if how == "max":
        out = np.full(n_frames, -np.inf)
        np.maximum.at(out, i, x)
    else:
        out = np.bincount(i, weights=x, minlength=n_frames) / np.maximum(count, 1)
    return np.where(count > 0, out, np.nan)


class MapAccumulator:
    """Streaming aggregation of per-pixel maps from overlapping windows, with bounded memory.

    Add each window's maps as they come; frames that no later window can touch (index < ``before``) are
    handed out by :meth:`pop_ready` and forgotten, so memory holds only the frames of the open windows.

    Example:
        >>> acc = MapAccumulator(how="max")
        >>> acc.add(np.arange(4), np.zeros((4, 2, 2)))
        >>> [i for i, _ in acc.pop_ready(2)]
        [0, 1]
    """

    def __init__(self, *, how: str = "max") -> None:
        """Args: how: ``"max"`` or ``"mean"`` (running sum and count) over windows covering a frame."""
        if how not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {how!r}; allowed: {', '.join(AGGREGATIONS)}")
        self.how = how
        self._maps: dict[int, np.ndarray] = {}
        self._counts: dict[int, int] = {}
        self._shape: tuple[int, ...] | None = None
        self._released = 0  # frames below this were handed out; adding to them again would be silently lost

    def add(self, frame_index: np.ndarray | torch.Tensor, maps: np.ndarray | torch.Tensor) -> None:
        """Add one window.

        Args:
            frame_index: ``(T,)`` ints, frame numbers; ``-1`` (padding) is skipped.
            maps: ``(T, H, W)`` the window's maps.
        """
        idx = to_numpy(frame_index).astype(np.int64).ravel()
        m = to_numpy(maps)
        if m.ndim != 3 or m.shape[0] != idx.size:
            raise ValueError(f"maps must be (T, H, W) with T = len(frame_index) = {idx.size}, got {m.shape}")
        if self._shape is None:
            self._shape = m.shape[1:]
        elif m.shape[1:] != self._shape:
            raise ValueError(f"map size changed from {self._shape} to {m.shape[1:]}")
        combine: Callable[[np.ndarray, np.ndarray], np.ndarray] = np.maximum if self.how == "max" else np.add
        for i, frame in zip(idx.tolist(), m):
            if i < 0:
                continue
            if i < self._released:
                raise ValueError(f"frame {i} was already released by pop_ready(before={self._released})")
            if i in self._maps:
                self._maps[i] = combine(self._maps[i], frame)
                self._counts[i] += 1
            else:
                self._maps[i] = np.array(frame, dtype=np.float64)
                self._counts[i] = 1

    def pop_ready(self, before: int) -> list[tuple[int, np.ndarray]]:
        """Hand out and forget the frames with index < ``before``, in order, as ``(index, (H, W) map)``."""
        ready = sorted(i for i in self._maps if i < before)
        out = [(i, self._finish(i)) for i in ready]
        self._released = max(self._released, before)
        return out

    def flush(self) -> list[tuple[int, np.ndarray]]:
        """Hand out every remaining frame, in order (end of the video)."""
        if not self._maps:
            return []
        return self.pop_ready(max(self._maps) + 1)

    def _finish(self, i: int) -> np.ndarray:
        m, c = self._maps.pop(i), self._counts.pop(i)
        return m / c if self.how == "mean" else m

    def __len__(self) -> int:
        """Number of frames held."""
        return len(self._maps)
