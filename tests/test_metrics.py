"""Tests of oddframe.metrics against hand-computed cases and sklearn."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score, roc_curve

from oddframe.metrics import (
    PixelAUROC,
    eer,
    frame_ap,
    frame_auroc_macro,
    frame_auroc_macro_padded,
    frame_auroc_micro,
    pixel_level_frame_auroc,
    pixel_level_frame_scores,
    roc_points,
    summarise,
)

# Hand case: sorted by score 0.8 (anomalous), 0.4 (normal), 0.35 (anomalous), 0.1 (normal).
LABELS = np.array([0, 0, 1, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8])


def test_auroc_and_ap_hand_case() -> None:
    # Pairs (pos > neg): 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3 of 4.
    assert frame_auroc_micro([LABELS], [SCORES]) == pytest.approx(0.75)
    # Precision 1 at recall 0.5, 2/3 at recall 1: AP = 0.5 * 1 + 0.5 * 2/3.
    assert frame_ap(LABELS, SCORES) == pytest.approx(0.5 + 1 / 3)


def test_micro_pools_frames_and_macro_averages_videos() -> None:
    labels = [np.array([0, 1]), np.array([0, 0, 1, 1]), np.array([0, 0, 0])]
    scores = [np.array([0.9, 1.0]), np.array([0.1, 0.5, 0.5, 0.2]), np.array([0.0, 0.3, 0.2])]
    # video 0: 1.0; video 1: pairs (0.5 vs 0.1, 0.5) = 1 + 0.5, (0.2 vs 0.1, 0.5) = 1 + 0 -> 2.5 / 4; video 2 excluded
    macro, n = frame_auroc_macro(labels, scores)
    assert n == 2 and macro == pytest.approx((1.0 + 0.625) / 2)
    pooled = roc_auc_score(np.concatenate(labels), np.concatenate(scores))
    assert frame_auroc_micro(labels, scores) == pytest.approx(pooled)
    assert frame_auroc_micro(labels, scores) != pytest.approx(macro)
    assert math.isnan(frame_auroc_macro([np.zeros(3)], [np.arange(3.0)])[0])


def test_macro_both_ways_by_hand() -> None:
    labels = [np.array([0, 1]), np.array([0, 0, 1, 1]), np.array([0, 0, 0]), np.array([1, 1])]
    scores = [np.array([0.9, 1.0]), np.array([0.1, 0.5, 0.5, 0.2]), np.array([0.0, 0.3, 0.2]), np.array([0.2, 0.4])]
    # Ours: videos 2 (all normal) and 3 (all anomalous) have no AUROC and are left out: (1 + 0.625) / 2.
    assert frame_auroc_macro(labels, scores) == (pytest.approx(0.8125), 2)
    # The literature's: a normal dummy at the video's minimum and an anomalous one at its maximum, every video.
    # video 0: normal {0.9, 0.9} < anomalous {1.0, 1.0}: 1
    # video 1: normal {0.1, 0.1, 0.5}, anomalous {0.5, 0.2, 0.5}: 0.5 -> 1 + 1 + 0.5 (twice), 0.2 -> 1 + 1 + 0: 7 / 9
    # video 2: normal {0, 0, 0.3, 0.2}, anomalous {0.3}: (1 + 1 + 0.5 + 1) / 4
    # video 3: normal {0.2}, anomalous {0.2, 0.4, 0.4}: (0.5 + 1 + 1) / 3
    expected = (1 + 7 / 9 + 3.5 / 4 + 2.5 / 3) / 4
    assert frame_auroc_macro_padded(labels, scores) == (pytest.approx(expected), 4)


def test_padded_macro_equals_the_reference_on_minmax_scores() -> None:
    """UBnormal's compute_auc_score.py: pad [0] + gt + [1] and [0] + scores + [1] on min-max normalised scores."""
    rng = np.random.default_rng(3)
    labels = [rng.integers(0, 2, n) for n in (5, 9, 14)] + [np.zeros(6, int)]
    scores = [rng.normal(size=len(y)) * 7 + 3 for y in labels]
    reference = []
    for y, s in zip(labels, scores):
        s01 = (s - s.min()) / (s.max() - s.min())
        reference.append(roc_auc_score(np.concatenate([[0], y, [1]]), np.concatenate([[0], s01, [1]])))
    assert frame_auroc_macro_padded(labels, scores) == (pytest.approx(np.mean(reference)), 4)
    # ... and a per-video monotone rescaling changes nothing.
    assert frame_auroc_macro_padded(labels, [np.exp(s) * 5 for s in scores])[0] == pytest.approx(np.mean(reference))


def test_single_class_gives_nan() -> None:
    y, s = np.zeros(5), np.arange(5.0)
    assert math.isnan(frame_auroc_micro(y, s))
    assert math.isnan(frame_ap(y, s))
    assert math.isnan(eer(y, s))
    with pytest.raises(ValueError, match="both normal and anomalous"):
        roc_points(y, s)


