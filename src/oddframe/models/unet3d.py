"""SpatioTemporalUNet: the 3D U-Net denoiser of the spatiotemporal DDPM (seed 000) and RaMViD.

A network only (DESIGN rule 2): it maps ``(x_t, t, cond)`` to predicted noise and knows nothing of the
diffusion process. The layout follows improved-diffusion's ``UNetModel`` with every 2D operation made 3D over
``(T, H, W)``: residual blocks (GroupNorm, SiLU, (3, 3, 3) convolutions, dropout) conditioned on a timestep
embedding, spatial-only down/up-sampling (stride ``(1, 2, 2)``; time is never downsampled, as in RaMViD's
``scale_time_dim 0``), skip connections, and a pluggable temporal-mixing block at low resolutions (temporal
self-attention here; the Mamba variant passes a factory for bidirectional Mamba blocks instead).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

#: Builds a temporal-mixing block for ``channels`` channels; the block maps ``(B, C, T, H, W)`` to the same
#: shape and includes its own residual connection.
TemporalBlockFactory = Callable[[int], nn.Module]
TEMPORAL_BLOCKS: tuple[str, ...] = ("attention", "none")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017; Ho et al. 2020).

    Args:
        t: ``(B,)`` timesteps.
        dim: embedding size.
        max_period: the longest wavelength.

    Returns:
        ``(B, dim)`` float32: ``[cos(t f_i), sin(t f_i)]`` with ``f_i = max_period ** (-i / (dim / 2))``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm (Wu & He 2018) with 32 groups as in improved-diffusion, fewer for narrow layers.

    Groups keep at least 4 channels where possible: with one channel per group the norm would erase any
    per-channel offset, and statistics over a single channel of a tiny network are noisy.
    """
    groups = 32
    while groups > 1 and (channels % groups or channels // groups < 4):
        groups //= 2
    return nn.GroupNorm(groups, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so that each residual branch starts as the identity (improved-diffusion)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock3d(nn.Module):
    """Residual block ``x + f(x, emb)`` with two (3, 3, 3) convolutions conditioned on the timestep.

    The embedding scales and shifts the second normalisation, ``norm(h) * (1 + s) + b`` (improved-diffusion's
    ``use_scale_shift_norm``, Nichol & Dhariwal 2021; FiLM): unlike adding it before a GroupNorm, the
    normalisation cannot cancel it, whatever the number of channels per group.

    Args:
        in_channels: input channels.
        out_channels: output channels (a 1x1x1 convolution matches the skip if they differ).
        emb_dim: timestep-embedding size.
        dropout: dropout before the second convolution.
    """

    def __init__(self, *, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            group_norm(in_channels), nn.SiLU(), nn.Conv3d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.out_norm = group_norm(out_channels)
        self.out_layers = nn.Sequential(
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv3d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C_in, T, H, W)``, ``emb`` ``(B, E)`` -> ``(B, C_out, T, H, W)``."""
        h = self.in_layers(x)
        scale, shift = rearrange(self.emb_layers(emb), "b (two c) -> two b c 1 1 1", two=2)
        h = self.out_norm(h) * (1 + scale.to(h.dtype)) + shift.to(h.dtype)
        return self.skip(x) + self.out_layers(h)


class TemporalAttention(nn.Module):
    """Multi-head self-attention over the ``T`` frames at each spatial position, with a residual.

    Mixing along time only keeps the cost at ``O(H W T^2)`` instead of ``O((T H W)^2)`` for full
    spatiotemporal attention; spatial context comes from the convolutions.

    Args:
        channels: feature channels (must be divisible by ``num_heads``).
        num_heads: attention heads.
    """

    def __init__(self, channels: int, *, num_heads: int = 4) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv3d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> ``(B, C, T, H, W)``."""
        b, _, t, h, w = x.shape
        qkv = self.qkv(self.norm(x))
        q, k, v = rearrange(qkv, "b (three n d) t y x -> three (b y x) n t d", three=3, n=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "(b y x) n t d -> b (n d) t y x", b=b, y=h, x=w)
        return x + self.proj(out)


def temporal_block_factory(kind: str | TemporalBlockFactory, *, num_heads: int = 4) -> TemporalBlockFactory:
    """A factory ``channels -> block`` for a named temporal-mixing block, or ``kind`` itself if callable.

    Args:
        kind: ``"attention"`` (:class:`TemporalAttention`), ``"none"`` (3D convolutions only), or a callable
            ``channels -> nn.Module`` mapping ``(B, C, T, H, W)`` to the same shape (e.g. a bidirectional
            Mamba block).
        num_heads: heads for ``"attention"``.
    """
    if callable(kind):
        return kind
    if kind == "attention":
        return partial(TemporalAttention, num_heads=num_heads)
    if kind == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown temporal block {kind!r}; allowed: {', '.join(TEMPORAL_BLOCKS)} or a callable")


class _Stage(nn.Sequential):
    """Sequential container that passes the timestep embedding to the residual blocks only."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock3d) else layer(x)
        return x


class Downsample(nn.Module):
    """Spatial-only downsampling by 2: a (3, 3, 3) convolution with stride (1, 2, 2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, stride=(1, 2, 2), padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> ``(B, C, T, H / 2, W / 2)``."""
        return self.conv(x)


class Upsample(nn.Module):
    """Spatial-only nearest-neighbour upsampling by 2 followed by a (3, 3, 3) convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> ``(B, C, T, 2 H, 2 W)``."""
        return self.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"))


class SpatioTemporalUNet(nn.Module):
    """3D U-Net predicting the noise in ``x_t`` (or ``x_0`` / ``v``) from the timestep and conditioning channels.

    Args:
        in_channels: channels ``C`` of the noisy clip.
        out_channels: predicted channels (``C`` for epsilon prediction).
        cond_channels: conditioning channels concatenated to the input (``C + 1`` for RaMViD's known frames
            and mask; 0 for none).
        base_channels: channels at full resolution.
        channel_mult: channel multiplier per level; ``len(channel_mult) - 1`` spatial downsamplings.
        num_res_blocks: residual blocks per level in the encoder (one more in the decoder).
        attention_resolutions: downsampling factors (1, 2, 4, ...) at which the temporal block is used (the
            middle block always has one, as in improved-diffusion).
        num_heads: heads of the temporal attention.
        dropout: dropout in the residual blocks.
        temporal_block: ``"attention"``, ``"none"`` or a factory ``channels -> nn.Module`` (see
            :func:`temporal_block_factory`).
        use_checkpoint: recompute encoder activations in the backward pass to save memory (seed 000).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int | None = None,
        cond_channels: int = 0,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (2, 4),
        num_heads: int = 4,
        dropout: float = 0.0,
        temporal_block: str | TemporalBlockFactory = "attention",
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if not channel_mult or min(channel_mult) < 1 or base_channels < 1 or num_res_blocks < 1:
            raise ValueError("channel_mult must be non-empty positive ints; base_channels and num_res_blocks >= 1")
        self.in_channels, self.cond_channels = in_channels, cond_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.base_channels = base_channels
        self.use_checkpoint = use_checkpoint
        self.spatial_factor = 2 ** (len(channel_mult) - 1)
        make_temporal = temporal_block_factory(temporal_block, num_heads=num_heads)
        emb_dim = 4 * base_channels
        self.time_embed = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        res = partial(ResBlock3d, emb_dim=emb_dim, dropout=dropout)

        ch, ds = base_channels, 1
        self.input_blocks = nn.ModuleList([_Stage(nn.Conv3d(in_channels + cond_channels, ch, 3, padding=1))])
        skips = [ch]
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(in_channels=ch, out_channels=base_channels * mult)]
                ch = base_channels * mult
                if ds in attention_resolutions:
                    layers.append(make_temporal(ch))
                self.input_blocks.append(_Stage(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(_Stage(Downsample(ch)))
                skips.append(ch)
                ds *= 2
        self.middle = _Stage(
            res(in_channels=ch, out_channels=ch), make_temporal(ch), res(in_channels=ch, out_channels=ch)
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(in_channels=ch + skips.pop(), out_channels=base_channels * mult)]
                ch = base_channels * mult
                if ds in attention_resolutions:
                    layers.append(make_temporal(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(_Stage(*layers))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_module(nn.Conv3d(ch, self.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise (or whatever target the diffusion process trains it on).

        Args:
            x: ``(B, C, T, H, W)`` noisy clips; ``H`` and ``W`` divisible by ``2 ** (len(channel_mult) - 1)``.
            t: ``(B,)`` timesteps of the original (training) process.
            cond: ``(B, cond_channels, T, H, W)`` conditioning, required when ``cond_channels > 0``.

        Returns:
            ``(B, out_channels, T, H, W)``.
        """
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % self.spatial_factor or x.shape[-2] % self.spatial_factor:
            raise ValueError(f"H and W must be divisible by {self.spatial_factor}, got {tuple(x.shape[-2:])}")
        if self.cond_channels:
            if cond is None or cond.shape[1] != self.cond_channels or cond.shape[2:] != x.shape[2:]:
                got = None if cond is None else tuple(cond.shape)
                want = ", ".join(map(str, x.shape[2:]))
                raise ValueError(f"cond must be (B, {self.cond_channels}, {want}), got {got}")
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        emb = self.time_embed(timestep_embedding(t, self.base_channels))
        checkpointing = self.use_checkpoint and self.training and torch.is_grad_enabled()
        h, hs = x, []
        for block in self.input_blocks:
            # Checkpoint the encoder only (seed 000): its activations are kept for the skips, so it holds the
            # most memory; non-reentrant checkpointing also restores the RNG so dropout masks match.
            h = checkpoint(block, h, emb, use_reentrant=False) if checkpointing else block(h, emb)
            hs.append(h)
        h = self.middle(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
