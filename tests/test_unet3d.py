"""SpatioTemporalUNet: shapes, timestep and temporal sensitivity, gradients, checkpointing, pluggable mixing."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from oddframe.models.unet3d import SpatioTemporalUNet, TemporalAttention, timestep_embedding



TINY = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2), num_heads=2)


def _unzero(net: nn.Module) -> nn.Module:
    """Replace the zero-initialised output layers by small random values so every path carries signal."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and not p.abs().any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def _inputs(b: int = 2, c: int = 1, t: int = 4, hw: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, c, t, hw, hw, generator=g)
    cond = torch.randn(b, c + 1, t, hw, hw, generator=g)
    return x, torch.randint(0, 1000, (b,), generator=g), cond


def test_timestep_embedding_values() -> None:
    emb = timestep_embedding(torch.tensor([0, 5]), 6)
    assert emb.shape == (2, 6)
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(3) / 3)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(5 * freqs), torch.sin(5 * freqs)]))
    assert timestep_embedding(torch.tensor([3]), 7).shape == (1, 7)


@pytest.mark.parametrize("frames,channels", [(4, 1), (3, 3), (5, 1)])
def test_output_shape_keeps_time(frames: int, channels: int) -> None:
    net = SpatioTemporalUNet(in_channels=channels, cond_channels=channels + 1, **TINY)
    x, t, cond = _inputs(c=channels, t=frames)
    out = net(x, t, cond)
    assert out.shape == x.shape
    # Zero-initialised output layer: an untrained net predicts zero noise (improved-diffusion's init).
    assert torch.all(out == 0)


def test_timestep_sensitivity() -> None:
    net = _unzero(SpatioTemporalUNet(in_channels=1, cond_channels=2, **TINY)).eval()
    x, _, cond = _inputs()
    a = net(x, torch.tensor([10, 10]), cond)
    b = net(x, torch.tensor([900, 900]), cond)
    assert (a - b).abs().mean() > 1e-3
    torch.testing.assert_close(net(x, torch.tensor([10, 10]), cond), a)


def test_temporal_mixing_reaches_distant_frames() -> None:
    # Frame 0's prediction must depend on frame 3 (3D convolutions over T plus temporal attention).
    for kind in ("attention", "none"):
        net = _unzero(SpatioTemporalUNet(in_channels=1, cond_channels=2, temporal_block=kind, **TINY)).eval()
        x, t, cond = _inputs()
        y = net(x, t, cond)
        x2 = x.clone()
        x2[:, :, 3] += 1.0
        y2 = net(x2, t, cond)
        assert (y2[:, :, 0] - y[:, :, 0]).abs().max() > 1e-4, kind


def test_temporal_attention_mixes_only_along_time() -> None:
    att = _unzero(TemporalAttention(8, num_heads=2)).eval()
    att.norm = nn.Identity()  # GroupNorm statistics span space; test the attention itself
    x = torch.randn(1, 8, 4, 3, 3)
    x2 = x.clone()
    x2[..., 0, 0] += 1.0  # change one spatial position in every frame
    diff = (att(x2) - att(x)).abs().sum(dim=(0, 1, 2))
    assert diff[0, 0] > 0 and diff.flatten()[1:].max() == 0


def test_gradients_reach_every_parameter() -> None:
    net = _unzero(SpatioTemporalUNet(in_channels=1, cond_channels=2, dropout=0.1, **TINY))
    x, t, cond = _inputs()
    net(x, t, cond).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        net = SpatioTemporalUNet(in_channels=1, cond_channels=2, dropout=0.2, use_checkpoint=use_checkpoint, **TINY)
        _unzero(net)
        x, t, cond = _inputs()
        torch.manual_seed(123)  # same dropout masks in both runs (checkpoint restores the RNG on recompute)
        net(x, t, cond).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7, msg=name)


def _saved_bytes(net: nn.Module) -> int:
    """Bytes of activations autograd keeps for the backward pass of one forward."""
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    x, t, cond = _inputs()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, t, cond)
    return total[0]


def test_checkpointing_keeps_fewer_activations() -> None:
    plain = SpatioTemporalUNet(in_channels=1, cond_channels=2, use_checkpoint=False, **TINY).train()
    ckpt = SpatioTemporalUNet(in_channels=1, cond_channels=2, use_checkpoint=True, **TINY).train()
    assert _saved_bytes(ckpt) < 0.9 * _saved_bytes(plain)  # the encoder (about a fifth here) is recomputed
    assert _saved_bytes(ckpt.eval()) == _saved_bytes(plain.eval()), "no checkpointing outside training"


def test_pluggable_temporal_block_factory() -> None:
    built: list[int] = []

    class Mixer(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            built.append(channels)
            self.scale = nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.scale * x.mean(dim=2, keepdim=True)

    net = SpatioTemporalUNet(in_channels=1, cond_channels=2, temporal_block=Mixer, **TINY)
    assert sorted(set(built)) == [8, 16]
    assert not any(isinstance(m, TemporalAttention) for m in net.modules())
    _unzero(net)
    x, t, cond = _inputs()
    before = net(x, t, cond)
    assert before.shape == x.shape
    mixers = [m for m in net.modules() if isinstance(m, Mixer)]
    calls = []
    for m in mixers:
        m.register_forward_hook(lambda mod, inp, out: calls.append(mod))
        with torch.no_grad():
            m.scale.fill_(1.0)
    after = net(x, t, cond)
    assert len(calls) == len(mixers), "every mixer is used in the forward pass"
    assert not torch.allclose(before, after), "and what it mixes reaches the output"


def test_bad_inputs_raise_clear_errors() -> None:
    net = SpatioTemporalUNet(in_channels=1, cond_channels=2, **TINY)
    x, t, cond = _inputs()
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(1, 1, 4, 7, 8), t[:1], cond[:1, :, :, :7])
    with pytest.raises(ValueError, match="cond must be"):
        net(x, t, None)
    with pytest.raises(ValueError, match="x must be"):
        net(torch.randn(2, 3, 4, 8, 8), t, cond)
    with pytest.raises(ValueError, match="attention, none"):
        SpatioTemporalUNet(temporal_block="transformer")


def test_runs_under_cpu_autocast() -> None:
    net = _unzero(SpatioTemporalUNet(in_channels=1, cond_channels=2, **TINY)).eval()
    x, t, cond = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, cond)
    assert out.shape == x.shape and torch.isfinite(out.float()).all()
