"""The ``st_diffusion`` anomaly model: contract, masking policies, EMA, checkpoints and detection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from oddframe.data.clips import Batch
from oddframe.errors import ConfigError
from oddframe.registry import build_model, list_models, model_params

from helpers.diffusion import assert_detects, negatives, train_on_circles, zeroed_frame_scores



TINY = dict(
    image_size=(16, 16), base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
    num_heads=2, dropout=0.0, diffusion_steps=100, sampling_steps=4,
)


def _unzero(model: torch.nn.Module) -> torch.nn.Module:
    """Give the zero-initialised output layers small random weights, so an untrained net predicts non-zero noise."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.abs().any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _batch(b: int = 2, t: int = 4, hw: int = 16, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch.from_frames(torch.rand(b, 1, t, hw, hw, generator=g) * 2 - 1)


def test_registered_with_documented_params() -> None:
    assert "st_diffusion" in list_models()
    params = model_params("st_diffusion")
    assert params["in_channels"] == 1 and params["clip_length"] == 4 and params["image_size"] == (64, 64)
    for key in ("diffusion_steps", "schedule", "sampling_steps", "sampler", "eta", "train_masks", "score_masks",
                "n_samples", "ema_decay", "channel_mult", "attention_resolutions", "dropout"):
        assert key in params, key
    m = build_model("st_diffusion", clip_length=4, **TINY)
    assert m.map_power == 1 and m.image_size == (16, 16) and m.clip_length == 4 and m.in_channels == 1
    assert m.score_masks == "leave_one_out" and m.train_masks == "random"
    long = build_model("st_diffusion", clip_length=30, **TINY)
    assert long.score_masks == "anchors" and long.train_masks == "anchors"


def test_training_loss_is_a_differentiable_scalar() -> None:
    torch.manual_seed(0)
    m = build_model("st_diffusion", **TINY)
    loss = m.training_loss(_batch())
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0.1  # untrained: about E[eps^2] = 1
    loss.backward()
    assert m.denoiser.out[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.ema.parameters())


def test_anomaly_map_is_deterministic_and_scores_every_frame() -> None:
    torch.manual_seed(0)
    m = _unzero(build_model("st_diffusion", **TINY)).eval()
    batch = _batch()
    a = m.anomaly_map(batch)
    assert a.shape == (2, 4, 16, 16) and a.dtype == torch.float32
    assert torch.isfinite(a).all() and (a >= 0).all()
    assert torch.equal(a, m.anomaly_map(batch))  # fixed sampling seed
    assert (a.flatten(2).mean(-1) > 0).all()  # leave-one-out: every frame infilled, so every frame scored
    recon = m.reconstruct(batch)
    assert recon.shape == batch.frames.shape and recon.abs().max() <= 1.0
    torch.testing.assert_close((batch.frames - recon).abs()[:, 0], a)  # one sample, one channel: map = |x - x_hat|


def test_map_of_a_clip_does_not_depend_on_its_batch() -> None:
    torch.manual_seed(0)
    m = _unzero(build_model("st_diffusion", **TINY)).eval()
    pair = _batch(b=2, seed=5)
    alone = m.anomaly_map(Batch.from_frames(pair.frames[1:]))
    torch.testing.assert_close(m.anomaly_map(pair)[1:], alone, atol=1e-5, rtol=1e-4)


def test_map_under_autocast_is_float32_and_finite() -> None:
    torch.manual_seed(0)
    m = _unzero(build_model("st_diffusion", **TINY)).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = m.anomaly_map(_batch())
    assert a.dtype == torch.float32 and torch.isfinite(a).all() and a.shape == (2, 4, 16, 16)


def test_anchor_policy_scores_zero_on_anchors_and_respects_valid() -> None:
    torch.manual_seed(0)
    m = build_model("st_diffusion", clip_length=12, score_masks="anchors", **TINY).eval()
    batch = _batch(b=1, t=12)
    batch.valid[:, :, 5, :4] = False
    a = m.anomaly_map(batch)
    anchors = [0, 1, 10, 11]  # selective_anchors(12): first two and last two
    assert torch.all(a[:, anchors] == 0)
    assert torch.all(a[:, 5, :4] == 0) and a[:, 5, 4:].sum() > 0
    infilled = [i for i in range(12) if i not in anchors]
    assert (a[0, infilled].flatten(1).mean(1) > 0).all()
    recon = m.reconstruct(batch)
    assert torch.equal(recon[:, :, anchors], batch.frames[:, :, anchors])


