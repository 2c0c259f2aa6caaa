"""The streaming detector: every frame once, in order, with maps aggregated over the windows that cover it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oddframe.data.clips import Batch
from oddframe.data.loading import TransformedFrame
from oddframe.pipeline.engine import Detector
from oddframe.pipeline.outputs import NpyWriter
from oddframe.models.base import AnomalyModel


class FrameValueModel(AnomalyModel):
    """Map = the frame's own value plus the clip position, to expose how windows are aggregated."""

    def __init__(self, *, clip_length: int, position_weight: float = 0.0) -> None:
        super().__init__()
        self.clip_length, self.in_channels, self.image_size = clip_length, 1, (4, 5)
        self.position_weight = position_weight
        self.calls: list[list[int]] = []

    def training_loss(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - not trained here
        return batch.frames.mean()

    def anomaly_map(self, batch: Batch) -> torch.Tensor:
        self.calls.append(batch.frame_index[:, 0].tolist())
        pos = torch.arange(batch.frames.shape[2], dtype=torch.float32)[None, :, None, None]
        return batch.frames[:, 0] + self.position_weight * pos


def _stream(n: int, h: int = 4, w: int = 5):
    for i in range(n):
        yield TransformedFrame(i * 10, i / 10, np.full((1, h, w), float(i), np.float32), np.ones((h, w), bool))


@pytest.mark.parametrize("n", [1, 3, 7, 8, 9, 23])
@pytest.mark.parametrize("length,stride,batch", [(4, 4, 1), (4, 2, 3), (5, 1, 2), (3, 3, 8)])
def test_every_frame_once_in_order_with_its_own_map(n, length, stride, batch):
    model = FrameValueModel(clip_length=length)
    det = Detector(model, clip_length=length, stride=stride, batch_size=batch, device="cpu")
    results = list(det.run(_stream(n), "v"))
    assert [r.index for r in results] == [i * 10 for i in range(n)]
    for i, r in enumerate(results):
        np.testing.assert_allclose(r.amap, i)  # the map of frame i is i whichever windows covered it
        assert r.score == pytest.approx(i)  # mse rule on map_power=2 maps: the mean of the map
    assert det.timing.frames == n


def test_aggregation_max_and_mean_over_overlapping_windows():
    # position_weight exposes which window positions covered a frame: with L=4, stride=2 frame 2 is at
    # position 2 of window 0 and position 0 of window 2, so max -> 2 + 2, mean -> 2 + 1.
    for how, expected in (("max", 4.0), ("mean", 3.0)):
        model = FrameValueModel(clip_length=4, position_weight=1.0)
        det = Detector(model, clip_length=4, stride=2, batch_size=2, aggregate=how, device="cpu")
        results = list(det.run(_stream(10), "v"))
        assert float(results[2].amap.mean()) == pytest.approx(expected)


@pytest.mark.parametrize("length,stride,batch", [(4, 4, 2), (4, 1, 3), (8, 4, 1)])
def test_memory_is_bounded_by_the_batch_not_the_video(length, stride, batch):
    """Frames pulled from the source minus frames yielded stays below one batch of windows at every moment."""
    model = FrameValueModel(clip_length=length)
    det = Detector(model, clip_length=length, stride=stride, batch_size=batch, device="cpu")
    pulled = {"n": 0}

    def counted(n):
        for f in _stream(n):
            pulled["n"] += 1
            yield f

    bound = length + stride * batch  # the frames one batch of windows spans
    in_flight, yielded = [], 0
    for _ in det.run(counted(1000), "v"):
        yielded += 1
        in_flight.append(pulled["n"] - yielded)
    assert yielded == 1000
    assert max(in_flight) <= bound, (max(in_flight), bound)
    assert all(len(c) <= batch for c in model.calls)


def test_stride_longer_than_clip_is_rejected():
    with pytest.raises(ValueError, match="stride"):
        Detector(FrameValueModel(clip_length=4), clip_length=4, stride=5, device="cpu")


def test_npy_writer_round_trip(tmp_path):
    w = NpyWriter(tmp_path / "m.npy")
    frames = [np.random.default_rng(i).random((6, 7)).astype(np.float32) for i in range(5)]
    for f in frames:
        w.append(f)
    w.close()
    back = np.load(tmp_path / "m.npy")
    assert back.shape == (5, 6, 7) and back.dtype == np.float16
    np.testing.assert_allclose(back, np.stack(frames), atol=1e-3)
