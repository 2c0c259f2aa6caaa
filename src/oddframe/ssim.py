"""Per-pixel structural dissimilarity ``1 - SSIM`` between observed and reconstructed frames (seed 003 section 3.4).

SSIM (Wang et al. 2004, eq. 13) compares local means, variances and covariance in a Gaussian window (11 x 11,
sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``):

    SSIM(x, y) = (2 mu_x mu_y + C1) (2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (sigma_x^2 + sigma_y^2 + C2)),
    C1 = (K1 R)^2, C2 = (K2 R)^2, R = data range (2 for frames in [-1, 1]).

The computation is torchmetrics' ``structural_similarity_index_measure`` (Lightning AI, the maintainers of the
Fabric we already train with): it runs in torch on the model's device, returns the full per-pixel SSIM image
(``return_full_image=True``, borders by reflection, so the map has the frame's size), which pytorch-msssim does
not (it returns only the mean, over a cropped image), and it needs no NumPy round trip per frame as
scikit-image's ``structural_similarity`` would. A pure function (DESIGN rule 6): tensors in, tensors out.
"""

from __future__ import annotations

import torch
from einops import rearrange, reduce

#: The Gaussian window of Wang et al. 2004 (and of every SSIM library's default).
SSIM_SIGMA = 1.5
#: Frames smaller than this (in H or W) cannot be reflected by the 11 x 11 window's 5-pixel margin.
MIN_SIDE = 6


def _ssim_fn():
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError:
        raise ImportError(
            "score.rule=ssim needs torchmetrics: pip install 'torchmetrics>=1.4' (or reinstall oddframe)"
        ) from None
    return structural_similarity_index_measure


def ssim_map(
    observed: torch.Tensor,
    reconstructed: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    data_range: float = 2.0,
) -> torch.Tensor:
    """``1 - SSIM`` per pixel of every frame, averaged over channels; higher = less similar = more anomalous.

    Invalid pixels (padding, NaN in FITS) are set to 0 in both clips before the comparison, so they add no
    dissimilarity to their valid neighbours' windows, and get 0 in the map.

    Args:
        observed: ``(B, C, T, H, W)`` frames in ``[-1, 1]``.
        reconstructed: ``(B, C, T, H, W)`` what the model expected (e.g. ``model.reconstruct(batch)``).
        valid: ``(B, 1, T, H, W)`` bool, or None (all valid).
        data_range: ``R`` of the SSIM constants (2 for ``[-1, 1]``).

    Returns:
        ``(B, T, H, W)`` float32 in ``[0, 2]`` (0 where the frames match and at invalid pixels).
    """
    if observed.shape != reconstructed.shape or observed.ndim != 5:
        raise ValueError(
            f"observed and reconstructed must both be (B, C, T, H, W), got {tuple(observed.shape)} and "
            f"{tuple(reconstructed.shape)}"
        )
    b, _, t, h, w = observed.shape
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"SSIM needs frames of at least {MIN_SIDE}x{MIN_SIDE} pixels, got {h}x{w}")
    x, y = observed.float(), reconstructed.float().to(observed.device)
    if valid is not None:
        keep = valid.to(x.device).expand_as(x)
        x = torch.where(keep, x, torch.zeros_like(x))
        y = torch.where(keep, y, torch.zeros_like(y))
    frames = lambda v: rearrange(v, "b c t h w -> (b t) c h w")  # noqa: E731 (SSIM is per frame)
    _, full = _ssim_fn()(
        frames(y), frames(x), gaussian_kernel=True, sigma=SSIM_SIGMA, data_range=data_range, return_full_image=True
    )
    dissim = (1.0 - reduce(full, "(b t) c h w -> b t h w", "mean", b=b, t=t)).clamp_(0.0, 2.0)
    if valid is not None:
        dissim = dissim * valid[:, 0].to(dissim.device, dissim.dtype)
    return dissim