def test_padded_frames_are_hidden_not_given() -> None:
    m = build_model("st_diffusion", clip_length=12, score_masks="anchors", **TINY).eval()
    batch = _batch(b=2, t=12)
    batch.valid[1, :, 10:] = False  # clip 1 padded after frame 9: its anchors 10, 11 are padding
    assert m.missing_frames(batch).tolist() == [[False] * 12, [False] * 10 + [True] * 2]
    seen: list[torch.Tensor] = []
    net = m.sampling_network()
    hook = net.register_forward_pre_hook(lambda mod, args: seen.append(args[2][:, -1, :, 0, 0].clone()))
    a = m.anomaly_map(batch)
    hook.remove()
    cond_mask = seen[0]  # (B * P, T) mask channel the denoiser saw
    assert cond_mask[0, 10:].eq(0).all() and cond_mask[1, 10:].eq(1).all()
    assert torch.all(a[1, 10:] == 0)
    seen.clear()
    hook = m.denoiser.register_forward_pre_hook(lambda mod, args: seen.append(args[2][:, -1, :, 0, 0].clone()))
    m.training_loss(batch)
    hook.remove()
    assert seen[0][1, 10:].eq(1).all()  # in training too


def test_n_samples_average_and_single_policy() -> None:
    torch.manual_seed(0)
    one = _unzero(build_model("st_diffusion", score_masks="single", **TINY)).eval()
    a = one.anomaly_map(_batch())
    assert torch.all(a[:, [0, 1, 3]] == 0) and a[:, 2].sum() > 0  # single_frame hides frame T // 2 = 2
    three = build_model("st_diffusion", score_masks="single", n_samples=3, **TINY).eval()
    three.load_state_dict(one.state_dict())
    b = three.anomaly_map(_batch())
    assert b.shape == a.shape and torch.all(b[:, [0, 1, 3]] == 0)


def test_n_samples_residuals_are_averaged_by_hand(monkeypatch) -> None:
    """Seed 000 averages the residuals of n infills: with sample s infilling the constant 0.1 (s + 1), the map of the
    hidden frame is mean_s |x - 0.1 (s + 1)|, whatever the batch size."""
    three = build_model("st_diffusion", score_masks="single", n_samples=3, **TINY).eval()

    def fake_sample(net, shape, *, known, mask, **kw):
        out = known.clone()
        per_sample = shape[0] // 3
        for i in range(shape[0]):
            out[i][:, mask[i]] = 0.1 * (i // per_sample + 1)
        return out

    monkeypatch.setattr(three.diffusion, "sample", fake_sample)
    batch = _batch(b=3)
    x = batch.frames[:, 0, 2]
    expected = torch.stack([(x - 0.1 * (s + 1)).abs() for s in range(3)]).mean(dim=0)
    got = three.anomaly_map(batch)
    torch.testing.assert_close(got[:, 2], expected)
    assert torch.all(got[:, [0, 1, 3]] == 0)
    recon = three.reconstruct(batch)
    torch.testing.assert_close(recon[:, 0, 2], torch.full_like(x, 0.2))  # the mean infill


def test_ema_is_saved_used_for_sampling_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = build_model("st_diffusion", ema_decay=0.9, **TINY)
    assert m.sampling_network() is m.denoiser  # no update yet: the EMA would still be the random init
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(3):
        loss = m.training_loss(_batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.on_train_step_end()
    assert int(m.ema.num_updates) == 3 and m.sampling_network() is m.ema.module
    live, shadow = m.denoiser.out[-1].weight, m.ema.module.out[-1].weight
    assert not torch.equal(live, shadow) and shadow.abs().sum() > 0
    state = m.state_dict()
    assert "ema.num_updates" in state and any(k.startswith("ema.module.") for k in state)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(path))
    fresh = build_model("st_diffusion", ema_decay=0.9, **TINY)
    fresh.load_state_dict(load_file(str(path)))
    m.eval(), fresh.eval()
    batch = _batch(seed=3)
    assert torch.equal(m.anomaly_map(batch), fresh.anomaly_map(batch))
    no_ema = build_model("st_diffusion", ema_decay=0.0, **TINY)
    assert no_ema.ema is None and not any(k.startswith("ema.") for k in no_ema.state_dict())


def test_sampling_ignores_dropout_even_in_train_mode() -> None:
    torch.manual_seed(0)
    m = _unzero(build_model("st_diffusion", **{**TINY, "dropout": 0.5}))
    batch = _batch()
    m.train()
    a = m.anomaly_map(batch)
    m.eval()
    assert torch.equal(a, m.anomaly_map(batch))
    m.train()
    assert m.denoiser.training  # mode restored
    # ...and dropout is live in train mode, so the equality above is not trivial.
    x, t = batch.frames, torch.tensor([500, 500])
    cond = torch.zeros(2, 2, 4, 16, 16)
    assert not torch.equal(m.denoiser(x, t, cond), m.denoiser(x, t, cond))


def test_bad_settings_and_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="auto, leave_one_out, anchors, single"):
        build_model("st_diffusion", score_masks="random", **TINY)
    with pytest.raises(ValueError, match="auto, random, anchors, single"):
        build_model("st_diffusion", train_masks="all", **TINY)
    with pytest.raises(ValueError, match="ddim, ddpm"):
        build_model("st_diffusion", sampler="euler", **TINY)
    with pytest.raises(ValueError, match="at least 5"):
        build_model("st_diffusion", clip_length=4, score_masks="anchors", **TINY)
    with pytest.raises(ValueError, match="cannot divide"):
        build_model("st_diffusion", **{**TINY, "sampling_steps": 500})
    with pytest.raises(ValueError, match="divisible by 2"):
        build_model("st_diffusion", **{**TINY, "image_size": (15, 16)})
    m = build_model("st_diffusion", **TINY)
    bad = _batch(hw=8)
    bad.video = ["cam3"] * 2
    with pytest.raises(ConfigError, match="cam3"):
        m.anomaly_map(bad)
    with pytest.raises(ConfigError, match="4 frames"):
        m.training_loss(_batch(t=5))


