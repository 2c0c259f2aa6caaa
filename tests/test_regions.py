"""Moving regions and their attributes (features/regions.py), and the change cues (features/background.py)."""

from __future__ import annotations

import numpy as np
import pytest

from oddframe.data.loading import TransformedFrame
from oddframe.features import regions as R
from oddframe.features import with_features


def _frame(i: int, image: np.ndarray) -> TransformedFrame:
    return TransformedFrame(i, None, (image.astype(np.float32) / 127.5 - 1.0)[None], np.ones(image.shape, bool))


def test_regions_keep_big_components_and_count_the_dropped():
    mask = np.zeros((40, 60), bool)
    mask[5:15, 10:20] = True  # 100 px
    mask[30:33, 50:53] = True  # 9 px: too small
    mask[25:27, 5:7] = True  # 4 px: too small
    reg = R.find_regions(mask, min_area=20)
    assert len(reg) == 1 and reg.dropped == 2
    assert reg.boxes.tolist() == [[10, 5, 20, 15]]
    assert reg.areas.tolist() == [100]
    assert set(np.unique(reg.labels)) == {0, 1} and reg.labels[10, 15] == 1 and reg.labels[31, 51] == 0
    empty = R.find_regions(np.zeros((8, 8), bool), min_area=1)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


def test_morphology_joins_parts_and_removes_specks():
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:14] = True
    mask[10:20, 16:20] = True  # a 2-pixel gap: one object in two parts
    mask[35, 35] = True  # a speck
    cleaned = R.clean_mask(mask, close=5, open_=3)
    reg = R.find_regions(cleaned, min_area=1)
    assert len(reg) == 1 and reg.boxes[0].tolist()[0] <= 10 and reg.boxes[0].tolist()[2] >= 20
    assert not cleaned[35, 35]
    ring = np.zeros((30, 30), bool)
    ring[5:25, 5:25] = True
    ring[9:21, 9:21] = False  # an outline: the frame difference of a flat object
    assert R.clean_mask(ring, close=1, open_=1)[15, 15], "holes are filled"
    assert not R.clean_mask(ring, close=1, open_=1, fill_holes=False)[15, 15]


def test_motion_mask_combines_flow_and_change():
    mag = np.array([[0.0, 1.0], [1.0, 0.0]])
    change = np.array([[30.0, 30.0], [0.0, 0.0]])
    assert R.motion_mask(mag, flow_threshold=0.5).tolist() == [[False, True], [True, False]]
    assert R.motion_mask(mag, flow_threshold=0.5, change=change, change_threshold=18, combine="and").tolist() == [
        [False, True], [False, False]]
    assert R.motion_mask(mag, flow_threshold=0.5, change=change, change_threshold=18, combine="or").tolist() == [
        [True, True], [True, False]]
    with pytest.raises(ValueError, match="flow, and, or"):
        R.motion_mask(mag, flow_threshold=0.5, combine="xor")


def test_velocity_histogram_holds_mean_l1_speed_per_direction():
    labels = np.zeros((4, 4), np.int32)
    labels[:2, :2] = 1  # region 0: 4 pixels
    labels[2:, 2:] = 2  # region 1: 4 pixels
    reg = R.Regions(labels, np.array([[0, 0, 2, 2], [2, 2, 4, 4]]), np.array([4, 4]))
    flow = np.zeros((2, 4, 4), np.float32)
    flow[0, :2, :2] = 2.0  # region 0 moves right at 2 px/frame
    flow[0, 2:, 2:] = -1.0  # region 1 moves up-left: dx=-1, dy=-1 (L1 speed 2)
    flow[1, 2:, 2:] = -1.0
    flow[0, 3, 3] = 0.0  # one pixel of region 1 is still
    flow[1, 3, 3] = 0.0
    speed = R.velocity_histograms(flow, reg, bins=1)
    np.testing.assert_allclose(speed[:, 0], [2.0, 2.0 * 3 / 4])
    hist = R.velocity_histograms(flow, reg, bins=4)  # sectors of 90 degrees from +x, y down
    np.testing.assert_allclose(hist.sum(axis=1), speed[:, 0])
    assert hist[0, 0] == pytest.approx(2.0)  # right: angle 0
    assert hist[1, 2] == pytest.approx(1.5)  # (-1, -1): angle 225 degrees, third sector


