"""Boxes from calibrated per-pixel thresholds: none on normal maps, one around a real anomaly, merged, capped,
strongest first; the live verdict of the video equals the final one; the background writer loses nothing."""

from __future__ import annotations

import numpy as np
import pytest

from oddframe.config import load_config
from oddframe.pipeline.engine import postprocess
from oddframe.pipeline.outputs import LiveScores
from oddframe.render.panel import FLAG_COLOUR, compose_panel
from oddframe.render.regions import BoxRule, exceedance, find_regions
from oddframe.render.video import AnomalyVideoWriter, BackgroundVideoWriter, count_frames
from oddframe.thresholds import PixelThresholdFit


def normal_maps(n: int = 200, h: int = 40, w: int = 60, seed: int = 0) -> np.ndarray:
    """Maps of "normal footage": low noise everywhere, a busy band (a walkway) where errors are always higher."""
    rng = np.random.default_rng(seed)
    maps = rng.gamma(2.0, 0.002, (n, h, w)).astype(np.float32)
    maps[:, 15:25] += rng.gamma(2.0, 0.05, (n, 10, w)).astype(np.float32)
    return maps


@pytest.fixture(scope="module")
def rule() -> BoxRule:
    fit = PixelThresholdFit(quantile=0.999, smoothing=1.0, normal_rate=0.01, min_area=0.002, capacity=128)
    for m in normal_maps():
        fit.add(m)
    tmap, floor = fit.result()
    assert tmap.shape == (40, 60) and floor > 0 and (tmap >= floor).all()
    assert tmap[15:25].mean() > 5 * tmap[:10].mean(), "the busy band gets its own, higher thresholds"
    return BoxRule(threshold=tmap, smoothing=1.0, high_ratio=3.0, min_area=0.002, merge=0.05, max_boxes=3)


def test_new_normal_maps_get_no_box(rule):
    boxes = [len(find_regions(exceedance(m, rule), rule)) for m in normal_maps(100, seed=7)]
    assert np.mean(boxes) < 0.1, boxes  # a fixed threshold on the busy band would box it in every frame


def test_an_anomaly_gets_one_box_around_it_even_in_a_quiet_area(rule):
    m = normal_maps(1, seed=9)[0]
    m[3:9, 40:48] += 0.2  # a small object where nothing ever moves
    boxes = find_regions(exceedance(m, rule), rule)
    assert len(boxes) == 1
    b = boxes[0]
    assert 38 <= b.x0 <= 40 and 48 <= b.x1 <= 50 and 1 <= b.y0 <= 3 and 9 <= b.y1 <= 11 and b.level == "high"


def test_near_regions_merge_small_ones_drop_and_the_cap_keeps_the_strongest(rule):
    m = normal_maps(1, seed=11)[0]
    m[2:6, 2:6] += 0.3  # two blobs 2 pixels apart: one region
    m[2:6, 8:12] += 0.3
    m[32:36, 50:54] += 0.05  # weaker
    m[30:34, 20:24] += 0.6  # strongest
    boxes = find_regions(exceedance(m, rule), rule)
    assert [(b.x0 <= 3 and b.x1 >= 11) for b in boxes].count(True) == 1
    capped = BoxRule(threshold=rule.threshold, smoothing=1.0, high_ratio=3.0, min_area=0.002, merge=0.05, max_boxes=1)
    strongest = find_regions(exceedance(m, capped), capped)
    assert len(strongest) == 1 and strongest[0].x0 >= 18 and strongest[0].y0 >= 28
    big = BoxRule(threshold=rule.threshold, smoothing=1.0, high_ratio=3.0, min_area=0.03, merge=0.0, max_boxes=5)
    areas = sorted(b.area for b in find_regions(exceedance(m, big), big))
    assert areas and min(areas) >= 0.03 * 40 * 60  # regions smaller than 3% of the frame are dropped
    assert len(areas) < len(boxes)


def test_boxes_follow_the_frame_shown_and_the_panel_says_which_frame_and_its_verdict(rule):
    m = normal_maps(1, seed=5)[0]
    m[3:9, 40:48] += 0.2
    frame = np.zeros((1, 240, 360), np.float32)  # shown at 6x the model's resolution
    flagged = compose_panel(frame, m, box_rule=rule, title="cam #12", flagged=True, frame_loss=3.2)
    normal = compose_panel(frame, m * 0, box_rule=rule, title="cam #13", flagged=False, frame_loss=0.1)
    assert flagged.shape == normal.shape
    border = flagged[-2, 2]  # bottom-left corner of the frame panel
    assert tuple(border) == FLAG_COLOUR and tuple(normal[-2, 2]) != FLAG_COLOUR
    header = flagged[:20].astype(int)
    assert (np.abs(header - np.array(FLAG_COLOUR)).sum(axis=2) < 60).sum() > 20  # "cam #12   FLAGGED" in red
    invalid = compose_panel(frame, m, box_rule=rule, title="cam #14", invalid=True)
    assert invalid.shape == flagged.shape


def test_live_scores_equal_the_final_ones(tmp_path):
    config = load_config(None, ["score.smoothing_sigma=2", "score.normalise=calibrated"])
    raw = np.random.default_rng(0).random(40)
    raw[17] = np.nan  # a frame without a score
    reference = {"mean": 0.5, "std": 0.2}
    final = postprocess(raw, config, reference)
    live = LiveScores(config, reference, threshold=1.0, earlier=list(raw[:5]))
    out = []
    for i in range(5, 40):
        out += live.push(raw[i], i)
        assert len(out) <= max(0, i - 5 + 1 - live.radius) + 1
    out += live.finish()
    assert [i for i, _, _ in out] == list(range(5, 40))
    got = np.array([s for _, s, _ in out])
    np.testing.assert_allclose(got, final[5:], rtol=1e-12, equal_nan=True)
    assert [f for i, s, f in out] == [None if np.isnan(final[i]) else bool(final[i] > 1.0) for i in range(5, 40)]
    per_video = LiveScores(load_config(None, ["score.normalise=minmax"]), None, threshold=0.5)
    assert per_video.push(0.3, "a") == [("a", 0.3, None)]  # known only at the end of the video: no verdict


def test_background_writer_writes_every_frame_and_reports_errors(tmp_path):
    writer = AnomalyVideoWriter(tmp_path / "v.mp4", fps=10, preset="ultrafast")
    bg = BackgroundVideoWriter(writer, maxsize=2)
    for i in range(30):
        bg.submit(lambda calibrated, i=i: (np.full((32, 32), i / 30 - 0.5, np.float32), np.zeros((32, 32)),
                                           {"title": f"#{i}"}))
    bg.close()
    assert count_frames(tmp_path / "v.mp4") == 30 and not (tmp_path / "v.partial.mp4").exists()
    assert writer.render_s > 0 and writer.encode_s > 0
    bad = BackgroundVideoWriter(AnomalyVideoWriter(tmp_path / "w.mp4"))
    bad.submit(lambda calibrated: (np.zeros((32, 32)), np.zeros((8, 8)), {}))  # map and frame sizes differ
    with pytest.raises(ValueError, match="does not match frame size"):
        bad.close()
