"""Tests of oddframe.thresholds: calibration from normal scores, hold-out splits, the Calibration record."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from oddframe.thresholds import (
    Calibration,
    calibrate,
    calibrate_threshold,
    false_positive_rate,
    flag,
    split_holdout,
)


def test_percentile_gives_the_requested_false_positive_rate() -> None:
    rng = np.random.default_rng(0)
    threshold = calibrate_threshold(rng.normal(size=10_000), method="percentile", q=95.0)
    assert abs(false_positive_rate(rng.normal(size=10_000), threshold) - 0.05) < 0.01
    assert threshold == pytest.approx(1.645, abs=0.05)  # the 95th percentile of N(0, 1)


def test_hand_cases() -> None:
    assert calibrate_threshold(np.arange(101.0), q=90.0) == pytest.approx(90.0)
    s = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, population std sqrt(2)
    assert calibrate_threshold(s, method="meanstd", k=2.0) == pytest.approx(3 + 2 * math.sqrt(2))
    assert calibrate_threshold(torch.tensor([1.0, np.nan, 3.0]), method="meanstd", k=0.0) == pytest.approx(2.0)
    assert false_positive_rate(s, 3.0) == pytest.approx(0.4)  # 4 and 5 lie above
    np.testing.assert_array_equal(flag(np.array([[1.0, np.nan], [3.5, 3.0]]), 3.0), [[False, False], [True, False]])


def test_calibration_errors() -> None:
    with pytest.raises(ValueError, match="allowed: percentile, meanstd"):
        calibrate_threshold(np.ones(3), method="iqr")
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        calibrate_threshold(np.ones(3), q=99.9 * 100)
    with pytest.raises(ValueError, match="zero"):
        calibrate_threshold(np.array([np.nan]))
    with pytest.raises(ValueError, match="infinite"):
        calibrate_threshold(np.array([1.0, np.inf]))


def test_block_split_holds_out_whole_blocks() -> None:
    scores = np.arange(1000.0)  # value = frame index
    calib, held = split_holdout(scores, holdout_fraction=0.3, seed=0, block=50)
    assert held.size == 300 and calib.size == 700
    np.testing.assert_array_equal(np.sort(np.concatenate([calib, held])), scores)
    held_blocks = set((held // 50).astype(int))
    assert len(held_blocks) == 6 and not held_blocks & set((calib // 50).astype(int))
    assert np.all(np.diff(held) > 0)  # time order kept
    again, _ = split_holdout(scores, holdout_fraction=0.3, seed=0, block=50)
    other, _ = split_holdout(scores, holdout_fraction=0.3, seed=1, block=50)
    np.testing.assert_array_equal(calib, again)
    assert not np.array_equal(calib, other)


def test_block_split_does_not_cross_videos() -> None:
    videos = [np.arange(70.0), np.arange(100.0, 170.0)]  # blocks: 0-49, 50-69, 100-149, 150-169
    for seed in range(5):
        _, held = split_holdout(videos, holdout_fraction=0.5, seed=seed, block=50)
        assert held.size in (40, 70, 100)  # two whole blocks of sizes {50, 20, 50, 20}
        blocks = {0 if v < 50 else 1 if v < 70 else 2 if v < 150 else 3 for v in held}
        assert len(blocks) == 2


def test_random_split_and_errors() -> None:
    calib, held = split_holdout(np.arange(100.0), holdout_fraction=0.25, by="random", seed=2)
    assert held.size == 25 and calib.size == 75
    with pytest.raises(ValueError, match="allowed: block, random"):
        split_holdout(np.arange(10.0), by="video")
    with pytest.raises(ValueError, match="holdout_fraction"):
        split_holdout(np.arange(10.0), holdout_fraction=1.0)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        split_holdout(np.arange(10.0), block=50)


def test_calibrate_end_to_end_and_round_trip() -> None:
    rng = np.random.default_rng(4)
    cal = calibrate(rng.normal(size=20_000), q=90.0, by="random", holdout_fraction=0.4)
    assert cal.n_calib == 12_000 and cal.n_heldout == 8000
    assert abs(cal.heldout_fpr - 0.10) < 0.02  # sd of the estimate ~0.004
    d = cal.to_dict()
    json.dumps(d, allow_nan=False)
    assert Calibration.from_dict(d) == cal
    whole = calibrate(np.arange(101.0), method="meanstd", k=0.0, holdout_fraction=0.0)
    assert whole.threshold == pytest.approx(50.0) and whole.n_heldout == 0 and math.isnan(whole.heldout_fpr)
    d = whole.to_dict()
    assert d["heldout_fpr"] is None
    back = Calibration.from_dict(json.loads(json.dumps(d)))
    assert math.isnan(back.heldout_fpr) and back.threshold == whole.threshold
    with pytest.raises(ValueError, match=r"missing keys \['threshold'\]"):
        Calibration.from_dict({k: v for k, v in d.items() if k != "threshold"})
    with pytest.raises(TypeError):
        Calibration("percentile", 99.0, 3.0, 1.0, 1, 0, 0.0)  # keyword-only


# ------------------------------------------------- edges and defaults (each kills mutants that survived mutmut)
def test_percentile_edges_and_documented_defaults():
    s = np.arange(101, dtype=float)
    assert calibrate_threshold(s, q=0) == 0.0 and calibrate_threshold(s, q=100) == 100.0  # both ends allowed
    assert calibrate_threshold(s) == 99.0  # default q = 99
    assert calibrate_threshold(np.array([0.0, 2.0]), method="meanstd") == pytest.approx(1.0 + 3.0)  # k = 3
    for bad in (-0.01, 100.01):
        with pytest.raises(ValueError, match=r"\[0, 100\]"):
            calibrate_threshold(s, q=bad)
    assert false_positive_rate([1.0, 2.0, 3.0, 4.0], 2.0) == 0.5
    assert math.isnan(false_positive_rate([math.nan], 1.0))
    np.testing.assert_array_equal(flag(np.array([[0.5, math.nan], [2.0, 1.0]]), 1.0), [[False, False], [True, False]])
    assert flag(np.array([1, 3]), 2).dtype == bool


def test_scores_keep_their_precision():
    """Scores differing in the 9th digit are not merged: float64 throughout, never float32."""
    a, b = 1.0, 1.0 + 1e-9
    assert calibrate_threshold([a, b], q=100) == b
    assert false_positive_rate([a, b], a) == 0.5
    assert flag(np.array([b]), a)[0]


def test_block_split_starts_each_video_where_the_previous_ended():
    """With per-video arrays, block b of video v covers that video's frames only, and all frames are assigned."""
    videos = [np.full(7, 1.0), np.full(5, 2.0), np.full(6, 3.0)]
    for seed in range(10):
        calib, held = split_holdout(videos, holdout_fraction=0.5, seed=seed, block=3)
        assert calib.size + held.size == 18
        assert sorted(np.concatenate([calib, held]).tolist()) == sorted(np.concatenate(videos).tolist())
    # Blocks of sizes 3, 3, 1 | 3, 2 | 3, 3: 7 groups, of which round(3.5) = 4 are held out (9 to 12 frames).
    sizes = {split_holdout(videos, holdout_fraction=0.5, seed=s, block=3)[1].size for s in range(30)}
    assert sizes <= {9, 10, 11, 12} and len(sizes) > 1


