"""convlstm_ae: paper geometry, any frame size, swappable parts, masked loss, training and detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from oddframe.data.clips import Batch
from oddframe.models.convlstm import ConvLSTM
from oddframe.models.convlstm_ae import ConvLSTMAE, SpatialDecoder, SpatialEncoder, TemporalAutoencoder
from oddframe.registry import build_model, list_models

# Tiny configuration for 32 x 32 frames: the paper's layout with smaller kernels, strides and widths.
TINY = {
    "image_size": 32,
    "clip_length": 8,
    "encoder_channels": (32, 16),
    "encoder_kernels": (5, 3),
    "encoder_strides": (2, 2),
    "lstm_channels": (16, 8, 16),
}




def moving_blobs(n: int, t: int, size: int, g: torch.Generator, *, level: float = 0.6) -> torch.Tensor:
    """``(n, 1, t, size, size)`` clips of a bright blob moving right 2 px per frame on a dark background.

    Background ``-level`` and peak ``+level`` rather than -1 and 1: the tanh output would have to saturate to
    reproduce exactly -1, where its gradient vanishes and a briefly trained model gets stuck predicting
    "all dark" (see the module docstring of :mod:`oddframe.models.convlstm_ae`).
    """
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    clips = torch.empty(n, 1, t, size, size)
    for i in range(n):
        y = 6 + float(torch.rand((), generator=g)) * (size - 12)
        x0 = 4 + float(torch.rand((), generator=g)) * (size - 8 - 2.0 * (t - 1))
        for k in range(t):
            d2 = (yy - y) ** 2 + (xx - x0 - 2.0 * k) ** 2
            clips[i, 0, k] = level * (2 * torch.exp(-d2 / (2 * 2.5**2)) - 1)
    return clips


def test_registered_with_paper_defaults() -> None:
    assert "convlstm_ae" in list_models()
    model = build_model("convlstm_ae")
    assert isinstance(model, ConvLSTMAE)
    assert (model.in_channels, model.clip_length, model.image_size) == (1, 10, (227, 227))
    assert model.map_power == 2
    assert isinstance(model.encoder, SpatialEncoder)
    assert isinstance(model.temporal, TemporalAutoencoder)
    assert isinstance(model.decoder, SpatialDecoder)
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (128, (11, 11), (4, 4)),
        (64, (5, 5), (2, 2)),
    ]
    lstms = [m for m in model.temporal.modules() if isinstance(m, ConvLSTM)]
    assert [(m.hidden_channels, m.cell.kernel_size) for m in lstms] == [(64, 3), (32, 3), (64, 3)]
    deconvs = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(d.out_channels, d.kernel_size, d.stride) for d in deconvs] == [
        (128, (5, 5), (2, 2)),
        (1, (11, 11), (4, 4)),
    ]
    assert model.min_size == 27


def test_paper_geometry_227_55_26() -> None:
    torch.manual_seed(0)
    model = ConvLSTMAE().eval()
    x = torch.rand(1, 1, 2, 227, 227) * 2 - 1
    with torch.no_grad():
        z = model.encoder(x[:, :, 0])
        assert z.shape == (1, 64, 26, 26)
        assert model.encoder.net[:2](x[:, :, 0]).shape == (1, 128, 55, 55)
        rec = model(x)
    assert rec.shape == x.shape
    assert rec.min() >= -1 and rec.max() <= 1


@pytest.mark.parametrize(("h", "w"), [(64, 64), (45, 70), (27, 31)])
def test_any_size_above_the_minimum(h: int, w: int) -> None:
    model = ConvLSTMAE(encoder_channels=(8, 4), lstm_channels=(4, 2, 4)).eval()
    x = torch.rand(2, 1, 3, h, w) * 2 - 1
    with torch.no_grad():
        amap = model.anomaly_map(Batch.from_frames(x))
        rec = model.reconstruct(Batch.from_frames(x))
    assert rec.shape == x.shape and amap.shape == (2, 3, h, w)
    assert torch.allclose(amap, ((rec - x) ** 2).mean(dim=1), atol=1e-6)


def test_too_small_frames_and_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least 27 x 27"):
        ConvLSTMAE(image_size=(26, 100))
    model = ConvLSTMAE(encoder_channels=(8, 4), lstm_channels=(4, 2, 4))
    with pytest.raises(ValueError, match="at least 27 x 27"):
        model(torch.zeros(1, 1, 2, 20, 40))
    with pytest.raises(ValueError, match="equal length"):
        ConvLSTMAE(encoder_channels=(8, 4), encoder_kernels=(11,))
    with pytest.raises(ValueError, match="odd"):
        ConvLSTMAE(lstm_kernel=2)
    with pytest.raises(ValueError, match=r"convlstm_ae expects frames \(B, 1, T, H, W\)"):
        model.training_loss(Batch.from_frames(torch.zeros(1, 2, 2, 32, 32)))


def test_parts_can_be_swapped() -> None:
    torch.manual_seed(0)
    model = ConvLSTMAE(**{**TINY, "lstm_channels": (8, 4, 16)})
    x = torch.rand(1, 1, 4, 32, 32) * 2 - 1
    # The temporal block maps 16 -> 16 channels, so an identity (a per-frame autoencoder) fits in its place.
    model.temporal = nn.Identity()
    assert model(x).shape == x.shape
    # The output is now per frame: changing frame 0 leaves the reconstruction of frame 3 unchanged.
    y = x.clone()
    y[:, :, 0] = 0.0
    assert torch.equal(model(x)[:, :, 3], model(y)[:, :, 3])


def test_layer_norm_option_and_temporal_causality() -> None:
    torch.manual_seed(0)
    model = ConvLSTMAE(**TINY, layer_norm=True).eval()
    assert sum(isinstance(m, nn.LayerNorm) for m in model.temporal.modules()) == 3
    x = torch.rand(1, 1, 6, 32, 32) * 2 - 1
    y = x.clone()
    y[:, :, 2] = 0.0
    with torch.no_grad():
        a, b = model(x), model(y)
    # ConvLSTMs run forward in time: frames before the change are untouched, later ones change.
    assert torch.equal(a[:, :, :2], b[:, :, :2])
    assert not torch.allclose(a[:, :, 4], b[:, :, 4])


def test_invalid_pixels_are_black_and_out_of_the_loss() -> None:
    torch.manual_seed(0)
    model = ConvLSTMAE(**TINY).eval()
    frames = torch.rand(2, 1, 4, 32, 32) * 2 - 1
    valid = torch.ones(2, 1, 4, 32, 32, dtype=torch.bool)
    valid[:, :, 3] = False
    valid[1, :, :, 10:20, 10:20] = False
    frames = torch.where(valid, frames, torch.full_like(frames, -1.0))
    with torch.no_grad():
        loss = model.training_loss(Batch(frames, valid))
        rec = model.reconstruct(Batch(frames, valid))
        amap = model.anomaly_map(Batch(frames, valid))
        nan_loss = model.training_loss(Batch(torch.where(valid, frames, torch.tensor(float("nan"))), valid))
    assert loss.item() == pytest.approx(((rec - frames) ** 2)[valid].mean().item(), rel=1e-5)
    assert nan_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.all(amap[~valid[:, 0]] == 0)


def test_loss_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = ConvLSTMAE(**TINY)
    batch = Batch.from_frames(moving_blobs(2, 8, 32, torch.Generator().manual_seed(0)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_detects_zeroed_frame_and_unexpected_object() -> None:
    """Train on a blob moving smoothly; a grey frame and a bar that appears must stand out in the maps."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = moving_blobs(64, 8, 32, g)
    model = ConvLSTMAE(**TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(250):
        loss = model.training_loss(Batch.from_frames(data[torch.randint(0, 64, (4,), generator=g)]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = moving_blobs(4, 8, 32, g)
    zeroed = test.clone()
    zeroed[:, :, 4] = 0.0  # frame 4 is uniform grey
    bar = test.clone()
    bar[:, :, 4:6, 2:5, 4:18] = 0.6  # an object never seen in training, in frames 4 and 5
    with torch.no_grad():
        normal_map = model.anomaly_map(Batch.from_frames(test))
        zeroed_map = model.anomaly_map(Batch.from_frames(zeroed))
        bar_map = model.anomaly_map(Batch.from_frames(bar))

    # The model learnt the moving blob, not just the background.
    assert normal_map.mean() < 0.3 * ((test + 0.6) ** 2).mean()
    frame_err = zeroed_map.mean(dim=(2, 3))
    others = torch.cat([frame_err[:, :4], frame_err[:, 5:]], dim=1)
    assert torch.all(frame_err[:, 4] > 3 * others.max(dim=1).values)
    in_bar = torch.zeros_like(bar_map, dtype=torch.bool)
    in_bar[:, 4:6, 2:5, 4:18] = True
    blob = (test[:, 0] > 0) & ~in_bar
    assert bar_map[in_bar].mean() > 5 * bar_map[blob].mean()
    frame_err = bar_map.mean(dim=(2, 3))
    normal_frames = torch.cat([frame_err[:, :4], frame_err[:, 6:]], dim=1)
    assert torch.all(frame_err[:, 4:6].min(dim=1).values > 2 * normal_frames.max(dim=1).values)


def test_real_ped2_frames_at_their_own_size(shared_data: Path) -> None:
    """UCSD Ped2 frames (240 x 360, not the paper's 227) go through the paper-size model unchanged in size."""
    cv2 = pytest.importorskip("cv2")
    folder = shared_data / "ped2" / "training" / "frames" / "01"
    frames = [cv2.imread(str(folder / f"{i:03d}.jpg"), cv2.IMREAD_GRAYSCALE) for i in range(3)]
    assert all(f is not None for f in frames), f"cannot read frames in {folder}"
    x = torch.from_numpy(np.stack(frames).astype(np.float32) / 127.5 - 1.0)[None, None]  # (1, 1, 3, H, W)
    torch.manual_seed(0)
    model = ConvLSTMAE().eval()
    with torch.no_grad():
        amap = model.anomaly_map(Batch.from_frames(x))
        rec = model.reconstruct(Batch.from_frames(x))
    assert x.shape[-2:] == (240, 360)
    assert rec.shape == x.shape and amap.shape == (1, 3, 240, 360)
    assert torch.isfinite(amap).all() and rec.abs().max() <= 1
