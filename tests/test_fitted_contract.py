"""The contract's two extensions: fitted models (fit on normal data, state saved safely) and derived inputs."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pytest
import torch

from oddframe import api, registry, runs
from oddframe.data.clips import Batch
from oddframe.data.loading import TransformedFrame
from oddframe.data.synthetic import write_synthetic_dataset
from oddframe.errors import CheckpointError
from oddframe.features import FEATURES, with_features
from oddframe.features.flow import OpticalFlow
from oddframe.models.base import AnomalyModel


class PixelGaussian(AnomalyModel):
    """Test model, fitted only: a Gaussian per pixel (mean, variance) of normal frames; map = squared z-score."""

    map_power = 2

    def __init__(self, *, in_channels: int = 1, clip_length: int = 4, image_size: tuple[int, int] = (32, 32)) -> None:
        super().__init__()
        self.in_channels, self.clip_length, self.image_size = in_channels, clip_length, tuple(image_size)
        self.register_fitted("mean", torch.zeros(0))
        self.register_fitted("var", torch.zeros(0))
        self.fit_before_epoch = 0

    def fit(self, batches: Iterable[Batch]) -> None:
        total = sq = count = 0
        for b in batches:
            w = b.valid.float()
            total = total + (b.frames * w).sum(dim=(0, 2))
            sq = sq + (b.frames**2 * w).sum(dim=(0, 2))
            count = count + w.sum(dim=(0, 2))
        mean = total / count.clamp_min(1)
        self.mean = mean
        self.var = (sq / count.clamp_min(1) - mean**2).clamp_min(1e-3)

    def training_loss(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError("fitted only")

    def anomaly_map(self, batch: Batch) -> torch.Tensor:
        if self.mean.numel() == 0:
            raise RuntimeError("not fitted")
        z = (batch.frames - self.mean[None, :, None]) ** 2 / self.var[None, :, None]
        return z.mean(dim=1) * batch.valid[:, 0]


class CountsFits(AnomalyModel):
    """Test model, trained by gradient with a fit step before epoch 1 (as Deep SVDD fixes its centre)."""

    def __init__(self, *, in_channels: int = 1, clip_length: int = 4, image_size: tuple[int, int] = (32, 32)) -> None:
        super().__init__()
        self.in_channels, self.clip_length, self.image_size = in_channels, clip_length, tuple(image_size)
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.register_fitted("centre", torch.zeros(0))
        self.fit_before_epoch = 1
        self.fitted_clips: list[int] = []
        self.steps = 0

    def fit(self, batches: Iterable[Batch]) -> None:
        seen = [len(b) for b in batches]
        self.fitted_clips.append(sum(seen))
        self.fit_at_step = self.steps
        self.centre = torch.full((3,), float(len(self.fitted_clips)))

    def training_loss(self, batch: Batch) -> torch.Tensor:
        self.steps += 1
        return ((batch.frames.mean() - self.w) ** 2).sum()

    def anomaly_map(self, batch: Batch) -> torch.Tensor:
        return batch.frames.mean(dim=1) ** 2


class WantsFlow(PixelGaussian):
    """Test model that scores the flow magnitude it asks for (and checks it arrives)."""

    def derived_inputs(self) -> dict[str, dict]:
        return {"flow": {"method": "dis", "preset": "ultrafast"}}

    def fit(self, batches: Iterable[Batch]) -> None:
        for b in batches:
            assert b.extras["flow"].shape == (len(b), 2, *b.frames.shape[2:])
        self.mean, self.var = torch.zeros(1), torch.ones(1)

    def anomaly_map(self, batch: Batch) -> torch.Tensor:
        return batch.extras["flow"].pow(2).sum(dim=1)


@pytest.fixture
def registered():
    """Register the test models for one test only (list_models() stays clean for the parametrised suites)."""
    names = {"test_pixel_gaussian": PixelGaussian, "test_counts_fits": CountsFits, "test_wants_flow": WantsFlow}
    for name, cls in names.items():
        registry.register_model(name)(cls)
    yield
    for name in names:
        registry._REGISTRY.pop(name, None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, n_train=12, n_test=4, length=8, size=32, anomaly="object", seed=3)
    return root


BASE = ["data.size=[32,32]", "data.clip_length=4", "data.train_stride=4", "train.batch_size=4", "score.stride=4"]


def test_fitted_buffers_take_the_saved_shape(tmp_path):
    model = PixelGaussian()
    model.mean, model.var = torch.arange(3.0), torch.ones(3)
    runs.save_weights(model, tmp_path / "w.safetensors")
    fresh = PixelGaussian()
    assert fresh.mean.shape == (0,)
    runs.load_weights(fresh, tmp_path / "w.safetensors")
    assert torch.equal(fresh.mean, torch.arange(3.0)) and torch.equal(fresh.var, torch.ones(3))


def test_a_fitted_model_trains_detects_and_round_trips(registered, data, tmp_path):
    config = api.load_config(None, BASE + ["model.name=test_pixel_gaussian", f"data.path={data}"])
    result = api.train(config, tmp_path / "run", progress=False)
    assert result.epochs == 1
    assert not (tmp_path / "run" / runs.STATE).exists(), "a fitted-only run has no optimiser state"
    with pytest.raises(CheckpointError, match="nothing to resume"):
        api.train(config, tmp_path / "run", resume=True, progress=False)
    metrics = api.evaluate(tmp_path / "run", data, tmp_path / "eval", progress=False, report=False)
    assert metrics["frame_auroc_micro"] > 0.9, metrics  # the new object is far from every pixel's normal values
    model, _ = api.load_run(tmp_path / "run")
    assert model.mean.shape == (1, 32, 32)
    cal = api.calibrate(tmp_path / "run", progress=False)
    assert np.isfinite(cal["threshold"])


def test_fit_runs_once_before_its_epoch_on_every_unaugmented_clip(registered, data, tmp_path):
    config = api.load_config(
        None, BASE + ["model.name=test_counts_fits", f"data.path={data}", "train.epochs=3", "train.augment.hflip=1.0"]
    )
    seen = {}
    original = CountsFits.fit

    def spy(self, batches):
        batches = list(batches)
        seen["clips"] = torch.cat([b.frames for b in batches])
        original(self, batches)

    CountsFits.fit = spy
    try:
        api.train(config, tmp_path / "run", progress=False)
    finally:
        CountsFits.fit = original
    # 12 videos of 8 frames, windows of 4 every 4 frames: 24 clips, each once, not flipped.
    assert seen["clips"].shape[0] == 24
    model, _ = api.load_run(tmp_path / "run")
    assert torch.equal(model.centre, torch.ones(3)), "fitted once, and the fitted state was saved"
    from oddframe.data.layouts import load_dataset

    first = load_dataset(data).train[0]
    frame0 = next(iter(first.source)).data
    grey = frame0 if frame0.ndim == 2 else frame0[..., 0]
    expected = torch.from_numpy(grey.astype(np.float32) / 127.5 - 1.0)
    assert torch.allclose(seen["clips"][0, 0, 0], expected, atol=1e-2), "fit saw the first clip unflipped"


def test_derived_inputs_reach_the_model_once_per_frame(registered, data, tmp_path, monkeypatch):
    calls = {"n": 0}

    class Counting(OpticalFlow):
        def __call__(self, frame):
            calls["n"] += 1
            return super().__call__(frame)

    monkeypatch.setitem(FEATURES, "flow", Counting)
    config = api.load_config(None, BASE + ["model.name=test_wants_flow", f"data.path={data}", "score.stride=2"])
    api.train(config, tmp_path / "run", progress=False)
    assert calls["n"] == 12 * 8, "every training frame's flow computed once"
    calls["n"] = 0
    summary = api.detect(tmp_path / "run", data, tmp_path / "det", progress=False)
    assert summary.n_frames == 4 * 8
    assert calls["n"] == 4 * 8, "overlapping windows (stride 2) reuse each frame's flow"


def _frame(i: int, image: np.ndarray) -> TransformedFrame:
    return TransformedFrame(i, None, (image.astype(np.float32) / 127.5 - 1.0)[None], np.ones(image.shape, bool))


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_flow_measures_a_moving_square(method):
    rng = np.random.default_rng(0)
    background = (rng.random((64, 64)) * 40).astype(np.uint8)
    frames = []
    for i in range(3):
        img = background.copy()
        img[20:36, 10 + 3 * i:26 + 3 * i] = 220  # moves 3 pixels right per frame
        frames.append(_frame(i, img))
    out = [f.features["flow"] for f in with_features(frames, {"flow": {"method": method}})]
    np.testing.assert_array_equal(out[0], out[1], "the first frame, without a predecessor, takes the first flow")
    assert abs(np.median(out[0][0, 24:32, 15:27]) - 3.0) < 1.0, "not zero: the first frame does not look calm"
    alone = list(with_features(frames[:1], {"flow": {"method": method}}))
    assert len(alone) == 1 and np.all(alone[0].features["flow"] == 0), "a one-frame video has no flow to take"
    dx = out[2][0, 24:32, 18:30]
    assert abs(np.median(dx) - 3.0) < 1.0, np.median(dx)
    assert abs(np.median(out[2][1, 24:32, 18:30])) < 0.5
    assert np.median(np.abs(out[2][0, 50:, 40:])) < 0.5, "the still background does not move"


def test_flow_rejects_bad_parameters_and_unknown_features():
    with pytest.raises(ValueError, match="dis, farneback"):
        OpticalFlow(method="lucas")
    with pytest.raises(ValueError, match="refine"):
        OpticalFlow(refine=-1)
    with pytest.raises(ValueError, match="known: background, diff, flow"):
        list(with_features([_frame(0, np.zeros((8, 8), np.uint8))], {"depth": {}}))
