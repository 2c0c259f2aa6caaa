"""Density estimation for fitted models, as plain arrays: Gaussian mixtures, kNN distances, calibration.

scikit-learn fits the mixtures; only their parameters are kept (weights, means, full covariances), so a fitted
model is saved as tensors in safetensors and scored here from those parameters, never by unpickling an
estimator. Scores are calibrated as in AI-VAD (Reiss & Hoshen 2023, ``evaluate.py``): each attribute's score is
mapped by the minimum and the 99.9th percentile of the scores of normal training samples, computed
leave-one-group-out (``score_calibration.py``) so that no sample is scored against itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class GaussianMixtureParams:
    """A fitted Gaussian mixture: ``weights (K,)``, ``means (K, D)``, ``covariances (K, D, D)``."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray


def fit_gmm(x: np.ndarray, *, components: int, seed: int = 0, reg_covar: float = 1e-3) -> GaussianMixtureParams:
    """Fit a full-covariance Gaussian mixture to ``x`` ``(N, D)`` with scikit-learn and return its parameters.

    The mixture is fitted on standardised features (so ``reg_covar`` is a fraction of each feature's variance,
    whatever its unit) and mapped back to the units of ``x``. ``components`` is capped by the number of distinct
    samples.
    """
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"a Gaussian mixture needs at least 2 samples (N, D), got shape {x.shape}")
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    z = (x - mean) / std
    k = max(1, min(components, len(np.unique(z, axis=0))))
    gmm = GaussianMixture(n_components=k, covariance_type="full", reg_covar=reg_covar, random_state=seed).fit(z)
    means = mean + gmm.means_ * std
    covariances = gmm.covariances_ * std[None, :, None] * std[None, None, :]
    return GaussianMixtureParams(gmm.weights_.copy(), means, covariances)


def fit_gmm_average(
    x: np.ndarray, *, components: int, starts: int = 1, seed: int = 0, reg_covar: float = 1e-3
) -> GaussianMixtureParams:
    """The mean density of ``starts`` Gaussian mixtures fitted to ``x`` ``(N, D)`` from different EM starts.

    EM finds a local optimum that depends on its start; on a few hundred normal frames (the Avenue dev split) the
    start alone moved frame AUROC by 0.08 (docs/BENCHMARKS.md). Averaging the densities, a mixture of the
    ``starts`` mixtures with every weight divided by ``starts``, keeps what the optima share and averages out
    where they disagree (bagging's variance reduction, here over initialisations). Start ``i`` uses seed
    ``seed + 1000 * i``; ``starts=1`` is :func:`fit_gmm`.
    """
    if starts < 1:
        raise ValueError(f"starts must be >= 1, got {starts}")
    fits = [fit_gmm(x, components=components, seed=seed + 1000 * i, reg_covar=reg_covar) for i in range(starts)]
    return GaussianMixtureParams(np.concatenate([f.weights for f in fits]) / starts,
                                 np.concatenate([f.means for f in fits]),
                                 np.concatenate([f.covariances for f in fits]))


def gmm_nll(x: np.ndarray, params: GaussianMixtureParams) -> np.ndarray:
    """Negative log-likelihood ``-log p(x)`` of samples ``(N, D)`` under a mixture, ``(N,)`` float64.

    ``log p(x) = logsumexp_k [log w_k - (D log 2 pi + log det S_k + (x - m_k)^T S_k^-1 (x - m_k)) / 2]``.
    """
    x = np.asarray(x, dtype=np.float64)
    w, m, cov = (np.asarray(a, dtype=np.float64) for a in (params.weights, params.means, params.covariances))
    if len(x) == 0:
        return np.zeros(0)
    d = x.shape[1]
    chol = np.linalg.cholesky(cov)  # S_k = L L^T
    log_det = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
    diff = x[None] - m[:, None]  # (K, N, D)
    sol = np.linalg.solve(chol, np.swapaxes(diff, 1, 2))  # L^-1 (x - m): (K, D, N)
    maha = (sol**2).sum(axis=1)  # (K, N)
    log_comp = np.log(np.maximum(w, 1e-300))[:, None] - 0.5 * (d * np.log(2 * np.pi) + log_det[:, None] + maha)
    top = log_comp.max(axis=0)
    return -(top + np.log(np.exp(log_comp - top).sum(axis=0)))


def knn_distance(x: np.ndarray, bank: np.ndarray, *, k: int = 1, exclude: np.ndarray | None = None,
                 bank_groups: np.ndarray | None = None, bank_sq: np.ndarray | None = None) -> np.ndarray:
    """Mean Euclidean distance from each sample ``(N, D)`` to its ``k`` nearest rows of ``bank`` ``(M, D)``.

    Args:
        x: queries.
        bank: the normal samples.
        k: neighbours averaged (AI-VAD: 1).
        exclude: ``(N,)`` group of each query; with ``bank_groups`` ``(M,)``, bank rows of the query's own group
            are ignored (leave-one-group-out scores of training samples).
        bank_groups: group of each bank row.
        bank_sq: ``(M,)`` squared norms of the bank rows, when the caller keeps them (computed otherwise).
    """
    x = np.asarray(x, dtype=np.float32)
    bank = np.asarray(bank, dtype=np.float32)
    if len(x) == 0:
        return np.zeros(0)
    if len(bank) < k:
        raise ValueError(f"kNN needs at least k={k} bank samples, have {len(bank)}")
    out = np.empty(len(x))
    b2 = (bank * bank).sum(axis=1) if bank_sq is None else bank_sq
    for s in range(0, len(x), 1024):  # bounded memory: 1024 x M distances at a time
        q = x[s:s + 1024]
        # |q - b|^2 = |q|^2 + |b|^2 - 2 q.b; |q|^2 is added after the search (it does not change the ranking),
        # and the products are updated in place: the search costs little more than the matrix product.
        d2 = q @ bank.T
        d2 *= -2.0
        d2 += b2[None]
        if exclude is not None and bank_groups is not None:
            d2[exclude[s:s + 1024, None] == bank_groups[None]] = np.inf
        if k == 1:
            part = d2.min(axis=1, keepdims=True)
        else:
            part = np.partition(d2, k - 1, axis=1)[:, :k] if k < d2.shape[1] else d2
        out[s:s + len(q)] = np.sqrt(np.maximum(part + (q * q).sum(axis=1)[:, None], 0.0)).mean(axis=1)
    return out