# ------------------------------------------------------------------------------------------------- detection
def test_detects_a_zeroed_frame_fast() -> None:
    # x0-prediction: the same process with a target that a tiny net learns in a few dozen steps; noise prediction
    # (the default) needed far more than a unit test can afford before its infills were clean (thousands of
    # steps at this size). About 15 s on one CPU core.
    model = train_on_circles(
        "st_diffusion",
        steps=50, batch_size=8, lr=3e-3, prediction="x0", ema_decay=0.999,
        **{**TINY, "image_size": (32, 32), "diffusion_steps": 1000, "sampling_steps": 10},
    )
    normal, zeroed = zeroed_frame_scores(model, n_test=4)
    # Leave-one-out scores every frame: the negatives are every normal frame, including the untouched frames of the
    # corrupted clips (whose infills are conditioned on the zeroed frame).
    assert_detects(negatives(normal, zeroed), zeroed[:, 2], auroc_min=0.9, ratio_min=1.5)


def test_detects_a_zeroed_frame_with_the_default_noise_prediction() -> None:
    # eps (DDPM, RaMViD and the model's default) learns far more slowly than x0 at unit-test budgets: 200 steps at
    # 16x16 give AUROC 0.75 (0.5 is chance) with every normal frame as a negative; the bound checks that it learns.
    model = train_on_circles(
        "st_diffusion",
        steps=200, batch_size=8, lr=3e-3, prediction="eps", ema_decay=0.99,
        **{**TINY, "diffusion_steps": 1000, "sampling_steps": 10},
    )
    assert model.diffusion.prediction == "eps"
    normal, zeroed = zeroed_frame_scores(model, n_test=6)
    assert_detects(negatives(normal, zeroed), zeroed[:, 2], auroc_min=0.7, ratio_min=1.3)


@pytest.mark.slow
def test_detects_a_zeroed_frame_after_longer_training() -> None:
    # v-prediction, a wider net and 8x the training of the fast test (a few minutes on CPU); stricter bounds, and
    # seed 000's own protocol (infill frame 2 only) on the same weights.
    params = {**TINY, "image_size": (32, 32), "base_channels": 16, "diffusion_steps": 1000, "sampling_steps": 10}
    model = train_on_circles("st_diffusion", steps=400, batch_size=16, lr=2e-3, prediction="v", ema_decay=0.999, **params)
    normal, zeroed = zeroed_frame_scores(model, n_test=8)
    assert_detects(negatives(normal, zeroed), zeroed[:, 2], auroc_min=0.95, ratio_min=2.0)
    single = build_model("st_diffusion", clip_length=4, prediction="v", score_masks="single", **params)
    single.load_state_dict(model.state_dict())
    normal, zeroed = zeroed_frame_scores(single.eval(), n_test=8)
    assert torch.all(normal[:, [0, 1, 3]] == 0) and torch.all(zeroed[:, [0, 1, 3]] == 0)
    assert_detects(normal[:, 2], zeroed[:, 2], auroc_min=1.0, ratio_min=2.0)
