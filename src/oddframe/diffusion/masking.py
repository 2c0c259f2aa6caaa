"""Masking policies: which frames of a clip the diffusion model infills (DESIGN rule 3: infilling is data).

Every function returns a boolean frame mask of shape ``(P, T)``, True = frame to infill (hidden from the
model and generated), False = frame given as conditioning. ``P`` is the batch size for random masks and
the number of patterns for the fixed policies (1 for :func:`single_frame` and :func:`selective_anchors`,
``T`` for :func:`leave_one_out`); a ``(1, T)`` pattern broadcasts over a batch.
"""

from __future__ import annotations

import torch

def _check_length(n_frames: int, minimum: int = 1) -> None:
    if n_frames < minimum:
        raise ValueError(f"a clip needs at least {minimum} frame(s) for this mask, got T={n_frames}")


def single_frame(n_frames: int, index: int = 2) -> torch.Tensor:
    """Infill one frame from all the others: the spatiotemporal DDPM seed hides the 3rd of 4 frames.

    Args:
        n_frames: clip length ``T``.
        index: the hidden frame (negative counts from the end).

    Returns:
        ``(1, T)`` bool with a single True.
    """
    _check_length(n_frames, 2)
    if not -n_frames <= index < n_frames:
        raise ValueError(f"index must be in [{-n_frames}, {n_frames - 1}] for T={n_frames}, got {index}")
    mask = torch.zeros(1, n_frames, dtype=torch.bool)
    mask[0, index] = True
    return mask


def random_mask(
    batch_size: int,
    n_frames: int,
    *,
    max_masked: int,
    uncondition_rate: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RaMViD's training masks (Höppe et al. 2022): a random subset of frames per clip.

    With probability ``uncondition_rate`` a clip is fully masked (unconditional generation, which RaMViD
    trains alongside prediction/infilling); otherwise ``k ~ U{1..max_masked}`` frames chosen uniformly
    are masked and the rest are given.

    Args:
        batch_size: number of clips ``B``.
        n_frames: clip length ``T``.
        max_masked: the most frames masked in a conditional clip (clipped to ``T - 1`` so one is given).
        uncondition_rate: probability in ``[0, 1]`` of masking every frame.
        generator: CPU random generator (the global one if None).

    Returns:
        ``(B, T)`` bool on the CPU.
    """
    _check_length(n_frames, 2)
    if max_masked < 1:
        raise ValueError(f"max_masked must be >= 1, got {max_masked}")
    if not 0.0 <= uncondition_rate <= 1.0:
        raise ValueError(f"uncondition_rate must be in [0, 1], got {uncondition_rate}")
    k_max = min(max_masked, n_frames - 1)
    counts = torch.randint(1, k_max + 1, (batch_size,), generator=generator)
    # argsort of i.i.d. uniforms is a uniformly random permutation per clip; the frames holding its
    # first k values are a uniformly random k-subset.
    perm = torch.rand(batch_size, n_frames, generator=generator).argsort(dim=1)
    mask = perm < counts[:, None]
    uncond = torch.rand(batch_size, generator=generator) < uncondition_rate
    return mask | uncond[:, None]


def selective_anchors(n_frames: int, *, spacing: int = 10, run: int = 2) -> torch.Tensor:
    """Deterministic selective masking of the Mamba video-diffusion work (seed 003, appendix 7).

    Anchors (given frames) come in runs of ``run`` consecutive frames: the first two, the last two and
    runs spread evenly about every ``spacing`` frames in between; every other frame is infilled. For the
    paper's 30-frame windows the anchors are frames 0, 1, 9, 10, 19, 20, 28, 29 (the 1st-2nd, 10th-11th,
    20th-21st and 29th-30th frames), so 22 frames are generated per window, as in the paper's "up to 22
    frames per generation", in gaps of 7, 8 and 7 frames.

    Args:
        n_frames: window length ``T`` (at least ``2 * run + 1``).
        spacing: approximate distance between anchor runs.
        run: consecutive frames per anchor run.

    Returns:
        ``(1, T)`` bool, True on the infilled frames.
    """
    if spacing < 1 or run < 1:
        raise ValueError(f"spacing and run must be >= 1, got spacing={spacing}, run={run}")
    _check_length(n_frames, 2 * run + 1)
    span = n_frames - run
    n_gaps = max(1, round(span / spacing))
    starts = {round(k * span / n_gaps) for k in range(n_gaps + 1)}
    mask = torch.ones(1, n_frames, dtype=torch.bool)
    for s in starts:
        mask[0, s : s + run] = False
    return mask


def leave_one_out(n_frames: int) -> torch.Tensor:
    """``T`` patterns, pattern ``i`` infilling frame ``i`` from all the others, so every frame gets a score.

    Returns:
        ``(T, T)`` bool identity.
    """
    _check_length(n_frames, 2)
    return torch.eye(n_frames, dtype=torch.bool)
