"""Evaluation metrics: frame-level AUROC (micro, and macro both ways), AP, EER, ROC points, pixel-level AUROC.

Region- and track-based criteria (RBDC, TBDC) are in :mod:`oddframe.metrics_regions`.

Pure functions (DESIGN rule 6). Frame-level functions take one label array and one score array per test
video (``labels[i]`` ``(T_i,)`` in {0, 1}, ``scores[i]`` ``(T_i,)`` float, higher = more anomalous); a single
1-D array is taken as one video. Metrics that are undefined (one class only) return NaN.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from oddframe.scoring import to_numpy

ArrayLike = np.ndarray | torch.Tensor
Videos = Sequence[ArrayLike] | ArrayLike


def _videos(labels: Videos, scores: Videos) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validated ``(labels (T,) bool, scores (T,) float64)`` pairs, one per video."""
    if isinstance(labels, (np.ndarray, torch.Tensor)) and labels.ndim == 1:
        labels = [labels]
    if isinstance(scores, (np.ndarray, torch.Tensor)) and scores.ndim == 1:
        scores = [scores]
    if len(labels) != len(scores):
        raise ValueError(f"got labels for {len(labels)} videos but scores for {len(scores)}")
    out = []
    for i, (lab, sc) in enumerate(zip(labels, scores)):
        y = to_numpy(lab).ravel()
        s = to_numpy(sc).astype(np.float64).ravel()
        if y.shape != s.shape:
            raise ValueError(f"video {i}: {y.size} labels but {s.size} scores")
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"video {i}: labels must be 0/1 (or bool), got values {np.unique(y)[:5].tolist()}")
        if not np.isfinite(s).all():
            raise ValueError(
                f"video {i}: {int((~np.isfinite(s)).sum())} non-finite scores (frames no window covered?)"
            )
        out.append((y.astype(bool), s))
    return out


def _pooled(labels: Videos, scores: Videos) -> tuple[np.ndarray, np.ndarray]:
    pairs = _videos(labels, scores)
    if not pairs:
        return np.zeros(0, dtype=bool), np.zeros(0)
    return np.concatenate([y for y, _ in pairs]), np.concatenate([s for _, s in pairs])


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.any() and not y.all())


def frame_auroc_micro(labels: Videos, scores: Videos) -> float:
    """Frame-level AUROC with every test frame pooled (the usual "micro" number of VAD papers).

    Args:
        labels: per video ``(T_i,)`` 0/1.
        scores: per video ``(T_i,)``.

    Returns:
        AUROC in [0, 1]; NaN if the pooled frames hold one class only.
    """
    y, s = _pooled(labels, scores)
    return float(roc_auc_score(y, s)) if _both_classes(y) else math.nan


def frame_auroc_macro(labels: Videos, scores: Videos) -> tuple[float, int]:
    """Mean of per-video AUROC ("macro") and the number of videos it averages.

    Videos holding a single class (all normal, or all anomalous) have no AUROC and are left out, as most VAD
    papers' evaluation code does; the count says how many videos remain.

    Args:
        labels: per video ``(T_i,)`` 0/1.
        scores: per video ``(T_i,)``.

    Returns:
        ``(mean AUROC, n_videos)``; ``(NaN, 0)`` if no video has both classes.
    """
    aucs = [roc_auc_score(y, s) for y, s in _videos(labels, scores) if _both_classes(y)]
    return (float(np.mean(aucs)), len(aucs)) if aucs else (math.nan, 0)


def frame_auroc_macro_padded(labels: Videos, scores: Videos) -> tuple[float, int]:
    """The literature's macro AUROC: every video padded with one normal and one anomalous dummy frame.

    Most VAD papers since Georgescu et al. (TPAMI 2021), and UBnormal's official ``compute_auc_score.py``, append
    a normal frame scored 0 and an anomalous frame scored 1 to each video's min-max normalised scores, so that
    videos with one class also get an AUROC and all videos count. Here the dummies score the video's own minimum
    and maximum, which is the same on min-max normalised scores and keeps the result independent of any
    per-video monotone rescaling. It is not :func:`frame_auroc_macro` (which leaves single-class videos out):
    the dummies push every video's AUROC up, by more on short videos.

    Returns:
        ``(mean AUROC, n_videos)`` over every video with at least one frame; ``(NaN, 0)`` without frames.
    """
    aucs = []
    for y, s in _videos(labels, scores):
        if y.size == 0:
            continue
        padded_y = np.concatenate([[False], y, [True]])
        padded_s = np.concatenate([[s.min()], s, [s.max()]])
        aucs.append(roc_auc_score(padded_y, padded_s))
    return (float(np.mean(aucs)), len(aucs)) if aucs else (math.nan, 0)


def frame_ap(labels: Videos, scores: Videos) -> float:
    """Average precision (area under the precision-recall curve, sklearn's step-wise sum), frames pooled.

    Returns:
        AP in [0, 1]; NaN if one class is missing.
    """
    y, s = _pooled(labels, scores)
    return float(average_precision_score(y, s)) if _both_classes(y) else math.nan


