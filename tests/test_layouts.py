"""Dataset layouts: detection, loading and ground truth on tiny fixtures of each layout and on real UCSD Ped2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from helpers.layouts import (
    build_avenue,
    build_generic_mixed,
    build_ucsd,
    build_ucsd_redistributed,
    frames,
    labels_of,
    write_image_folder,
)
from oddframe.data.groundtruth import read_mat_ranges, read_ucsd_m
from oddframe.data.layouts import LAYOUTS, detect_layout, load_dataset, open_input
from oddframe.errors import LayoutError, SourceError


def test_ucsd_official_layout(tmp_path: Path) -> None:
    root = build_ucsd(tmp_path / "UCSDped2", gt=[[(2, 4)], [(1, 2), (5, 6)]], masks_for=[1])
    assert detect_layout(root) == "ucsd"
    ds = load_dataset(root, check_masks=True)
    # macOS junk (._Train001, .DS_Store) is neither a video nor a frame.
    assert [v.name for v in ds.train] == ["Train001", "Train002"]
    assert [len(v.source) for v in ds.train] == [6, 6]
    assert [v.name for v in ds.test] == ["Test001", "Test002"]
    np.testing.assert_array_equal(ds.test[0].labels, [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(ds.test[1].labels, [1, 1, 0, 0, 1, 1])  # two ranges on one line
    assert ds.test[1].masks is None
    masks = ds.test[0].masks
    assert len(masks) == 6 and masks[2].shape == (24, 32) and masks[2].dtype == bool
    np.testing.assert_array_equal(masks.any_per_frame(), ds.test[0].labels.astype(bool))
    assert masks[-1].sum() == 0 and masks[1].sum() == 16  # the 4x4 blob
    assert ds.problems == []


def test_ucsd_m_file_inside_test_and_parsing(tmp_path: Path) -> None:
    # In the v1p2 archive UCSDped1.m sits inside Test/.
    root = build_ucsd(tmp_path / "UCSDped1", gt=[[(3, 6)]], masks_for=[], m_name="UCSDped1.m")
    (root / "UCSDped1.m").rename(root / "Test" / "UCSDped1.m")
    ds = load_dataset(root)
    np.testing.assert_array_equal(ds.test[0].labels, [0, 0, 1, 1, 1, 1])
    text = tmp_path / "x.m"
    text.write_text("TestVideoFile{end+1}.gt_frame = [1 : 100, 120:150];\nTestVideoFile{end+1}.gt_frame = [7];\n")
    assert read_ucsd_m(text) == [[(1, 100), (120, 150)], [(7, 7)]]
    text.write_text("% nothing here\n")
    with pytest.raises(LayoutError, match="x.m"):
        read_ucsd_m(text)


def test_ucsd_problems_are_recorded(tmp_path: Path) -> None:
    # Video 1's range runs past its 6 frames; video 2 is labelled but its masks miss frame 1; no entry for 3.
    root = build_ucsd(tmp_path / "u", gt=[[(5, 9)], [(1, 2)]], masks_for=[2])
    write_image_folder(root / "Test" / "Test003", frames(6), ".tif", first=1)
    (root / "Test" / "Test002_gt" / "001.bmp").write_bytes((root / "Test" / "Test002_gt" / "003.bmp").read_bytes())
    (root / "Test" / "Test002_gt" / "006.bmp").unlink()
    ds = load_dataset(root, check_masks=True)
    joined = "\n".join(ds.problems)
    assert "Test001: ranges [(5, 9)]" in joined and "outside its 6 frames" in joined
    np.testing.assert_array_equal(ds.test[0].labels, [0, 0, 0, 0, 1, 1])  # clipped, not dropped
    assert "Test002: 5 pixel masks for 6 frames" in joined
    assert "Test002: 1 labelled frames have no mask pixels" in joined
    assert "Test003: no entry" in joined and ds.test[2].labels is None


def test_ucsd_redistributed_layout(tmp_path: Path) -> None:
    root = build_ucsd_redistributed(tmp_path / "ped9", on_disk=[1, 3], gt=[[(2, 4)], [(1, 6)], [(3, 3), (5, 6)]])
    assert detect_layout(root) == "ucsd_redistributed"
    ds = load_dataset(root, check_masks=True)
    assert [v.name for v in ds.train] == ["01", "02"]
    # Only videos on disk are loaded, matched to gt by number: "03" gets entry 2, not entry 1.
    assert [v.name for v in ds.test] == ["01", "03"]
    np.testing.assert_array_equal(ds.test[1].labels, [0, 0, 1, 0, 1, 1])
    np.testing.assert_array_equal(ds.test[1].masks.any_per_frame(), [0, 0, 1, 0, 1, 1])
    assert ds.problems == []
    assert read_mat_ranges(root / "ped9.mat") == [[(2, 4)], [(1, 6)], [(3, 3), (5, 6)]]


def test_ucsd_redistributed_m_file_fallback_and_disagreement(tmp_path: Path) -> None:
    root = build_ucsd_redistributed(tmp_path / "ped9", on_disk=[1], gt=[[(2, 4)]], masks=False)
    (root / "UCSDped9.m").write_text("TestVideoFile{end+1}.gt_frame = [2:5];\n")
    assert "different frame ranges; using ped9.mat" in "\n".join(load_dataset(root).problems)
    (root / "ped9.mat").unlink()
    assert detect_layout(root) == "ucsd_redistributed"  # the .m alone marks the layout
    ds = load_dataset(root)
    np.testing.assert_array_equal(ds.test[0].labels, [0, 1, 1, 1, 1, 0])
    assert ds.problems == []


def test_mat_without_gt_names_file_and_keys(tmp_path: Path) -> None:
    root = build_ucsd_redistributed(tmp_path / "ped9", masks=False)
    scipy.io.savemat(root / "ped9.mat", {"labels": np.zeros(3)})
    with pytest.raises(LayoutError, match=r"ped9\.mat: no variable 'gt' \(found \['labels'\]\)"):
        load_dataset(root)


def test_avenue_layout(tmp_path: Path) -> None:
    root = build_avenue(tmp_path / "Avenue", anomalous={1: [1, 2], 2: []})
    assert detect_layout(root) == "avenue"
    ds = load_dataset(root, check_masks=True)
    assert [v.name for v in ds.train] == ["01"] and ds.train[0].source.kind == "video"
    assert [len(v.source) for v in ds.test] == [5, 5]
    np.testing.assert_array_equal(ds.test[0].labels, [0, 1, 1, 0, 0])
    np.testing.assert_array_equal(ds.test[1].labels, [0, 0, 0, 0, 0])
    assert ds.test[0].masks[1].shape == (32, 48) and ds.test[0].masks[1].sum() == 16
    assert ds.problems == []


def test_generic_mixed_videos_and_frames(tmp_path: Path) -> None:
    root = build_generic_mixed(tmp_path / "g")
    assert detect_layout(root) == "generic"
    ds = load_dataset(root, check_masks=True)
    assert [(v.name, v.source.kind) for v in ds.train] == [("01", "video"), ("02", "images")]
    assert [(v.name, v.source.kind) for v in ds.test] == [("03", "video"), ("04", "images")]
    np.testing.assert_array_equal(ds.test[0].labels, labels_of([(2, 3)], 6))
    assert ds.test[0].masks is not None and ds.test[1].masks is None
    np.testing.assert_array_equal(ds.test[1].labels, labels_of([(5, 6)], 6))
    assert ds.problems == []
    # Ground truth whose length disagrees with the video is reported, not raised.
    np.save(root / "testing" / "test_frame_mask" / "04.npy", np.zeros(4, np.uint8))
    assert "04: 4 frame labels for 6 frames" in "\n".join(load_dataset(root).problems)


def test_no_layout_lists_expectations(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LayoutError) as err:
        detect_layout(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    for layout in LAYOUTS:
        assert f"- {layout}:" in message
    assert "training_videos/01.avi" in message and "Train/Train001" in message
    with pytest.raises(ValueError, match="generic"):
        load_dataset(tmp_path, layout="shanghai")
    with pytest.raises(SourceError, match="no such file"):
        open_input(tmp_path / "missing")


def test_error_points_to_subfolder_that_fits(tmp_path: Path) -> None:
    build_avenue(tmp_path / "Avenue")
    with pytest.raises(LayoutError, match=r"Sub-folders that do fit: Avenue \(avenue\)"):
        detect_layout(tmp_path)


def test_open_input_single_source(tmp_path: Path) -> None:
    np.save(tmp_path / "clip.npy", frames(7))
    ds = open_input(tmp_path / "clip.npy")
    assert ds.layout == "source" and ds.train == []
    assert len(ds.test) == 1 and ds.test[0].name == "clip" and len(ds.test[0].source) == 7
    assert ds.test[0].labels is None and ds.test[0].masks is None
    write_image_folder(tmp_path / "imgs", frames(3))
    assert open_input(tmp_path / "imgs").test[0].source.kind == "images"
    assert open_input(build_avenue(tmp_path / "av")).layout == "avenue"


def test_ped2_real(shared_data: Path) -> None:
    root = shared_data / "ped2"
    ds = load_dataset(root, check_masks=True)
    assert ds.layout == "ucsd_redistributed"
    assert len(ds.train) == 16 and sum(len(v.source) for v in ds.train) == 2550
    assert [v.name for v in ds.test] == ["01", "02", "03", "04", "05", "06"]
    assert sum(len(v.source) for v in ds.test) == 1020
    # Frame labels equal ped2.mat's 1-based inclusive ranges, read here independently of the loader.
    gt = scipy.io.loadmat(root / "ped2.mat")["gt"].ravel()
    for video, entry in zip(ds.test, gt):
        start, end = (int(x) for x in entry.ravel())
        np.testing.assert_array_equal(video.labels, labels_of([(start, end)], len(video.source)))
    np.testing.assert_array_equal(np.flatnonzero(ds.test[0].labels), np.arange(60, 180))
    # The official masks agree with the frame labels on every frame of test videos 01-06 (checked on the
    # data: no labelled frame without mask pixels and no mask pixels outside the labels), so exactly.
    for video in ds.test:
        assert len(video.masks) == len(video.source)
        np.testing.assert_array_equal(video.masks.any_per_frame(), video.labels.astype(bool))
    assert ds.test[0].masks[100].shape == (240, 360)
    assert ds.problems == []
