"""conv3d_ae: contract, shapes at any size, masked loss, training, detection of synthetic anomalies, speed."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from oddframe.data.clips import Batch
from oddframe.models.conv3d_ae import Conv3dAE
from oddframe.registry import build_model, list_models




def moving_blobs(
    n: int, t: int, size: int, g: torch.Generator, *, speed: float = 2.0, sigma: float = 2.5
) -> torch.Tensor:
    """``(n, 1, t, size, size)`` clips of a bright Gaussian blob moving right on a dark (-1) background."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    clips = torch.empty(n, 1, t, size, size)
    for i in range(n):
        y = 6 + float(torch.rand((), generator=g)) * (size - 12)
        x0 = 4 + float(torch.rand((), generator=g)) * (size - 8 - speed * (t - 1))
        for k in range(t):
            d2 = (yy - y) ** 2 + (xx - x0 - speed * k) ** 2
            clips[i, 0, k] = -1 + 2 * torch.exp(-d2 / (2 * sigma**2))
    return clips


def tiny(**kw: object) -> Conv3dAE:
    params = {"image_size": 32, "clip_length": 8, "channels": (16, 16, 16, 16), **kw}
    return Conv3dAE(**params)  # type: ignore[arg-type]


def test_registered_with_documented_defaults() -> None:
    assert "conv3d_ae" in list_models()
    model = build_model("conv3d_ae", width=0.25)
    assert isinstance(model, Conv3dAE)
    assert (model.in_channels, model.clip_length, model.image_size) == (1, 16, (112, 112))
    assert model.channels == (24, 24, 16, 8)  # (96, 96, 64, 32) * 0.25
    assert model.map_power == 2
    # 13 parameterised (de)convolution layers, as in the solar pipeline.
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    assert len(convs) == 13


@pytest.mark.parametrize(("c", "t", "h", "w"), [(1, 8, 32, 32), (3, 5, 37, 50), (1, 1, 16, 16)])
def test_shapes_at_any_size(c: int, t: int, h: int, w: int) -> None:
    torch.manual_seed(0)
    model = Conv3dAE(in_channels=c, clip_length=t, image_size=(h, w), width=0.1).eval()
    frames = torch.rand(2, c, t, h, w) * 2 - 1
    batch = Batch.from_frames(frames)
    with torch.no_grad():
        rec = model.reconstruct(batch)
        amap = model.anomaly_map(batch)
    assert rec.shape == frames.shape
    assert rec.min() >= -1.0 and rec.max() <= 1.0
    assert amap.shape == (2, t, h, w)
    # The map is the channel mean of the squared error of the reconstruction.
    assert torch.allclose(amap, ((rec - frames) ** 2).mean(dim=1), atol=1e-6)


def test_invalid_pixels_are_black_and_out_of_the_loss() -> None:
    torch.manual_seed(0)
    model = tiny().eval()
    frames = torch.rand(2, 1, 8, 32, 32) * 2 - 1
    valid = torch.ones(2, 1, 8, 32, 32, dtype=torch.bool)
    valid[:, :, 6:] = False  # two padded frames
    valid[0, :, :, :5, :5] = False  # missing pixels
    frames = torch.where(valid, frames, torch.full_like(frames, -1.0))
    with torch.no_grad():
        loss = model.training_loss(Batch(frames, valid))
        amap = model.anomaly_map(Batch(frames, valid))
        rec = model.reconstruct(Batch(frames, valid))
        garbage = torch.where(valid, frames, torch.full_like(frames, float("nan")))
        loss_nan = model.training_loss(Batch(garbage, valid))
    expected = ((rec - frames) ** 2)[valid].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss_nan.item() == pytest.approx(loss.item(), rel=1e-6)  # NaN at invalid pixels is read as -1
    assert torch.all(amap[~valid[:, 0]] == 0) and torch.all(amap[valid[:, 0]] >= 0)


def test_bad_input_is_rejected() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"conv3d_ae expects frames \(B, 1, T, H, W\)"):
        model.training_loss(Batch.from_frames(torch.zeros(1, 3, 8, 32, 32)))
    frames = torch.zeros(1, 1, 8, 32, 32)
    frames[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN at pixels marked valid"):
        model.anomaly_map(Batch.from_frames(frames))
    with pytest.raises(ValueError, match="channels must be 4 positive ints"):
        Conv3dAE(channels=(8, 8))
    with pytest.raises(ValueError, match="width must be > 0"):
        Conv3dAE(width=0.0)
    with pytest.raises(ValueError, match="image_size"):
        Conv3dAE(image_size=(32, 0))


def test_loss_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = tiny()
    batch = Batch.from_frames(moving_blobs(2, 8, 32, torch.Generator().manual_seed(0)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
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
    t, size = 8, 32
    data = moving_blobs(64, t, size, g)
    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = model.training_loss(Batch.from_frames(data[torch.randint(0, 64, (4,), generator=g)]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = moving_blobs(4, t, size, g)
    zeroed = test.clone()
    zeroed[:, :, 4] = 0.0  # frame 4 is uniform grey
    bar = test.clone()
    bar[:, :, 4:6, 2:5, 4:18] = 0.6  # an object that never occurs in training, in frames 4 and 5
    with torch.no_grad():
        normal_map = model.anomaly_map(Batch.from_frames(test))
        zeroed_map = model.anomaly_map(Batch.from_frames(zeroed))
        bar_map = model.anomaly_map(Batch.from_frames(bar))

    # The model learnt the moving blob, not just the background: error well below "predict all dark".
    assert normal_map.mean() < 0.5 * ((test + 1) ** 2).mean()
    # Zeroed frame: its mean error is above every normal frame's, in every clip.
    frame_err = zeroed_map.mean(dim=(2, 3))
    others = torch.cat([frame_err[:, :4], frame_err[:, 5:]], dim=1)
    assert torch.all(frame_err[:, 4] > 3 * others.max(dim=1).values)
    # Unexpected object: its pixels score above the (normal) blob pixels, and its frames above the others.
    in_bar = torch.zeros_like(bar_map, dtype=torch.bool)
    in_bar[:, 4:6, 2:5, 4:18] = True
    blob = (test[:, 0] > 0) & ~in_bar
    assert bar_map[in_bar].mean() > 2 * bar_map[blob].mean()
    frame_err = bar_map.mean(dim=(2, 3))
    normal_frames = torch.cat([frame_err[:, :4], frame_err[:, 6:]], dim=1)
    assert torch.all(frame_err[:, 4:6].min(dim=1).values > 1.5 * normal_frames.max(dim=1).values)