def test_eer_hand_cases() -> None:
    assert eer(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0  # perfectly separated
    assert eer(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # all tied: the diagonal
    # ROC (0, 1/3) (0, 2/3) (1/3, 2/3) ...: FPR = 1 - TPR = 1/3 at a ROC point
    assert eer(np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.8])) == pytest.approx(1 / 3)
    # ROC segment (0, 0.5) -> (0.5, 1) from a tie at 0.5: 1 - x = 0.5 + x -> x = 0.25 (interpolated)
    assert eer(np.array([0, 0, 1, 1]), np.array([0.1, 0.5, 0.5, 0.9])) == pytest.approx(0.25)


def test_eer_matches_brentq_on_random_data() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(400) < 0.3
    s = rng.normal(size=400) + y * 1.0
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    reference = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert eer(y, s) == pytest.approx(reference, abs=1e-9)


def test_roc_points_match_sklearn() -> None:
    fpr, tpr, thr = roc_points([LABELS, LABELS], [SCORES, SCORES + 0.05])
    ref = roc_curve(np.concatenate([LABELS, LABELS]), np.concatenate([SCORES, SCORES + 0.05]), drop_intermediate=False)
    for a, b in zip((fpr, tpr, thr), ref):
        np.testing.assert_allclose(a, b)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="2 videos but scores for 1"):
        frame_auroc_micro([LABELS, LABELS], [SCORES])
    with pytest.raises(ValueError, match="video 0: 4 labels but 3 scores"):
        frame_auroc_micro([LABELS], [SCORES[:3]])
    with pytest.raises(ValueError, match="0/1"):
        frame_auroc_micro([LABELS * 2], [SCORES])
    with pytest.raises(ValueError, match="non-finite"):
        frame_auroc_micro([LABELS], [np.array([0.1, np.nan, 0.2, 0.3])])


def test_pixel_auroc_matches_sklearn_on_random_data() -> None:
    rng = np.random.default_rng(0)
    acc = PixelAUROC()
    all_maps, all_masks = [], []
    for _ in range(3):  # streaming over batches
        masks = rng.random((4, 16, 16)) < 0.1
        # squared errors over several orders of magnitude, anomalies larger on average
        maps = np.exp(rng.normal(-4, 1.5, size=(4, 16, 16)) + 1.0 * masks).astype(np.float32)
        acc.update(torch.from_numpy(maps), torch.from_numpy(masks))
        all_maps.append(maps.ravel())
        all_masks.append(masks.ravel())
    expected = roc_auc_score(np.concatenate(all_masks), np.concatenate(all_maps))
    assert abs(acc.compute() - expected) < 1e-3
    assert acc.n_pixels == (int(np.concatenate(all_masks).sum()), int((~np.concatenate(all_masks)).sum()))


def test_pixel_auroc_exact_with_ties_and_negative_values() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((2, 8, 8)) < 0.3
    maps = rng.integers(-5, 6, size=(2, 8, 8)).astype(np.float32) + masks  # many exact ties, negatives, -0/+0
    maps[0, 0, 0] = -0.0
    acc = PixelAUROC()
    acc.update(maps, masks)
    assert acc.compute() == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_pixel_auroc_valid_mask_nan_and_reset() -> None:
    maps = np.array([[[0.1, 0.9], [1e6, 0.2]]])
    masks = np.array([[[False, True], [False, False]]])
    valid = np.array([[[True, True], [False, True]]])  # the huge normal pixel is not counted
    acc = PixelAUROC()
    acc.update(maps, masks, valid)
    assert acc.compute() == 1.0
    acc.reset()
    assert math.isnan(acc.compute())
    acc.update(maps, np.zeros_like(masks))
    assert math.isnan(acc.compute())  # no anomalous pixel
    with pytest.raises(ValueError, match="non-finite"):
        acc.update(np.full((1, 2, 2), np.nan), masks)
    with pytest.raises(ValueError, match="bits"):
        PixelAUROC(bits=30)


def test_pixel_level_criterion_hand_case() -> None:
    maps = np.zeros((3, 4, 4))
    masks = np.zeros((3, 4, 4), dtype=bool)
    maps[0, 1, 1] = 0.3  # normal frame: false positive below its max 0.3
    masks[1, 0, :] = True  # 4 anomalous pixels, 40% -> 2 must be detected -> 2nd largest value
    maps[1, 0, :] = [0.9, 0.8, 0.2, 0.1]
    maps[1, 3, 3] = 5.0  # detections outside the mask do not help
    masks[2, :2, :] = True  # 8 anomalous pixels -> ceil(3.2) = 4th largest
    maps[2, :2, :] = np.arange(8).reshape(2, 4) / 10
    scores, labels = pixel_level_frame_scores(maps, masks)
    np.testing.assert_allclose(scores, [0.3, 0.8, 0.4])
    np.testing.assert_array_equal(labels, [False, True, True])
    assert pixel_level_frame_auroc(maps, masks) == pytest.approx(1.0)
    # coverage 1: every anomalous pixel must be detected -> the smallest value in the mask (0.1 and 0.0),
    # both below the normal frame's maximum 0.3
    np.testing.assert_allclose(pixel_level_frame_scores(maps, masks, coverage=1.0)[0], [0.3, 0.1, 0.0])
    assert pixel_level_frame_auroc([maps], [masks], coverage=1.0) == pytest.approx(0.0)