def roc_points(labels: Videos, scores: Videos) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pooled ROC curve for plotting.

    Returns:
        ``(fpr, tpr, thresholds)``, each ``(K,)``; a frame is flagged when its score >= threshold.

    Raises:
        ValueError: if the frames hold one class only (no ROC curve exists).
    """
    y, s = _pooled(labels, scores)
    if not _both_classes(y):
        raise ValueError("a ROC curve needs both normal and anomalous frames")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, thr


def eer(labels: Videos, scores: Videos) -> float:
    """Equal error rate: where the false positive rate equals the miss rate ``1 - TPR`` on the pooled ROC.

    The ROC is piecewise linear between its points; the crossing of ``FPR - (1 - TPR)`` (non-decreasing along
    the curve) is interpolated linearly, which matches the common ``brentq(1 - x - interp1d(fpr, tpr)(x))``.

    Returns:
        EER in [0, 1]; NaN if one class is missing.
    """
    y, s = _pooled(labels, scores)
    if not _both_classes(y):
        return math.nan
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    d = fpr - (1.0 - tpr)  # starts at -1 (fpr=0, tpr=0), ends at +1
    i = int(np.argmax(d >= 0))
    if d[i] == 0 or i == 0:
        return float(fpr[i])
    t = -d[i - 1] / (d[i] - d[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def order_keys(x: np.ndarray, bits: int) -> np.ndarray:
    """Monotone integer bin keys of float32 values: the top ``bits`` bits of an order-preserving bit pattern.

    Flipping all bits of negative floats and the sign bit of positive ones makes unsigned integer order equal
    float order; keeping the top bits keeps sign, exponent and ``bits - 9`` mantissa bits, i.e. log-spaced bins
    of relative width ``2 ** -(bits - 9)`` over the whole float range, with no range to choose in advance.
    """
    x = x.astype(np.float32) + np.float32(0.0)  # -0.0 + 0.0 == +0.0: both zeros share one bin
    u = x.view(np.uint32)
    u = np.where(u >> np.uint32(31) == 1, ~u, u | np.uint32(0x80000000))
    return (u >> np.uint32(32 - bits)).astype(np.intp)


class PixelAUROC:
    """Streaming pixel-level AUROC over all test pixels, in bounded memory.

    Ped2's test split alone has ~1020 x 86k pixels, too many to sort at once. Each update adds the pixels to
    two histograms (anomalous, normal) over log-spaced float bins (see ``bits``); the AUROC is then the exact
    Mann-Whitney statistic of the binned values, ``P(s_pos > s_neg) + 0.5 P(same bin)``. Values in one bin
    differ by a relative ``2 ** -(bits - 9)`` at most (``bits=20``: 4.9e-4), so the result differs from sklearn
    only through pairs that close (tests: < 1e-3 on random data); exactly equal values are exact ties, as in
    sklearn. Memory: two int64 arrays of ``2 ** bits`` (16 MiB for 20 bits).
    """

    def __init__(self, *, bits: int = 20) -> None:
        """Args: bits: histogram resolution, 12..24 (2**bits bins per class)."""
        if not 12 <= bits <= 24:
            raise ValueError(f"bits must be in 12..24, got {bits}")
        self.bits = bits
        self._pos = np.zeros(2**bits, dtype=np.int64)
        self._neg = np.zeros(2**bits, dtype=np.int64)

    def update(self, maps: ArrayLike, masks: ArrayLike, valid: ArrayLike | None = None) -> None:
        """Add frames.

        Args:
            maps: ``(T, H, W)`` float anomaly maps (any shape works, as long as all three agree).
            masks: ``(T, H, W)`` bool ground truth, True = anomalous pixel.
            valid: ``(T, H, W)`` bool, pixels to count; None = all.
        """
        m, k = to_numpy(maps), to_numpy(masks).astype(bool)
        if m.shape != k.shape:
            raise ValueError(f"maps {m.shape} and masks {k.shape} must have the same shape")
        if valid is not None:
            v = to_numpy(valid).astype(bool)
            if v.shape != m.shape:
                raise ValueError(f"valid {v.shape} must have the shape of maps {m.shape}")
            m, k = m[v], k[v]
        x = np.asarray(m, dtype=np.float32).ravel()
        if not np.isfinite(x).all():
            raise ValueError(f"maps hold {int((~np.isfinite(x)).sum())} non-finite values at counted pixels")
        keys = order_keys(x, self.bits)
        k = k.ravel()
        self._pos += np.bincount(keys[k], minlength=self._pos.size)
        self._neg += np.bincount(keys[~k], minlength=self._neg.size)

    @property
    def n_pixels(self) -> tuple[int, int]:
        """``(anomalous, normal)`` pixels counted so far."""
        return int(self._pos.sum()), int(self._neg.sum())

    def compute(self) -> float:
        """AUROC of all pixels added so far; NaN if either class is missing."""
        n_pos, n_neg = self.n_pixels
        if n_pos == 0 or n_neg == 0:
            return math.nan
        neg = self._neg.astype(np.float64)
        below = np.cumsum(neg) - neg  # normal pixels in strictly lower bins
        return float((self._pos * (below + 0.5 * neg)).sum() / (float(n_pos) * float(n_neg)))

    def reset(self) -> None:
        """Forget every pixel."""
        self._pos[:] = 0
        self._neg[:] = 0


def pixel_level_frame_scores(
    maps: ArrayLike, masks: ArrayLike, valid: ArrayLike | None = None, *, coverage: float = 0.4
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame scores for the UCSD "pixel-level" criterion (Mahadevan et al. CVPR 2010; Li et al. TPAMI 2014).

    At a threshold ``θ`` a pixel is detected when ``map > θ``. An anomalous frame (non-empty mask) is a true
    positive when at least ``coverage`` (40%) of its anomalous pixels are detected, i.e. when ``θ`` is below
    the ``ceil(coverage * n)``-th largest map value inside the mask; a normal frame is a false positive when any
    valid pixel is detected, i.e. when ``θ`` is below its maximum. Those values are therefore frame scores whose
    ordinary ROC is the criterion's ROC; pass them to :func:`frame_auroc_micro`.

    Args:
        maps: ``(T, H, W)`` float.
        masks: ``(T, H, W)`` bool, True = anomalous pixel.
        valid: ``(T, H, W)`` bool; None = all.
        coverage: fraction of the anomalous pixels that must be detected, in (0, 1].

    Returns:
        ``(scores (T,) float64, labels (T,) bool)``; frames with no valid pixel score -inf.
    """
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    m, k = to_numpy(maps).astype(np.float64), to_numpy(masks).astype(bool)
    v = np.ones(m.shape, dtype=bool) if valid is None else to_numpy(valid).astype(bool)
    if m.ndim != 3 or m.shape != k.shape or m.shape != v.shape:
        raise ValueError(f"maps, masks and valid must all be (T, H, W); got {m.shape}, {k.shape}, {v.shape}")
    k = k & v
    labels = k.any(axis=(1, 2))
    scores = np.full(m.shape[0], -np.inf)
    for t in range(m.shape[0]):
        if labels[t]:
            vals = m[t][k[t]]
            need = max(1, math.ceil(coverage * vals.size - 1e-9))
            scores[t] = np.partition(vals, vals.size - need)[vals.size - need]
        elif v[t].any():
            scores[t] = m[t][v[t]].max()
    return scores, labels


