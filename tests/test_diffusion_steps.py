"""One reverse step at a middle timestep, against the formulas worked out by hand in float64.

The oracle tests in test_diffusion.py cannot see a wrong intermediate step (a perfect denoiser lands on the data
from anywhere). Here a fixed, imperfect denoiser output is stepped once and compared with Ho et al. 2020 (DDPM,
eq. 6-7 and Algorithm 2, both variance choices) and Song et al. 2021 (DDIM, eq. 12 and 16, eta 0 and eta > 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oddframe.diffusion import GaussianDiffusion, beta_schedule, space_timesteps

SHAPE = (2, 1, 3, 4, 4)
T = 500  # a middle timestep: noise and signal both matter


def _inputs():
    g = torch.Generator().manual_seed(7)
    x_t = torch.randn(SHAPE, generator=g) * 0.8
    eps = torch.randn(SHAPE, generator=g)  # what the (imperfect) denoiser answers
    return x_t.double(), eps.double()


def _const(out: torch.Tensor):
    return lambda x_t, t, cond: out.float()


def _hand(betas: np.ndarray, t: int):
    alphas = 1.0 - betas
    a_bar = np.prod(alphas[: t + 1])
    a_prev = np.prod(alphas[:t])
    return float(betas[t]), float(alphas[t]), float(a_bar), float(a_prev)


def _noise(seed: int) -> torch.Tensor:
    # The process draws its step noise as torch.randn(shape, generator) in float32: the same draw by hand.
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).double()


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_step_mean_and_variance_by_hand(variance):
    betas = beta_schedule("linear", 1000)
    d = GaussianDiffusion(betas=betas, variance=variance, clip_denoised=False)
    x_t, eps = _inputs()
    beta, alpha, a_bar, a_prev = _hand(betas, T)
    x0 = (x_t - np.sqrt(1 - a_bar) * eps) / np.sqrt(a_bar)  # eq. 15
    mean = (beta * np.sqrt(a_prev) / (1 - a_bar)) * x0 + ((1 - a_prev) * np.sqrt(alpha) / (1 - a_bar)) * x_t  # eq. 7
    var = beta * (1 - a_prev) / (1 - a_bar) if variance == "fixed_small" else beta
    t = torch.full((SHAPE[0],), T, dtype=torch.long)
    cond = torch.zeros(SHAPE[0], 2, *SHAPE[2:])
    out = d.ddpm_step(_const(eps), x_t.float(), t, cond, generator=torch.Generator().manual_seed(3))
    expected = mean + np.sqrt(var) * _noise(3)  # Algorithm 2: x_{t-1} = mean + sigma z
    torch.testing.assert_close(out["sample"].double(), expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out["pred_xstart"].double(), x0, atol=2e-5, rtol=1e-5)


def test_ddpm_last_step_adds_no_noise():
    betas = beta_schedule("linear", 1000)
    d = GaussianDiffusion(betas=betas, clip_denoised=False)
    x_t, eps = _inputs()
    t = torch.zeros(SHAPE[0], dtype=torch.long)
    cond = torch.zeros(SHAPE[0], 2, *SHAPE[2:])
    a = d.ddpm_step(_const(eps), x_t.float(), t, cond, generator=torch.Generator().manual_seed(1))["sample"]
    b = d.ddpm_step(_const(eps), x_t.float(), t, cond, generator=torch.Generator().manual_seed(2))["sample"]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, a.new_tensor(0) + d.p_mean_variance(_const(eps), x_t.float(), t, cond)["mean"])


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_by_hand(eta):
    betas = beta_schedule("linear", 1000)
    d = GaussianDiffusion(betas=betas, clip_denoised=False)
    x_t, eps = _inputs()
    _, _, a_bar, a_prev = _hand(betas, T)
    x0 = (x_t - np.sqrt(1 - a_bar) * eps) / np.sqrt(a_bar)
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a_bar)) * np.sqrt(1 - a_bar / a_prev)  # eq. 16
    expected = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * eps  # eq. 12
    if eta > 0:
        expected = expected + sigma * _noise(5)
    t = torch.full((SHAPE[0],), T, dtype=torch.long)
    cond = torch.zeros(SHAPE[0], 2, *SHAPE[2:])
    out = d.ddim_step(_const(eps), x_t.float(), t, cond, eta=eta, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out["sample"].double(), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_other_parametrisations_step_like_the_eps_they_imply(prediction):
    """An x0 or v output equivalent to a given eps gives the same DDIM step as that eps."""
    betas = beta_schedule("cosine", 1000)
    x_t, eps = _inputs()
    _, _, a_bar, _ = _hand(betas, T)
    x0 = (x_t - np.sqrt(1 - a_bar) * eps) / np.sqrt(a_bar)
    out = x0 if prediction == "x0" else np.sqrt(a_bar) * eps - np.sqrt(1 - a_bar) * x0
    t = torch.full((SHAPE[0],), T, dtype=torch.long)
    cond = torch.zeros(SHAPE[0], 2, *SHAPE[2:])
    ref = GaussianDiffusion(betas=betas, clip_denoised=False).ddim_step(_const(eps), x_t.float(), t, cond)
    got = GaussianDiffusion(betas=betas, clip_denoised=False, prediction=prediction).ddim_step(
        _const(out), x_t.float(), t, cond)
    torch.testing.assert_close(got["sample"], ref["sample"], atol=1e-4, rtol=1e-4)


def test_respaced_step_uses_the_respaced_betas_and_original_timesteps():
    """One DDIM step of a 10-step process: a_bar at the kept steps 999 -> 888, the denoiser told t = 999."""
    betas = beta_schedule("linear", 1000)
    d = GaussianDiffusion(betas=betas, clip_denoised=False).respaced(10)
    x_t, eps = _inputs()
    a_bar_all = np.cumprod(1.0 - betas)
    a_bar, a_prev = a_bar_all[999], a_bar_all[888]
    x0 = (x_t - np.sqrt(1 - a_bar) * eps) / np.sqrt(a_bar)
    expected = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    seen = []

    def denoiser(x, t, cond):
        seen.append(int(t[0]))
        return eps.float()

    t = torch.full((SHAPE[0],), 9, dtype=torch.long)
    out = d.ddim_step(denoiser, x_t.float(), t, torch.zeros(SHAPE[0], 2, *SHAPE[2:]))
    assert seen == [999]
    torch.testing.assert_close(out["sample"].double(), expected, atol=2e-5, rtol=1e-5)


def test_the_exact_steps_respacing_keeps():
    assert sorted(space_timesteps(1000, 10)) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert sorted(space_timesteps(1000, 4)) == [0, 333, 666, 999]
    assert sorted(space_timesteps(100, "ddim25")) == list(range(0, 100, 4))
    # Sections: 300 steps as [2, 3] -> sections of 150: {0, 149} and 150 + {0, 74.5 -> 74 (round half even), 149}.
    assert sorted(space_timesteps(300, [2, 3])) == [0, 149, 150, 224, 299]


def test_clipping_of_the_predicted_x0_changes_the_step():
    """clip_denoised clamps x0 to [-1, 1] and re-derives eps from it (improved-diffusion): a far x0 is pulled in."""
    betas = beta_schedule("linear", 1000)
    x_t, eps = _inputs()
    t = torch.full((SHAPE[0],), T, dtype=torch.long)
    cond = torch.zeros(SHAPE[0], 2, *SHAPE[2:])
    big = (eps * 40).float()  # implies an x0 far outside [-1, 1]
    clipped = GaussianDiffusion(betas=betas, clip_denoised=True).ddim_step(_const(big), x_t.float(), t, cond)
    assert clipped["pred_xstart"].abs().max() <= 1.0
    unclipped = GaussianDiffusion(betas=betas, clip_denoised=False).ddim_step(_const(big), x_t.float(), t, cond)
    assert unclipped["pred_xstart"].abs().max() > 1.0


# ------------------------------------------- hand cases for mutants that survived mutmut (docs/TESTING.md)
def test_split_output_returns_the_eps_each_parametrisation_implies():
    betas = beta_schedule("linear", 1000)
    x_t, eps = _inputs()
    _, _, a_bar, _ = _hand(betas, T)
    x0 = (x_t - np.sqrt(1 - a_bar) * eps) / np.sqrt(a_bar)
    t = torch.full((SHAPE[0],), T, dtype=torch.long)
    for prediction, out in (("eps", eps), ("x0", x0), ("v", np.sqrt(a_bar) * eps - np.sqrt(1 - a_bar) * x0)):
        d = GaussianDiffusion(betas=betas, prediction=prediction)
        got_x0, got_eps = d.split_output(x_t.float(), t, out.float())
        torch.testing.assert_close(got_x0.double(), x0, atol=5e-4, rtol=1e-4, msg=prediction)
        torch.testing.assert_close(got_eps.double(), eps, atol=5e-4, rtol=1e-4, msg=prediction)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_reverse_variances_at_the_first_steps(variance):
    betas = beta_schedule("linear", 1000)
    d = GaussianDiffusion(betas=betas, variance=variance, clip_denoised=False)
    a_bar = np.cumprod(1.0 - betas)
    post = betas[1:] * (1 - a_bar[:-1]) / (1 - a_bar[1:])  # posterior variance at t >= 1
    x_t, eps = _inputs()
    cond = torch.zeros(SHAPE[0], 2, *SHAPE[2:])
    small = variance == "fixed_small"
    # fixed_small: the posterior variance (0 at step 0, whose log is clipped to step 1's); fixed_large: beta_t,
    # except at step 0, which takes the posterior variance of step 1 (improved-diffusion).
    for step, expected, log_expected in ((0, 0.0 if small else post[0], np.log(post[0])),
                                         (1, post[0] if small else betas[1], np.log(post[0] if small else betas[1])),
                                         (2, post[1] if small else betas[2], np.log(post[1] if small else betas[2]))):
        out = d.p_mean_variance(_const(eps), x_t.float(), torch.full((SHAPE[0],), step), cond)
        assert float(out["variance"][0]) == pytest.approx(expected, rel=1e-5, abs=1e-12), (variance, step)
        assert float(out["log_variance"][0]) == pytest.approx(log_expected, rel=1e-5), (variance, step)
    assert d.respaced(10).variance == variance, "respacing keeps the variance choice"


def test_ddpm_adds_noise_at_every_step_but_the_last():
    d = GaussianDiffusion(betas=beta_schedule("linear", 1000), clip_denoised=False)
    x_t, eps = _inputs()
    cond = torch.zeros(SHAPE[0], 2, *SHAPE[2:])
    t1 = torch.ones(SHAPE[0], dtype=torch.long)
    a = d.ddpm_step(_const(eps), x_t.float(), t1, cond, generator=torch.Generator().manual_seed(1))["sample"]
    b = d.ddpm_step(_const(eps), x_t.float(), t1, cond, generator=torch.Generator().manual_seed(2))["sample"]
    assert not torch.allclose(a, b), "t = 1 is not the last step"


def test_sampling_is_deterministic_by_default_given_the_initial_noise():
    d = GaussianDiffusion(betas=beta_schedule("linear", 100))
    known = torch.rand(1, 1, 3, 4, 4) * 2 - 1
    mask = torch.tensor([[False, True, False]])
    noise = torch.randn(known.shape)
    net = lambda x, t, cond: torch.tanh(x) * 0.3  # noqa: E731 - any fixed function of x
    one = d.sample(net, known.shape, known=known, mask=mask, steps=10, noise=noise,
                   generator=torch.Generator().manual_seed(1))
    two = d.sample(net, known.shape, known=known, mask=mask, steps=10, noise=noise,
                   generator=torch.Generator().manual_seed(2))
    assert torch.equal(one, two), "DDIM with eta = 0 is the default"


def test_betas_range_and_respacing_by_a_list_of_steps():
    for bad in (np.array([0.0, 0.5]), np.array([0.5, 1.5]), np.array([[0.1, 0.2]])):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            GaussianDiffusion(betas=bad)
    d = GaussianDiffusion(betas=beta_schedule("linear", 1000))
    r = d.respaced([2, 3])  # section counts: 2 steps from the first half, 3 from the second
    assert r is d.respaced([2, 3]) and r.timestep_map.tolist() == [0, 499, 500, 750, 999]
    assert d.respaced("2,3") is r, "a list and its comma-separated string are the same respacing"


def test_the_loss_averages_each_clip_over_its_own_masked_pixels():
    """A clip with one valid masked pixel weighs as much as a clip with many (per-clip mean, then mean)."""
    d = GaussianDiffusion(betas=beta_schedule("linear", 100), prediction="x0")
    x0 = torch.zeros(2, 1, 2, 2, 2)
    mask = torch.tensor([[True, False], [True, False]])
    valid = torch.ones(2, 1, 2, 2, 2, dtype=torch.bool)
    valid[0, :, 0] = False
    valid[0, 0, 0, 0, 0] = True  # clip 0: a single valid pixel in its masked frame
    out = torch.zeros(2, 1, 2, 2, 2)
    out[0, 0, 0, 0, 0] = 2.0  # error 4 on that pixel
    out[1, 0, 0] = 1.0  # error 1 on each of clip 1's 4 masked pixels
    loss = d.training_loss(lambda x, t, c: out, x0, torch.zeros(2, dtype=torch.long), mask=mask, valid=valid)
    assert float(loss) == pytest.approx((4.0 + 1.0) / 2)


# --------------------------------------------------------------- masking and respacing edges (mutmut survivors)
def test_masks_are_boolean_and_need_two_frames():
    from oddframe.diffusion import leave_one_out, random_mask, selective_anchors, single_frame

    assert single_frame(2, index=-2).tolist() == [[True, False]]  # the most negative index is allowed
    assert leave_one_out(2).dtype == torch.bool and single_frame(2, index=0).dtype == torch.bool
    for make in (lambda: single_frame(1, index=0), lambda: leave_one_out(1), lambda: random_mask(2, 1, max_masked=1)):
        with pytest.raises(ValueError, match="at least 2 frame"):
            make()
    with pytest.raises(ValueError, match="index"):
        single_frame(4, index=-5)
    assert selective_anchors(3, spacing=1, run=1).shape == (1, 3)  # spacing and run of 1 are allowed
    for spacing, run in ((0, 1), (1, 0)):
        with pytest.raises(ValueError, match="spacing and run"):
            selective_anchors(10, spacing=spacing, run=run)
    # 30 frames: exactly the paper's anchors and no extra run beyond the last.
    hidden = selective_anchors(30)[0]
    assert [i for i in range(30) if not hidden[i]] == [0, 1, 9, 10, 19, 20, 28, 29]


def test_random_masks_follow_the_generator_and_the_frame_limit():
    from oddframe.diffusion import random_mask

    a = random_mask(64, 5, max_masked=10, uncondition_rate=0.3, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    b = random_mask(64, 5, max_masked=10, uncondition_rate=0.3, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(1)
    c = random_mask(64, 5, max_masked=10, uncondition_rate=0.3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and torch.equal(a, c), "only the generator decides (not the global RNG)"
    conditional = random_mask(500, 5, max_masked=10, generator=torch.Generator().manual_seed(0))
    assert conditional.sum(dim=1).max() == 4, "up to T - 1 frames masked, so one is always given"
    assert not random_mask(50, 4, max_masked=2, uncondition_rate=0.0).all(dim=1).any()
    assert random_mask(50, 4, max_masked=2, uncondition_rate=1.0).all()


def test_space_timesteps_section_sizes_and_full_ddim():
    assert space_timesteps(10, "ddim10") == set(range(10))  # every step
    assert space_timesteps(10, "ddim5") == {0, 2, 4, 6, 8}
    with pytest.raises(ValueError, match="exactly"):
        space_timesteps(10, "ddim7")
    # 11 steps in 2 sections: the first gets the extra step (6 + 5); one step from each starts the section.
    assert sorted(space_timesteps(11, [1, 1])) == [0, 6]
    assert sorted(space_timesteps(11, [6, 5])) == list(range(11))
    assert sorted(space_timesteps(10, 1)) == [0]
    with pytest.raises(ValueError, match="positive"):
        space_timesteps(10, [0, 2])
    with pytest.raises(ValueError, match="cannot divide"):
        space_timesteps(10, [6, 5])  # sections of 5 cannot hold 6


def test_respace_betas_rejects_steps_outside_the_process():
    from oddframe.diffusion import respace_betas

    ab = np.cumprod(1 - beta_schedule("cosine", 10))
    betas, index = respace_betas(ab, [9, 0])
    assert index.tolist() == [0, 9]
    for bad in ([], [-1, 3], [3, 10]):
        with pytest.raises(ValueError, match="subset of 0..9"):
            respace_betas(ab, bad)
