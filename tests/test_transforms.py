"""Frame transforms: scaling against hand computations, resizing, masks, stretches, grey <-> colour."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from oddframe.data.sources import Frame, open_source
from oddframe.data.transforms import FrameTransform, resize, robust_scale, scale_uint8, stretch_unit, to_grey


def frame(data: np.ndarray, valid: np.ndarray | None = None) -> Frame:
    return Frame(index=0, time=None, data=data, valid=valid)


def test_scale_uint8_hand_values() -> None:
    out = scale_uint8(np.array([0, 127.5, 255, 51]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, 0.0, 1.0, -0.6], atol=1e-6)


def test_uint8_frame_default_transform() -> None:
    data = np.array([[0, 255], [51, 204]], dtype=np.uint8)
    out, valid = FrameTransform()(frame(data))
    assert out.shape == (1, 2, 2) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out[0], [[-1.0, 1.0], [-0.6, 0.6]], atol=1e-6)
    assert valid.dtype == bool and valid.all()


def test_robust_scale_percentiles_hand_values() -> None:
    x = np.arange(101, dtype=np.float32).reshape(1, 101)  # percentile p of 0..100 is p itself
    np.testing.assert_allclose(robust_scale(x, percentiles=(0, 100))[0, [0, 25, 50, 100]],
                               [-1.0, -0.5, 0.0, 1.0], atol=1e-6)
    out = robust_scale(x, percentiles=(10, 90))[0]
    np.testing.assert_allclose(out[[0, 10, 30, 50, 90, 100]], [-1.0, -1.0, -0.5, 0.0, 1.0, 1.0], atol=1e-6)
    # Fixed limits replace the percentiles.
    np.testing.assert_allclose(robust_scale(np.array([[0.0, 25.0, 50.0]]), vmin=0, vmax=50)[0], [-1, 0, 1])


def test_robust_scale_ignores_invalid_pixels() -> None:
    x = np.arange(101, dtype=np.float32).reshape(1, 101)
    x_outlier = x.copy()
    x_outlier[0, 3] = 1e9
    valid = np.ones_like(x, dtype=bool)
    valid[0, 3] = False
    out = robust_scale(x_outlier, valid, percentiles=(0, 100))
    assert out[0, 3] == -1.0
    # The other pixels are scaled by the limits of the valid ones only: 0 and 100.
    np.testing.assert_allclose(np.delete(out[0], 3), np.delete(x[0] / 50 - 1, 3), atol=1e-6)
    assert robust_scale(np.full((2, 2), 7.0)).tolist() == [[0.0, 0.0], [0.0, 0.0]]  # constant: mid grey
    assert (robust_scale(x, np.zeros_like(valid)) == -1).all()  # nothing valid


@pytest.mark.parametrize("stretch", ["log", "asinh"])
def test_stretches_are_monotone_and_bounded(stretch: str) -> None:
    u = np.linspace(0.0, 1.0, 201)
    s = stretch_unit(u, stretch)
    assert s[0] == pytest.approx(0.0) and s[-1] == pytest.approx(1.0)
    assert np.all(np.diff(s) > 0)
    assert s[20] > u[20]  # both brighten faint values (why they are used for solar EUV images)
    x = np.geomspace(1.0, 1e5, 64, dtype=np.float32).reshape(8, 8)  # five orders of magnitude
    out, _ = FrameTransform(scaling="minmax", stretch=stretch)(frame(x))
    flat = out.ravel()
    assert flat.min() == pytest.approx(-1.0) and flat.max() == pytest.approx(1.0)
    assert np.all(np.diff(flat) > 0)


def test_log_stretch_hand_value() -> None:
    # u = 0.5 -> log(1 + 1000 * 0.5) / log(1001) = 0.8997...; mapped to 2 * 0.8997 - 1.
    x = np.array([[0.0, 50.0, 100.0]], dtype=np.float32)
    out = robust_scale(x, percentiles=(0, 100), stretch="log")
    assert out[0, 1] == pytest.approx(2 * np.log(501) / np.log(1001) - 1, abs=1e-6)


def test_nan_becomes_invalid_and_minus_one() -> None:
    data = np.array([[1.0, np.nan], [3.0, 5.0]], dtype=np.float32)
    out, valid = FrameTransform()(frame(data))  # auto -> robust for float data
    assert valid.tolist() == [[True, False], [True, True]]
    assert out[0, 0, 1] == -1.0 and np.isfinite(out).all()
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_auto_uses_robust_for_16_bit() -> None:
    data = np.arange(0, 4000, 10, dtype=np.uint16).reshape(20, 20)
    out, _ = FrameTransform(percentiles=(0, 100))(frame(data))
    assert out.min() == pytest.approx(-1.0) and out.max() == pytest.approx(1.0)  # not 4000 / 127.5 - 1
    out8, _ = FrameTransform(scaling="uint8")(frame(np.full((2, 2), 100, dtype=np.uint16)))
    assert out8[0, 0, 0] == pytest.approx(100 / 127.5 - 1)


def test_grey_and_colour_conversion() -> None:
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red: luma 0.299 * 255
    out, _ = FrameTransform(channels=1, scaling="uint8")(frame(rgb))
    assert out.shape == (1, 2, 3)
    assert out[0, 0, 0] == pytest.approx(0.299 * 255 / 127.5 - 1, abs=1e-5)
    col, _ = FrameTransform(channels=3)(frame(rgb))
    assert col.shape == (3, 2, 3) and col[:, 0, 0].tolist() == [1.0, -1.0, -1.0]  # channel order kept
    grey = np.array([[0, 255]], dtype=np.uint8)
    rep, _ = FrameTransform(channels=3)(frame(grey))
    assert rep.shape == (3, 1, 2) and (rep == rep[0]).all() and rep[:, 0, 1].tolist() == [1.0, 1.0, 1.0]
    rgba = np.dstack([rgb, np.full((2, 3), 7, dtype=np.uint8)])
    assert np.array_equal(FrameTransform(channels=3)(frame(rgba))[0], col)  # alpha dropped


def test_to_grey_matches_opencv() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    ours = to_grey(rgb)
    theirs = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert ours.shape == (16, 16) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 0.5 + 1e-3  # OpenCV rounds to uint8, we keep the fraction
    with pytest.raises(ValueError, match="got shape"):
        to_grey(rgb[:, :, 0])


def test_resize_shapes() -> None:
    data = np.random.default_rng(1).integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    for size in [(16, 24), (64, 96), (20, 20)]:
        for channels in (1, 3):
            out, valid = FrameTransform(size=size, channels=channels)(frame(data))
            assert out.shape == (channels, *size) and valid.shape == size and valid.all()
    # Area averaging when shrinking: a 2x2 block of 0 and 255 becomes mid grey.
    checker = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    out, _ = FrameTransform(size=(1, 1))(frame(checker))
    assert out[0, 0, 0] == pytest.approx(0.0)


def test_resize_mask_is_conservative() -> None:
    data = np.ones((4, 4), dtype=np.float32)
    valid = np.ones((4, 4), dtype=bool)
    valid[0, 0] = False
    _, small = resize(data, valid, (2, 2))
    assert small.tolist() == [[False, True], [True, True]]  # the block holding the invalid pixel
    _, big = resize(data, valid, (8, 8))
    assert not big[0, 0] and not big[1, 1] and big[7, 7] and big[:, 4:].all()
    assert big.sum() < 64 - 4  # more than the nearest-neighbour block: neighbours that mixed the bad pixel
    out, v = FrameTransform(size=(2, 2))(frame(np.full((4, 4), 9.0, dtype=np.float32), valid))
    assert out[0, 0, 0] == -1.0 and v.sum() == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scaling": "zscore"}, "auto, uint8, robust, minmax"),
        ({"stretch": "sqrt"}, "linear, log, asinh"),
        ({"channels": 2}, r"\(1, 3\)"),
        ({"percentiles": (90.0, 10.0)}, "low < high"),
        ({"size": (0, 4)}, "H, W >= 1"),
        ({"vmin": 5.0, "vmax": 1.0}, "vmin must be below vmax"),
    ],
)
def test_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FrameTransform(**kwargs)


def test_keyword_only_and_bad_frames() -> None:
    with pytest.raises(TypeError):
        FrameTransform((8, 8))  # type: ignore[misc]
    with pytest.raises(ValueError, match="C in"):
        FrameTransform()(frame(np.zeros((4, 4, 2), dtype=np.uint8)))
    with pytest.raises(ValueError, match="does not match"):
        FrameTransform()(frame(np.zeros((4, 4), dtype=np.uint8), np.ones((3, 4), dtype=bool)))


def test_real_fits_frame_asinh(shared_data: Path) -> None:
    source = open_source(shared_data / "fits" / "aia_171_level1.fits")
    out, valid = FrameTransform(size=(64, 64), stretch="asinh")(next(iter(source)))
    assert out.shape == (1, 64, 64) and valid.shape == (64, 64)
    assert out.min() >= -1.0 and out.max() <= 1.0 and out.std() > 0.1  # an image, not a flat field