def pixel_level_frame_auroc(
    maps: Sequence[ArrayLike] | ArrayLike, masks: Sequence[ArrayLike] | ArrayLike, *, coverage: float = 0.4
) -> float:
    """AUROC under the UCSD pixel-level criterion (see :func:`pixel_level_frame_scores`), frames pooled.

    Args:
        maps: per video ``(T_i, H, W)`` (or one ``(T, H, W)`` array).
        masks: per video ``(T_i, H, W)`` bool.
        coverage: detected fraction of the anomalous pixels that makes a true positive.

    Returns:
        AUROC; NaN if all frames are normal or all anomalous.
    """
    if isinstance(maps, (np.ndarray, torch.Tensor)) and maps.ndim == 3:
        maps, masks = [maps], [masks]
    if len(maps) != len(masks):
        raise ValueError(f"got maps for {len(maps)} videos but masks for {len(masks)}")
    pairs = [pixel_level_frame_scores(m, k, coverage=coverage) for m, k in zip(maps, masks)]
    y = np.concatenate([lab for _, lab in pairs])
    s = np.concatenate([sc for sc, _ in pairs])
    # -inf (no valid pixel) is never detected; sklearn needs finite scores, so put it below every real score.
    finite = np.isfinite(s)
    if not finite.all():
        s = np.where(finite, s, (s[finite].min() - 1.0) if finite.any() else 0.0)
    return float(roc_auc_score(y, s)) if _both_classes(y) else math.nan


def _json_float(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def summarise(labels: Videos, scores: Videos) -> dict[str, Any]:
    """Every frame-level metric in one JSON-able dict (NaN becomes None).

    Returns:
        ``frame_auroc_micro``, ``frame_auroc_macro`` (videos with both classes; ``n_videos_macro`` of them,
        ``n_videos_macro_left_out`` left out), ``frame_auroc_macro_padded`` (the literature's, every video padded
        with a normal and an anomalous dummy frame; ``n_videos_macro_padded``), ``frame_ap``, ``eer``,
        ``n_test_frames``, ``n_anomalous_frames``.
    """
    y, _ = _pooled(labels, scores)
    macro, n_macro = frame_auroc_macro(labels, scores)
    padded, n_padded = frame_auroc_macro_padded(labels, scores)
    return {
        "frame_auroc_micro": _json_float(frame_auroc_micro(labels, scores)),
        "frame_auroc_macro": _json_float(macro),
        "n_videos_macro": int(n_macro),
        "n_videos_macro_left_out": int(n_padded - n_macro),  # videos with frames of one class only
        "frame_auroc_macro_padded": _json_float(padded),
        "n_videos_macro_padded": int(n_padded),
        "frame_ap": _json_float(frame_ap(labels, scores)),
        "eer": _json_float(eer(labels, scores)),
        "n_test_frames": int(y.size),
        "n_anomalous_frames": int(y.sum()),
    }
