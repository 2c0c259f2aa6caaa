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
