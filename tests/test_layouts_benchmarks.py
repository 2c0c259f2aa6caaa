"""ShanghaiTech Campus and UBnormal as distributed: generated fixtures of the exact layouts, read exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.layouts import UBNORMAL_VIDEOS, build_shanghaitech, build_ubnormal, ubnormal_object
from oddframe.data.inspect import format_inspect, inspect_path
from oddframe.data.layouts import LAYOUTS, detect_layout, load_dataset
from oddframe.data.ubnormal import read_tracks
from oddframe.errors import ConfigError, LayoutError


def test_shanghaitech_layout_and_scenes(tmp_path: Path) -> None:
    root = build_shanghaitech(tmp_path / "shanghaitech")
    assert "shanghaitech" in LAYOUTS and detect_layout(root) == "shanghaitech"
    ds = load_dataset(root, check_masks=True)
    assert [(v.name, v.scene, len(v.source)) for v in ds.train] == [("01_001", "01", 6), ("01_002", "01", 6),
                                                                      ("02_001", "02", 6)]
    assert [(v.name, v.scene) for v in ds.test] == [("01_0014", "01"), ("01_0015", "01"), ("02_0128", "02")]
    assert ds.scenes == ["01", "02"] and ds.problems == []
    np.testing.assert_array_equal(ds.test[0].labels, [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(ds.test[1].labels, np.zeros(6))
    np.testing.assert_array_equal(ds.test[2].labels, [0, 1, 1, 1, 1, 0])
    mask = ds.test[2].masks[3]
    assert mask.shape == (24, 32) and mask.dtype == bool
    assert np.argwhere(mask).min(axis=0).tolist() == [2, 6] and mask.sum() == 16  # the blob moved 3 columns
    # One model per scene: the scene filter keeps training and test videos of that scene only.
    one = load_dataset(root, scenes=["2"])
    assert [v.name for v in one.train] == ["02_001"] and [v.name for v in one.test] == ["02_0128"]
    assert [v.name for v in load_dataset(root, scenes=[1]).test] == ["01_0014", "01_0015"]
    with pytest.raises(ConfigError, match=r"scene\(s\) \[14\].*\['01', '02'\]"):
        load_dataset(root, scenes=[14])


def test_generic_names_stay_generic(tmp_path: Path) -> None:
    root = build_shanghaitech(tmp_path / "x")
    (root / "testing" / "frames" / "01_0014").rename(root / "testing" / "frames" / "clip_a")
    assert detect_layout(root) == "generic"
    with pytest.raises(ConfigError, match="has no scenes"):
        load_dataset(root, scenes=["01"])


@pytest.mark.parametrize("scripts", [True, False])
def test_ubnormal_layout_one_class_protocol(tmp_path: Path, scripts: bool) -> None:
    root = build_ubnormal(tmp_path / "UBnormal", scripts=scripts)
    assert detect_layout(root) == "ubnormal"
    ds = load_dataset(root, check_masks=True)
    assert ds.problems == []
    # Normal training videos only: the abnormal training video is left out, and the dataset says so.
    assert [(v.name, v.scene) for v in ds.train] == [("normal_scene_1_scenario_1", "1"),
                                                      ("normal_scene_2_scenario_3_fog", "2")]
    assert "one-class protocol" in ds.notes[0] and "1 abnormal training videos are left out" in ds.notes[0]
    assert [v.name for v in ds.test] == ["abnormal_scene_1_scenario_3", "normal_scene_1_scenario_2",
                                         "abnormal_scene_2_scenario_1"]
    by_name = {v.name: v for v in ds.test}
    np.testing.assert_array_equal(by_name["normal_scene_1_scenario_2"].labels, np.zeros(5))
    np.testing.assert_array_equal(by_name["abnormal_scene_1_scenario_3"].labels, [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(by_name["abnormal_scene_2_scenario_1"].labels, [1, 1, 0, 1, 1])
    # Pixels are anomalous where their id is an active track's: never the normal person (id 9), never an
    # anomalous object outside its track's frames.
    video = by_name["abnormal_scene_2_scenario_1"]
    for t in range(5):
        expected = np.zeros((24, 32), bool)
        for track_id, start, end in ((1, 0, 1), (3, 3, 4)):
            if start <= t <= end:
                expected[ubnormal_object(t, track_id)] = True
        np.testing.assert_array_equal(video.masks[t], expected)
    inst = video.masks.instances(3)
    assert set(np.unique(inst).tolist()) == {0, 3} and (inst == 3).sum() == 16
    assert by_name["normal_scene_1_scenario_2"].masks[2].sum() == 0
    assert video.masks.any_per_frame().tolist() == [True, True, False, True, True]


def test_ubnormal_validation_split_and_scenes(tmp_path: Path) -> None:
    root = build_ubnormal(tmp_path / "UBnormal")
    val = load_dataset(root, split="validation")
    assert sorted(v.name for v in val.test) == ["abnormal_scene_2_scenario_2", "normal_scene_2_scenario_2"]
    assert "evaluates the validation split" in val.notes[0]
    scene2 = load_dataset(root, scenes=["2"])
    assert [v.name for v in scene2.train] == ["normal_scene_2_scenario_3_fog"]
    assert [v.name for v in scene2.test] == ["abnormal_scene_2_scenario_1"]
    with pytest.raises(ConfigError, match="only UBnormal has a validation split"):
        load_dataset(build_shanghaitech(tmp_path / "sh"), split="validation")


def test_ubnormal_needs_split_files_and_reports_gaps(tmp_path: Path) -> None:
    root = build_ubnormal(tmp_path / "UBnormal")
    for f in (root / "scripts").iterdir():
        f.rename(tmp_path / f.name)
    with pytest.raises(LayoutError, match="lilygeorgescu/UBnormal"):
        load_dataset(root)
    for name in ("normal_training_video_names.txt", "normal_test_video_names.txt", "abnormal_test_video_names.txt"):
        (tmp_path / name).rename(root / name)
    (root / "Scene1" / "normal_scene_1_scenario_2.mp4").unlink()
    (root / "Scene1" / "abnormal_scene_1_scenario_3_annotations" / "abnormal_scene_1_scenario_3_0002_gt.png").unlink()
    ds = load_dataset(root)
    assert any("normal_scene_1_scenario_2.mp4: listed in the split files but missing" in p for p in ds.problems)
    with pytest.raises(LayoutError, match="abnormal_scene_1_scenario_3_0002_gt.png"):
        ds.test[0].masks[2]


def test_ubnormal_tracks_file_and_corrected_tracks(tmp_path: Path) -> None:
    path = tmp_path / "x_tracks.txt"
    path.write_text("1.0,10.0,20.0\n")  # one line, floats as np.savetxt writes them
    assert read_tracks(path).tolist() == [[1, 10, 20]]
    path.write_text("1,2\n")
    with pytest.raises(LayoutError, match="3 columns"):
        read_tracks(path)
    root = build_ubnormal(tmp_path / "UBnormal")
    ann = root / "Scene1" / "abnormal_scene_1_scenario_3_annotations"
    (ann / "abnormal_scene_1_scenario_3_new_tracks.txt").write_text("2,2,2\n")
    video = next(v for v in load_dataset(root).test if v.name == "abnormal_scene_1_scenario_3")
    np.testing.assert_array_equal(video.labels, [0, 0, 1, 0, 0])


def test_inspect_names_the_benchmark_layouts(tmp_path: Path) -> None:
    report = inspect_path(build_ubnormal(tmp_path / "UBnormal"))
    assert report["layout"] == "ubnormal" and report["n_train_videos"] == 2 and report["n_test_videos"] == 3
    assert report["scenes"] == ["1", "2"] and "one-class protocol" in report["notes"][0]
    assert report["n_anomalous_frames"] == 3 + 4 and report["problems"] == []
    text = format_inspect(report)
    assert "ubnormal" in text and "one-class protocol" in text and "scenes" in text
    sh = inspect_path(build_shanghaitech(tmp_path / "sh"))
    assert sh["layout"] == "shanghaitech" and sh["scenes"] == ["01", "02"]
    assert [v["scene"] for v in sh["videos"]][:3] == ["01", "01", "02"]
    assert len(UBNORMAL_VIDEOS) == 8
