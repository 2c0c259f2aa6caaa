"""Truncated and corrupted inputs of every supported format: a clear message naming the file, the exit code, and
nothing scored silently (a video that decodes only in part is scored as far as it decodes, with a warning)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers.layouts import write_avi, write_image_folder
from helpers.media import fits_bytes, h264_or_mpeg4, moving_square, truncated_copy, write_fits, write_tar, write_video
from oddframe.cli import app

runner = CliRunner()


def _detect(run, path, out):
    return runner.invoke(app, ["detect", str(path), "--checkpoint", str(run), "--out", str(out)])


def _grey(n: int = 12) -> np.ndarray:
    return moving_square(n, 32, 48)[..., 0]


def _broken_inputs(tmp_path):
    """name -> (path, text the error must contain); each path is a broken input of one format."""
    cases = {}
    mp4 = write_video(tmp_path / "ok.mp4", moving_square(12, 32, 48), codec=h264_or_mpeg4())
    cases["mp4 cut in half"] = (truncated_copy(mp4, tmp_path / "half.mp4"), "not a readable video")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x01garbage" * 100)
    cases["mp4 of garbage"] = (tmp_path / "garbage.mp4", "not a readable video")
    (tmp_path / "empty.avi").write_bytes(b"")
    cases["empty avi"] = (tmp_path / "empty.avi", "not a readable video")
    folder = tmp_path / "pngs"
    write_image_folder(folder, _grey(6))
    (folder / "003.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cases["corrupt png in a folder"] = (folder / "003.png", "OpenCV cannot decode this image")
    sizes = tmp_path / "sizes"
    write_image_folder(sizes, _grey(4))
    write_image_folder(sizes, np.zeros((1, 16, 16), np.uint8), first=4)
    cases["image of another size"] = (sizes / "004.png", "differs from the folder's first image")
    fits = write_fits(tmp_path / "cut.fits", np.ones((32, 32), np.float32))
    fits.write_bytes(fits.read_bytes()[:2000])
    cases["fits cut short"] = (fits, "cut.fits")
    (tmp_path / "junk.fits").write_bytes(b"SIMPLE  = nonsense" * 50)
    cases["fits of garbage"] = (tmp_path / "junk.fits", "junk.fits")
    tar = write_tar(tmp_path / "a.tar.gz", {f"f{i}.fits": fits_bytes(np.full((32, 32), i, np.float32)) for i in range(3)})
    cases["tar.gz cut short"] = (truncated_copy(tar, tmp_path / "cut.tar.gz", 0.6), "cut.tar.gz")
    np.save(tmp_path / "ok.npy", np.zeros((6, 32, 32), np.float32))
    cases["npy cut short"] = (truncated_copy(tmp_path / "ok.npy", tmp_path / "cut.npy", 0.5), "cut.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases["npy of objects"] = (tmp_path / "objects.npy", "not a readable .npy array of numbers")
    np.save(tmp_path / "flat.npy", np.zeros((6, 32), np.float32))
    cases["npy of the wrong shape"] = (tmp_path / "flat.npy", "allowed shapes are")
    torch.save(torch.zeros(6, 32, 32), tmp_path / "ok.pt")
    cases["pt cut short"] = (truncated_copy(tmp_path / "ok.pt", tmp_path / "cut.pt", 0.5), "cut.pt")
    torch.save({"frames": torch.zeros(6, 32, 32)}, tmp_path / "dict.pt")
    cases["pt holding a dict"] = (tmp_path / "dict.pt", "expected a single tensor")
    return cases


def test_every_broken_input_is_named_in_one_clear_error(tiny_run, tmp_path):
    cases = _broken_inputs(tmp_path)
    for name, (path, text) in cases.items():
        source = path.parent if path.parent.name in ("pngs", "sizes") else path
        r = _detect(tiny_run, source, tmp_path / "out" / name.replace(" ", "_"))
        assert r.exit_code == 2, (name, r.output)
        assert text in r.output and str(path.name) in r.output, (name, r.output)
        assert "Traceback" not in r.output, (name, r.output)
        assert len(r.output.strip().splitlines()) <= 3, (name, r.output)
    # A folder whose frame 3 is corrupt: the frames before it are scored and kept, and the error says which file.
    kept = list(csv.DictReader((tmp_path / "out" / "corrupt_png_in_a_folder" / "scores.csv").open()))
    assert [r["frame"] for r in kept] == ["0", "1", "2"]
    record = json.loads((tmp_path / "out" / "corrupt_png_in_a_folder" / "detect.json").read_text())
    assert record["status"] == "failed"


def test_inspect_names_where_a_folder_stops_decoding(tmp_path):
    folder = tmp_path / "pngs"
    write_image_folder(folder, _grey(6))
    (folder / "004.png").write_bytes(b"")
    r = runner.invoke(app, ["inspect", str(folder)])
    assert r.exit_code == 0, r.output
    assert "reading stops after 4 frames" in r.output and "004.png" in r.output


def test_a_truncated_avi_is_reported_by_inspect_and_scored_as_far_as_it_decodes(tiny_run, tmp_path):
    """Case 2 of issue 12: inspect reported a half-truncated AVI as complete."""
    avi = tmp_path / "full.avi"
    write_avi(avi, moving_square(40, 32, 48, noise=True)[..., 0])
    cut = truncated_copy(avi, tmp_path / "cut.avi", 0.5)
    r = runner.invoke(app, ["inspect", str(cut)])
    assert r.exit_code == 0 and "40 frames announced but only" in r.output and "decode" in r.output, r.output
    r = _detect(tiny_run, cut, tmp_path / "d")
    assert r.exit_code == 0, r.output
    assert "warning:" in r.output and "promises 40 frames but only" in r.output
    rows = list(csv.DictReader((tmp_path / "d" / "scores.csv").open()))
    assert 0 < len(rows) < 40 and all(np.isfinite(float(row["score"])) for row in rows)


def test_inspect_finds_the_missing_half_of_real_footage(shared_data, tmp_path):
    cut = truncated_copy(shared_data / "video" / "vtest.avi", tmp_path / "vtest_half.avi", 0.5)
    r = runner.invoke(app, ["inspect", str(cut), "--json"])
    info = json.loads(r.stdout)
    video = info["videos"][0]
    assert r.exit_code == 0 and video["n_frames"] == 795 and 300 < video["n_decoded"] < 500
    assert any("795 frames announced but only" in p for p in info["problems"])