def test_box_geometry_and_paint():
    labels = np.zeros((10, 10), np.int32)
    labels[2:6, 1:4] = 1
    reg = R.Regions(labels, np.array([[1, 2, 4, 6]]), np.array([12]))
    np.testing.assert_allclose(R.box_geometry(reg), [[4, 3, 2.5, 4.0]])
    painted = R.paint(reg, np.array([5.0]), background=0.5)
    assert painted[3, 2] == 5.0 and painted[0, 0] == 0.5 and painted.dtype == np.float32
    notched = R.Regions(np.where(np.arange(10)[:, None] < 4, 0, labels).astype(np.int32), reg.boxes, np.array([6]))
    assert R.paint(notched, np.array([5.0]), background=0.5)[3, 2] == 0.5, "off the region's pixels"
    boxed = R.paint(notched, np.array([5.0]), background=0.5, boxes=True)
    assert (boxed[2:6, 1:4] == 5.0).all() and (boxed == 5.0).sum() == 12, "the whole box, nothing else"


def test_hog_sees_orientation_and_ignores_brightness():
    size = 32
    vertical = np.zeros((size, size), np.float32)
    vertical[:, 16:] = 200.0  # a vertical edge: horizontal gradient
    horizontal = vertical.T.copy()
    h = R.hog(np.stack([vertical, horizontal, vertical * 0.5 + 20]))
    assert h.shape == (3, R.hog_size(size)) == (3, 324)
    assert np.linalg.norm(h[0] - h[2]) < 1e-3, "contrast and offset do not change the descriptor"
    assert np.linalg.norm(h[0] - h[1]) > 1.0, "a rotated edge does"
    cells = h[0].reshape(-1, 4, 9).sum(axis=(0, 1))
    assert cells.argmax() in (0, 8), "the vertical edge votes near 0 degrees (horizontal gradient)"
    grey = np.zeros((60, 80), np.uint8)
    grey[10:50, 40:] = 255
    d = R.hog_descriptors(grey, np.array([[30, 10, 50, 50], [0, 0, 8, 8]]))
    assert d.shape == (2, 324) and np.isfinite(d).all()
    assert R.hog_descriptors(grey, np.zeros((0, 4), int)).shape == (0, 324)


def test_frame_difference_and_background_model_find_the_moving_square():
    rng = np.random.default_rng(0)
    background = (rng.random((48, 48)) * 30).astype(np.uint8)
    frames = []
    for i in range(30):
        img = background.copy()
        x = 4 + i
        img[20:30, x:x + 8] = 220
        frames.append(_frame(i, img))
    out = list(with_features(frames, {"diff": {"blur": 3}, "background": {"method": "mog2", "warmup": 5}}))
    assert [f.index for f in out] == list(range(30)), "every frame, in order"
    np.testing.assert_array_equal(out[0].features["diff"], out[1].features["diff"], "the first frame takes the first difference")
    diff = out[10].features["diff"][0]
    assert diff.shape == (48, 48) and diff[25, 4 + 10 + 7] > 100 and diff[5, 5] < 10
    assert np.all(out[3].features["background"] == 0), "warm-up frames have an empty mask"
    fg = out[25].features["background"][0]
    assert fg[22:28, 4 + 25 + 4:4 + 25 + 8].mean() > 0.8, "the leading half of the square is foreground"
    assert fg[:10].mean() < 0.05


def test_background_and_difference_reject_bad_parameters():
    from oddframe.features.background import BackgroundModel, FrameDifference

    with pytest.raises(ValueError, match="mog2, knn"):
        BackgroundModel(method="gmg")
    with pytest.raises(ValueError, match="odd"):
        FrameDifference(blur=4)
