"""Training on part of one recording: a single source as the normal video, and a range of its frames."""

from __future__ import annotations

import numpy as np
import pytest

from oddframe import api
from oddframe.data.loading import normal_videos
from oddframe.data.sources import FrameRangeSource, open_source


def test_a_range_keeps_frame_numbers_and_times(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(10 * 4 * 4, dtype=np.float32).reshape(10, 4, 4))
    source = FrameRangeSource(open_source(tmp_path / "v.npy"), start=3, stop=7)
    frames = list(source)
    assert [f.index for f in frames] == [3, 4, 5, 6] and len(source) == 4
    assert frames[0].data[0, 0] == 3 * 16
    assert len(FrameRangeSource(open_source(tmp_path / "v.npy"), start=8)) == 2
    with pytest.raises(ValueError, match="start < stop"):
        FrameRangeSource(open_source(tmp_path / "v.npy"), start=5, stop=5)


def test_one_source_is_one_normal_video_and_training_uses_the_range(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "cam.npy", rng.integers(0, 255, (40, 32, 32), dtype=np.uint8))
    layout, videos = normal_videos(tmp_path / "cam.npy", stop_frame=24)
    assert layout == "source" and [v.name for v in videos] == ["cam"] and len(videos[0].source) == 24
    config = api.load_config(None, ["model.params.width=0.125", "data.size=[32,32]", "data.clip_length=4",
                                    "train.epochs=1", "train.batch_size=4", f"data.path={tmp_path / 'cam.npy'}",
                                    "data.stop_frame=24"])
    api.train(config, tmp_path / "run", progress=False)
    cal = api.calibrate(tmp_path / "run", progress=False)
    assert cal["n_calib"] + cal["n_heldout"] == 24  # calibration reads the same 24 frames, not all 40
