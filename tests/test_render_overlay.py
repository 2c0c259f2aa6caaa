"""Overlay maths: the 0-1 loss, boxes around a synthetic anomaly, box colours, frame scales, the panel."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from oddframe.render.overlay import (
    BOX_COLOURS,
    Box,
    colorize,
    draw_boxes,
    draw_outline,
    find_boxes,
    frame_to_rgb,
    unit_loss,
)
from oddframe.render.panel import compose_panel

RED, LIGHT_BLUE = np.array(BOX_COLOURS["low"]), np.array(BOX_COLOURS["high"])


def amap_for_loss(loss01: np.ndarray, map_power: float = 2) -> np.ndarray:
    """The anomaly map whose 0-1 loss is ``loss01`` (inverse of unit_loss): |e| = 2 sqrt(loss01)."""
    return (2 * np.sqrt(loss01)) ** map_power


def blob_map(peak: float, h: int = 48, w: int = 64, map_power: float = 2) -> np.ndarray:
    """A zero map with a Gaussian bump of 0-1 loss ``peak`` centred at row 30, column 40."""
    yy, xx = np.mgrid[0:h, 0:w]
    loss = peak * np.exp(-((yy - 30) ** 2 + (xx - 40) ** 2) / (2 * 3.0**2))
    return amap_for_loss(loss, map_power).astype(np.float32)


def test_unit_loss_matches_hand_computation():
    # |e| = 0.5 on the [-1, 1] scale is 0.25 on [0, 1]; squared: 0.0625, whatever the map's power.
    assert unit_loss(np.array([[0.25]]), 2)[0, 0] == pytest.approx(0.0625)
    assert unit_loss(np.array([[0.5]]), 1)[0, 0] == pytest.approx(0.0625)
    # The largest possible error (2 on [-1, 1]) is 1 on the 0-1 scale; NaN (missing pixels) counts as 0.
    out = unit_loss(torch.tensor([[4.0, float("nan")]]), 2)
    np.testing.assert_allclose(out, [[1.0, 0.0]])
    with pytest.raises(ValueError, match="map_power"):
        unit_loss(np.zeros((2, 2)), 0)
    with pytest.raises(ValueError, match=">= 0"):
        unit_loss(-np.ones((2, 2)), 2)


def test_blob_gets_one_box_around_it_and_normal_map_none():
    loss = unit_loss(blob_map(0.05), 2)
    (box,) = find_boxes(loss)
    assert box.x0 <= 40 < box.x1 and box.y0 <= 30 < box.y1
    # The box is tight: pixels >= 0.02 lie within radius 3 * sqrt(2 ln 2.5) ~ 4.1 of the centre.
    assert 35 <= box.x0 and box.x1 <= 46 and 25 <= box.y0 and box.y1 <= 36
    assert box.level == "low" and box.peak == pytest.approx(0.05, rel=1e-4)
    assert box.area == int((loss >= 0.02).sum())
    normal = np.random.default_rng(0).uniform(0, 1e-3, (48, 64)).astype(np.float32)
    assert find_boxes(unit_loss(normal, 2)) == []


def test_levels_follow_thresholds_and_min_area():
    loss = np.zeros((40, 40), np.float32)
    loss[2:6, 2:6] = 0.05  # peak between low and high -> low
    loss[20:30, 20:25] = 0.03
    loss[25, 22] = 0.5  # one pixel above high inside the second region -> the whole region is high
    loss[35, 35] = 0.9  # a lone pixel: dropped by min_area
    boxes = find_boxes(loss, threshold_low=0.02, threshold_high=0.08, min_area=4)
    assert [(b.level, b.x0, b.y0, b.x1, b.y1) for b in boxes] == [("high", 20, 20, 25, 30), ("low", 2, 2, 6, 6)]
    assert len(find_boxes(loss, min_area=1)) == 3
    # Raising threshold_high above the peak turns the high region low.
    assert {b.level for b in find_boxes(loss, threshold_high=0.6)} == {"low"}
    with pytest.raises(ValueError, match="threshold_low < threshold_high"):
        find_boxes(loss, threshold_low=0.1, threshold_high=0.05)


def test_diagonal_pixels_are_one_region():
    loss = np.zeros((10, 10), np.float32)
    for i in range(5):
        loss[i, i] = 0.5  # 8-connectivity joins diagonal neighbours
    assert len(find_boxes(loss, min_area=1)) == 1


def test_draw_boxes_colours_the_border_only():
    rgb = np.zeros((20, 20, 3), np.uint8)
    out = draw_boxes(rgb, [Box(2, 3, 8, 10, "low", 0.05, 30), Box(12, 12, 18, 18, "high", 0.2, 30)])
    assert rgb.max() == 0  # the input is not modified
    np.testing.assert_array_equal(out[3, 2], RED)  # top-left corner (x0, y0)
    np.testing.assert_array_equal(out[9, 7], RED)  # bottom-right (x1 - 1, y1 - 1): exclusive ends
    assert out[10, 8].max() == 0 and out[6, 5].max() == 0  # outside the box and its inside are untouched
    np.testing.assert_array_equal(out[12, 15], LIGHT_BLUE)


def test_draw_outline_marks_the_mask_edge_in_green():
    mask = np.zeros((10, 10), bool)
    mask[3:7, 3:7] = True
    out = draw_outline(np.zeros((40, 40, 3), np.uint8), mask)  # mask upscaled to the image
    green = (out == [0, 255, 0]).all(axis=2)
    assert green[12, 12] and green[27, 20] and not green[20, 20] and not green[5, 5]


@pytest.mark.parametrize("peak, colour, other", [(0.05, RED, LIGHT_BLUE), (0.2, LIGHT_BLUE, RED)])
def test_panel_box_colour_and_place(peak, colour, other):
    h, w = 48, 64
    frame = np.zeros((1, h, w), np.float32)
    panel = compose_panel(frame, blob_map(peak), map_power=2, style="standard")
    f = 6  # 48 rows are upscaled by ceil(256 / 48) = 6 so the text is readable
    head = panel.shape[0] - h * f
    assert head > 0 and panel.shape[1] >= 2 * w * f
    heat = panel[head:, w * f + 6 : 2 * w * f + 6]  # right panel (after the frame and a 6-pixel gap)
    is_colour = (heat == colour).all(axis=2)
    assert is_colour.any() and not (heat == other).all(axis=2).any()
    ys, xs = np.nonzero(is_colour)
    assert ys.min() <= 30 * f <= ys.max() and xs.min() <= 40 * f <= xs.max()  # the box surrounds the blob
    left = panel[head:, : w * f]
    assert (left == colour).all(axis=2).any()  # mode "both": boxes on the frame too


def test_panel_modes_and_normal_frame():
    frame = np.zeros((1, 48, 64), np.float32)
    heat_only = compose_panel(frame, blob_map(0.2), mode="heatmap")
    boxes_only = compose_panel(frame, blob_map(0.2), mode="boxes")
    body = slice(heat_only.shape[0] - 48 * 6, None)
    panels = slice(0, 2 * 64 * 6 + 6)  # frame and heatmap; the colour bar marks the thresholds in box colours
    assert not (heat_only[body, panels] == LIGHT_BLUE).all(axis=2).any()
    right = boxes_only[body, 64 * 6 + 6 : 2 * 64 * 6 + 6]
    assert not (right == LIGHT_BLUE).all(axis=2).any() and (boxes_only[body, : 64 * 6] == LIGHT_BLUE).all(axis=2).any()
    normal = compose_panel(frame, np.full((48, 64), 1e-4, np.float32))
    assert not (normal[body, panels] == RED).all(axis=2).any()
    with pytest.raises(ValueError, match="mode must be one of"):
        compose_panel(frame, blob_map(0.2), mode="boxes+heatmap")
    with pytest.raises(ValueError, match="does not match"):
        compose_panel(frame, np.zeros((10, 10)))


def test_panel_size_is_fixed_and_diagnostic_adds_text_rows():
    rng = np.random.default_rng(1)
    frame = rng.uniform(-1, 1, (3, 32, 40)).astype(np.float32)
    a = compose_panel(frame, rng.uniform(0, 0.01, (32, 40)), gt_mask=np.ones((32, 40)), frame_loss=0.5)
    b = compose_panel(frame, blob_map(0.5, 32, 40) * 0 + 3.0)
    diag = compose_panel(frame, blob_map(0.5, 32, 40) * 0, style="diagnostic", title="video 01 frame 7")
    assert a.shape == b.shape and a.dtype == np.uint8 and a.shape[0] >= 256
    assert diag.shape[1] == a.shape[1] and diag.shape[0] > a.shape[0]
    assert compose_panel(frame, np.zeros((32, 40)), scale=2, min_height=0).shape[0] < a.shape[0]


def test_frame_scales():
    ramp = np.linspace(-1, 1, 101, dtype=np.float32)[None].repeat(4, 0)
    lin = frame_to_rgb(ramp, scale="linear")
    assert lin.shape == (4, 101, 3) and lin[0, 0, 0] == 0 and lin[0, -1, 0] == 255 and lin[0, 50, 0] in (127, 128)
    low = frame_to_rgb(ramp, scale="low")
    assert low[0, 25, 0] > lin[0, 25, 0] + 40  # asinh lifts the faint end
    high = frame_to_rgb(ramp, scale="high")
    assert high[0, :90, 0].max() == 0 and high[0, -1, 0] == 255  # only the top 10% is shown
    hot = frame_to_rgb(ramp, scale="linear", cmap="afmhot")
    assert not np.array_equal(hot[..., 0], hot[..., 2])  # a colormap, not grey
    with pytest.raises(ValueError, match="scale must be one of"):
        frame_to_rgb(ramp, scale="log")
    with pytest.raises(ValueError, match="C = 1 or 3"):
        frame_to_rgb(np.zeros((2, 4, 4)))


def test_colorize_uses_the_colormap_ends():
    out = colorize(np.array([[0.0, 0.5, 1.0, 2.0]]), vmax=1.0, cmap="gray")
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255, 255])
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(np.zeros((2, 2)), cmap="no-such-map")


def test_real_ped2_frame_with_its_official_mask(shared_data):
    """A Ped2 test frame whose residual is high exactly on the annotated cyclist: the box matches the mask."""
    frame_u8 = cv2.imread(str(shared_data / "ped2/testing/frames/01/100.jpg"), cv2.IMREAD_GRAYSCALE)
    mask = cv2.imread(str(shared_data / "ped2/testing/masks/01/100.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert frame_u8 is not None and mask.any()
    frame = frame_u8.astype(np.float32)[None] / 127.5 - 1.0
    loss = np.where(mask, 0.1, 0.001).astype(np.float32)  # a detector that is right about the anomaly
    ys, xs = np.nonzero(mask)
    boxes = find_boxes(loss)
    big = max(boxes, key=lambda b: b.area)
    assert big.level == "high" and big.area <= mask.sum()
    assert xs.min() <= big.x0 and big.x1 <= xs.max() + 1 and ys.min() <= big.y0 and big.y1 <= ys.max() + 1
    panel = compose_panel(frame, amap_for_loss(loss), gt_mask=mask, frame_cmap=None)
    h = 240 * 2  # 240 rows are upscaled twice to reach 256
    green = (panel[-h:, : 360 * 2] == [0, 255, 0]).all(axis=2)
    gy, gx = np.nonzero(green)
    assert green.any() and abs(gy.min() - 2 * ys.min()) <= 2 and abs(gx.max() - 2 * xs.max()) <= 3
