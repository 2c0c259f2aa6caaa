"""SSIM scoring (``score.rule=ssim``) and the blob weighting option: hand cases, the library, the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oddframe.config import load_config
from oddframe.data.clips import Batch
from oddframe.data.loading import TransformedFrame
from oddframe.errors import ConfigError
from oddframe.models.base import AnomalyModel
from oddframe.pipeline.engine import Detector, detector_for
from oddframe.scoring import frame_scores
from oddframe.ssim import ssim_map

C1, C2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2  # K1, K2 of Wang et al. 2004 with data range 2


def _clip(frames: np.ndarray) -> torch.Tensor:
    """``(T, H, W)`` -> ``(1, 1, T, H, W)`` float32."""
    return torch.from_numpy(np.asarray(frames, dtype=np.float32))[None, None]


def _ssim_by_hand(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two ``(H, W)`` images, eq. 13 of Wang et al. 2004 written out in NumPy: an 11 x 11 Gaussian
    window (sigma 1.5, normalised), borders by reflection (no edge repeat), population (co)variances."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    h, w = x.shape

    def local_mean(img: np.ndarray) -> np.ndarray:
        p = np.pad(img, 5, mode="reflect")
        return np.array([[(p[i:i + 11, j:j + 11] * win).sum() for j in range(w)] for i in range(h)])

    mx, my = local_mean(x), local_mean(y)
    vx, vy, cxy = local_mean(x * x) - mx**2, local_mean(y * y) - my**2, local_mean(x * y) - mx * my
    return ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2))


def test_constant_frames_by_hand() -> None:
    # Constant frames a and b: mu = a, b, no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1) everywhere.
    a, b = 0.5, -0.5
    m = ssim_map(_clip(np.full((2, 8, 8), a)), _clip(np.stack([np.full((8, 8), a), np.full((8, 8), b)])))
    want = 1 - (2 * a * b + C1) / (a * a + b * b + C1)  # 1.99760...
    torch.testing.assert_close(m[0, 0], torch.zeros(8, 8))
    torch.testing.assert_close(m[0, 1], torch.full((8, 8), want))
    assert frame_scores(m[0], rule="ssim")[1] == pytest.approx(want, rel=1e-6)


def test_structured_frames_match_the_formula_written_out() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (12, 14))
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1)
    m = ssim_map(_clip(x[None]), _clip(y[None]))[0, 0].double().numpy()
    np.testing.assert_allclose(m, 1 - _ssim_by_hand(x, y), atol=2e-5)


def test_frame_score_is_one_minus_the_librarys_ssim() -> None:
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    g = torch.Generator().manual_seed(0)
    obs = torch.rand(2, 3, 4, 16, 16, generator=g) * 2 - 1  # colour: SSIM per channel, averaged
    rec = (obs + 0.2 * torch.randn(obs.shape, generator=g)).clamp(-1, 1)
    scores = frame_scores(ssim_map(obs, rec), rule="ssim")  # (B, T)
    frames = lambda v: v.permute(0, 2, 1, 3, 4).reshape(8, 3, 16, 16)  # noqa: E731
    lib = tm_ssim(frames(rec), frames(obs), data_range=2.0, reduction="none").reshape(2, 4)
    np.testing.assert_allclose(scores, 1 - lib.double().numpy(), atol=1e-5)
    assert np.all(scores > 0.05)


def test_invalid_pixels_score_zero_and_nan_does_not_leak() -> None:
    obs = torch.rand(1, 1, 2, 16, 16) * 2 - 1
    valid = torch.ones(1, 1, 2, 16, 16, dtype=torch.bool)
    valid[..., :4] = False
    obs[..., :4] = float("nan")  # e.g. off-disk FITS pixels
    m = ssim_map(obs, torch.zeros_like(obs), valid)
    assert torch.isfinite(m).all() and torch.all(m[..., :4] == 0) and m[..., 4:].min() > 0
    with pytest.raises(ValueError, match="at least 6x6"):
        ssim_map(torch.zeros(1, 1, 1, 4, 4), torch.zeros(1, 1, 1, 4, 4))


# ------------------------------------------------------------------------------------------------ the engine
class _BlackFrame(AnomalyModel):
    """Reconstructs every frame perfectly except frame 2 of each window, which it replaces by black."""

    def __init__(self) -> None:
        super().__init__()
        self.clip_length, self.in_channels, self.image_size = 4, 1, (16, 16)

    def training_loss(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - not trained here
        return batch.frames.mean()

    def anomaly_map(self, batch: Batch) -> torch.Tensor:  # the error map the ssim rule must not use
        return torch.zeros(batch.frames[:, 0].shape)

    def reconstruct(self, batch: Batch) -> torch.Tensor:
        out = batch.frames.clone()
        out[:, :, 2] = -1.0
        return out


def _textured_stream(n: int, size: int = 16):
    rng = np.random.default_rng(0)
    for i in range(n):
        frame = rng.uniform(-1, 1, (1, size, size)).astype(np.float32)
        yield TransformedFrame(i, None, frame, np.ones((size, size), bool))


def test_engine_scores_ssim_from_the_reconstruction() -> None:
    det = Detector(_BlackFrame(), clip_length=4, stride=4, rule="ssim", device="cpu")
    results = list(det.run(_textured_stream(8), "v"))
    scores = np.array([r.score for r in results])
    assert np.argmax(scores[:4]) == 2 and np.argmax(scores[4:]) == 2  # the blacked-out frame of each window
    assert np.all(scores[[0, 1, 3, 4, 5, 7]] == 0) and scores[2] > 0.5
    assert results[2].amap.shape == (16, 16) and results[2].amap.mean() == pytest.approx(scores[2], rel=1e-5)


def test_ssim_needs_a_model_that_reconstructs() -> None:
    class MapOnly(_BlackFrame):
        reconstruct = AnomalyModel.reconstruct

    with pytest.raises(ConfigError, match="reconstructs nothing"):
        Detector(MapOnly(), clip_length=4, rule="ssim", device="cpu")


def test_blob_weighting_reaches_the_rule_from_the_config() -> None:
    """A large faint blob and a small strong one: area and log-area weightings give different scores, and the
    engine built from ``score.blob_weighting`` gives the rule's own number (hand values: tests/test_scoring.py)."""
    amap = np.zeros((1, 48, 48), np.float32)
    amap[0, :7, :7] = 0.8**2  # 49 px
    amap[0, 40:45, 40:45] = 1.0**2  # 25 px
    want = {w: frame_scores(amap, rule="blob", weighting=w)[0] for w in ("area", "log_area")}
    assert want["area"] < want["log_area"]  # log area gives the small strong blob more say

    class Fixed(_BlackFrame):
        def anomaly_map(self, batch: Batch) -> torch.Tensor:
            return torch.from_numpy(amap).expand(batch.frames.shape[0], 4, 48, 48).clone()

    for weighting, value in want.items():
        config = load_config(None, ["score.rule=blob", f"score.blob_weighting={weighting}", "data.clip_length=4"])
        det = detector_for(Fixed(), config, device="cpu")
        assert next(iter(det.run(_textured_stream(4, size=48), "v"))).score == pytest.approx(value, rel=1e-6), weighting
