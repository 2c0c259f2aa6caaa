"""The Gaussian diffusion process with frame infilling, as a plain object (DESIGN rule 2).

Follows openai/improved-diffusion ``gaussian_diffusion.py`` (Ho et al. 2020; Nichol & Dhariwal 2021; DDIM,
Song et al. 2021) with the conditioning of RaMViD (Höppe et al. 2022): the frames that are given enter
*unnoised*, both inside ``x_t`` (re-imposed after every step) and as extra input channels, and the loss is
computed only on the frames to infill. The process knows nothing of the network: a denoiser is any callable
``denoiser(x_t, t, cond) -> eps`` (or ``x_0`` or ``v``, see ``prediction``) with ``x_t`` and the output
``(B, C, T, H, W)``, ``t`` ``(B,)`` int64 timesteps of the *original* (training) process and ``cond``
``(B, C + 1, T, H, W)`` from :func:`make_cond`.

Frame masks are ``(B, T)`` bool, True = frame to infill (see :mod:`oddframe.diffusion.masking`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, reduce

from oddframe.diffusion.respace import respace_betas, space_timesteps

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
VARIANCES: tuple[str, ...] = ("fixed_large", "fixed_small")
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v")
SAMPLERS: tuple[str, ...] = ("ddim", "ddpm")


def frame_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` bool frame mask -> ``(B, 1, T, 1, 1)`` bool on ``like``'s device, broadcastable to clips."""
    if mask.ndim != 2 or mask.shape[1] != like.shape[2] or mask.shape[0] not in (1, like.shape[0]):
        raise ValueError(
            f"mask must be (B, T) = (*, {like.shape[2]}), got {tuple(mask.shape)} for clips {tuple(like.shape)}"
        )
    return rearrange(mask.to(device=like.device, dtype=torch.bool), "b t -> b 1 t 1 1")


