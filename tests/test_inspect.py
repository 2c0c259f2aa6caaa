"""``inspect_path``: counts from written datasets, single sources, problems, frame checks (or none with
``decode=False``), readable table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.layouts import build_avenue, build_ucsd, frames
from oddframe.data.inspect import format_inspect, inspect_path
from oddframe.data.layouts import load_dataset
from oddframe.data.sources import VideoSource
from oddframe.data.synthetic import write_synthetic_dataset

SUMMARY_KEYS = (
    "layout",
    "n_train_videos",
    "n_train_frames",
    "n_test_videos",
    "n_test_frames",
    "n_anomalous_frames",
    "has_pixel_masks",
    "resolution",
)


@pytest.mark.parametrize(("anomaly", "fmt"), [("zeroed", "png"), ("frozen", "npy")])
def test_synthetic_round_trip(tmp_path: Path, anomaly: str, fmt: str) -> None:
    written = write_synthetic_dataset(
        tmp_path / "syn", n_train=3, n_test=4, length=6, size=32, anomaly=anomaly, seed=2, fmt=fmt,
        anomaly_fraction=0.5,
    )
    report = inspect_path(tmp_path / "syn")
    assert {k: report[k] for k in SUMMARY_KEYS} == {k: written[k] for k in SUMMARY_KEYS}
    assert report["n_test_frames"] == 24 and report["n_anomalous_frames"] > 0
    # The anomalies themselves are what the frame checks find: a zeroed frame is blank, a frozen one a duplicate.
    kind = {"zeroed": "blank frames", "frozen": "identical to an earlier frame"}[anomaly]
    assert report["problems"] and all(kind in p and p.startswith("test video") for p in report["problems"])
    assert inspect_path(tmp_path / "syn", decode=False)["problems"] == []
    assert [(v["split"], v["name"]) for v in report["videos"]][:4] == [
        ("train", "01"), ("train", "02"), ("train", "03"), ("test", "01")
    ]
    # Two of four test videos carry the anomaly (anomaly_fraction=0.5).
    assert sum(v["n_anomalous"] > 0 for v in report["videos"] if v["split"] == "test") == 2
    # What the loader reads back is what was written: frames, labels and masks.
    ds = load_dataset(tmp_path / "syn")
    video = ds.test[0]
    labels = np.load(tmp_path / "syn" / "testing" / "test_frame_mask" / f"{video.name}.npy")
    np.testing.assert_array_equal(video.labels, labels)
    pixel = np.load(tmp_path / "syn" / "testing" / "test_pixel_mask" / f"{video.name}.npy")
    np.testing.assert_array_equal(video.masks[3], pixel[3] > 0)
    assert json.loads(json.dumps(report)) == report  # JSON-able, for --json


def test_single_source_and_table(tmp_path: Path) -> None:
    np.save(tmp_path / "clip.npy", frames(9, (16, 20)))
    report = inspect_path(tmp_path / "clip.npy")
    assert report["layout"] == "source" and report["source_kind"] == "array"
    assert (report["n_train_videos"], report["n_test_videos"], report["n_test_frames"]) == (0, 1, 9)
    assert report["resolution"] == [16, 20] and report["n_anomalous_frames"] == 0
    text = format_inspect(report)
    assert "source (array)" in text and "16 x 20" in text and "no problems found" in text


def test_problems_reported(tmp_path: Path) -> None:
    root = build_ucsd(tmp_path / "u", gt=[[(1, 2)]], masks_for=[1])
    (root / "Test" / "Test001_gt" / "002.bmp").write_bytes((root / "Test" / "Test001_gt" / "004.bmp").read_bytes())
    report = inspect_path(root)
    assert report["problems"] == ["test video Test001: 1 labelled frames have no mask pixels"]
    assert "1 problem(s)" in format_inspect(report)
    assert inspect_path(root, check_masks=False)["problems"] == []


def test_counts_without_decoding_videos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = build_avenue(tmp_path / "Avenue", n_frames=5, anomalous={1: [0, 4], 2: [2]})

    def no_decoding(self: VideoSource) -> None:
        raise AssertionError(f"{self.path} was decoded")

    # Opening a video decodes its first frame only; iterating it (decoding all of it) must not happen.
    monkeypatch.setattr(VideoSource, "__iter__", no_decoding)
    report = inspect_path(root, decode=False)
    assert report["layout"] == "avenue"
    assert (report["n_train_frames"], report["n_test_frames"], report["n_anomalous_frames"]) == (5, 10, 3)
    assert report["fps"] == 25 and report["resolution"] == [32, 48]


def test_ped2_inspect(shared_data: Path) -> None:
    report = inspect_path(shared_data / "ped2", decode=False)  # decoding 3570 frames is the fault suite's job
    assert report["layout"] == "ucsd_redistributed"
    assert (report["n_train_videos"], report["n_train_frames"]) == (16, 2550)
    assert (report["n_test_videos"], report["n_test_frames"]) == (6, 1020)
    # Sum of ped2.mat ranges for videos 01-06: 120 + 86 + 146 + 150 + 129 + 159.
    assert report["n_anomalous_frames"] == 790
    assert report["has_pixel_masks"] and report["resolution"] == [240, 360]
    assert report["problems"] == []
