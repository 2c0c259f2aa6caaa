"""Solar FITS specifics: exposure-time normalisation, skipping unreadable files, cadence gaps.

Also home of :func:`solar_series`, the generated SDO-like sequence the prep and review tests share: float32
FITS at a one-minute cadence with a 5-minute gap, an EXPTIME that varies, a NaN corner in every frame, one
frame that is mostly NaN, and a bright "flare" in four consecutive kept frames (one clip of 4).
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from oddframe.data.fits import CadenceGap, FitsSource, cadence_gaps, exposure_seconds, median_cadence
from oddframe.errors import SourceError
from helpers.media import fits_bytes, write_fits, write_tar

N_FRAMES = 40
RAW_SIZE = 48
GAP_AFTER = 19  # frame 20 comes 5 minutes after frame 19: a gap, about 4 frames missing
EXPTIMES = (2.0, 1.0, 2.9)  # cycled; data are written as (DN/s) * EXPTIME, as a CCD counts
MOSTLY_NAN = 10  # a frame with > 50% NaN pixels, which prep skips
FLARE = range(29, 33)  # kept positions 28-31 (frame 10 is skipped): exactly clip 7 of clip_length 4, stride 4
NAN_CORNER = 4
START = datetime(2024, 5, 10, tzinfo=timezone.utc)


def frame_minute(i: int) -> int:
    """Minutes from the start of frame ``i`` (one-minute cadence, plus the gap after GAP_AFTER)."""
    return i if i <= GAP_AFTER else i + 4


def solar_image(i: int, rng: np.random.Generator) -> np.ndarray:
    """``(RAW_SIZE, RAW_SIZE)`` float32 intensity in DN/s: a limb-darkened disk, 2% noise, the flare if any."""
    yy, xx = np.mgrid[:RAW_SIZE, :RAW_SIZE].astype(np.float64)
    r = np.hypot(yy - RAW_SIZE / 2, xx - RAW_SIZE / 2) / (0.4 * RAW_SIZE)
    disk = np.where(r < 1, 800.0 * np.sqrt(np.clip(1 - r * r, 0, 1)) + 200.0, 40.0) * (1 + 0.2 * np.cos(xx / 5))
    image = disk * (1 + 0.02 * rng.standard_normal(disk.shape))
    if i in FLARE:
        image += 40000.0 * np.exp(-((yy - 18) ** 2 + (xx - 28) ** 2) / (2 * 3.0 ** 2))
    return image.astype(np.float32)


def solar_frames(seed: int = 0) -> list[tuple[str, np.ndarray, dict]]:
    """``(file name, counts (H, W) float32 with NaN, header)`` of every frame."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(N_FRAMES):
        exptime = EXPTIMES[i % len(EXPTIMES)]
        data = solar_image(i, rng) * np.float32(exptime)
        data[:NAN_CORNER, :NAN_CORNER] = np.nan  # missing telemetry in every frame: normal for this series
        if i == MOSTLY_NAN:
            data[: int(RAW_SIZE * 0.6)] = np.nan
        when = START + timedelta(minutes=frame_minute(i))
        header = {"DATE-OBS": when.strftime("%Y-%m-%dT%H:%M:%S.000"), "EXPTIME": exptime, "WAVELNTH": 171,
                  "INSTRUME": "AIA_3"}
        out.append((f"aia_171_{i:03d}.fits", data, header))
    return out


