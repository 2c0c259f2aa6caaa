"""Bidirectional Mamba blocks and the ``mamba_diffusion`` model (seed 003): mixing, wiring, registry, detection."""

from __future__ import annotations

import pytest
import torch

from oddframe.data.clips import Batch
from oddframe.errors import ConfigError
from oddframe.models.mamba import BiMamba, MambaVideoBlock
from oddframe.models.unet3d import TemporalAttention
from oddframe.registry import build_model, model_params

from helpers.diffusion import assert_detects, negatives, train_on_circles, zeroed_frame_scores

TINY = dict(
    image_size=(16, 16), base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
    dropout=0.0, diffusion_steps=100, sampling_steps=4, d_state=4,
)


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Small random weights in the zero-initialised output projections, so that blocks are not the identity."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1 and not p.abs().any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def test_bimamba_is_bidirectional_and_each_branch_is_causal() -> None:
    torch.manual_seed(0)
    mixer = BiMamba(d_model=8, d_state=4).eval()
    tokens = torch.randn(2, 12, 8)
    late = tokens.clone()
    late[:, -1] += 1.0  # change the last token only
    with torch.no_grad():
        out, out_late = mixer(tokens), mixer(late)
        assert out.shape == tokens.shape
        # Bidirectional: the first output sees the last token (through the backward scan).
        assert (out_late[:, 0] - out[:, 0]).abs().max() > 1e-6
        # The forward branch alone is causal: its early outputs ignore the late token.
        x, z = mixer.in_proj(tokens).transpose(1, 2).chunk(2, dim=1)
        xl, zl = mixer.in_proj(late).transpose(1, 2).chunk(2, dim=1)
        fwd = mixer.forward_branch(x, z, scan="torch", chunk=16)
        fwd_late = mixer.forward_branch(xl, zl, scan="torch", chunk=16)
        torch.testing.assert_close(fwd[..., :-1], fwd_late[..., :-1], rtol=0, atol=0)
        assert (fwd[..., -1] - fwd_late[..., -1]).abs().max() > 1e-6
        # and the backward branch ignores an early change at later positions (it runs on the flipped sequence).
        early = tokens.clone()
        early[:, 0] += 1.0
        xe, ze = mixer.in_proj(early).transpose(1, 2).chunk(2, dim=1)
        bwd = mixer.backward_branch(x.flip(-1), z.flip(-1), scan="torch", chunk=16).flip(-1)
        bwd_early = mixer.backward_branch(xe.flip(-1), ze.flip(-1), scan="torch", chunk=16).flip(-1)
        torch.testing.assert_close(bwd[..., 1:], bwd_early[..., 1:], rtol=0, atol=0)


def test_bimamba_initialisation_follows_mamba() -> None:
    mixer = BiMamba(d_model=16, d_state=4, dt_min=0.001, dt_max=0.1)
    for branch in (mixer.forward_branch, mixer.backward_branch):
        torch.testing.assert_close(-torch.exp(branch.A_log[0]), -torch.arange(1.0, 5.0))  # S4D-real A_n = -n
        dt = torch.nn.functional.softplus(branch.dt_proj.bias)
        assert dt.min() >= 0.001 - 1e-6 and dt.max() <= 0.1 + 1e-6
        assert torch.all(branch.D == 1)
    assert mixer.forward_branch.A_log.data_ptr() != mixer.backward_branch.A_log.data_ptr()  # own parameters


def test_video_block_starts_as_identity_and_mixes_frames_time_major() -> None:
    torch.manual_seed(0)
    block = MambaVideoBlock(8, d_state=4).eval()
    x = torch.randn(1, 8, 5, 3, 4)
    mixed: list[torch.Tensor] = []
    block.mixer.register_forward_hook(lambda mod, args, out: mixed.append(out))  # (B, T H W, C), before the residual
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)  # zero output projection: the identity at initialisation
        _randomise(block)
        y = block(x)
        changed = x.clone()
        changed[:, 0, -1, -1, -1] += 1.0  # the very last token (last frame, last pixel); one channel, or LayerNorm cancels it
        block(changed)
    assert y.shape == x.shape and not torch.equal(y, x)
    first_frame = slice(0, 3 * 4)  # time-major: frame 0 is the first H W tokens
    assert (mixed[2][:, first_frame] - mixed[1][:, first_frame]).abs().max() > 1e-6  # frame 0 sees the last frame


