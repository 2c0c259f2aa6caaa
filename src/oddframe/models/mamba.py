"""Bidirectional Mamba blocks (Vim, Zhu et al. 2024; VideoMamba, Li et al. 2024) for the 3D U-Net denoiser.

:class:`BiMamba` is Vim's ``Mamba(bimamba_type="v2")`` mixer (hustvl/Vim ``mamba_simple.py``; VideoMamba uses the
same layer): one input projection to ``(x, z)``; a *forward* branch over the sequence and a *backward* branch over
the flipped sequence, each with its own causal depthwise ``Conv1d``, ``x_proj`` (to ``dt``, ``B``, ``C``),
``dt_proj``, log-parameterised ``A = -exp(A_log)`` and skip ``D``, each selective scan gated by ``silu(z)``; the
two outputs are summed and projected out. (Vim's ``if_devide_out`` halves the sum; a constant that ``out_proj``
absorbs.) Initialisation follows Mamba (Gu & Dao 2023, section 3.6 and its reference code): ``A_log = log(1..N)``
(S4D-real), ``D = 1``, ``dt_proj`` bias = softplus^-1 of ``dt`` drawn log-uniformly in ``[dt_min, dt_max]``.

:class:`MambaVideoBlock` is the U-Net's temporal block: the feature map ``(B, C, T, H, W)`` is flattened
*time-major* into ``L = T H W`` tokens (frames outer, pixels in raster order inside a frame, as RaMViD's attention
sees them; seed 003 section 3.2), normalised (Vim's ``Block``: LayerNorm, mixer, residual), mixed in time linear
in ``L`` and added back. Its output projection starts at zero so that the block starts as the identity, like
every residual branch of the U-Net (improved-diffusion's ``zero_module``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from oddframe.models.selective_scan import DEFAULT_CHUNK, SCAN_BACKENDS, selective_scan


class _ScanBranch(nn.Module):
    """One direction of the bidirectional layer: causal depthwise conv, projections, selective scan, gate.

    Args:
        d_inner: channels of the expanded stream.
        d_state: state size ``N`` per channel.
        d_conv: width of the causal depthwise convolution.
        dt_rank: rank of the ``dt`` projection.
        dt_min, dt_max, dt_init_floor: range of the initial step sizes (Mamba's defaults).
    """

    def __init__(
        self, *, d_inner: int, d_state: int, d_conv: int, dt_rank: int, dt_min: float, dt_max: float,
        dt_init_floor: float,
    ) -> None:
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        nn.init.uniform_(self.dt_proj.weight, -(dt_rank**-0.5), dt_rank**-0.5)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp_min(dt_init_floor)
        with torch.no_grad():  # bias = softplus^-1(dt), so that softplus(dt_proj(.) + bias) starts near dt
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real initialisation A_n = -n; A is kept as log(-A) so it stays negative (a decaying, stable state).
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))

    def forward(self, x: torch.Tensor, z: torch.Tensor, *, scan: str, chunk: int) -> torch.Tensor:
        """``x``, ``z`` ``(B, D_inner, L)`` -> gated scan output ``(B, D_inner, L)``."""
        length = x.shape[-1]
        x = F.silu(self.conv1d(x)[..., :length])  # causal: keep the first L outputs of the left-padded conv
        dt, B, C = torch.split(self.x_proj(rearrange(x, "b d l -> b l d")), [self.dt_rank, self.d_state, self.d_state], -1)
        delta = rearrange(dt @ self.dt_proj.weight.t(), "b l d -> b d l")  # bias goes in as delta_bias
        B = rearrange(B, "b l n -> b n l").contiguous()
        C = rearrange(C, "b l n -> b n l").contiguous()
        A = -torch.exp(self.A_log.float())
        return selective_scan(
            x, delta.contiguous(), A, B, C, self.D.float(), z, delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True, backend=scan, chunk=chunk,
        )


class BiMamba(nn.Module):
    """Bidirectional Mamba mixer over a token sequence ``(B, L, C) -> (B, L, C)`` (Vim's bimamba v2).

    Args:
        d_model: token channels ``C``.
        d_state: SSM state size ``N`` (Mamba/Vim: 16).
        d_conv: causal depthwise convolution width (4).
        expand: inner channels = ``expand * d_model`` (2).
        dt_rank: rank of the ``dt`` projection; None = ``ceil(d_model / 16)``.
        dt_min, dt_max, dt_init_floor: initial step-size range (Mamba's 0.001, 0.1, 1e-4).
        scan: selective-scan backend, ``"auto"`` (the fused kernel on CUDA where ``mamba_ssm`` imports, else
            pure PyTorch), ``"torch"`` or ``"fused"``.
        chunk: steps per chunk of the pure-PyTorch scan.
    """

    def __init__(
        self,
        *,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan: str = "auto",
        chunk: int = DEFAULT_CHUNK,
    ) -> None:
        super().__init__()
        if scan not in SCAN_BACKENDS:
            raise ValueError(f"unknown scan backend {scan!r}; allowed: {', '.join(SCAN_BACKENDS)}")
        if min(d_model, d_state, d_conv, expand) < 1:
            raise ValueError("d_model, d_state, d_conv and expand must be >= 1")
        d_inner = expand * d_model
        dt_rank = dt_rank or math.ceil(d_model / 16)
        self.scan, self.chunk = scan, chunk
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        branch = dict(
            d_inner=d_inner, d_state=d_state, d_conv=d_conv, dt_rank=dt_rank, dt_min=dt_min, dt_max=dt_max,
            dt_init_floor=dt_init_floor,
        )
        self.forward_branch = _ScanBranch(**branch)
        self.backward_branch = _ScanBranch(**branch)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, L, C)`` -> ``(B, L, C)``; every output token depends on every input token (both directions)."""
        x, z = rearrange(self.in_proj(tokens), "b l d -> b d l").chunk(2, dim=1)
        fwd = self.forward_branch(x, z, scan=self.scan, chunk=self.chunk)
        # The backward branch scans the flipped sequence (z flipped with it) and its output is flipped back.
        bwd = self.backward_branch(x.flip(-1), z.flip(-1), scan=self.scan, chunk=self.chunk).flip(-1)
        return self.out_proj(rearrange(fwd + bwd, "b d l -> b l d"))


class MambaVideoBlock(nn.Module):
    """Temporal block of the U-Net: ``x + BiMamba(LayerNorm(tokens))`` over time-major tokens ``(t h w)``.

    Args:
        channels: feature channels ``C`` of the ``(B, C, T, H, W)`` map.
        **mamba: :class:`BiMamba` options (``d_state``, ``d_conv``, ``expand``, ``scan``, ``chunk``).
    """

    def __init__(self, channels: int, **mamba) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.mixer = BiMamba(d_model=channels, **mamba)
        nn.init.zeros_(self.mixer.out_proj.weight)  # starts as the identity, as the U-Net's other residual branches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> ``(B, C, T, H, W)``."""
        _, _, t, h, w = x.shape
        tokens = rearrange(x, "b c t h w -> b (t h w) c")  # time-major: frames outer, raster order inside a frame
        out = self.mixer(self.norm(tokens))
        return x + rearrange(out, "b (t h w) c -> b c t h w", t=t, h=h, w=w)