def solar_series(folder: Path, seed: int = 0) -> Path:
    """Write :func:`solar_frames` as one FITS file per frame into ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data, header in solar_frames(seed):
        write_fits(folder / name, data, header=header)
    return folder


def solar_tar(path: Path, seed: int = 0, *, extra: dict[str, bytes] | None = None) -> Path:
    """The same series as a tar archive (``.tar.gz``/``.tgz`` compressed), members under ``sdo/``."""
    members = {f"sdo/{name}": fits_bytes(data, header=header) for name, data, header in solar_frames(seed)}
    return write_tar(path, {**members, **(extra or {})})


# --------------------------------------------------------------------------------------------- tests


def test_exposure_seconds_accepts_only_positive_finite_numbers() -> None:
    assert exposure_seconds({"EXPTIME": 2.5}) == 2.5
    assert exposure_seconds({"EXPTIME": 3}) == 3.0
    for bad in (None, 0, -1.0, float("nan"), float("inf"), "2.0", True):
        assert exposure_seconds({"EXPTIME": bad}) is None
    assert exposure_seconds({}) is None


def test_exposure_normalisation_divides_by_exptime(tmp_path: Path) -> None:
    counts = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_fits(tmp_path / "a.fits", counts * 2, header={"DATE-OBS": "2024-05-10T00:00:00", "EXPTIME": 2.0})
    write_fits(tmp_path / "b.fits", counts * 0.5, header={"DATE-OBS": "2024-05-10T00:01:00", "EXPTIME": 0.5})
    write_fits(tmp_path / "c.fits", counts * 7, header={"DATE-OBS": "2024-05-10T00:02:00"})  # no EXPTIME
    raw = [f.data for f in FitsSource(tmp_path)]
    normalised = [f.data for f in FitsSource(tmp_path, normalise_exposure=True)]
    np.testing.assert_allclose(raw[0], counts * 2)  # off by default: the source is unchanged
    np.testing.assert_allclose(normalised[0], counts)
    np.testing.assert_allclose(normalised[1], counts)
    np.testing.assert_allclose(normalised[2], counts * 7)  # left as is without EXPTIME
    assert all(d.dtype == np.float32 for d in normalised)


def test_exposure_normalisation_keeps_invalid_pixels_zero_and_invalid(tmp_path: Path) -> None:
    data = np.full((4, 4), 10.0, dtype=np.float32)
    data[0, 0] = np.nan
    write_fits(tmp_path / "x.fits", data, header={"EXPTIME": 4.0})
    frame = next(iter(FitsSource(tmp_path / "x.fits", normalise_exposure=True)))
    assert frame.data[0, 0] == 0.0 and not frame.valid[0, 0] and frame.valid.sum() == 15
    assert frame.data[1, 1] == pytest.approx(2.5)


def test_skip_unreadable_lists_broken_and_odd_sized_files(tmp_path: Path) -> None:
    for i in range(3):
        write_fits(tmp_path / f"img{i}.fits", np.full((4, 5), i, dtype=np.float32),
                   header={"DATE-OBS": f"2024-05-10T00:0{i}:00"})
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  = not really a FITS file")
    write_fits(tmp_path / "cutout.fits", np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(SourceError, match="broken.fits"):
        FitsSource(tmp_path)
    source = FitsSource(tmp_path, skip_unreadable=True)
    assert len(source) == 3 and [f.data[0, 0] for f in source] == [0.0, 1.0, 2.0]
    skipped = {Path(s["name"]).name: s["reason"] for s in source.skipped}
    assert set(skipped) == {"broken.fits", "cutout.fits"}
    assert "shape (2, 2)" in skipped["cutout.fits"] and "(4, 5)" in skipped["cutout.fits"]


def test_skip_unreadable_in_a_tar_archive(tmp_path: Path) -> None:
    archive = solar_tar(tmp_path / "sdo.tar.gz", extra={"sdo/zz_truncated.fits": b"SIMPLE  =                    T"})
    source = FitsSource(archive, normalise_exposure=True, skip_unreadable=True)
    assert len(source) == N_FRAMES
    assert [s["name"] for s in source.skipped] == [f"{archive}:sdo/zz_truncated.fits"]


def test_tar_and_tar_gz_series_read_like_the_folder(tmp_path: Path) -> None:
    folder = solar_series(tmp_path / "folder")
    frames = list(FitsSource(folder, normalise_exposure=True))
    for name in ("sdo.tar", "sdo.tgz"):
        other = list(FitsSource(solar_tar(tmp_path / name), normalise_exposure=True))
        assert len(other) == len(frames) == N_FRAMES
        assert [f.time for f in other] == [f.time for f in frames]
        for a, b in zip(frames, other):
            np.testing.assert_array_equal(a.data, b.data)
            np.testing.assert_array_equal(a.valid, b.valid)
    # Normalised by EXPTIME, frames taken with different exposures agree (2% noise): compare frames 0, 1, 2.
    disk = [f.data[20:28, 20:28].mean() for f in frames[:3]]
    assert max(disk) / min(disk) < 1.02


def test_cadence_gaps_hand_computed() -> None:
    times = [0.0, 60.0, 120.0, 420.0, None, 480.0, 541.0]
    assert median_cadence(times) == 60.0
    gaps = cadence_gaps(times)
    assert gaps == [CadenceGap(before=2, after=3, start=120.0, end=420.0, median_cadence=60.0)]
    assert gaps[0].seconds == 300.0
    # The frame without a time is skipped: 420 -> 480 is measured across it and is no gap; 61 s jitter neither.
    assert cadence_gaps(times, factor=4.9) == [gaps[0]]
    assert cadence_gaps(times, factor=5.0) == []
    assert cadence_gaps([0.0]) == [] and cadence_gaps([None, None]) == [] and median_cadence([5.0]) is None
    # Duplicated DATE-OBS (zero intervals) cannot make the cadence 0.
    assert median_cadence([0.0, 0.0, 60.0, 120.0]) == 60.0
    with pytest.raises(ValueError, match="factor must be > 1"):
        cadence_gaps(times, factor=1.0)


def test_generated_series_has_the_documented_gap(tmp_path: Path) -> None:
    source = FitsSource(solar_series(tmp_path / "s"))
    times = [f.time for f in source]
    gaps = cadence_gaps(times)
    assert len(gaps) == 1 and (gaps[0].before, gaps[0].after) == (GAP_AFTER, GAP_AFTER + 1)
    assert gaps[0].seconds == pytest.approx(300.0) and gaps[0].median_cadence == pytest.approx(60.0)


def test_real_fits_exposure_and_gaps(shared_data: Path) -> None:
    folder = shared_data / "fits"
    raw = list(FitsSource(folder))
    norm = FitsSource(folder, normalise_exposure=True)
    exptimes = [h["EXPTIME"] for h in norm.headers()]
    assert exptimes == pytest.approx([13.0, 7.597, 2.000191])
    for r, n, e in zip(raw, norm, exptimes):
        np.testing.assert_allclose(n.data, r.data / np.float32(e), rtol=1e-6)
    # EIT 2004-03-01 00:00 and 01:00, then AIA in 2011: the seven-year jump is the gap.
    gaps = cadence_gaps([f.time for f in raw])
    assert [(g.before, g.after) for g in gaps] == [(1, 2)]
    with fits.open(folder / "efz20040301.000010_s.fits") as hdul:  # the EXPTIME read is the file's
        assert float(hdul[0].header["EXPTIME"]) == pytest.approx(13.0)


def test_fits_bytes_helper_round_trips_header() -> None:
    # The tests above rely on fits_bytes writing DATE-OBS and EXPTIME where FitsSource reads them.
    with fits.open(io.BytesIO(fits_bytes(np.zeros((2, 2), np.float32), header={"EXPTIME": 1.5}))) as hdul:
        assert hdul[0].header["EXPTIME"] == 1.5
