"""``oddframe prep``: clips, index, summary, movie, resuming, tar archives, sampling, dataset folders, CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from oddframe.cli import app
from oddframe.config import load_config
from oddframe.data import prepared as fmt
from oddframe.data.clips import window_starts
from oddframe.data.fits import FitsSource
from oddframe.data.synthetic import write_synthetic_dataset
from oddframe.errors import ConfigError, OddframeError
from oddframe.curation.prep import PrepOptions, format_summary, options_from_config, prepare
from helpers.media import h264_or_mpeg4, moving_square, write_image, write_video
from test_fits_solar import FLARE, GAP_AFTER, MOSTLY_NAN, N_FRAMES, solar_series, solar_tar

SIZE = (32, 32)
KEPT = [i for i in range(N_FRAMES) if i != MOSTLY_NAN]  # the mostly-NaN frame is skipped
N_CLIPS = 10  # 39 kept frames, clips of 4 every 4: starts 0, 4, ..., 32, and one aligned to the end (35)


def solar_options(**kw: object) -> PrepOptions:
    """What ``oddframe prep`` uses for FITS with ``--set data.size=[32,32] data.clip_length=4 data.train_stride=4``."""
    config = load_config(None, ["data.size=[32,32]", "data.clip_length=4", "data.train_stride=4"])
    return options_from_config(config.data, fits=True, **kw)


def read_index_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / fmt.INDEX_FILE, newline="") as handle:
        return list(csv.DictReader(handle))


def movie_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return solar_series(tmp_path_factory.mktemp("solar") / "aia171")


def test_options_from_config_defaults_and_validation() -> None:
    data = load_config(None, []).data
    assert options_from_config(data, fits=True).stretch == "asinh"  # FITS: asinh unless the config says otherwise
    assert options_from_config(data, fits=False).stretch == "linear"
    explicit = load_config(None, ["data.stretch=linear"]).data
    assert options_from_config(explicit, fits=True).stretch == "linear"
    opts = options_from_config(data, fits=False)
    assert opts.size == (112, 112) and opts.clip_length == 16 and opts.stride == 4 and opts.normalise_exposure
    with pytest.raises(ValueError, match="stretch must be one of linear, log, asinh"):
        PrepOptions(stretch="gamma")
    with pytest.raises(ValueError, match="max_invalid_fraction must be in"):
        PrepOptions(max_invalid_fraction=1.5)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        PrepOptions(stride=0)


def test_prep_fits_folder_writes_clips_index_movie_and_summary(series: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    result = prepare(series, out, options=solar_options(), progress=False, config={"data": {"size": [32, 32]}})
    s = result.summary
    assert (s["frames_read"], s["frames_kept"], s["clips"], s["clips_written"], s["clips_reused"]) == (
        N_FRAMES, N_FRAMES - 1, N_CLIPS, N_CLIPS, 0)
    assert [f["frame"] for f in s["frames_too_invalid"]] == [MOSTLY_NAN]
    assert s["frames_too_invalid"][0]["name"].endswith(f"aia_171_{MOSTLY_NAN:03d}.fits")
    [gap] = s["cadence_gaps"]
    assert (gap["after_frame"], gap["before_frame"]) == (GAP_AFTER, GAP_AFTER + 1)
    assert (gap["seconds"], gap["missing_frames"]) == (300.0, 4)
    assert gap["start"] == "2024-05-10T00:19:00.000Z" and gap["end"] == "2024-05-10T00:24:00.000Z"
    assert s["videos"][0]["frames_with_exptime"] == N_FRAMES and s["videos"][0]["exposure_normalised"]

    rows = read_index_rows(out)
    expected_starts = [*range(0, 33, 4), 35]
    assert [r["clip"] for r in rows] == [f"aia171_{k:05d}" for k in range(N_CLIPS)]
    assert [[int(i) for i in r["frames"].split()] for r in rows] == [KEPT[p:p + 4] for p in expected_starts]
    assert rows[0]["start_iso"] == "2024-05-10T00:00:00.000Z" and rows[0]["end_iso"] == "2024-05-10T00:03:00.000Z"
    assert float(rows[1]["start_sec"]) - float(rows[0]["start_sec"]) == 240.0
    assert (rows[0]["first_frame"], rows[0]["last_frame"], rows[0]["n_frames"]) == ("0", "3", "4")
    for r in rows:
        array = np.load(out / r["file"], allow_pickle=False)
        assert array.dtype == np.float16 and array.shape == (1, 4, *SIZE)
        values = array[np.isfinite(array)]
        assert values.min() >= -1 and values.max() <= 1
        assert np.isnan(array[0, :, 0, 0]).all() and np.isfinite(array[0, :, 16, 16]).all()  # NaN corner kept invalid
    # Raw statistics are in DN/s (exposure-normalised): the flare clip is far brighter than the others.
    raw_max = [float(r["raw_max"]) for r in rows]
    flare_clip = 7
    assert all(int(f) in FLARE for f in rows[flare_clip]["frames"].split())
    assert raw_max[flare_clip] > 10 * max(m for k, m in enumerate(raw_max) if k != flare_clip)

    prep = json.loads((out / fmt.PREP_FILE).read_text())
    assert prep["status"] == "complete" and prep["format"] == fmt.FORMAT
    assert prep["config"] == {"data": {"size": [32, 32]}}
    assert prep["settings"]["stretch"] == "asinh" and prep["settings"]["size"] == [32, 32]
    assert prep["summary"]["clips"] == N_CLIPS and prep["oddframe_version"]

    frames = movie_frames(out / fmt.MOVIE_FILE)
    assert len(frames) == N_FRAMES and frames[0].shape == (48, 48, 3)  # every frame read, the invalid one too
    text = format_summary(s)
    assert "reused 0" in text and "cadence gap" in text and "40 of 40 frames have EXPTIME" in text


def test_prep_resumes_and_rewrites_only_missing_clips(series: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare(series, out, options=solar_options(), progress=False)
    before = {p.name: p.read_bytes() for p in (out / fmt.CLIPS_DIR).iterdir()}
    again = prepare(series, out, options=solar_options(), progress=False).summary
    assert (again["clips_written"], again["clips_reused"]) == (0, N_CLIPS)
    # An interrupted run: two clips and the index missing, prep.json not complete.
    (out / fmt.CLIPS_DIR / "aia171_00003.npy").unlink()
    (out / fmt.CLIPS_DIR / "aia171_00009.npy").write_bytes(b"half a clip")
    (out / fmt.INDEX_FILE).unlink()
    prep = json.loads((out / fmt.PREP_FILE).read_text())
    (out / fmt.PREP_FILE).write_text(json.dumps({**prep, "status": "incomplete"}))
    resumed = prepare(series, out, options=solar_options(), progress=False).summary
    assert (resumed["clips_written"], resumed["clips_reused"]) == (2, N_CLIPS - 2)
    assert {p.name: p.read_bytes() for p in (out / fmt.CLIPS_DIR).iterdir()} == before
    assert len(read_index_rows(out)) == N_CLIPS and fmt.read_prep(out)["status"] == "complete"


def test_prep_refuses_other_settings_other_input_and_foreign_folders(series: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare(series, out, options=solar_options(), progress=False)
    with pytest.raises(OddframeError, match=r"other settings \(clip_length: 4 -> 8\)"):
        prepare(series, out, options=solar_options(clip_length=8), progress=False)
    changed = tmp_path / "changed"
    shutil.copytree(series, changed)
    (changed / "aia_171_039.fits").unlink()
    with pytest.raises(OddframeError, match="another input"):
        prepare(changed, out, options=solar_options(), progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OddframeError, match="not empty and not a prepared folder"):
        prepare(series, foreign, options=solar_options(), progress=False)


def test_movie_only_writes_only_the_movie(series: Path, tmp_path: Path) -> None:
    out = tmp_path / "movie"
    result = prepare(series, out, options=solar_options(movie_max_side=32), movie_only=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [fmt.MOVIE_FILE]
    assert result.movie == out / fmt.MOVIE_FILE and result.summary["clips"] == 0
    frames = movie_frames(out / fmt.MOVIE_FILE)
    assert len(frames) == N_FRAMES and frames[0].shape == (32, 32, 3)
    # afmhot (FITS): red >= green >= blue, so the picture is clearly warm (a grey movie has equal means).
    mean = frames[0].reshape(-1, 3).astype(float).mean(axis=0)
    assert mean[0] > mean[1] > mean[2] and mean[0] - mean[2] > 30


def test_prep_tar_archives_match_the_folder(series: Path, tmp_path: Path) -> None:
    prepare(series, tmp_path / "from_folder", options=solar_options(), progress=False)
    archive = solar_tar(tmp_path / "aia171.tar.gz", extra={"sdo/broken.fits": b"not FITS"})
    summary = prepare(archive, tmp_path / "from_tar", options=solar_options(), progress=False).summary
    assert [u["name"] for u in summary["unreadable"]] == [f"{archive}:sdo/broken.fits"]
    a = sorted((tmp_path / "from_folder" / fmt.CLIPS_DIR).iterdir())
    b = sorted((tmp_path / "from_tar" / fmt.CLIPS_DIR).iterdir())
    assert [p.name for p in a] == [p.name for p in b] and len(a) == N_CLIPS  # video name: archive minus .tar.gz
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.load(x), np.load(y))


def test_exposure_normalisation_can_be_turned_off(series: Path, tmp_path: Path) -> None:
    on = prepare(series, tmp_path / "on", options=solar_options(), progress=False)
    off = prepare(series, tmp_path / "off", options=solar_options(normalise_exposure=False), progress=False)
    means_on = [float(r["raw_mean"]) for r in read_index_rows(on.out)[:6]]
    means_off = [float(r["raw_mean"]) for r in read_index_rows(off.out)[:6]]
    # Exposures cycle 2.0, 1.0, 2.9 s: raw counts differ clip to clip, count rates do not.
    assert np.ptp(means_on) / np.mean(means_on) < 0.01 < np.ptp(means_off) / np.mean(means_off)
    # Per-frame robust scaling is scale-invariant, so the clips themselves are (nearly) the same.
    np.testing.assert_allclose(np.load(on.out / "clips/aia171_00000.npy").astype(np.float32),
                               np.load(off.out / "clips/aia171_00000.npy").astype(np.float32), atol=2e-3)
    assert "not normalised" in format_summary(off.summary)


def test_sampling_in_seconds_keeps_frames_two_minutes_apart(series: Path, tmp_path: Path) -> None:
    result = prepare(series, tmp_path / "p", options=solar_options(sample_interval_sec=120.0), progress=False)
    kept = sorted({int(i) for r in read_index_rows(result.out) for i in r["frames"].split()})
    # Greedy from frame 0 (minute = frame up to 19, frame + 4 after the gap); the mostly-NaN frame 10 is skipped
    # and the next good frame (11) takes its place.
    assert kept == [0, 2, 4, 6, 8, 11, 13, 15, 17, 19, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38]
    assert result.summary["frames_sampled_out"] == N_FRAMES - len(kept) - 1


@pytest.mark.parametrize("n_frames", [3, 4, 8, 11])
def test_windows_match_window_starts_on_an_array(tmp_path: Path, n_frames: int) -> None:
    frames = np.random.default_rng(n_frames).integers(0, 255, size=(n_frames, 12, 10), dtype=np.uint8)
    np.save(tmp_path / "seq.npy", frames)
    options = PrepOptions(size=(8, 8), clip_length=4, stride=3)
    result = prepare(tmp_path / "seq.npy", tmp_path / "out", options=options, progress=False)
    rows = read_index_rows(result.out)
    assert [int(r["first_frame"]) for r in rows] == window_starts(n_frames, 4, 3)
    assert [int(r["n_frames"]) for r in rows] == [min(4, n_frames)] * len(rows)  # a short sequence: one short clip
    assert rows[0]["start_iso"] == "" and rows[0]["start_sec"] == ""  # arrays have no times
    clip = np.load(result.out / rows[-1]["file"]).astype(np.float32)
    last = frames[int(rows[-1]["last_frame"])].astype(np.float32)
    # uint8 data: [0, 255] -> [-1, 1] after an area resize 12x10 -> 8x8, as the training transform does.
    assert clip.shape == (1, min(4, n_frames), 8, 8)
    assert abs(float(clip[0, -1].mean()) - (last.mean() / 127.5 - 1)) < 0.02


def test_seconds_sampling_needs_timestamps(tmp_path: Path) -> None:
    np.save(tmp_path / "seq.npy", np.zeros((5, 8, 8), dtype=np.float32))
    with pytest.raises(ConfigError, match="no timestamp"):
        prepare(tmp_path / "seq.npy", tmp_path / "out", options=PrepOptions(sample_interval_sec=60.0), progress=False)


def test_dataset_folder_prepares_its_training_videos(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "data", n_train=3, n_test=2, length=5, size=16, seed=1)
    result = prepare(tmp_path / "data", tmp_path / "out", options=PrepOptions(size=(16, 16), clip_length=4, stride=4),
                     progress=False)
    videos = result.summary["videos"]
    assert len(videos) == 3 and all(Path(v["path"]).parent == tmp_path / "data" / "training" / "frames" for v in videos)
    assert result.summary["clips"] == 3 * len(window_starts(5, 4, 4))
    assert len(movie_frames(result.out / fmt.MOVIE_FILE)) == 15


def test_video_input_has_relative_times_and_colour_movie(tmp_path: Path) -> None:
    # 160 pixels wide: the movie gets its text label (drawn on colour frames, which once broke OpenCV).
    video = write_video(tmp_path / "walk.mp4", moving_square(12, 32, 160), codec=h264_or_mpeg4(), fps=10)
    result = prepare(video, tmp_path / "out", options=PrepOptions(size=(16, 24), clip_length=4, stride=4),
                     progress=False)
    rows = read_index_rows(result.out)
    assert [r["first_frame"] for r in rows] == ["0", "4", "8"] and result.summary["videos"][0]["kind"] == "video"
    assert float(rows[1]["start_sec"]) == pytest.approx(0.4) and rows[1]["start_iso"] == ""  # seconds from frame 0
    assert np.load(result.out / rows[0]["file"]).shape == (1, 4, 16, 24)
    frames = movie_frames(result.out / fmt.MOVIE_FILE)
    assert len(frames) == 12 and frames[0].shape == (32, 160, 3)
    assert frames[0][20:30, 4:60].max() > 150  # the white label text at the bottom left, on a black background


def test_image_folder_skips_unreadable_images(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(moving_square(6, 16, 24)):
        write_image(folder / f"{i:03d}.png", frame[:, :, 0])
    (folder / "003.png").write_bytes(b"not a PNG")
    result = prepare(folder, tmp_path / "out", options=PrepOptions(size=(16, 24), clip_length=5, stride=5),
                     progress=False)
    assert [Path(u["name"]).name for u in result.summary["unreadable"]] == ["003.png"]
    [row] = read_index_rows(result.out)
    assert row["frames"] == "0 1 2 4 5" and "unreadable, skipped" in format_summary(result.summary)


def test_real_fits_folder(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "fits"
    config = load_config(None, ["data.size=[32,32]", "data.clip_length=2", "data.train_stride=1"])
    result = prepare(folder, tmp_path / "out", options=options_from_config(config.data, fits=True), progress=False)
    s = result.summary
    assert (s["frames_read"], s["clips"], len(s["cadence_gaps"])) == (3, 2, 1)
    gap = s["cadence_gaps"][0]
    assert gap["start"].startswith("2004-03-01T01:00:16") and gap["end"].startswith("2011")
    rows = read_index_rows(result.out)
    frames = list(FitsSource(folder, normalise_exposure=True))[:2]
    by_hand = np.concatenate([f.data[f.valid] if f.valid is not None else f.data.ravel() for f in frames])
    assert float(rows[0]["raw_mean"]) == pytest.approx(float(by_hand.astype(np.float64).mean()), rel=1e-9)
    assert float(rows[0]["raw_max"]) == pytest.approx(float(by_hand.max()))


def test_cli_prep_and_movie_only(series: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    def text(result) -> str:  # Rich wraps long lines at the terminal width
        return " ".join(result.output.split())

    sets = ["--set", "data.size=[32,32]", "--set", "data.clip_length=4", "--set", "data.train_stride=4"]
    result = runner.invoke(app, ["prep", str(series), "--out", str(tmp_path / "p"), *sets])
    assert result.exit_code == 0, result.output
    assert f"clips: {N_CLIPS} of 4 frames, 1x32x32 (written {N_CLIPS}, reused 0" in text(result)
    result = runner.invoke(app, ["prep", str(series), "--out", str(tmp_path / "p"), *sets])
    assert result.exit_code == 0 and f"reused {N_CLIPS}" in text(result)
    result = runner.invoke(app, ["prep", str(series), "--out", str(tmp_path / "m"), "--movie-only"])
    assert result.exit_code == 0 and sorted(p.name for p in (tmp_path / "m").iterdir()) == [fmt.MOVIE_FILE]
    result = runner.invoke(app, ["prep", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no such file or folder" in text(result)
