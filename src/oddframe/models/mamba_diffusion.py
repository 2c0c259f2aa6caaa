"""``mamba_diffusion``: RaMViD-style video infilling whose 3D U-Net mixes time with bidirectional Mamba blocks.

Seed 003 (after RaMViD, Höppe et al. 2022): the same Gaussian process, masking (selective anchors on 30-frame
windows, the detector's stride-15 windows and max over the two reconstructions of each frame) and scoring as
``st_diffusion``; only the denoiser differs. Where RaMViD puts attention (the low-resolution levels named by
``attention_resolutions`` and the middle block) the U-Net gets a :class:`~oddframe.models.mamba.MambaVideoBlock`,
which scans the whole window flattened time-major (``L = T H W`` tokens) in both directions, in time linear in
``L`` instead of attention's quadratic cost (seed 003 section 3.2, appendix 9).

The class is :class:`~oddframe.models.diffusion_infill.SpatioTemporalDiffusion` with a Mamba block factory: every
diffusion, masking and scoring setting is the parent's (its signature, shown by ``oddframe models``, is the
parent's without ``temporal_block`` and ``num_heads``, plus the Mamba settings).
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

from oddframe.models.diffusion_infill import SpatioTemporalDiffusion
from oddframe.models.mamba import MambaVideoBlock
from oddframe.models.selective_scan import DEFAULT_CHUNK
from oddframe.registry import register_model

#: Parent parameters that this model sets itself (the temporal block is Mamba; attention heads do not apply).
_FIXED = ("temporal_block", "num_heads")


@register_model("mamba_diffusion")
class MambaVideoDiffusion(SpatioTemporalDiffusion):
    """RaMViD video diffusion with bidirectional Mamba blocks in place of attention; anomaly = |observed - infilled|.

    Args:
        d_state: SSM state size ``N`` per channel (Mamba/Vim: 16).
        d_conv: width of each direction's causal depthwise convolution (4).
        expand: inner channels of the Mamba block = ``expand`` x the U-Net channels (2).
        scan: selective-scan backend: ``"auto"`` (``mamba_ssm``'s fused CUDA kernel where it imports and the
            model is on CUDA, else the pure-PyTorch scan), ``"torch"`` or ``"fused"``.
        scan_chunk: steps per chunk of the pure-PyTorch scan.
        **kwargs: every :class:`SpatioTemporalDiffusion` argument except ``temporal_block`` and ``num_heads``
            (``attention_resolutions`` says where the Mamba blocks go).
    """

    def __init__(
        self,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        scan: str = "auto",
        scan_chunk: int = DEFAULT_CHUNK,
        **kwargs: Any,
    ) -> None:
        fixed = sorted(set(kwargs) & set(_FIXED))
        if fixed:
            raise ValueError(f"mamba_diffusion sets {', '.join(fixed)} itself (its temporal block is Mamba)")
        block = partial(MambaVideoBlock, d_state=d_state, d_conv=d_conv, expand=expand, scan=scan, chunk=scan_chunk)
        super().__init__(temporal_block=block, **kwargs)


def _signature() -> inspect.Signature:
    """The real keyword-only signature (Mamba options + the parent's), so the registry checks config keys against it."""
    own = [p for p in inspect.signature(MambaVideoDiffusion.__init__).parameters.values() if p.kind != p.VAR_KEYWORD]
    parent = inspect.signature(SpatioTemporalDiffusion.__init__).parameters.values()
    inherited = [p for p in parent if p.kind == p.KEYWORD_ONLY and p.name not in _FIXED]
    return inspect.Signature(own + inherited)


MambaVideoDiffusion.__init__.__signature__ = _signature()  # type: ignore[attr-defined]