def leave_one_group_out(
    x: np.ndarray, groups: np.ndarray, fit: Callable[[np.ndarray], object], score: Callable[[np.ndarray, object], np.ndarray],
    *, fits: list | None = None,
) -> np.ndarray:
    """Scores ``(N,)`` of every sample under an estimator fitted on the other groups' samples only.

    With a single group, every sample is scored in-sample (there is nothing to leave out). ``fits``, when given,
    receives the estimator that left out group ``g`` at position ``g`` for ``g`` in ``0..groups.max()`` (a group
    without samples gets the estimator of every sample), so the same held-out scores can be computed again later.
    """
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    if len(uniq) < 2:
        return score(x, fit(x))
    out = np.empty(len(x))
    everything = None
    for g in range(int(groups.max()) + 1):
        held = groups == g
        if not held.any():
            everything = fit(x) if everything is None else everything
            model = everything
        else:
            model = fit(x[~held])
            out[held] = score(x[held], model)
        if fits is not None:
            fits.append(model)
    return out


def stack_mixtures(mixtures: list[GaussianMixtureParams], components: int) -> GaussianMixtureParams:
    """``G`` mixtures as one with a leading group axis, ``weights (G, K)``, ``means (G, K, D)``, ``covariances
    (G, K, D, D)``; mixtures with fewer than ``K = components`` components are padded with weight-0 unit Gaussians."""
    d = mixtures[0].means.shape[1]
    w = np.zeros((len(mixtures), components))
    m = np.zeros((len(mixtures), components, d))
    c = np.tile(np.eye(d), (len(mixtures), components, 1, 1))
    for g, p in enumerate(mixtures):
        k = len(p.weights)
        w[g, :k], m[g, :k], c[g, :k] = p.weights, p.means, p.covariances
    return GaussianMixtureParams(w, m, c)


def gmm_nll_by_group(x: np.ndarray, groups: np.ndarray, full: GaussianMixtureParams,
                     held_out: GaussianMixtureParams) -> np.ndarray:
    """``(N,)`` negative log-likelihood of each sample under the mixture that left its group out (``held_out``
    from :func:`stack_mixtures`), or under ``full`` where its group is ``-1`` (a sample the fit never saw)."""
    out = np.empty(len(x))
    for g in np.unique(groups):
        sel = groups == g
        params = full if g < 0 else GaussianMixtureParams(*(a[g] for a in (held_out.weights, held_out.means,
                                                                            held_out.covariances)))
        out[sel] = gmm_nll(x[sel], params)
    return out


def calibration_range(scores: np.ndarray, *, q: float = 99.9) -> tuple[float, float]:
    """``(low, high)`` mapping an attribute's scores to ~[0, 1]: the minimum and the ``q``-th percentile of the
    normal training scores (AI-VAD); ``high > low`` always."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return 0.0, 1.0
    lo, hi = float(scores.min()), float(np.percentile(scores, q))
    return lo, hi if hi > lo else lo + 1.0


def contiguous_groups(n: int, folds: int) -> np.ndarray:
    """``(n,)`` group ids cutting ``n`` consecutive samples into ``folds`` contiguous blocks (for one video,
    where neighbouring frames are near-copies and a random split would let a sample meet its twin)."""
    return np.minimum(np.arange(n) * folds // max(n, 1), folds - 1)


def frame_groups(keys: list[tuple[str, int]], folds: int) -> tuple[np.ndarray, list[list]]:
    """Leave-one-out groups of fitted frames and the table that finds them again.

    Args:
        keys: ``(video, frame index)`` of every fitted frame.
        folds: with a single video, its frames are cut into this many contiguous blocks of frame numbers (neighbouring
            frames are near-copies, so a frame must not meet its neighbours); with several, each video is a group.

    Returns:
        ``(F,)`` group of each frame, and the table ``[[video, first index, last index, group], ...]`` for
        :func:`lookup_groups`.
    """
    videos = np.asarray([k[0] for k in keys])
    index = np.asarray([k[1] for k in keys], dtype=np.int64)
    names = sorted(set(videos.tolist()))
    if len(names) > 1:
        g = np.searchsorted(np.asarray(names), videos)
    else:
        rank = np.empty(len(index), np.int64)
        rank[np.argsort(index, kind="stable")] = np.arange(len(index))
        g = contiguous_groups(len(index), folds)[rank]
    table = [[str(videos[g == k][0]), int(index[g == k].min()), int(index[g == k].max()), int(k)]
             for k in np.unique(g)]
    return g, table


def lookup_groups(keys: list[tuple[str, int]], table: list[list]) -> np.ndarray:
    """``(F,)`` group of each ``(video, frame index)`` in a table of :func:`frame_groups`; -1 where none holds it."""
    out = np.full(len(keys), -1, np.int64)
    for n, (video, index) in enumerate(keys):
        for name, lo, hi, g in table:
            if name == video and lo <= index <= hi:
                out[n] = g
                break
    return out
