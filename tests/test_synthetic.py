"""Synthetic sequences: determinism, smooth normal motion, exact anomaly masks and labels, the written layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from oddframe.data.synthetic import (
    ANOMALY_KINDS,
    default_anomaly_frames,
    make_split,
    make_video,
    normal_sequence,
    write_synthetic_dataset,
)
from oddframe.errors import LayoutError


def _normal_of(kind: str, seed: int, length: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The anomalous video and the normal video it was drawn over (same seed, same trajectory)."""
    bad = make_video("v", rng=np.random.default_rng(seed), length=length, anomaly=kind)
    good = make_video("v", rng=np.random.default_rng(seed), length=length)
    return bad.frames, good.frames


def _centroid(frame: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(frame)
    return np.array([ys.mean(), xs.mean()])


def test_normal_sequence_shape_and_determinism() -> None:
    a = normal_sequence(np.random.default_rng(7))
    b = normal_sequence(np.random.default_rng(7))
    c = normal_sequence(np.random.default_rng(8))
    assert a.shape == (4, 64, 64) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("length", [4, 16, 200])
def test_normal_circle_bright_inside_and_smooth(length: int) -> None:
    frames = normal_sequence(np.random.default_rng(1), length=length, size=64)
    # One bright intensity on an exactly black background, never touching the border.
    values = np.unique(frames)
    assert values[0] == 0 and len(values) == 2 and values[1] >= 180
    assert not frames[:, 0, :].any() and not frames[:, -1, :].any()
    assert not frames[:, :, 0].any() and not frames[:, :, -1].any()
    area = (frames > 0).sum(axis=(1, 2))
    assert area.min() > 60  # radius >= 10 % of 64 px -> area > 100 px; 60 leaves room for rasterisation
    # Smooth: the centre moves a few pixels per frame at most (drift <= 4 % of the size, plus raster jitter).
    steps = np.linalg.norm(np.diff([_centroid(f) for f in frames], axis=0), axis=1)
    assert steps.max() < 0.04 * 64 + 1.0


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
@pytest.mark.parametrize("length", [4, 16])
def test_anomaly_masks_exact_and_labels(kind: str, length: int) -> None:
    video = make_video("v", rng=np.random.default_rng(3), length=length, anomaly=kind)
    bad, normal = _normal_of(kind, 3, length)
    np.testing.assert_array_equal(video.frames, bad)
    assert video.masks.dtype == bool and video.masks.shape == (length, 64, 64)
    # The anomalous video equals the normal one outside the mask and differs everywhere inside it.
    np.testing.assert_array_equal(video.frames[~video.masks], normal[~video.masks])
    assert (video.frames[video.masks] != normal[video.masks]).all()
    # Labels mark exactly the default frames, and every one of them is visibly changed (>= 5 pixels).
    expected = np.zeros(length, np.uint8)
    expected[default_anomaly_frames(kind, length)] = 1
    np.testing.assert_array_equal(video.labels, expected)
    assert video.masks[video.labels == 1].sum(axis=(1, 2)).min() >= 5


def test_zeroed_defaults_to_third_frame_and_masks_the_circle() -> None:
    video = make_video("v", rng=np.random.default_rng(0), anomaly="zeroed")
    _, normal = _normal_of("zeroed", 0)
    np.testing.assert_array_equal(video.labels, [0, 0, 1, 0])
    assert not video.frames[2].any()
    np.testing.assert_array_equal(video.masks[2], normal[2] > 0)
    assert default_anomaly_frames("zeroed", 2) == [1]


def test_kinds_do_what_they_say() -> None:
    rng_seed = 5
    obj, normal = _normal_of("object", rng_seed, 16)
    frames = default_anomaly_frames("object", 16)
    assert frames == [6, 7, 8, 9]
    # object: a new mid-grey level appears only in the anomalous frames.
    assert (obj[frames] == 110).any(axis=(1, 2)).all() and not (normal == 110).any()
    # jump: the circle's centre is displaced by at least a radius (~6 px at 64) in the jump frames.
    jump, normal = _normal_of("jump", rng_seed, 16)
    shift = [np.linalg.norm(_centroid(jump[f]) - _centroid(normal[f])) for f in frames]
    assert min(shift) > 6
    # appearance: the circle gains a second, darker grey level (texture) but keeps its footprint.
    app, normal = _normal_of("appearance", rng_seed, 16)
    assert all(len(np.unique(app[f])) == 3 for f in frames)
    np.testing.assert_array_equal(app > 0, normal > 0)
    # frozen: every frame of the stretch repeats the frame before the stretch.
    frozen, normal = _normal_of("frozen", rng_seed, 16)
    for f in frames:
        np.testing.assert_array_equal(frozen[f], normal[frames[0] - 1])


def test_explicit_anomaly_frames_and_errors() -> None:
    video = make_video("v", rng=np.random.default_rng(0), length=8, anomaly="object", anomaly_frames=[1, 5])
    np.testing.assert_array_equal(np.flatnonzero(video.labels), [1, 5])
    with pytest.raises(ValueError, match="zeroed"):
        make_video("v", rng=np.random.default_rng(0), anomaly="smoke")
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        make_video("v", rng=np.random.default_rng(0), anomaly="zeroed", anomaly_frames=[4])
    with pytest.raises(ValueError, match="frame 0"):
        make_video("v", rng=np.random.default_rng(0), anomaly="frozen", anomaly_frames=[0])
    with pytest.raises(ValueError, match="size"):
        normal_sequence(np.random.default_rng(0), size=8)


def test_make_split_counts_and_determinism() -> None:
    a = make_split(n_videos=8, length=4, size=32, anomaly="jump", seed=11, anomaly_fraction=0.5)
    b = make_split(n_videos=8, length=4, size=32, anomaly="jump", seed=11, anomaly_fraction=0.5)
    assert [v.name for v in a] == [f"{i:02d}" for i in range(1, 9)]
    assert sum(v.labels.any() for v in a) == 4
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.frames, y.frames)
        np.testing.assert_array_equal(x.masks, y.masks)
    normal = make_split(n_videos=3, length=4, size=32, anomaly=None, seed=11)
    assert not any(v.labels.any() for v in normal)


