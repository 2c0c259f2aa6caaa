"""``oddframe review`` and training from a prepared folder: robust z-scores, decisions, contact sheets, datasets."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from oddframe.cli import app
from oddframe.config import load_config
from oddframe.data import prepared as fmt
from oddframe.data.clips import collate
from oddframe.data.prepared import decode_clip, encode_clip, is_prepared, prepared_dataset
from oddframe.data.transforms import FrameTransform
from oddframe.errors import ConfigError, OddframeError, SourceError
from oddframe.curation.prep import prepare
from oddframe.curation.review import clip_statistics, contact_sheet, flag_outliers, review, robust_z
from test_fits_solar import solar_series
from test_prep import N_CLIPS, solar_options

FLARE_CLIP = "aia171_00007"


@pytest.fixture(scope="module")
def prepared_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("review")
    out = root / "prepared"
    prepare(solar_series(root / "aia171"), out, options=solar_options(), progress=False)
    return out


@pytest.fixture
def prepared(prepared_once: Path, tmp_path: Path) -> Path:
    """A fresh copy per test: reviews write decisions into the folder."""
    return Path(shutil.copytree(prepared_once, tmp_path / "prepared"))


def test_robust_z_hand_values() -> None:
    # median 3, MAD = median(2, 1, 0, 1, 97) = 1, so z = 0.6745 (x - 3).
    np.testing.assert_allclose(robust_z([1, 2, 3, 4, 100]), 0.6745 * np.array([-2, -1, 0, 1, 97]))
    # MAD = 0 (most values equal): scale = MeanAD / 0.7979 = (1/5) / 0.7979, so z = 1 / that = 3.99.
    np.testing.assert_allclose(robust_z([0, 0, 0, 0, 1]), [0, 0, 0, 0, 0.7979 * 5])
    assert not robust_z([2.0, 2.0, 2.0]).any()  # all equal: nothing stands out
    # NaN is left out of the median and MAD (still 3 and 1) and gets z = 0.
    z = robust_z([1, 2, math.nan, 3, 4, 100])
    np.testing.assert_allclose(z, 0.6745 * np.array([-2, -1, 0, 0, 1, 97]), rtol=1e-9)
    assert not robust_z([1e6, 1e6 + 1e-7, 1e6]).any()  # rounding noise is no variation
    # Floors: a tiny MAD cannot turn a small difference into a large z.
    values = [0.500, 0.501, 0.499, 0.500, 0.520]  # MAD = 0.001
    assert robust_z(values)[4] == pytest.approx(0.6745 * 0.02 / 0.001)
    assert robust_z(values, floor=0.01)[4] == pytest.approx(2.0)
    assert robust_z([100.0, 100.1, 99.9, 100.0, 104.0], relative_floor=0.01)[4] == pytest.approx(4.0)


def test_clip_statistics_hand_values() -> None:
    frames = np.array([[[[-1.0, 0.0], [0.5, 1.0]]]], dtype=np.float32)  # (1, 1, 2, 2)
    valid = np.array([[[[False, True], [True, True]]]])
    s = clip_statistics(frames, valid)
    assert s["mean"] == pytest.approx(0.5) and s["max"] == 1.0 and s["std"] == pytest.approx(np.std([0.0, 0.5, 1.0]))
    assert s["saturated_fraction"] == pytest.approx(1 / 3) and s["invalid_fraction"] == 0.25
    empty = clip_statistics(frames, np.zeros_like(valid))
    assert math.isnan(empty["mean"]) and empty["invalid_fraction"] == 1.0


def test_flag_outliers_names_the_statistics_beyond_the_limit() -> None:
    stats = {"mean": np.array([0.1, 0.11, 0.09, 0.1, 0.9]), "std": np.array([0.2, 0.21, 0.19, 0.2, 0.2])}
    z, reasons = flag_outliers(stats, 3.5)
    assert reasons[:4] == ["", "", "", ""] and reasons[4].startswith("mean z=+") and "std" not in reasons[4]
    assert z["mean"][4] == pytest.approx(0.6745 * 0.8 / 0.01)
    with pytest.raises(ValueError, match="limit must be > 0"):
        flag_outliers(stats, 0)


def test_encode_decode_clip_round_trip() -> None:
    frames = np.linspace(-1, 1, 2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    valid = np.ones((1, 3, 4, 5), dtype=bool)
    valid[0, 1, 2, 3] = False
    packed = encode_clip(frames, valid)
    assert packed.dtype == np.float16 and np.isnan(packed[:, 1, 2, 3]).all() and np.isfinite(packed).sum() == 2 * 59
    out, back = decode_clip(packed)
    np.testing.assert_array_equal(back, valid)
    assert (out[:, 1, 2, 3] == -1).all() and np.abs(out[:, valid[0]] - frames[:, valid[0]]).max() < 1e-3
    with pytest.raises(ValueError, match=r"valid must be \(1, T, H, W\)"):
        encode_clip(frames, valid[:, :2])


def test_review_sets_the_flare_aside_and_keeps_the_others(prepared: Path) -> None:
    result = review(prepared, progress=False)
    assert [c for c, _ in result.set_aside] == [FLARE_CLIP]
    reason = result.set_aside[0][1]
    assert reason.startswith("automatic: ") and "raw_max z=+" in reason
    with open(prepared / fmt.REVIEW_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == N_CLIPS and {"z_mean", "z_raw_max", "saturated_fraction", "decision", "reason"} <= set(rows[0])
    flagged = {r["clip"]: r for r in rows if r["decision"] == "set_aside"}
    assert list(flagged) == [FLARE_CLIP] and float(flagged[FLARE_CLIP]["z_raw_max"]) > 3.5
    normal = [r for r in rows if r["clip"] != FLARE_CLIP]
    assert all(abs(float(r[f"z_{s}"])) <= 3.5 for r in normal for s in ("mean", "std", "raw_max"))
    decisions = json.loads((prepared / fmt.DECISIONS_FILE).read_text())
    assert list(decisions["automatic"]["set_aside"]) == [FLARE_CLIP] and decisions["manual"] == {}
    # A stricter limit sets more aside; a laxer one keeps the flare only if it is very lax.
    assert len(review(prepared, limit=0.5, progress=False).set_aside) > 1
    assert review(prepared, limit=1e6, progress=False).set_aside == []


def test_manual_decisions_win_and_survive_new_automatic_reviews(prepared: Path) -> None:
    review(prepared, exclude=["aia171_00002"], include=[FLARE_CLIP], progress=False)
    for limit in (3.5, 2.0, 3.5):  # the automatic review runs again, with other limits
        result = review(prepared, limit=limit, progress=False)
        aside = dict(result.set_aside)
        assert "aia171_00002" in aside and aside["aia171_00002"].startswith("manual exclude")
        assert FLARE_CLIP not in aside
    decisions = fmt.read_decisions(prepared)
    assert decisions.manual == {"aia171_00002": "exclude", FLARE_CLIP: "include"}
    assert FLARE_CLIP in decisions.automatic  # still found by the automatic review, overruled by hand
    dataset = prepared_dataset(prepared, clip_length=4)
    clips = {r.clip for r in dataset.records}
    assert FLARE_CLIP in clips and "aia171_00002" not in clips and len(dataset) == N_CLIPS - 1
    # Forgetting the manual decision returns the clip to the automatic one.
    review(prepared, forget=[FLARE_CLIP], progress=False)
    assert FLARE_CLIP not in {r.clip for r in prepared_dataset(prepared, clip_length=4).records}
    with pytest.raises(OddframeError, match="unknown clip id.*nope.*aia171_00000"):
        review(prepared, exclude=["nope"], progress=False)
    with pytest.raises(ValueError, match="both excluded and included"):
        review(prepared, exclude=["aia171_00001"], include=["aia171_00001"], progress=False)


def test_prepared_dataset_items_and_exclusions(prepared: Path) -> None:
    assert is_prepared(prepared) and not is_prepared(prepared / "clips") and not is_prepared(prepared / "nothing")
    everything = prepared_dataset(prepared, clip_length=4)
    assert len(everything) == N_CLIPS  # before any review nothing is set aside
    review(prepared, progress=False)
    dataset = prepared_dataset(prepared, clip_length=4, transform=FrameTransform(size=(32, 32), stretch="asinh"))
    assert len(dataset) == N_CLIPS - 1 and dataset.excluded == {FLARE_CLIP}
    clip = dataset[0]
    assert clip.frames.shape == (1, 4, 32, 32) and clip.frames.dtype == torch.float32
    assert clip.valid.shape == (1, 4, 32, 32) and clip.valid.dtype == torch.bool
    assert -1 <= clip.frames.min() and clip.frames.max() <= 1
    assert not clip.valid[0, :, 0, 0].any() and clip.valid[0, :, 16, 16].all()  # the NaN corner is invalid
    assert (clip.frames[:, ~clip.valid[0]] == -1).all()
    assert clip.video == "aia171" and clip.frame_index.tolist() == [0, 1, 2, 3]
    batch = collate([dataset[i] for i in range(3)], 4)
    assert batch.frames.shape == (3, 1, 4, 32, 32)
    # Longer training clips than prepared ones, or another transform: refused with the fix in the message.
    with pytest.raises(ConfigError, match="clip_length 4 .* data.clip_length is 8"):
        prepared_dataset(prepared, clip_length=8)
    with pytest.raises(ConfigError, match=r"data\.stretch=asinh .* data\.stretch=linear.*--set data\.stretch=asinh"):
        prepared_dataset(prepared, clip_length=4, transform=FrameTransform(size=(32, 32)))
    with pytest.raises(ConfigError, match=r"--set data\.size=\[32,32\]"):
        prepared_dataset(prepared, clip_length=4, transform=FrameTransform(size=(64, 64), stretch="asinh"))
    # A clip file that is damaged is named.
    (prepared / "clips" / "aia171_00000.npy").write_bytes(b"junk")
    with pytest.raises(SourceError, match="aia171_00000.npy"):
        dataset[0]


def test_unfinished_or_fully_excluded_folders_are_refused(prepared: Path) -> None:
    review(prepared, exclude=[f"aia171_{k:05d}" for k in range(N_CLIPS) if k != 7], progress=False)
    with pytest.raises(ConfigError, match=f"all {N_CLIPS} clips are set aside"):
        prepared_dataset(prepared, clip_length=4)
    prep = json.loads((prepared / fmt.PREP_FILE).read_text())
    (prepared / fmt.PREP_FILE).write_text(json.dumps({**prep, "status": "incomplete"}))
    with pytest.raises(SourceError, match="prep did not finish"):
        prepared_dataset(prepared, clip_length=4)
    with pytest.raises(SourceError, match="prep did not finish"):
        review(prepared, progress=False)


def test_contact_sheets(prepared: Path) -> None:
    result = review(prepared, sheets=True, sheet_rows=4, sheet_frames=3, progress=False)
    assert [p.name for p in result.sheets] == ["sheet_000.png", "sheet_001.png", "sheet_002.png"]
    page = cv2.cvtColor(cv2.imread(str(result.sheets[1])), cv2.COLOR_BGR2RGB)  # clips 4-7, the flare last
    assert page.shape[0] >= 4 * 96 and page.shape[1] >= 240 + 3 * 96
    row_h = page.shape[0] // 4
    left_edge = [tuple(page[r * row_h + row_h // 2, 0]) for r in range(4)]
    assert left_edge == [(0, 0, 0)] * 3 + [(255, 70, 70)]  # only the flare's row is framed in red
    # Pages from an earlier review with more pages are removed.
    assert len(review(prepared, sheets=True, sheet_rows=12, progress=False).sheets) == 1
    assert sorted(p.name for p in (prepared / fmt.SHEETS_DIR).iterdir()) == ["sheet_000.png"]


def test_contact_sheet_layout() -> None:
    frames = [np.full((1, 8, 8), v, dtype=np.float32) for v in (-1.0, 1.0)]
    sheet = contact_sheet([(frames, ["clip_a", "train"], False), (frames, ["clip_b", "set aside"], True)], min_cell=16)
    assert sheet.dtype == np.uint8 and sheet.shape[1] == 240 + 2 * (16 + 4)
    row_h = sheet.shape[0] // 2
    assert (sheet[2:18, 240:256] == 0).all() and (sheet[2:18, 260:276] == 255).all()  # -1 black, 1 white, 2x
    with pytest.raises(ValueError, match="at least one clip"):
        contact_sheet([])
    assert row_h >= 16


def test_train_from_a_prepared_folder(prepared: Path, tmp_path: Path) -> None:
    pytest.importorskip("lightning_fabric")
    from oddframe.pipeline import train as train_module

    review(prepared, progress=False)
    overrides = ["model.name=conv3d_ae", "model.params.width=0.125", "data.size=[32,32]", "data.clip_length=4",
                 "data.stretch=asinh", f"data.path={prepared}", "train.epochs=1", "train.batch_size=4",
                 "train.accelerator=cpu", "train.log_images_every=100"]
    config = load_config(None, overrides)
    result = train_module.train(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "model.safetensors").is_file() and math.isfinite(result.final_loss)
    # 9 clips (the flare set aside), batches of 4 with drop_last: 2 steps of 4 clips of 4 frames.
    assert result.train_frames_per_second > 0
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 2 and history[1].split(",")[1] == "2"
    # Calibration scores the clips the review kept.
    from oddframe.pipeline.calibrate import calibrate

    cal = calibrate(tmp_path / "run", progress=False)
    assert math.isfinite(cal["threshold"]) and cal["n_calib"] + cal["n_heldout"] == 9 * 4
    # The run's transform must match the prepared clips'.
    with pytest.raises(ConfigError, match="data.stretch"):
        train_module.train(load_config(None, [o for o in overrides if "stretch" not in o]), tmp_path / "run2",
                           progress=False)


def test_cli_review(prepared: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["review", str(prepared), "--exclude", "aia171_00001,aia171_00002", "--sheets"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert f"3 of {N_CLIPS} clips set aside" in text and FLARE_CLIP in text and "contact sheets: 1" in text
    assert fmt.read_decisions(prepared).manual == {"aia171_00001": "exclude", "aia171_00002": "exclude"}
    result = runner.invoke(app, ["review", str(prepared), "--include", "aia171_00002", "--forget", "aia171_00001"])
    assert result.exit_code == 0 and fmt.read_decisions(prepared).manual == {"aia171_00002": "include"}
    result = runner.invoke(app, ["review", str(prepared), "--include", "missing_clip"])
    assert result.exit_code == 2 and "unknown clip id" in " ".join(result.output.split())
