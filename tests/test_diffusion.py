"""The diffusion process, schedules, respacing, masking policies and EMA (no network: toy denoisers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from oddframe.diffusion import (
    EMA,
    GaussianDiffusion,
    beta_schedule,
    leave_one_out,
    make_cond,
    random_mask,
    respace_betas,
    selective_anchors,
    single_frame,
    space_timesteps,
)




def _oracle(diffusion: GaussianDiffusion, x0: torch.Tensor, calls: list | None = None):
    """A perfect denoiser for data ``x0`` under ``diffusion.prediction``.

    It reads ``alpha_bar`` of the *original* process at the timestep it is given, so it only works if the
    process passes original timesteps (respacing) and its step algebra is right.
    """
    ab = torch.tensor(diffusion.alphas_cumprod, dtype=torch.float32)

    def denoiser(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(t.clone())
        a = ab[t].view(-1, 1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return {"eps": eps, "x0": x0.expand_as(x_t), "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[diffusion.prediction]

    return denoiser


def _random_denoiser(seed: int = 0):
    """A fixed random nonlinear function of (x_t, t, cond): a stand-in for an untrained network."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)

    def denoiser(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return torch.tanh(w[0] * x_t + w[1] * cond[:, :1] + w[2] * t.view(-1, 1, 1, 1, 1).float() / 1000)

    return denoiser


# ------------------------------------------------------------------------------------------------ schedules
def test_linear_schedule_matches_ddpm_values() -> None:
    b = beta_schedule("linear", 1000)
    assert b.shape == (1000,)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    assert b[500] == pytest.approx(1e-4 + 500 * (0.02 - 1e-4) / 999)
    # Scaled by 1000 / N for other step counts (improved-diffusion).
    b250 = beta_schedule("linear", 250)
    assert b250[0] == pytest.approx(4e-4) and b250[-1] == pytest.approx(0.08)


def test_cosine_schedule_matches_alpha_bar_formula() -> None:
    n = 100
    ab = np.cumprod(1 - beta_schedule("cosine", n))
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 50, 90):
        assert ab[t] == pytest.approx(f((t + 1) / n) / f(0.0), rel=1e-9)
    assert beta_schedule("cosine", n).max() <= 0.999


def test_schedule_errors_list_allowed_names() -> None:
    with pytest.raises(ValueError, match="linear, cosine"):
        beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="n_steps > 20"):
        beta_schedule("linear", 20)


# --------------------------------------------------------------------------------------- forward process
def test_q_sample_statistics() -> None:
    d = GaussianDiffusion(betas=beta_schedule("linear", 1000))
    torch.manual_seed(0)
    x0 = torch.full((4, 1, 2, 64, 64), 0.5)
    for step in (10, 500, 999):
        t = torch.full((4,), step)
        xt = d.q_sample(x0, t)
        ab = d.alphas_cumprod[step]
        assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.5, abs=0.01)
        assert xt.std().item() == pytest.approx(math.sqrt(1 - ab), rel=0.02)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 2, 3])
    xt = d.q_sample(x0, t, noise)
    hand = torch.tensor(d.sqrt_alphas_cumprod[:4], dtype=torch.float32).view(-1, 1, 1, 1, 1) * x0 + torch.tensor(
        d.sqrt_one_minus_alphas_cumprod[:4], dtype=torch.float32
    ).view(-1, 1, 1, 1, 1) * noise
    torch.testing.assert_close(xt, hand)


# ---------------------------------------------------------------------------------------------- respacing
def test_space_timesteps_like_improved_diffusion() -> None:
    s = space_timesteps(1000, 10)
    assert len(s) == 10 and min(s) == 0 and max(s) == 999
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert len(space_timesteps(300, [10, 15, 20])) == 45
    assert space_timesteps(300, "10,15,20") == space_timesteps(300, [10, 15, 20])
    with pytest.raises(ValueError, match="cannot divide"):
        space_timesteps(100, 200)