def test_holdout_keeps_at_least_one_group_on_each_side():
    s = np.arange(10.0)
    calib, held = split_holdout(s, holdout_fraction=0.01, by="random", seed=0)
    assert held.size == 1 and calib.size == 9
    calib, held = split_holdout(s, holdout_fraction=0.99, by="random", seed=0)
    assert held.size == 9 and calib.size == 1
    with pytest.raises(ValueError, match="at least 2"):
        split_holdout(np.arange(1.0), by="random")
    split_holdout(np.arange(2.0), by="random")  # two frames are enough
    with pytest.raises(ValueError, match="block"):
        split_holdout(s, block=0)
    assert split_holdout(s, block=1, holdout_fraction=0.5)[1].size == 5  # blocks of one frame are allowed
    with pytest.raises(ValueError, match="holdout_fraction"):
        split_holdout(s, holdout_fraction=0.0)


def test_calibrate_passes_its_split_settings_on():
    scores = [np.arange(0.0, 60.0), np.arange(100.0, 160.0)]
    a = calibrate(scores, seed=1, block=10)
    b = calibrate(scores, seed=2, block=10)
    assert (a.threshold, a.n_heldout) != (b.threshold, b.n_heldout) or a.heldout_fpr != b.heldout_fpr
    r = calibrate(np.arange(100.0), by="random", seed=0, holdout_fraction=0.5)
    k = calibrate(np.arange(100.0), by="block", block=50, seed=0, holdout_fraction=0.5)
    assert r.n_heldout == 50 and k.n_heldout == 50 and r.threshold != k.threshold
    full = calibrate(np.arange(101.0), holdout_fraction=0)
    assert full.threshold == 99.0 and full.n_calib == 101 and full.n_heldout == 0 and math.isnan(full.heldout_fpr)
    d = calibrate(np.arange(101.0)).to_dict()
    assert (d["method"], d["q"], d["k"]) == ("percentile", 99.0, 3.0)
