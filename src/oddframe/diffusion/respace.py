"""Timestep respacing (Nichol & Dhariwal 2021, section 4; openai/improved-diffusion ``respace.py``).

A process trained with ``N`` steps can be sampled with ``K < N`` steps by keeping a subset ``S`` of its
timesteps and recomputing betas so that ``alpha_bar`` at each kept step is unchanged:
``beta'_k = 1 - alpha_bar[s_k] / alpha_bar[s_{k-1}]``. The denoiser was trained on the original indices,
so the process remembers ``timestep_map[k] = s_k`` and passes ``s_k`` (not ``k``) to the network.
Pure numpy functions; :meth:`oddframe.diffusion.gaussian.GaussianDiffusion.respaced` builds the process.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> set[int]:
    """Timesteps to keep from a process of ``num_timesteps`` steps.

    The original steps are cut into ``len(section_counts)`` equal sections and section ``i`` is strided
    evenly (ends included) to ``section_counts[i]`` steps, e.g. 300 steps with ``[10, 15, 20]`` keep 10
    from the first 100, 15 from the next 100 and 20 from the last 100.

    Args:
        num_timesteps: steps of the original process.
        section_counts: an int (one section), a sequence of ints, a comma-separated string (``"10,15,20"``),
            or ``"ddimK"``: the fixed integer stride of the DDIM paper (``range(0, N, stride)`` with exactly
            ``K`` elements).

    Returns:
        the kept original timesteps (``0 .. num_timesteps - 1``).

    Raises:
        ValueError: if a section cannot hold its count, or no integer stride gives exactly ``K`` DDIM steps.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            if desired == num_timesteps:
                return set(range(num_timesteps))
            raise ValueError(f"cannot take exactly {desired} steps from {num_timesteps} with an integer stride")
        counts = [int(x) for x in section_counts.split(",")]
    elif isinstance(section_counts, (int, np.integer)):
        counts = [int(section_counts)]
    else:
        counts = [int(x) for x in section_counts]
    if not counts or min(counts) < 1:
        raise ValueError(f"section counts must be positive, got {section_counts!r}")
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"cannot divide a section of {size} steps into {count} (process has {num_timesteps} steps)"
            )
        # Fractional stride so that both ends of the section are kept (improved-diffusion rounds the same way).
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        kept += [start + round(j * stride) for j in range(count)]
        start += size
    return set(kept)


def respace_betas(alphas_cumprod: np.ndarray, use_timesteps: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """Betas of the respaced process and the map from its steps to the original ones.

    Args:
        alphas_cumprod: ``(N,)`` ``alpha_bar`` of the original process.
        use_timesteps: original timesteps to keep.

    Returns:
        ``(betas (K,), timestep_map (K,) int64)``: ``1 - prod(1 - betas[:k+1]) == alphas_cumprod[timestep_map[k]]``.

    Raises:
        ValueError: if a kept timestep is outside ``0 .. N - 1`` or none is kept.
    """
    keep = sorted(set(int(t) for t in use_timesteps))
    n = len(alphas_cumprod)
    if not keep or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"kept timesteps must be a non-empty subset of 0..{n - 1}, got {keep[:3]}...{keep[-3:]}")
    kept_ab = np.asarray(alphas_cumprod, dtype=np.float64)[keep]
    prev = np.concatenate([[1.0], kept_ab[:-1]])
    return 1.0 - kept_ab / prev, np.asarray(keep, dtype=np.int64)
