"""Noise schedules: the betas ``beta_1 .. beta_N`` of the forward process ``q(x_t | x_{t-1})``.

Pure functions, numpy in and out (float64 for accuracy, as in openai/improved-diffusion; the process casts
to float32 only when it builds tensors).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

SCHEDULES: tuple[str, ...] = ("linear", "cosine")


def betas_for_alpha_bar(n_steps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> np.ndarray:
    """Betas that discretise a continuous ``alpha_bar(s)``, ``s`` in ``[0, 1]`` (Nichol & Dhariwal 2021, eq. 17).

    ``beta_t = 1 - alpha_bar(t / N) / alpha_bar((t - 1) / N)``, clipped at ``max_beta`` to avoid the
    singularity at the end of the cosine schedule.

    Args:
        n_steps: number of diffusion steps ``N``.
        alpha_bar: cumulative product of ``1 - beta`` as a function of ``s = t / N``.
        max_beta: upper bound on each beta.

    Returns:
        ``(N,)`` float64 betas.
    """
    s = np.arange(n_steps + 1, dtype=np.float64) / n_steps
    a = np.array([alpha_bar(float(v)) for v in s])
    return np.minimum(1.0 - a[1:] / a[:-1], max_beta)


def beta_schedule(name: str, n_steps: int) -> np.ndarray:
    """The named beta schedule with ``n_steps`` steps.

    - ``"linear"``: Ho et al. 2020 (and RaMViD), ``beta`` from ``1e-4`` to ``0.02`` linearly for 1000 steps;
      both ends are scaled by ``1000 / n_steps`` so that the total noise stays about the same for any
      number of steps (improved-diffusion's ``get_named_beta_schedule``).
    - ``"cosine"``: Nichol & Dhariwal 2021, ``alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2) ** 2``
      (eq. 17), which destroys information more slowly at the start and suits small images.

    Args:
        name: one of :data:`SCHEDULES`.
        n_steps: number of diffusion steps ``N`` (training steps; sampling uses respacing instead).

    Returns:
        ``(N,)`` float64 betas in ``(0, 1)``.

    Raises:
        ValueError: for an unknown name, or a step count the schedule cannot express.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
    if not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    if name == "linear":
        scale = 1000.0 / n_steps
        # beta_end = 0.02 * 1000 / N reaches 1 at N = 20, which would destroy the signal in one step
        # (alpha_bar = 0); fewer steps are meant to come from respacing a longer process.
        if scale * 0.02 >= 1.0:
            raise ValueError(
                f"the linear schedule needs n_steps > 20 (got {n_steps}); train with more steps and "
                "sample with fewer through respacing, or use the 'cosine' schedule"
            )
        return np.linspace(scale * 1e-4, scale * 0.02, n_steps, dtype=np.float64)
    return betas_for_alpha_bar(n_steps, lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2)
