"""Evaluation on the benchmark layouts: region/track metrics, per-scene numbers and the protocol in metrics.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from helpers.layouts import build_shanghaitech, build_ubnormal
from oddframe import api

TINY = [
    "model.name=conv3d_ae",
    "model.params.width=0.125",
    "data.size=[32,32]",
    "data.clip_length=4",
    "data.train_stride=2",
    "train.epochs=1",
    "train.batch_size=2",
    "render.top_frames=0",
]


def train(root: Path, out: Path, *extra: str) -> Path:
    config = api.load_config(None, TINY + [f"data.path={root}", *extra])
    api.train(config, out, progress=False)
    api.calibrate(out, progress=False)
    return out


def test_ubnormal_eval_uses_track_ids_and_reports_scenes(tmp_path: Path) -> None:
    root = build_ubnormal(tmp_path / "UBnormal")
    run = train(root, tmp_path / "run", "score.normalise=calibrated")
    m = api.evaluate(run, root, tmp_path / "eval", progress=False, report=False)
    # Tracks: scene 1 scenario 3 has track 2 (frames 1-3), scene 2 scenario 1 tracks 1 (0-1) and 3 (3-4).
    assert (m["n_gt_tracks"], m["n_gt_regions"]) == (3, 7)
    assert 0 <= m["rbdc"] <= 1 and 0 <= m["tbdc"] <= 1
    assert set(m["per_scene"]) == {"1", "2"} and m["per_scene"]["1"]["n_videos"] == 2
    assert m["per_scene"]["2"]["n_test_frames"] == 5
    p = m["protocol"]
    assert p["normalisation_uses_test_statistics"] is False and p["calibrated_on_training_frames"] is True
    assert "one-class protocol" in p["notes"][0] and "track ids" in p["rbdc_tbdc"]
    assert m["frame_auroc_macro_padded"] is not None and m["n_videos_macro_padded"] == 3
    assert m["n_videos_macro_left_out"] == 1  # the normal test video has one class only
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["protocol"] == json.loads(json.dumps(p)) and saved["rbdc"] == pytest.approx(m["rbdc"])
    curve = list(csv.DictReader((tmp_path / "eval" / "regions.csv").open()))
    assert curve and {"level", "fpr", "rbdr", "tbdr"} == set(curve[0])
    fprs = [float(r["fpr"]) for r in curve]
    assert min(fprs) >= 0 and np.isfinite(fprs).all()


def test_shanghaitech_per_scene_model_and_linked_tracks(tmp_path: Path) -> None:
    root = build_shanghaitech(tmp_path / "shanghaitech")
    run = train(root, tmp_path / "run01", "data.scenes=[1]", "score.normalise=minmax", "score.smoothing_sigma=1")
    m = api.evaluate(run, root, tmp_path / "eval", progress=False, report=False)
    # One model per scene: trained and evaluated on scene 01 only (2 test videos, 12 frames).
    assert m["n_test_frames"] == 12 and list(m["per_scene"]) == ["01"]
    assert (m["n_gt_tracks"], m["n_gt_regions"]) == (1, 2)  # 01_0014: one blob in frames 2-3
    p = m["protocol"]
    assert p["normalisation_uses_test_statistics"] is True and p["smoothing_sigma"] == 1
    assert p["scenes"] == ["1"] and "linked by overlap" in p["rbdc_tbdc"]
    # The same run on every scene (an override at evaluation): the moving blob of 02_0128 is one linked track.
    every = api.evaluate(run, root, tmp_path / "eval_all", overrides=["data.scenes=null"], progress=False,
                         report=False, regions=True)
    assert (every["n_gt_tracks"], every["n_gt_regions"]) == (2, 6)
    assert list(every["per_scene"]) == ["01", "02"]
    skipped = api.evaluate(run, root, tmp_path / "eval_fast", progress=False, report=False, regions=False)
    assert skipped["rbdc"] is None and not (tmp_path / "eval_fast" / "regions.csv").exists()
