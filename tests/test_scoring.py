"""Tests of oddframe.scoring against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from oddframe.data.clips import window_starts
from oddframe.scoring import (
    RULES,
    MapAccumulator,
    abnormality_score,
    aggregate_windows,
    frame_scores,
    normalise_scores,
    regularity_score,
    smooth_scores,
)


@pytest.fixture
def errors() -> np.ndarray:
    """Signed per-pixel errors ``(T=3, H=4, W=5)``."""
    return np.random.default_rng(0).normal(0, 0.3, size=(3, 4, 5))


def test_mse_l1_max_match_hand_computation(errors: np.ndarray) -> None:
    maps = errors**2
    np.testing.assert_allclose(frame_scores(maps, rule="mse"), (errors**2).mean(axis=(1, 2)))
    np.testing.assert_allclose(frame_scores(maps, rule="l1"), np.abs(errors).mean(axis=(1, 2)))
    np.testing.assert_allclose(frame_scores(maps, rule="max"), (errors**2).max(axis=(1, 2)))


@pytest.mark.parametrize("rule", [r for r in RULES if r not in ("blob", "ssim")])
def test_map_power_one_and_two_give_the_same_scores(errors: np.ndarray, rule: str) -> None:
    squared = frame_scores(errors**2, rule=rule, map_power=2)
    absolute = frame_scores(np.abs(errors), rule=rule, map_power=1)
    np.testing.assert_allclose(squared, absolute, rtol=1e-10)


def test_ssim_rule_is_the_mean_dissimilarity_whatever_the_map_power() -> None:
    """``ssim`` maps are ``1 - SSIM`` (tests/test_ssim.py), not ``|e| ** p``: the score is their mean over valid pixels."""
    maps = np.array([[[0.2, 0.4], [0.6, 1.8]]])
    valid = np.array([[[True, True], [True, False]]])
    for power in (1, 2):
        np.testing.assert_allclose(frame_scores(maps, valid, rule="ssim", map_power=power), [0.4])


def test_psnr_is_negative_psnr_with_max_two() -> None:
    maps = np.full((2, 3, 3), 0.2**2)  # |e| = 0.2 everywhere: mse 0.04, PSNR = 10 log10(4 / 0.04) = 20 dB
    maps[1] = 0.4**2  # mse 0.16: PSNR = 10 log10(25) = 13.98 dB
    np.testing.assert_allclose(frame_scores(maps, rule="psnr"), [-20.0, -10 * math.log10(25)])
    expected = [-10 * math.log10(1 / 0.04), -10 * math.log10(1 / 0.16)]
    np.testing.assert_allclose(frame_scores(maps, rule="psnr", data_range=1.0), expected)


def test_topk_mean_of_top_fraction() -> None:
    maps = np.arange(100, dtype=np.float64).reshape(1, 10, 10)
    np.testing.assert_allclose(frame_scores(maps, rule="topk", k=0.05), [97.0])  # mean of 95..99
    np.testing.assert_allclose(frame_scores(maps, rule="topk", k=0.001), [99.0])  # at least one pixel
    valid = maps < 50
    np.testing.assert_allclose(frame_scores(maps, valid, rule="topk", k=0.1), [47.0])  # top 5 of 0..49


def test_valid_mask_excludes_pixels_and_empty_frames_score_zero() -> None:
    maps = np.ones((2, 2, 2))
    maps[0, 0, 0] = np.nan  # invalid pixels may hold anything
    maps[0, 1, 1] = 5.0
    valid = np.ones((2, 2, 2), dtype=bool)
    valid[0, 0, 0] = False
    valid[1] = False
    np.testing.assert_allclose(frame_scores(maps, valid, rule="mse"), [(1 + 1 + 5) / 3, 0.0])
    np.testing.assert_allclose(frame_scores(maps, valid, rule="psnr"), [10 * math.log10(7 / 3 / 4), 0.0])


def test_batch_dim_torch_input_and_batch_style_valid() -> None:
    maps = torch.rand(2, 3, 4, 4)
    valid = torch.ones(2, 1, 3, 4, 4, dtype=torch.bool)
    valid[1, 0, 2] = False
    out = frame_scores(maps, valid, rule="mse")
    assert out.shape == (2, 3)
    expected = maps.mean(dim=(2, 3)).numpy()
    expected[1, 2] = 0.0
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_bad_input_raises_clear_errors() -> None:
    maps = np.ones((1, 2, 2))
    with pytest.raises(ValueError, match="allowed: mse, l1, psnr, max, topk, blob"):
        frame_scores(maps, rule="ssimm")
    with pytest.raises(ValueError, match="unknown option.*'kk'.*allowed: k"):
        frame_scores(maps, rule="topk", kk=0.1)
    with pytest.raises(ValueError, match="finite and >= 0"):
        frame_scores(-maps, rule="mse")
    with pytest.raises(ValueError, match=r"\(T, H, W\) or \(B, T, H, W\)"):
        frame_scores(np.ones((2, 2)))
    with pytest.raises(ValueError, match="does not match"):
        frame_scores(maps, np.ones((1, 3, 3), dtype=bool))


def _frame_with(pixels: list[tuple[int, int]], value: float, size: int = 32) -> np.ndarray:
    e = np.zeros((size, size))
    for y, x in pixels:
        e[y, x] = value
    return e


def test_blob_one_big_blob_beats_the_same_error_scattered() -> None:
    blob = [(y, x) for y in range(10, 16) for x in range(10, 16)]  # 36 pixels, one 6x6 component
    scattered = [(2 + 5 * (i // 6), 2 + 5 * (i % 6)) for i in range(36)]  # 36 isolated pixels, 4 apart
    maps = np.stack([_frame_with(blob, 0.8), _frame_with(scattered, 0.8)]) ** 2
    assert maps[0].sum() == pytest.approx(maps[1].sum())  # same total error
    scores = frame_scores(maps, rule="blob")
    assert scores[0] == pytest.approx(0.64)  # one blob: weighted mean = its squared error
    assert scores[1] == 0.0  # isolated pixels are smaller than min_area: no blob
    assert frame_scores(maps, rule="mse")[0] == pytest.approx(frame_scores(maps, rule="mse")[1])


def test_blob_weighted_mean_hand_case() -> None:
    a = [(y, x) for y in range(2, 8) for x in range(2, 8)]  # 36 pixels, |e| = 0.5
    b = [(y, x) for y in range(20, 25) for x in range(20, 25)]  # 25 pixels, |e| = 1.0
    e = _frame_with(a, 0.5) + _frame_with(b, 1.0)
    maps = (e**2)[None]
    by_area = (36 * 36 * 0.25 + 25 * 25 * 1.0) / (36 * 36 + 25 * 25)
    assert frame_scores(maps, rule="blob", threshold=0.1)[0] == pytest.approx(by_area)
    la, lb = math.log(37), math.log(26)
    by_log = (36 * la * 0.25 + 25 * lb) / (36 * la + 25 * lb)
    assert frame_scores(maps, rule="blob", threshold=0.1, weighting="log_area")[0] == pytest.approx(by_log)
    # min_area above 25 drops blob b
    assert frame_scores(maps, rule="blob", threshold=0.1, min_area=30)[0] == pytest.approx(0.25)
    # a threshold above every error leaves no blob
    assert frame_scores(maps, rule="blob", threshold=2.0)[0] == 0.0
    with pytest.raises(ValueError, match="allowed: area, log_area, area_log_area"):
        frame_scores(maps, rule="blob", weighting="volume")


def test_blob_uses_eight_connectivity() -> None:
    diagonal = _frame_with([(3, 3), (4, 4)], 1.0, size=8)  # touching only at a corner
    maps = (diagonal**2)[None]
    assert frame_scores(maps, rule="blob", threshold=0.5, min_area=2)[0] == pytest.approx(1.0)
    assert frame_scores(maps, rule="blob", threshold=0.5, min_area=3)[0] == 0.0


def test_regularity_matches_chong_tay_formula() -> None:
    e = np.array([2.0, 4.0, 6.0, 10.0])
    np.testing.assert_allclose(abnormality_score(e), [0.0, 0.2, 0.4, 0.8])  # (e - 2) / 10
    np.testing.assert_allclose(regularity_score(e), [1.0, 0.8, 0.6, 0.2])
    np.testing.assert_allclose(abnormality_score(np.zeros(3)), 0.0)  # max e = 0 guarded
    np.testing.assert_allclose(abnormality_score(np.array([[1.0, 2.0], [4.0, 8.0]])), [[0.0, 0.5], [0.0, 0.5]])
    with pytest.raises(ValueError, match="non-negative"):
        abnormality_score(np.array([-1.0, 2.0]))


def test_smooth_scores() -> None:
    s = np.random.default_rng(1).random(50)
    np.testing.assert_array_equal(smooth_scores(s, 0), s)
    np.testing.assert_allclose(smooth_scores(s, 2.5), gaussian_filter1d(s, 2.5, mode="nearest"))
    impulse = np.zeros(21)
    impulse[10] = 1.0
    out = smooth_scores(impulse, 2.0)
    assert out[10] < 1.0 and out[8] > 0 and out.sum() == pytest.approx(1.0)
    gap = np.ones(10)
    gap[4] = np.nan
    out = smooth_scores(gap, 1.0)
    assert np.isnan(out[4]) and np.allclose(np.delete(out, 4), 1.0)  # NaN does not leak
    with pytest.raises(ValueError, match="sigma"):
        smooth_scores(s, -1)


def test_normalise_scores() -> None:
    s = np.array([1.0, 3.0, 5.0])
    np.testing.assert_allclose(normalise_scores(s, "none"), s)
    np.testing.assert_allclose(normalise_scores(s, "minmax"), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(normalise_scores(np.full(4, 7.0), "minmax"), 0.0)
    np.testing.assert_allclose(normalise_scores(s, "regularity"), [0.0, 0.4, 0.8])
    np.testing.assert_allclose(normalise_scores(s, "calibrated", reference=np.array([1.0, 3.0])), [-1.0, 1.0, 3.0])
    with pytest.raises(ValueError, match="reference"):
        normalise_scores(s, "calibrated")
    with pytest.raises(ValueError, match="allowed: none, minmax, regularity, calibrated"):
        normalise_scores(s, "zscore")


def test_aggregate_windows_max_mean_padding_and_uncovered() -> None:
    idx = np.array([[0, 1, 2, 3], [2, 3, 4, -1]])
    sc = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 0.0, 6.0, 99.0]])
    out = aggregate_windows(idx, sc, n_frames=6, how="max")
    np.testing.assert_allclose(out[:5], [1.0, 2.0, 5.0, 4.0, 6.0])
    assert np.isnan(out[5])  # no window covers frame 5; the padded 99 is ignored
    np.testing.assert_allclose(aggregate_windows(idx, sc, 6, how="mean")[:5], [1.0, 2.0, 4.0, 2.0, 6.0])
    with pytest.raises(ValueError, match="n_frames=4"):
        aggregate_windows(idx, sc, 4)
    with pytest.raises(ValueError, match="allowed: max, mean"):
        aggregate_windows(idx, sc, 6, how="median")


def test_aggregate_windows_covers_every_frame_of_window_starts() -> None:
    n, length = 11, 4
    idx = np.array([np.arange(s, s + length) for s in window_starts(n, length, 3)])
    out = aggregate_windows(idx, idx.astype(float) * 2, n, how="mean")
    np.testing.assert_allclose(out, np.arange(n) * 2.0)


def test_map_accumulator_streams_in_order_and_forgets() -> None:
    acc = MapAccumulator(how="max")
    acc.add(np.array([0, 1, 2, 3]), np.stack([np.full((2, 2), v) for v in (1.0, 2.0, 3.0, 4.0)]))
    acc.add(torch.tensor([2, 3, 4, -1]), torch.stack([torch.full((2, 2), v) for v in (9.0, 0.0, 5.0, 7.0)]))
    ready = acc.pop_ready(2)
    assert [i for i, _ in ready] == [0, 1] and len(acc) == 3
    np.testing.assert_allclose(ready[1][1], 2.0)
    rest = acc.flush()
    assert [i for i, _ in rest] == [2, 3, 4] and len(acc) == 0
    np.testing.assert_allclose([m[0, 0] for _, m in rest], [9.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="already released"):
        acc.add(np.array([1]), np.zeros((1, 2, 2)))


def test_map_accumulator_mean() -> None:
    acc = MapAccumulator(how="mean")
    acc.add(np.array([0, 1]), np.stack([np.full((1, 3), 1.0), np.full((1, 3), 2.0)]))
    acc.add(np.array([1, 2]), np.stack([np.full((1, 3), 4.0), np.full((1, 3), 6.0)]))
    out = dict(acc.flush())
    np.testing.assert_allclose([out[0][0, 0], out[1][0, 0], out[2][0, 0]], [1.0, 3.0, 6.0])
    with pytest.raises(ValueError, match="allowed: max, mean"):
        MapAccumulator(how="sum")
    with pytest.raises(ValueError, match="size changed"):
        acc.add(np.array([5]), np.zeros((1, 2, 2)))


# ------------------------------------------- hand cases for mutants that survived mutmut (docs/TESTING.md)
def test_calibrated_normalisation_divides_by_the_reference_std() -> None:
    # reference mean 2, population std 2: z = (s - 2) / 2 (a reference with std 1 cannot tell * from /).
    s = np.array([1.0, 3.0, 6.0])
    np.testing.assert_allclose(normalise_scores(s, "calibrated", reference=np.array([0.0, 4.0])), [-0.5, 0.5, 2.0])
    ref = np.array([0.0, 4.0, np.nan])  # NaN reference scores are left out
    np.testing.assert_allclose(normalise_scores(s, "calibrated", reference=ref), [-0.5, 0.5, 2.0])
    with pytest.raises(ValueError, match="std is 0"):
        normalise_scores(s, "calibrated", reference=np.array([2.0, 2.0]))


def test_minmax_is_per_video_along_time() -> None:
    s = np.array([[1.0, 2.0, 3.0], [10.0, 30.0, 20.0]])
    np.testing.assert_allclose(normalise_scores(s, "minmax"), [[0.0, 0.5, 1.0], [0.0, 1.0, 0.5]])
    np.testing.assert_allclose(normalise_scores(np.array([0.2, 0.7]), "minmax"), [0.0, 1.0])  # a span below 1
    np.testing.assert_allclose(abnormality_score(np.array([0.0, 0.5])), [0.0, 1.0])  # a max below 1


def test_blob_area_log_area_weighting_by_hand() -> None:
    a = [(y, x) for y in range(2, 8) for x in range(2, 8)]  # 36 pixels, |e| = 0.5
    b = [(y, x) for y in range(20, 25) for x in range(20, 25)]  # 25 pixels, |e| = 1.0
    maps = ((_frame_with(a, 0.5) + _frame_with(b, 1.0)) ** 2)[None]
    wa, wb = 36 * math.log(36), 25 * math.log(25)
    expected = (36 * wa * 0.25 + 25 * wb * 1.0) / (36 * wa + 25 * wb)
    got = frame_scores(maps, rule="blob", threshold=0.1, weighting="area_log_area")[0]
    assert got == pytest.approx(expected)
    # The adaptive threshold: mean + 2 std of |e| over the frame keeps both blobs here; n_std = 3 as well.
    assert frame_scores(maps, rule="blob")[0] == pytest.approx((36 * 36 * 0.25 + 25 * 25) / (36 * 36 + 25 * 25))
    # A pixel exactly at the threshold is not active (|e| > threshold).
    assert frame_scores(maps, rule="blob", threshold=1.0)[0] == 0.0
    # min_area is inclusive: a blob of exactly min_area pixels counts.
    assert frame_scores(maps, rule="blob", threshold=0.6, min_area=25)[0] == pytest.approx(1.0)


def test_topk_fraction_bounds_and_k_one_is_the_mean() -> None:
    maps = np.arange(16, dtype=float).reshape(1, 4, 4)
    assert frame_scores(maps, rule="topk", k=1.0)[0] == pytest.approx(maps.mean())
    assert frame_scores(maps, rule="topk", k=1 / 16)[0] == pytest.approx(15.0)
    for bad in (0.0, 1.01):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            frame_scores(maps, rule="topk", k=bad)
    # map_power 1 (|e| maps) is squared first, as every rule scores squared error
    assert frame_scores(np.sqrt(maps), rule="topk", k=1 / 16, map_power=1)[0] == pytest.approx(15.0)


def test_smoothing_with_gaps_along_time_of_each_video() -> None:
    s = np.array([[0.0, 0.0, 10.0, np.nan, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    out = smooth_scores(s, 1.0)
    np.testing.assert_allclose(out[1], 1.0)  # a constant video stays constant: videos do not mix
    assert np.isnan(out[0, 3])
    finite = np.array([1.0, 1.0, 1.0, 0.0, 1.0])
    num = gaussian_filter1d(np.nan_to_num(s[0]), 1.0, mode="nearest")
    den = gaussian_filter1d(finite, 1.0, mode="nearest")
    np.testing.assert_allclose(np.delete(out[0], 3), np.delete(num / den, 3))