def test_summarise_is_json_able() -> None:
    out = summarise([LABELS, np.zeros(3)], [SCORES, np.zeros(3)])
    json.dumps(out, allow_nan=False)
    assert out["n_test_frames"] == 7 and out["n_anomalous_frames"] == 2 and out["n_videos_macro"] == 1
    assert out["frame_auroc_macro"] == pytest.approx(0.75)
    assert set(out) == {
        "frame_auroc_micro", "frame_auroc_macro", "n_videos_macro", "n_videos_macro_left_out",
        "frame_auroc_macro_padded", "n_videos_macro_padded", "frame_ap", "eer", "n_test_frames",
        "n_anomalous_frames",
    }
    # The all-normal video is left out of ours (1 left out) but counts, padded, in the literature's.
    assert out["n_videos_macro_left_out"] == 1 and out["n_videos_macro_padded"] == 2
    # LABELS/SCORES padded: normal {0.1, 0.1, 0.4} vs anomalous {0.35, 0.8, 0.8}: (2 + 3 + 3) / 9; zeros: 0.5
    assert out["frame_auroc_macro_padded"] == pytest.approx((8 / 9 + 0.5) / 2)
    empty = summarise([np.zeros(3)], [np.zeros(3)])
    assert empty["frame_auroc_micro"] is None and empty["eer"] is None and empty["frame_auroc_macro"] is None


# ------------------------------------------- hand cases for mutants that survived mutmut (docs/TESTING.md)
def test_macro_auroc_without_any_two_class_video_counts_zero_videos() -> None:
    auc, n = frame_auroc_macro([np.zeros(3), np.ones(2)], [np.arange(3.0), np.arange(2.0)])
    assert math.isnan(auc) and n == 0


def test_eer_crossing_on_the_first_segment_and_exactly_at_a_point() -> None:
    # One tie over everything: the ROC is the single segment (0, 0) -> (1, 1); EER is interpolated at 0.5.
    assert eer(np.array([0, 0, 1, 1]), np.array([0.3, 0.3, 0.3, 0.3])) == pytest.approx(0.5)
    # Scores 1 > 0.9 (normal) > 0.5 (anomalous) > 0.1: the crossing lies exactly on the ROC point (0.5, 0.5).
    assert eer(np.array([1, 0, 1, 0]), np.array([1.0, 0.9, 0.5, 0.1])) == pytest.approx(0.5)


def test_pixel_auroc_bit_range_edges() -> None:
    PixelAUROC(bits=12), PixelAUROC(bits=24)  # both ends allowed
    for bad in (11, 25):
        with pytest.raises(ValueError, match="bits"):
            PixelAUROC(bits=bad)
    acc = PixelAUROC()
    acc.update(np.array([[[0.2, 0.9]]]), np.array([[[False, True]]]))
    assert acc.compute() == 1.0
    one = PixelAUROC()
    one.update(np.array([[[0.2]]]), np.array([[[True]]]))  # one anomalous pixel and no normal one
    assert math.isnan(one.compute())
    one.update(np.array([[[0.1]]]), np.array([[[False]]]))  # one of each: defined
    assert one.compute() == 1.0
    acc.reset()
    acc.update(np.array([[[0.5, 0.4]]]), np.array([[[False, True]]]))
    assert acc.compute() == 0.0, "reset forgets every earlier pixel of both classes"


def test_pixel_level_frames_without_valid_pixels_rank_lowest() -> None:
    maps = np.array([[[0.3, 0.2]], [[0.9, 0.1]], [[5.0, 5.0]]])
    masks = np.array([[[False, False]], [[True, False]], [[False, False]]])
    valid = np.array([[[True, True]], [[True, True]], [[False, False]]])
    scores, labels = pixel_level_frame_scores(maps, masks, valid)
    assert scores[2] == -np.inf and not labels[2]  # the 5.0 is not a real pixel
    np.testing.assert_allclose(scores[:2], [0.3, 0.9])
    with pytest.raises(ValueError, match="coverage"):
        pixel_level_frame_scores(maps, masks, coverage=0.0)
    with pytest.raises(ValueError, match="coverage"):
        pixel_level_frame_scores(maps, masks, coverage=1.5)
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        pixel_level_frame_scores(maps, masks, valid[:2])
    one_pixel = pixel_level_frame_scores(np.array([[[0.7, 0.2]]]), np.array([[[True, True]]]), coverage=0.1)[0]
    assert one_pixel[0] == 0.7, "a small coverage needs one detected pixel: the largest value"