def test_respacing_keeps_alpha_bar_and_maps_timesteps() -> None:
    d = GaussianDiffusion(betas=beta_schedule("linear", 1000))
    for steps in (200, 50, 20, 10):
        r = d.respaced(steps)
        assert r.num_timesteps == steps
        np.testing.assert_allclose(r.alphas_cumprod, d.alphas_cumprod[r.timestep_map], rtol=1e-10)
    r10 = d.respaced(10)
    assert d.respaced(10) is r10  # cached
    assert d.respaced(None) is d and d.respaced(1000) is d
    # Respacing a respaced process still points at original steps.
    r5 = d.respaced(50).respaced(5)
    np.testing.assert_allclose(r5.alphas_cumprod, d.alphas_cumprod[r5.timestep_map], rtol=1e-10)
    betas, index = respace_betas(d.alphas_cumprod, [0, 999])
    assert index.tolist() == [0, 999] and betas[1] == pytest.approx(1 - d.alphas_cumprod[999] / d.alphas_cumprod[0])


def test_denoiser_receives_original_timesteps() -> None:
    d = GaussianDiffusion(betas=beta_schedule("linear", 1000))
    x0 = torch.zeros(1, 1, 2, 4, 4)
    calls: list[torch.Tensor] = []
    d.sample(_oracle(d, x0, calls), x0.shape, known=x0, mask=torch.tensor([[True, False]]), steps=10)
    seen = [int(t[0]) for t in calls]
    assert seen == sorted(space_timesteps(1000, 10), reverse=True)
    assert seen[0] == 999 and seen[-1] == 0


