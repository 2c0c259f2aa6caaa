"""Invalid input is never scored as normal: frames without (enough) valid pixels get no score, a warning names them,
metrics leave them out with a count, and ``inspect`` reports blank, all-NaN, constant and duplicated frames."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers.media import write_fits
from oddframe import api
from oddframe.cli import app

runner = CliRunner()


def _rows(path):
    return list(csv.DictReader(path.open()))


def _frames(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 32, 32)`` float32 smooth random frames."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, 8, 8)).astype(np.float32)
    return np.kron(base, np.ones((4, 4), np.float32)) + 0.05 * rng.random((n, 32, 32)).astype(np.float32)


def test_an_all_nan_fits_frame_gets_no_score_and_a_warning(tiny_run, tmp_path):
    """Case 2 of issue 12: an all-NaN FITS frame scored 0.0, not flagged, without a word."""
    folder = tmp_path / "fits"
    folder.mkdir()
    frames = _frames(6) * 1000
    frames[3] = np.nan
    for i, f in enumerate(frames):
        write_fits(folder / f"img_{i:02d}.fits", f, header={"DATE-OBS": f"2024-05-01T00:{i:02d}:00"})
    r = runner.invoke(app, ["detect", str(folder), "--checkpoint", str(tiny_run), "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert "warning: video fits: 1 frame(s) have fewer than 50% valid pixels and get no score" in r.output
    assert "frames 3" in r.output and "1 without a score" in r.output
    rows = _rows(tmp_path / "d" / "scores.csv")
    assert [row["invalid"] for row in rows] == ["0", "0", "0", "1", "0", "0"]
    assert rows[3]["score"] == "nan" and rows[3]["flagged"] == ""
    assert all(np.isfinite(float(row["score"])) and row["flagged"] in ("0", "1") for i, row in enumerate(rows) if i != 3)


@pytest.mark.filterwarnings("ignore:Invalid 'BLANK' keyword")
def test_a_real_fits_frame_scores_and_its_nan_copy_does_not(tiny_run, shared_data, tmp_path):
    from astropy.io import fits

    folder = tmp_path / "aia"
    folder.mkdir()
    src = shared_data / "fits" / "aia_171_level1.fits"
    for i in range(3):
        shutil.copy(src, folder / f"a{i}.fits")
    with fits.open(src) as hdul:
        hdus = fits.HDUList([h.copy() for h in hdul])
    image = next(h for h in hdus if getattr(h, "data", None) is not None and h.data.ndim == 2)
    image.data = np.full(image.data.shape, np.nan, np.float32)
    hdus.writeto(folder / "a3.fits")
    with pytest.warns(UserWarning, match="video aia: 1 frame"):
        result = api.detect(tiny_run, folder, tmp_path / "d", progress=False)
    rows = _rows(tmp_path / "d" / "scores.csv")
    assert result.n_invalid == 1 and [r["invalid"] for r in rows].count("1") == 1
    assert sum(np.isfinite(float(r["score"])) for r in rows) == len(rows) - 1


def test_the_valid_fraction_threshold_is_a_setting(tiny_run, tmp_path):
    frames = _frames(8)
    frames[2, :22] = np.nan  # 31% valid
    frames[5] = np.nan  # none valid
    np.save(tmp_path / "v.npy", frames)
    with pytest.warns(UserWarning, match="2 frame.*frames 2, 5"):
        result = api.detect(tiny_run, tmp_path / "v.npy", tmp_path / "a", progress=False)
    assert result.n_invalid == 2
    with pytest.warns(UserWarning, match="fewer than 20% valid pixels.*frames 5"):
        result = api.detect(tiny_run, tmp_path / "v.npy", tmp_path / "b", progress=False,
                            overrides=["score.min_valid_fraction=0.2"])
    assert result.n_invalid == 1  # a frame without any valid pixel never gets a score
    invalid = [r["frame"] for r in _rows(tmp_path / "b" / "scores.csv") if r["invalid"] == "1"]
    assert invalid == ["5"]


def test_a_blank_frame_is_scored_not_skipped(tiny_run, tmp_path):
    frames = (np.random.default_rng(0).random((6, 32, 32)) * 255).astype(np.uint8)
    frames[2] = 0  # a camera that went black is evidence, not missing data
    np.save(tmp_path / "v.npy", frames)
    result = api.detect(tiny_run, tmp_path / "v.npy", tmp_path / "d", progress=False)
    rows = _rows(tmp_path / "d" / "scores.csv")
    assert result.n_invalid == 0 and np.isfinite(float(rows[2]["score"]))


def _layout_with_a_nan_test_frame(root):
    for split, n in (("training", 12), ("testing", 8)):
        (root / split / "videos").mkdir(parents=True)
    np.save(root / "training" / "videos" / "01.npy", _frames(12, 1))
    train2 = _frames(12, 2)
    train2[4] = np.nan  # an invalid normal frame: calibration leaves it out
    np.save(root / "training" / "videos" / "02.npy", train2)
    test = _frames(8, 3)
    test[6] = np.nan
    np.save(root / "testing" / "videos" / "01.npy", test)
    (root / "testing" / "test_frame_mask").mkdir()
    np.save(root / "testing" / "test_frame_mask" / "01.npy", np.array([0, 0, 0, 1, 1, 0, 1, 0], np.uint8))
    return root


def test_metrics_and_calibration_leave_invalid_frames_out_with_a_count(tiny_run, tmp_path):
    data = _layout_with_a_nan_test_frame(tmp_path / "data")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(".*.lock"))
    cal = api.calibrate(run, data=data, progress=False)
    assert cal["n_invalid_frames"] == 1 and np.isfinite(cal["threshold"])
    with pytest.warns(UserWarning, match="1 test frame"):
        metrics = api.evaluate(run, data, tmp_path / "eval", progress=False, report=False)
    assert metrics["n_invalid_frames"] == 1 and metrics["n_test_frames"] == 7
    rows = _rows(tmp_path / "eval" / "scores.csv")
    assert [r["invalid"] for r in rows].count("1") == 1 and rows[6]["score"] == "nan" and rows[6]["flagged"] == ""
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_invalid_frames"] == 1


def test_inspect_reports_each_kind_of_bad_frame(tmp_path):
    """Case 2 of issue 12: inspect said "no problems found" about an all-NaN frame."""
    frames = _frames(10)
    frames[1] = 0.0  # blank
    frames[3] = np.nan  # no valid pixel
    frames[4, :25] = np.nan  # mostly invalid
    frames[6] = 7.5  # constant
    frames[8] = frames[7]  # duplicate
    np.save(tmp_path / "v.npy", frames)
    r = runner.invoke(app, ["inspect", str(tmp_path / "v.npy")])
    assert r.exit_code == 0, r.output
    for text in ("1 blank frames (every pixel 0): frames 1", "1 frames with no valid pixel (all NaN or BLANK): frames 3",
                 "1 frames with under 50% valid pixels: frames 4", "1 constant frames (every pixel the same, not 0): "
                 "frames 6", "1 frames identical to an earlier frame: frames 8"):
        assert text in r.output, r.output
    assert "no problems found" not in r.output
    r = runner.invoke(app, ["inspect", str(tmp_path / "v.npy"), "--quick"])
    assert r.exit_code == 0 and "no problems found" in r.output


def test_inspect_reports_an_all_nan_fits_frame(tmp_path):
    for i, f in enumerate([_frames(1)[0], np.full((32, 32), np.nan, np.float32)]):
        write_fits(tmp_path / f"f{i}.fits", f)
    r = runner.invoke(app, ["inspect", str(tmp_path), "--json"])
    info = json.loads(r.stdout)
    assert r.exit_code == 0 and info["videos"][0]["frame_issues"] == {"no valid pixel": 1}
    assert any("no valid pixel" in p for p in info["problems"])