def make_cond(known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Conditioning channels: the given frames (zero where masked) and the mask, as RaMViD concatenates them.

    Args:
        known: ``(B, C, T, H, W)`` clips whose unmasked frames are given.
        mask: ``(B, T)`` bool, True = frame to infill.

    Returns:
        ``(B, C + 1, T, H, W)``: ``known * ~mask`` then the mask as a 0/1 channel. Masked frames are zeroed so
        the network cannot read the frame it must infill.
    """
    m = frame_mask(mask, known).to(known.dtype)
    b, _, t, h, w = known.shape
    return torch.cat([known * (1.0 - m), m.expand(b, 1, t, h, w)], dim=1)


def _randn(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``like``'s device; ``generator`` may live on another device."""
    dev = generator.device if generator is not None else like.device
    return torch.randn(tuple(shape), generator=generator, device=dev, dtype=torch.float32).to(like.device)


class GaussianDiffusion:
    """Forward process ``q``, the masked denoising loss and DDPM / DDIM reverse steps, with respacing.

    Args:
        betas: ``(N,)`` noise schedule (see :func:`oddframe.diffusion.schedules.beta_schedule`).
        timestep_map: ``(N,)`` original timestep of each step, passed to the denoiser; identity unless this
            process was made by :meth:`respaced`.
        variance: reverse-step variance, ``"fixed_large"`` (``beta_t``, improved-diffusion's default without
            learnt sigmas) or ``"fixed_small"`` (the posterior variance ``beta~_t``, Ho et al. 2020 section 3.2).
        clip_denoised: clamp the predicted ``x_0`` to ``[-1, 1]`` before each step (the data range).
        prediction: what the denoiser outputs: ``"eps"`` the noise (Ho et al. 2020; RaMViD; seed 000),
            ``"x0"`` the clean clip, or ``"v" = sqrt(a_bar) eps - sqrt(1 - a_bar) x_0`` (Salimans & Ho 2022,
            section 4), which stays well conditioned at high noise where an ``eps`` error is amplified by
            ``1 / sqrt(a_bar)`` in the ``x_0`` estimate (about 156x at the last linear step).
    """

    def __init__(
        self,
        *,
        betas: np.ndarray,
        timestep_map: np.ndarray | None = None,
        variance: str = "fixed_large",
        clip_denoised: bool = True,
        prediction: str = "eps",
    ) -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array of values in (0, 1]")
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; allowed: {', '.join(VARIANCES)}")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = np.arange(len(betas)) if timestep_map is None else np.asarray(timestep_map, dtype=np.int64)
        if self.timestep_map.shape != betas.shape:
            raise ValueError(f"timestep_map must have one entry per step ({len(betas)}), got {self.timestep_map.shape}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; allowed: {', '.join(PREDICTIONS)}")
        self.variance = variance
        self.clip_denoised = clip_denoised
        self.prediction = prediction
        self._respaced: dict[str, GaussianDiffusion] = {}

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # Posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 6-7).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0; its log is clipped to the next value (improved-diffusion).
        post_var_1 = self.posterior_variance[1] if len(betas) > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(post_var_1, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # ----------------------------------------------------------------------------------------------- helpers
    @staticmethod
    def _at(arr: np.ndarray, t: torch.Tensor) -> torch.Tensor:
        """``arr[t]`` as float32 ``(B, 1, 1, 1, 1)`` on ``t``'s device (float32 so it also works on MPS)."""
        return rearrange(torch.as_tensor(arr, dtype=torch.float32, device=t.device)[t], "b -> b 1 1 1 1")

    def respaced(self, steps: int | str | Sequence[int] | None) -> "GaussianDiffusion":
        """This process with fewer steps (see :mod:`oddframe.diffusion.respace`); cached per ``steps``.

        Args:
            steps: None or ``num_timesteps`` for this process itself, an int ``K`` for ``K`` evenly spaced
                steps, or any ``section_counts`` of :func:`~oddframe.diffusion.respace.space_timesteps`
                (``"ddim50"``, ``"10,15,20"``).
        """
        if steps is None or (isinstance(steps, (int, np.integer)) and steps == self.num_timesteps):
            return self
        key = str(steps) if isinstance(steps, (int, str, np.integer)) else ",".join(map(str, steps))
        if key not in self._respaced:
            betas, index = respace_betas(self.alphas_cumprod, space_timesteps(self.num_timesteps, steps))
            # Compose with our own map so that respacing a respaced process still reaches the original steps.
            self._respaced[key] = GaussianDiffusion(
                betas=betas,
                timestep_map=self.timestep_map[index],
                variance=self.variance,
                clip_denoised=self.clip_denoised,
                prediction=self.prediction,
            )
        return self._respaced[key]

    def sample_timesteps(
        self, batch_size: int, *, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform training timesteps ``(B,)`` int64 in ``[0, N)`` (improved-diffusion's UniformSampler)."""
        dev = generator.device if generator is not None else device
        return torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=dev).to(device)

    def model_output(
        self, denoiser: Denoiser, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        """The denoiser's raw output (float32), called with the *original* timesteps ``timestep_map[t]``."""
        t_orig = torch.as_tensor(self.timestep_map, device=t.device)[t]
        # float(): under autocast the network may answer in half precision; the process stays in float32.
        return denoiser(x_t, t_orig, cond).float()

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the denoiser should output for ``x_t = q_sample(x0, t, noise)`` under :attr:`prediction`."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return self._at(self.sqrt_alphas_cumprod, t) * noise - self._at(self.sqrt_one_minus_alphas_cumprod, t) * x0

    def split_output(
        self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, eps)`` implied by a denoiser output (Ho et al. 2020, eq. 15; Salimans & Ho 2022, section 4)."""
        if self.prediction == "eps":
            x0 = self._at(self.sqrt_recip_alphas_cumprod, t) * x_t
            return x0 - self._at(self.sqrt_recipm1_alphas_cumprod, t) * out, out
        if self.prediction == "x0":
            return out, self._eps_from_x0(x_t, t, out)
        a, s = self._at(self.sqrt_alphas_cumprod, t), self._at(self.sqrt_one_minus_alphas_cumprod, t)
        return a * x_t - s * out, s * x_t + a * out

    def _eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (self._at(self.sqrt_recip_alphas_cumprod, t) * x_t - x0) / self._at(self.sqrt_recipm1_alphas_cumprod, t)

    # ------------------------------------------------------------------------------------- forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Sample ``x_t ~ q(x_t | x_0) = N(sqrt(a_bar_t) x_0, (1 - a_bar_t) I)`` (Ho et al. 2020, eq. 4).

        Args:
            x0: ``(B, C, T, H, W)`` clean clips.
            t: ``(B,)`` int64 step indices of this process.
            noise: ``(B, C, T, H, W)`` standard normal noise (drawn if None).
        """
        noise = torch.randn_like(x0) if noise is None else noise
        return self._at(self.sqrt_alphas_cumprod, t) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t) * noise

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of ``q(x_{t-1} | x_t, x_0)``; mean ``(B, C, T, H, W)``."""
        mean = self._at(self.posterior_mean_coef1, t) * x0 + self._at(self.posterior_mean_coef2, t) * x_t
        return mean, self._at(self.posterior_variance, t), self._at(self.posterior_log_variance_clipped, t)

    # ------------------------------------------------------------------------------------------------ loss
    def training_loss(
        self,
        denoiser: Denoiser,
        x0: torch.Tensor,
        t: torch.Tensor,
        *,
        mask: torch.Tensor,
        known: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """RaMViD's simple loss: MSE between predicted and true noise (:meth:`target`) on the frames to infill only.

        ``x_t`` is the noised clip with the given frames replaced by their clean values (RaMViD's
        ``x_t * masks + (1 - masks) * x_start``), the denoiser also sees them in ``cond``, and the squared
        error is averaged over the masked (and valid) elements of each clip, then over clips.

        Args:
            denoiser: ``(x_t, t, cond) -> eps``.
            x0: ``(B, C, T, H, W)`` clean clips in ``[-1, 1]``.
            t: ``(B,)`` int64 step indices.
            mask: ``(B, T)`` bool, True = frame to infill (the only frames in the loss).
            known: clips whose unmasked frames are given (default ``x0``).
            cond: precomputed conditioning ``(B, C + 1, T, H, W)`` (default ``make_cond(known, mask)``).
            noise: ``(B, C, T, H, W)`` the noise to predict (drawn if None).
            valid: ``(B, 1, T, H, W)`` bool; invalid pixels (padding, NaN) are left out of the loss.

        Returns:
            scalar loss.
        """
        known = x0 if known is None else known
        noise = torch.randn_like(x0) if noise is None else noise
        m = frame_mask(mask, x0)
        x_t = torch.where(m, self.q_sample(x0, t, noise), known)
        cond = make_cond(known, mask) if cond is None else cond
        out = self.model_output(denoiser, x_t, t, cond)
        weight = m.expand_as(x0).float()
        if valid is not None:
            weight = weight * valid.to(device=x0.device, dtype=torch.float32)
        sq = F.mse_loss(out, self.target(x0.float(), t, noise.float()), reduction="none") * weight
        per_clip = reduce(sq, "b ... -> b", "sum") / reduce(weight, "b ... -> b", "sum").clamp_min(1.0)
        return per_clip.mean()

    # --------------------------------------------------------------------------------------- reverse steps
    def p_mean_variance(
        self, denoiser: Denoiser, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``p(x_{t-1} | x_t)``: mean, variance, log-variance, predicted ``x_0`` and the implied noise.

        The predicted ``x_0`` (for ``eps``: ``(x_t - sqrt(1 - a_bar) eps) / sqrt(a_bar)``, Ho et al. 2020, eq. 15)
        is clamped to ``[-1, 1]`` when ``clip_denoised``; the mean is that of the posterior given it (eq. 7) and
        ``eps`` is re-derived from the clamped ``x_0`` (improved-diffusion does so for DDIM).
        """
        x0, _ = self.split_output(x_t, t, self.model_output(denoiser, x_t, t, cond))
        if self.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        eps = self._eps_from_x0(x_t, t, x0)
        mean, _, _ = self.q_posterior_mean_variance(x0, x_t, t)
        if self.variance == "fixed_large":
            # improved-diffusion sets the first variance to the posterior's for a better decoder likelihood.
            var = np.append(self.posterior_variance[1] if self.num_timesteps > 1 else self.betas[0], self.betas[1:])
            log_var = np.log(var)
        else:
            var, log_var = self.posterior_variance, self.posterior_log_variance_clipped
        return {
            "mean": mean,
            "variance": self._at(var, t),
            "log_variance": self._at(log_var, t),
            "pred_xstart": x0,
            "eps": eps,
        }

    def ddpm_step(
        self,
        denoiser: Denoiser,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Ancestral step ``x_{t-1} = mean + sigma z`` (Ho et al. 2020, Algorithm 2); no noise at ``t = 0``.

        Returns:
            ``{"sample": x_{t-1}, "pred_xstart": x_0 estimate}``, both ``(B, C, T, H, W)``.
        """
        out = self.p_mean_variance(denoiser, x_t, t, cond)
        nonzero = self._at((np.arange(self.num_timesteps) > 0).astype(np.float32), t)
        z = _randn(x_t.shape, x_t, generator)
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * z
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_step(
        self,
        denoiser: Denoiser,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        *,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """DDIM step (Song et al. 2021, eq. 12): deterministic for ``eta = 0``, DDPM-like for ``eta = 1``.

        ``x_{t-1} = sqrt(a_bar_prev) x0 + sqrt(1 - a_bar_prev - sigma^2) eps + sigma z`` with
        ``sigma = eta sqrt((1 - a_bar_prev) / (1 - a_bar)) sqrt(1 - a_bar / a_bar_prev)`` (eq. 16), with ``eps``
        re-derived from the clamped ``x_0`` as in improved-diffusion.
        """
        out = self.p_mean_variance(denoiser, x_t, t, cond)
        x0, eps = out["pred_xstart"], out["eps"]
        a_bar, a_prev = self._at(self.alphas_cumprod, t), self._at(self.alphas_cumprod_prev, t)
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_bar)) * torch.sqrt(1 - a_bar / a_prev)
        sample = torch.sqrt(a_prev) * x0 + torch.sqrt((1 - a_prev - sigma**2).clamp_min(0.0)) * eps
        if eta > 0:
            # sigma is 0 at t = 0 (a_prev = 1), so the last step adds no noise by construction.
            sample = sample + sigma * _randn(x_t.shape, x_t, generator)
        return {"sample": sample, "pred_xstart": x0}

    # ---------------------------------------------------------------------------------------------- sampler
    def sample(
        self,
        denoiser: Denoiser,
        shape: Sequence[int],
        *,
        known: torch.Tensor,
        mask: torch.Tensor,
        steps: int | str | Sequence[int] | None = None,
        sampler: str = "ddim",
        eta: float = 0.0,
        progress: bool = False,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Infill the masked frames of ``known``, keeping the given frames exactly.

        As in RaMViD's sampling loop, the given frames are written (clean) into ``x`` before every step
        and the denoiser also receives them through ``cond``; the result has them re-imposed once more.

        Args:
            denoiser: ``(x_t, t, cond) -> eps``; put it in eval mode first (dropout).
            shape: ``(B, C, T, H, W)``, the shape of ``known``.
            known: ``(B, C, T, H, W)`` clips; their unmasked frames are the conditioning.
            mask: ``(B, T)`` (or ``(1, T)``) bool, True = frame to infill.
            steps: sampling steps through :meth:`respaced` (None: all ``num_timesteps``).
            sampler: ``"ddim"`` or ``"ddpm"``.
            eta: DDIM noise scale (0 = deterministic given the initial noise).
            progress: show a Rich progress bar.
            generator: random generator for the initial and per-step noise (reproducible samples).
            noise: ``(B, C, T, H, W)`` initial ``x_T`` (drawn from ``generator`` if None).

        Returns:
            ``(B, C, T, H, W)`` float32 samples, equal to ``known`` on unmasked frames.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
        if tuple(shape) != tuple(known.shape):
            raise ValueError(f"shape {tuple(shape)} does not match known frames {tuple(known.shape)}")
        proc = self.respaced(steps)
        known = known.float()
        m = frame_mask(mask, known)
        cond = make_cond(known, mask.expand(known.shape[0], -1) if mask.shape[0] == 1 else mask)
        x = _randn(shape, known, generator) if noise is None else noise.float()
        indices: Sequence[int] = range(proc.num_timesteps - 1, -1, -1)
        if progress:
            from rich.progress import track

            indices = track(indices, description=f"{sampler} sampling")
        for i in indices:
            t = torch.full((known.shape[0],), i, device=known.device, dtype=torch.long)
            x = torch.where(m, x, known)
            if sampler == "ddim":
                x = proc.ddim_step(denoiser, x, t, cond, eta=eta, generator=generator)["sample"]
            else:
                x = proc.ddpm_step(denoiser, x, t, cond, generator=generator)["sample"]
        return torch.where(m, x, known)
