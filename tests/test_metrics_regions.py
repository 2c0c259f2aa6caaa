"""RBDC and TBDC on hand-made sequences, against a direct (slow) implementation, and the region helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oddframe.metrics import order_keys
from oddframe.metrics_regions import (
    RegionDetection,
    TrackLinker,
    boxes_iou,
    components,
    envelope_area,
    instance_regions,
)

H, W = 20, 30


def blob(y: int, x: int, value: float = 1.0, size: int = 4) -> np.ndarray:
    """A ``(H, W)`` map (or mask) that is ``value`` on a ``size`` square at row ``y``, column ``x``, 0 elsewhere."""
    m = np.zeros((H, W), np.float32)
    m[y : y + size, x : x + size] = value
    return m


def box(y: int, x: int, size: int = 4) -> np.ndarray:
    return np.array([x, y, x + size, y + size], float)


def run(maps: list[np.ndarray], regions: list[list], **kw) -> dict:
    acc = RegionDetection(**kw)
    for m, r in zip(maps, regions):
        acc.update(m, r)
    return acc.compute()


# Ten frames; one object (track "a") in frames 2..6 at (5 + t, 5), nothing elsewhere.
FRAMES = range(10)
GT = [[("a", box(5, 5 + t))] if 2 <= t <= 6 else [] for t in FRAMES]


def test_perfect_detector() -> None:
    maps = [blob(5, 5 + t) if 2 <= t <= 6 else np.zeros((H, W), np.float32) for t in FRAMES]
    out = run(maps, GT)
    # Level 1: exactly the object, no false positive. Level 0: the whole frame, one false positive per frame
    # (FPR 1) that finds nothing. Envelope: (0, 0), (0, 1), (1, 1) -> area 1.
    assert out == {"rbdc": pytest.approx(1.0), "tbdc": pytest.approx(1.0), "n_frames": 10, "n_regions": 5,
                   "n_tracks": 1}


def test_detector_shifted_off_the_region() -> None:
    # The right size, but 8 pixels beside the object: IoU 0, a false positive in each of the 5 frames.
    maps = [blob(5, 13 + t) if 2 <= t <= 6 else np.zeros((H, W), np.float32) for t in FRAMES]
    assert run(maps, GT)["rbdc"] == 0.0 and run(maps, GT)["tbdc"] == 0.0
    # Shifted by one pixel only: IoU 12/20 >= 0.1, still a hit.
    near = [blob(5, 6 + t) if 2 <= t <= 6 else np.zeros((H, W), np.float32) for t in FRAMES]
    assert run(near, GT)["rbdc"] == pytest.approx(1.0)


@pytest.mark.parametrize(("false_value", "expected"), [(2.0, 0.0), (1.0, 0.0), (0.5, 1.0)])
def test_detector_that_fires_on_every_frame(false_value: float, expected: float) -> None:
    """Finds the object, but also fires on a corner patch of every frame (10 false positives, FPR 1).

    Patch scored above the object, or tied with it: no level finds anything below FPR 1 -> 0. Below: the object
    is found first, at FPR 0 -> area 1."""
    maps = []
    for t in FRAMES:
        m = blob(14, 24, false_value) + (blob(5, 5 + t) if 2 <= t <= 6 else 0)
        maps.append(m)
    out = run(maps, GT)
    assert out["rbdc"] == pytest.approx(expected) and out["tbdc"] == pytest.approx(expected)
    # A detector that marks whole frames: one region per frame that never overlaps the object well enough.
    flat = run([np.ones((H, W), np.float32) for _ in FRAMES], GT)
    assert flat["rbdc"] == 0.0 and flat["tbdc"] == 0.0


def test_track_counts_when_ten_percent_of_its_regions_are_found() -> None:
    # Track a: 10 frames, found in 1 (10 %: detected). Track b: 10 frames, never found.
    maps, gt = [], []
    for t in range(10):
        m = blob(2, 2) if t == 0 else np.zeros((H, W), np.float32)
        maps.append(m)
        gt.append([("a", box(2, 2)), ("b", box(12, 20))])
    out = run(maps, gt)
    # Level 1: no false positive, 1 of 20 regions, 1 of 2 tracks; level 0: a whole-frame box per frame (FPR 1).
    assert out["rbdc"] == pytest.approx(1 / 20) and out["tbdc"] == pytest.approx(0.5)
    assert run(maps, gt, track_fraction=0.2)["tbdc"] == 0.0


def test_every_ground_truth_region_counts_once() -> None:
    # Two predictions on one object: one detected region, and the second is not a false positive either.
    m = blob(5, 5) + blob(5, 6)
    acc = RegionDetection()
    acc.update(np.clip(m, 0, 1), [("a", box(5, 5, 5))])
    c = acc.curve()
    assert c["rbdr"][0] == 1.0 and c["fpr"][0] == 0.0


def test_coarse_maps_are_scaled_to_the_masks() -> None:
    # A 10x15 map of a 20x30 frame: the 2x2 blob at (2, 3) is the 4x4 box at (4, 6) in mask pixels.
    small = np.zeros((10, 15), np.float32)
    small[2:4, 3:5] = 1
    acc = RegionDetection()
    acc.update(small, [("a", box(4, 6))], gt_shape=(H, W))
    assert acc.curve()["rbdr"][0] == 1.0 and acc.compute()["rbdc"] == pytest.approx(1.0)


def test_invalid_pixels_make_no_region_and_errors() -> None:
    acc = RegionDetection()
    valid = np.zeros((H, W), bool)
    acc.update(np.ones((H, W), np.float32), [("a", box(1, 1))], valid=valid)
    out = acc.compute()
    assert out["rbdc"] == 0.0 and out["n_frames"] == 1 and out["n_regions"] == 1
    empty = RegionDetection().compute()
    assert math.isnan(empty["rbdc"]) and math.isnan(empty["tbdc"]) and empty["n_frames"] == 0
    with pytest.raises(ValueError, match="non-finite"):
        RegionDetection().update(np.full((H, W), np.nan, np.float32), [])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        RegionDetection(iou=0)


def direct_curve(maps, regions, iou=0.1, alpha=0.1, bits=12):
    """The definition applied level by level, with no difference arrays: for every ladder level present in any
    map, threshold every frame, find components, count false positives, detected regions and tracks."""
    keys = [order_keys(m, bits) for m in maps]
    levels = sorted({int(k) for ks in keys for k in np.unique(ks)}, reverse=True)
    n_regions = sum(len(r) for r in regions)
    lengths: dict = {}
    for r in regions:
        for t, _ in r:
            lengths[t] = lengths.get(t, 0) + 1
    points = []
    for level in levels:
        fp, det, hits = 0, 0, {t: 0 for t in lengths}
        for ks, r in zip(keys, regions):
            _, boxes, _ = components(ks >= level)
            gt = np.array([b for _, b in r]).reshape(-1, 4)
            m = boxes_iou(boxes, gt) >= iou
            fp += int((~m.any(axis=1)).sum())
            for g, (t, _) in enumerate(r):
                if m[:, g].any():
                    det += 1
                    hits[t] += 1
        tracks = sum(hits[t] >= alpha * lengths[t] for t in lengths)
        points.append((fp / len(maps), det / n_regions, tracks / len(lengths)))
    return np.array(points)


def test_streaming_matches_the_direct_definition() -> None:
    rng = np.random.default_rng(0)
    maps, regions = [], []
    for t in range(12):
        m = rng.gamma(1.0, 0.05, size=(H, W)).astype(np.float32)
        gt = []
        if t >= 3:  # a moving object, scored a little above the background most of the time
            m[6:11, 4 + t : 9 + t] += rng.uniform(0.0, 0.4)
            gt.append(("obj", box(6, 4 + t, 5)))
        if t % 4 == 0:  # a second, briefly visible object
            gt.append(("other", box(14, 22, 3)))
        maps.append(m)
        regions.append(gt)
    acc = RegionDetection()
    for m, r in zip(maps, regions):
        acc.update(m, r)
    c = acc.curve()
    streamed = np.stack([c["fpr"], c["rbdr"], c["tbdr"]], axis=1)
    direct = direct_curve(maps, regions)
    # The streamed curve lists levels where something changes; the direct one every level: same values there.
    direct_at = {tuple(np.round(p, 12)) for p in direct}
    assert {tuple(np.round(p, 12)) for p in streamed} <= direct_at
    assert envelope_area(streamed[:, 0], streamed[:, 1]) == pytest.approx(envelope_area(direct[:, 0], direct[:, 1]))
    assert acc.compute()["tbdc"] == pytest.approx(envelope_area(direct[:, 0], direct[:, 2]))
    assert 0 < acc.compute()["rbdc"] < 1


def test_envelope_area() -> None:
    # Non-monotone operating points: the envelope keeps the best rate within each false-positive budget, as a
    # step from the FPR where a level reaches it: 0 on [0, 0.2), 0.6 on [0.2, 1] (the rate 1.0 needs FPR 2).
    assert envelope_area([0.5, 0.2, 2.0], [0.4, 0.6, 1.0]) == pytest.approx(0.8 * 0.6)
    # A level that jumps from nothing to whole-frame regions earns its rate only from where it gets there.
    assert envelope_area([0.75, 3.0], [0.33, 0.5]) == pytest.approx(0.25 * 0.33)
    assert envelope_area([], []) == 0.0
    with pytest.raises(ValueError, match="one length"):
        envelope_area([0.1], [0.1, 0.2])


def test_boxes_and_components() -> None:
    assert boxes_iou([[0, 0, 2, 2]], [[1, 1, 3, 3], [5, 5, 6, 6]]).tolist() == [[pytest.approx(1 / 7), 0.0]]
    mask = np.zeros((H, W), bool)
    mask[1:3, 1:3] = True
    mask[10, 10] = True  # a speck
    labels, boxes, areas = components(mask, min_area=2)
    assert boxes.tolist() == [[1, 1, 3, 3]] and areas.tolist() == [4] and labels[10, 10] == 0


def test_tracks_from_ids_and_from_overlap() -> None:
    ids = np.zeros((H, W), np.int32)
    ids[2:6, 2:6] = 3
    ids[2:4, 10:20] = 3  # the same object split by an occluder: the part with the larger box counts
    ids[12:14, 12:14] = 5
    assert [(t, b.tolist()) for t, b in instance_regions(ids)] == [(3, [10, 2, 20, 4]), (5, [12, 12, 14, 14])]
    link = TrackLinker()
    first = link(blob(2, 2) + blob(12, 20) > 0)
    second = link(blob(3, 3) + blob(12, 22) > 0)  # both moved a little: same tracks
    third = link(blob(14, 2) > 0)  # overlaps neither: a new track
    assert [t for t, _ in first] == [t for t, _ in second] == [0, 1] and [t for t, _ in third] == [2]
    link.reset()
    assert [t for t, _ in link(blob(2, 2) > 0)] == [3]  # new video: new track, never a reused id
    # One track continues in one component per frame: a split gives the larger overlap the track.
    link.reset()
    whole = np.zeros((H, W), bool)
    whole[2:6, 2:12] = True
    link(whole)
    halves = np.zeros((H, W), bool)
    halves[2:6, 2:4] = halves[2:6, 6:12] = True
    assert [t for t, _ in link(halves)] == [5, 4]


def test_large_maps_use_the_region_grid() -> None:
    # A 256x384 map of a 20x30 frame is averaged down to 128 on its long side: the blob still lands on its box.
    big = np.zeros((256, 384), np.float32)
    big[64:115, 64:115] = 1  # the 4x4 mask box at (5, 5), in map pixels (12.8x)
    acc = RegionDetection()
    acc.update(big, [("a", box(5, 5))], gt_shape=(H, W))
    assert acc.compute()["rbdc"] == pytest.approx(1.0)
    exact = RegionDetection(max_side=None)
    exact.update(big, [("a", box(5, 5))], gt_shape=(H, W))
    assert exact.compute()["rbdc"] == pytest.approx(1.0)
