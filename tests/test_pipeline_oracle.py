"""The whole detect/eval path with an oracle: a model whose map IS the ground-truth mask must score perfectly.

Whatever the pipeline does between the source and metrics.json (windows, sampling, label alignment, resizing,
smoothing, calibration), an oracle's frames must come out with AUROC 1, and every row of scores.csv must carry the
ground-truth label of its own frame. A shift of one frame between scores and labels, or labels read from the wrong
video, fails here.
"""

from __future__ import annotations

import csv
from typing import Iterable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oddframe import api, registry
from oddframe.data.clips import Batch
from oddframe.data.layouts import load_dataset
from oddframe.data.synthetic import write_synthetic_dataset
from oddframe.models.base import AnomalyModel

#: video name -> (T, H, W) ground-truth masks, filled by the fixture (the oracle's only knowledge).
MASKS: dict[str, np.ndarray] = {}


class Oracle(AnomalyModel):
    """Map = the ground-truth mask of the frame it is given (looked up by video name and frame number)."""

    def __init__(self, *, in_channels: int = 1, clip_length: int = 4, image_size: tuple[int, int] = (32, 32)) -> None:
        super().__init__()
        self.in_channels, self.clip_length, self.image_size = in_channels, clip_length, tuple(image_size)
        self.fit_before_epoch = 0

    def fit(self, batches: Iterable[Batch]) -> None:
        for _ in batches:
            pass

    def training_loss(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - fitted only
        raise NotImplementedError

    def anomaly_map(self, batch: Batch) -> torch.Tensor:
        b, _, t, h, w = batch.frames.shape
        out = torch.zeros(b, t, h, w)
        for i, video in enumerate(batch.video):
            masks = MASKS.get(video)
            for j, index in enumerate(batch.frame_index[i].tolist()):
                if masks is not None and index >= 0:
                    m = torch.from_numpy(masks[index].astype(np.float32))[None, None]
                    out[i, j] = F.interpolate(m, size=(h, w), mode="nearest")[0, 0]
        return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    # Videos with normal frames before and after the anomaly, so both classes are in every video.
    write_synthetic_dataset(root, n_train=4, n_test=4, length=12, size=32, anomaly="object", seed=5)
    # Test videos get names of their own (the generator numbers both splits from 01), so the oracle never paints a
    # test mask on a training video.
    test = root / "testing"
    for folder in sorted((test / "frames").iterdir()):
        name = folder.name
        folder.rename(test / "frames" / f"test{name}")
        for kind in ("test_frame_mask", "test_pixel_mask"):
            (test / kind / f"{name}.npy").rename(test / kind / f"test{name}.npy")
    for v in load_dataset(root).test:
        MASKS[v.name] = np.stack([np.asarray(v.masks[i], dtype=bool) for i in range(len(v.masks))])
    yield root
    MASKS.clear()


@pytest.fixture
def oracle():
    registry.register_model("test_oracle")(Oracle)
    yield
    registry._REGISTRY.pop("test_oracle", None)


def _truth(data) -> dict[tuple[str, int], int]:
    return {(v.name, i): int(v.labels[i]) for v in load_dataset(data).test for i in range(len(v.labels))}


@pytest.mark.parametrize("interval", [1, 2])
@pytest.mark.parametrize("stride", [4, 1])
def test_an_oracle_scores_perfectly_through_detect_and_eval(oracle, data, tmp_path, interval, stride):
    overrides = ["model.name=test_oracle", f"data.path={data}", "data.size=[32,32]", "data.clip_length=4",
                 f"data.sample_interval={interval}", f"score.stride={stride}", "score.rule=max",
                 "score.smoothing_sigma=0", "score.normalise=calibrated", "render.top_frames=2"]
    run = tmp_path / "run"
    api.train(api.load_config(None, overrides), run, progress=False)
    api.calibrate(run, progress=False)
    metrics = api.evaluate(run, data, tmp_path / "eval", progress=False, report=False)
    truth = _truth(data)
    n_expected = sum(1 for (_, i) in truth if i % interval == 0)
    assert metrics["n_test_frames"] == n_expected
    assert metrics["frame_auroc_micro"] == 1.0 and metrics["frame_auroc_macro"] == 1.0
    assert metrics["pixel_auroc"] > 0.999
    rows = list(csv.DictReader((tmp_path / "eval" / "scores.csv").open()))
    assert len(rows) == n_expected
    for r in rows:  # every row carries the label of its own frame, and the oracle's score agrees with it
        frame = int(r["frame"])
        assert frame % interval == 0
        assert int(r["label"]) == truth[(r["video"], frame)], r
    scores = {(r["video"], int(r["frame"])): float(r["score"]) for r in rows}
    anomalous = [s for k, s in scores.items() if truth[k]]
    normal = [s for k, s in scores.items() if not truth[k]]
    assert min(anomalous) > max(normal)

    summary = api.detect(run, data, tmp_path / "det", progress=False)
    det = list(csv.DictReader((tmp_path / "det" / "scores.csv").open()))
    assert summary.n_frames == n_expected
    assert {(r["video"], int(r["frame"])): float(r["score"]) for r in det} == pytest.approx(scores)
    flagged = {(r["video"], int(r["frame"])): int(r["flagged"]) for r in det}
    assert all(flagged[k] == truth[k] for k in flagged), "normal frames score 0, anomalous ones 1: the threshold splits"


def test_calibration_reads_only_the_normal_training_videos(oracle, data, tmp_path, monkeypatch):
    overrides = ["model.name=test_oracle", f"data.path={data}", "data.size=[32,32]", "data.clip_length=4",
                 "data.holdout_videos=2", "score.rule=max"]
    run = tmp_path / "run"
    api.train(api.load_config(None, overrides), run, progress=False)
    train_videos = load_dataset(data).train
    read: list[str] = []
    from oddframe.pipeline import calibrate as calibrate_module

    original = calibrate_module.stream_video

    def spy(detector, video, config, **kw):
        read.append(video.name)
        return original(detector, video, config, **kw)

    monkeypatch.setattr(calibrate_module, "stream_video", spy)
    cal = api.calibrate(run, progress=False)
    assert read == [v.name for v in train_videos[-2:]], "the held-out training videos, and nothing else"
    assert cal["normal_frames"] == "held-out training videos"
    assert cal["threshold"] == 0.0, "an oracle sees no anomaly in normal footage"