# ------------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("steps", [10, 50])
def test_oracle_denoiser_recovers_data(sampler: str, steps: int, prediction: str) -> None:
    # With a perfect denoiser every step lands on the data: checks the DDPM and DDIM algebra, respacing and the
    # three parametrisations.
    d = GaussianDiffusion(betas=beta_schedule("linear", 1000), prediction=prediction)
    x0 = torch.rand(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    known = x0.clone()
    known[:, :, 2] = 0.0  # what the sampler must infill is not in `known`
    mask = torch.tensor([[False, False, True, False]] * 2)
    out = d.sample(_oracle(d, x0), x0.shape, known=known, mask=mask, steps=steps, sampler=sampler,
                   generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=2e-4, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampler_keeps_known_frames_exactly(sampler: str) -> None:
    d = GaussianDiffusion(betas=beta_schedule("cosine", 100))
    known = torch.rand(3, 2, 5, 4, 4) * 2 - 1
    mask = torch.tensor([[True, False, False, True, False], [False] * 4 + [True], [True] * 5])
    out = d.sample(_random_denoiser(), known.shape, known=known, mask=mask, steps=10, sampler=sampler,
                   generator=torch.Generator().manual_seed(0))
    keep = ~mask
    for b in range(3):
        assert torch.equal(out[b][:, keep[b]], known[b][:, keep[b]])
        assert not torch.equal(out[b][:, mask[b]], known[b][:, mask[b]])
    assert out.abs().max() <= 1.0 + 1e-5


def test_ddim_eta0_is_deterministic_and_eta1_is_not() -> None:
    d = GaussianDiffusion(betas=beta_schedule("linear", 1000))
    known = torch.rand(2, 1, 3, 4, 4) * 2 - 1
    mask = torch.tensor([[False, True, False]] * 2)
    noise = torch.randn(known.shape)

    def run(eta: float, seed: int) -> torch.Tensor:
        return d.sample(_random_denoiser(), known.shape, known=known, mask=mask, steps=20, eta=eta, noise=noise,
                        generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0.0, 1), run(0.0, 2))  # no randomness beyond x_T
    assert not torch.equal(run(1.0, 1), run(1.0, 2))
    assert torch.equal(run(1.0, 3), run(1.0, 3))  # but reproducible given the generator


def test_sampler_rejects_unknown_sampler_and_bad_mask() -> None:
    d = GaussianDiffusion(betas=beta_schedule("linear", 100))
    known = torch.zeros(1, 1, 3, 4, 4)
    with pytest.raises(ValueError, match="eps, x0, v"):
        GaussianDiffusion(betas=beta_schedule("linear", 100), prediction="score")
    with pytest.raises(ValueError, match="ddim, ddpm"):
        d.sample(_random_denoiser(), known.shape, known=known, mask=torch.ones(1, 3, dtype=torch.bool), sampler="euler")
    with pytest.raises(ValueError, match="mask must be"):
        d.sample(_random_denoiser(), known.shape, known=known, mask=torch.ones(1, 4, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------- loss
def test_make_cond_hides_masked_frames() -> None:
    known = torch.rand(2, 3, 4, 5, 5) + 1.0
    mask = torch.tensor([[False, True, False, False], [True, True, False, True]])
    cond = make_cond(known, mask)
    assert cond.shape == (2, 4, 4, 5, 5)
    for b in range(2):
        assert torch.all(cond[b, :3, mask[b]] == 0) and torch.equal(cond[b, :3, ~mask[b]], known[b][:, ~mask[b]])
        assert torch.all(cond[b, 3, mask[b]] == 1) and torch.all(cond[b, 3, ~mask[b]] == 0)


def test_loss_only_on_masked_frames() -> None:
    d = GaussianDiffusion(betas=beta_schedule("linear", 1000))
    x0 = torch.rand(2, 1, 4, 6, 6) * 2 - 1
    t = torch.tensor([10, 700])
    mask = torch.tensor([[False, False, True, False], [True, False, False, True]])
    noise = torch.randn_like(x0)
    den = _random_denoiser()
    base = d.training_loss(den, x0, t, mask=mask, noise=noise)
    changed = noise.clone()
    changed[0, :, 0] += 5.0  # an unmasked frame's target
    changed[1, :, 2] -= 3.0
    assert d.training_loss(den, x0, t, mask=mask, noise=changed) == base
    changed[0, :, 2] += 1.0  # a masked frame's target
    assert d.training_loss(den, x0, t, mask=mask, noise=changed) != base

    # Hand computation with a constant predictor: mean over each clip's masked elements, then over clips.
    zero = lambda x_t, t, cond: torch.zeros_like(x_t)  # noqa: E731
    loss = d.training_loss(zero, x0, t, mask=mask, noise=noise)
    hand = (noise[0, :, 2].pow(2).mean() + noise[1, :, [0, 3]].pow(2).mean()) / 2
    assert loss.item() == pytest.approx(hand.item(), rel=1e-6)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_loss_target_follows_prediction(prediction: str) -> None:
    d = GaussianDiffusion(betas=beta_schedule("linear", 1000), prediction=prediction)
    x0 = torch.rand(2, 1, 3, 4, 4) * 2 - 1
    t, noise = torch.tensor([100, 900]), torch.randn(2, 1, 3, 4, 4)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert d.training_loss(_oracle(d, x0), x0, t, mask=mask, noise=noise).item() < 1e-10
    zero = lambda x_t, t, cond: torch.zeros_like(x_t)  # noqa: E731
    a = torch.tensor(d.alphas_cumprod[[100, 900]], dtype=torch.float32).view(-1, 1, 1, 1, 1)
    target = x0 if prediction == "x0" else a.sqrt() * noise - (1 - a).sqrt() * x0
    hand = target.pow(2).flatten(1).mean(1).mean()
    assert d.training_loss(zero, x0, t, mask=mask, noise=noise).item() == pytest.approx(hand.item(), rel=1e-5)


def test_loss_inputs_given_frames_clean_and_skips_invalid_pixels() -> None:
    d = GaussianDiffusion(betas=beta_schedule("linear", 1000))
    x0 = torch.rand(1, 1, 3, 4, 4) * 2 - 1
    mask = torch.tensor([[False, True, False]])
    seen: dict[str, torch.Tensor] = {}

    def spy(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        seen["x_t"], seen["cond"] = x_t, cond
        return torch.zeros_like(x_t)

    noise = torch.randn_like(x0)
    d.training_loss(spy, x0, torch.tensor([500]), mask=mask, noise=noise)
    assert torch.equal(seen["x_t"][:, :, [0, 2]], x0[:, :, [0, 2]])  # RaMViD: given frames unnoised
    assert not torch.equal(seen["x_t"][:, :, 1], x0[:, :, 1])
    assert torch.equal(seen["cond"], make_cond(x0, mask))
    valid = torch.ones(1, 1, 3, 4, 4, dtype=torch.bool)
    valid[..., :2, :] = False  # top half of every frame invalid
    zero = lambda x_t, t, cond: torch.zeros_like(x_t)  # noqa: E731
    loss = d.training_loss(zero, x0, torch.tensor([500]), mask=mask, noise=noise, valid=valid)
    assert loss.item() == pytest.approx(noise[0, 0, 1, 2:].pow(2).mean().item(), rel=1e-6)


# ------------------------------------------------------------------------------------------------- masking
def test_single_frame_and_leave_one_out() -> None:
    assert single_frame(4).tolist() == [[False, False, True, False]]
    assert single_frame(5, index=-1).tolist() == [[False] * 4 + [True]]
    assert torch.equal(leave_one_out(3), torch.eye(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="index"):
        single_frame(4, index=4)


def test_selective_anchors_on_30_frames() -> None:
    m = selective_anchors(30)
    assert m.shape == (1, 30)
    assert torch.nonzero(~m[0]).flatten().tolist() == [0, 1, 9, 10, 19, 20, 28, 29]
    assert int(m.sum()) == 22  # "up to 22 frames per generation" (seed 003)
    short = selective_anchors(16)
    assert torch.nonzero(~short[0]).flatten().tolist() == [0, 1, 14, 15]
    with pytest.raises(ValueError, match="at least 5"):
        selective_anchors(4)


def test_random_mask_counts_and_unconditional_rate() -> None:
    g = torch.Generator().manual_seed(0)
    m = random_mask(2000, 8, max_masked=3, generator=g)
    assert m.shape == (2000, 8) and m.dtype == torch.bool
    counts = m.sum(1)
    assert counts.min() == 1 and counts.max() == 3
    assert set(counts.unique().tolist()) == {1, 2, 3}
    assert m.float().mean(0).std() < 0.03  # every frame equally likely
    assert random_mask(5, 4, max_masked=2, uncondition_rate=1.0, generator=g).all()
    share = random_mask(4000, 6, max_masked=2, uncondition_rate=0.25, generator=g).all(1).float().mean()
    assert share.item() == pytest.approx(0.25, abs=0.03)
    assert random_mask(3, 4, max_masked=10, generator=g).sum(1).max() <= 3  # one frame always given
    with pytest.raises(ValueError, match="uncondition_rate"):
        random_mask(1, 4, max_masked=1, uncondition_rate=2.0)


# ----------------------------------------------------------------------------------------------------- EMA
def test_ema_update_warmup_and_state_dict() -> None:
    live = nn.Linear(3, 2)
    ema = EMA(live, decay=0.999)
    start = ema.module.weight.clone()
    with torch.no_grad():
        live.weight.add_(1.0)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    ema.update(live)
    torch.testing.assert_close(ema.module.weight, 0.1 * start + 0.9 * live.weight)
    assert int(ema.num_updates) == 1 and not ema.module.weight.requires_grad
    assert {"module.weight", "module.bias", "num_updates"} <= set(ema.state_dict())
    ema.num_updates.fill_(100_000)
    assert ema.current_decay() == pytest.approx(0.999)
    ema.train()
    assert not ema.module.training