def test_write_synthetic_dataset_layout(tmp_path: Path) -> None:
    root = tmp_path / "syn"
    summary = write_synthetic_dataset(root, n_train=3, n_test=2, length=5, size=32, anomaly="object", seed=4)
    assert summary["n_train_frames"] == 15 and summary["n_test_frames"] == 10
    train = sorted(p.name for p in (root / "training" / "frames").iterdir())
    assert train == ["01", "02", "03"]
    assert sorted(p.name for p in (root / "training" / "frames" / "01").iterdir()) == [f"{i:03d}.png" for i in range(5)]
    labels = np.load(root / "testing" / "test_frame_mask" / "02.npy")
    masks = np.load(root / "testing" / "test_pixel_mask" / "02.npy")
    assert labels.dtype == np.uint8 and labels.shape == (5,)
    assert masks.shape == (5, 32, 32) and set(np.unique(masks)) <= {0, 1}
    np.testing.assert_array_equal(labels, masks.any(axis=(1, 2)))
    assert summary["n_anomalous_frames"] == sum(
        int(np.load(p).sum()) for p in (root / "testing" / "test_frame_mask").iterdir()
    )
    # PNG is lossless: the written frame is the generated one, and it differs from a normal frame in the mask.
    frame = cv2.imread(str(root / "testing" / "frames" / "02" / "002.png"), cv2.IMREAD_UNCHANGED)
    assert frame.shape == (32, 32) and (frame[masks[2] == 1] == 110).any()
    with pytest.raises(LayoutError, match="not empty"):
        write_synthetic_dataset(root, n_train=1, n_test=1, size=32)
    again = write_synthetic_dataset(root, n_train=1, n_test=1, size=32, fmt="npy", overwrite=True)
    assert again["n_train_videos"] == 1 and not (root / "training" / "frames").exists()
    assert np.load(root / "training" / "videos" / "01.npy").shape == (4, 32, 32)