def test_video_block_tokens_are_time_major() -> None:
    """With the backward branch silenced, a change at frame 1 reaches frame 2 but not frame 0: frames are outer."""
    torch.manual_seed(0)
    block = _randomise(MambaVideoBlock(8, d_state=4)).eval()
    with torch.no_grad():
        block.mixer.backward_branch.D.zero_()
        block.mixer.backward_branch.x_proj.weight.zero_()  # B = C = 0: the backward scan outputs 0
    x = torch.randn(1, 8, 3, 2, 2)
    changed = x.clone()
    changed[:, 0, 1, 0, 0] += 1.0  # first pixel of frame 1 (one channel: LayerNorm would cancel a shift of all)
    mixed: list[torch.Tensor] = []
    block.mixer.register_forward_hook(lambda mod, args, out: mixed.append(out))
    with torch.no_grad():
        block(changed), block(x)
    diff = (mixed[0] - mixed[1]).abs().amax(dim=(0, 2)).reshape(3, 2, 2)  # tokens (t h w) -> (T, H, W)
    assert diff[0].max() == 0 and diff[2].max() > 1e-7


def test_fused_scan_is_never_forced_on_cpu() -> None:
    block = MambaVideoBlock(8, d_state=4, scan="fused")
    with pytest.raises(RuntimeError, match="scan backend 'fused' cannot run"):
        block(torch.randn(1, 8, 2, 2, 2))
    with pytest.raises(ValueError, match="allowed: auto, torch, fused"):
        BiMamba(d_model=8, scan="gpu")


# ------------------------------------------------------------------------------------------------ the model
def test_registered_with_the_parents_settings_and_mamba_blocks_where_attention_was() -> None:
    params = model_params("mamba_diffusion")
    for key in ("d_state", "d_conv", "expand", "scan", "clip_length", "image_size", "prediction", "sampling_steps",
                "train_masks", "score_masks", "attention_resolutions", "ema_decay"):
        assert key in params, key
    assert "temporal_block" not in params and "num_heads" not in params
    m = build_model("mamba_diffusion", clip_length=30, **TINY)
    assert m.train_masks == "anchors" and m.score_masks == "anchors"  # seed 003's selective masking for T = 30
    blocks = [mod for mod in m.denoiser.modules() if isinstance(mod, MambaVideoBlock)]
    assert not any(isinstance(mod, TemporalAttention) for mod in m.denoiser.modules())
    st = build_model("st_diffusion", clip_length=30, num_heads=2, **{k: v for k, v in TINY.items() if k != "d_state"})
    n_attention = sum(isinstance(mod, TemporalAttention) for mod in st.denoiser.modules())
    assert len(blocks) == n_attention == 4  # encoder 1 + middle 1 + decoder 2 at 1/2 resolution
    assert isinstance(m.denoiser.middle[1], MambaVideoBlock)
    with pytest.raises(ConfigError, match="no parameter.*temporal_block"):
        build_model("mamba_diffusion", temporal_block="attention", **TINY)
    with pytest.raises(ValueError, match="sets temporal_block itself"):  # built directly, not through the registry
        type(m)(temporal_block="attention", **TINY)


def test_training_reaches_the_mamba_parameters_and_maps_follow_the_contract() -> None:
    torch.manual_seed(0)
    m = build_model("mamba_diffusion", clip_length=12, score_masks="anchors", **TINY)
    _randomise(m.denoiser)
    batch = Batch.from_frames(torch.rand(2, 1, 12, 16, 16) * 2 - 1)
    m.training_loss(batch).backward()
    mamba = [mod for mod in m.denoiser.modules() if isinstance(mod, MambaVideoBlock)][0]
    for name, p in mamba.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    a = m.eval().anomaly_map(batch)
    assert a.shape == (2, 12, 16, 16) and torch.all(a[:, [0, 1, 10, 11]] == 0) and a[:, 5].sum() > 0


def test_detects_a_zeroed_frame_fast() -> None:
    # The same check as st_diffusion's (x0-prediction, Adam steps on circle clips, leave-one-out scoring); Mamba
    # blocks at 1/4 resolution (and in the middle block) scan the 4 x 8 x 8 = 256 tokens both ways. 100 steps: 50
    # gave AUROC 0.85 here (0.92 with 100). About 100 s of CPU time on a shared core: the scan's state
    # (d_inner x d_state per token) makes Mamba slower than attention at this size.
    params = {**TINY, "image_size": (32, 32), "channel_mult": (1, 2, 2), "attention_resolutions": (4,),
              "diffusion_steps": 1000, "sampling_steps": 10}
    model = train_on_circles("mamba_diffusion", steps=100, batch_size=8, lr=3e-3, prediction="x0", ema_decay=0.999,
                             **params)
    normal, zeroed = zeroed_frame_scores(model, n_test=4)
    # Negatives: every normal frame, including the untouched frames of the corrupted clips.
    assert_detects(negatives(normal, zeroed), zeroed[:, 2], auroc_min=0.9, ratio_min=1.5)
