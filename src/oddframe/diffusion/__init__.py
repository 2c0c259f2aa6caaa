"""Diffusion process, schedules, respacing and masking policies; independent of any network (DESIGN rule 2)."""

from oddframe.diffusion.ema import EMA
from oddframe.diffusion.gaussian import GaussianDiffusion, make_cond
from oddframe.diffusion.masking import leave_one_out, random_mask, selective_anchors, single_frame
from oddframe.diffusion.respace import respace_betas, space_timesteps
from oddframe.diffusion.schedules import beta_schedule

__all__ = [
    "EMA",
    "GaussianDiffusion",
    "beta_schedule",
    "leave_one_out",
    "make_cond",
    "random_mask",
    "respace_betas",
    "selective_anchors",
    "single_frame",
    "space_timesteps",
]
