"""``convlstm_ae``: the spatiotemporal autoencoder of Chong & Tay 2017 (arXiv 1701.01546).

Y. S. Chong, Y. H. Tay, "Abnormal Event Detection in Videos using Spatiotemporal Autoencoder", ISNN 2017.
A spatial encoder compresses each frame, a ConvLSTM encoder-decoder learns how the compressed features evolve
over time, and a spatial decoder mirrors the encoder to reconstruct the input clip. Layer sizes as in the
paper's architecture figure (also those of its public Keras re-implementations):

====================  ==========================================  =====================
part                  layer                                       output for 227 x 227
====================  ==========================================  =====================
spatial encoder       conv 11 x 11, stride 4, 128 filters, tanh   128 x 55 x 55
                      conv 5 x 5, stride 2, 64 filters, tanh      64 x 26 x 26
temporal encoder      ConvLSTM 3 x 3, 64 filters                  64 x 26 x 26
                      ConvLSTM 3 x 3, 32 filters (bottleneck)     32 x 26 x 26
temporal decoder      ConvLSTM 3 x 3, 64 filters                  64 x 26 x 26
spatial decoder       deconv 5 x 5, stride 2, 128 filters, tanh   128 x 55 x 55
                      deconv 11 x 11, stride 4, C filters, tanh   C x 227 x 227
====================  ==========================================  =====================

Input: 10 grey frames of 227 x 227 by default; the loss is the Euclidean (squared) reconstruction error, and the
per-pixel squared error is the anomaly map. The paper's regularity score (min-max normalised frame error) is
computed from the maps in :mod:`oddframe.scoring`, not here.

Choices, stated where the paper leaves room:

- Activations: tanh after every spatial (de)convolution, the paper's choice as we read it (the full text was
  not reachable from here; re-implementations vary between tanh, ReLU + BatchNorm and a sigmoid output). The
  last one also bounds the reconstruction to ``[-1, 1]``. ConvLSTM layers have their own sigmoid/tanh gates
  (:mod:`.convlstm`), without peepholes by default (``peephole=True`` adds them).
- LayerNorm after each ConvLSTM layer is *off* by default (``layer_norm=False``): it is not in the paper,
  only in its Keras-era re-implementations. When on, it normalises over channels at every pixel and time step,
  like Keras' ``LayerNormalization()`` on a ``ConvLSTM2D`` output.
- Frame sizes: the convolutions use no padding, as the paper's 227 -> 55 -> 26 implies. For other sizes the
  transposed convolutions get the output size of their mirror (PyTorch computes the matching
  ``output_padding``), so every ``H, W`` large enough for the encoder (>= 27 with the default kernels; the
  constructor says the minimum) is reconstructed at its own size, no interpolation.
- The paper's preprocessing (subtracting a global mean frame, unit variance) belongs to the data pipeline;
  this model takes clips in ``[-1, 1]`` like every oddframe model.
- Caveat of the tanh output, seen while writing the tests: a target of exactly -1 (a black background, the
  black sky around the solar disc) is reached only by saturating the tanh, where its gradient vanishes. A tiny
  model trained on a bright blob moving over a -1 background got stuck predicting black everywhere, the blob
  included (still after 1000 Adam steps); with the background at -0.6 it learnt the blob in 250 steps.
  ``conv3d_ae`` (BatchNorm) learnt the -1 background version. Data that is mostly pure black may need a
  narrower intensity range for this model.

The three parts are separate submodules, ``encoder`` (:class:`SpatialEncoder`), ``temporal``
(:class:`TemporalAutoencoder`) and ``decoder`` (:class:`SpatialDecoder`), so that either can be swapped for a
module with the same call signature.
"""

from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange
from torch import nn

from oddframe.models.base import ReconstructionModel
from oddframe.models.convlstm import ConvLSTM
from oddframe.registry import register_model


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from an int or a pair; ValueError otherwise."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be a positive int or an (H, W) pair of positive ints, got {image_size!r}")
    return size  # type: ignore[return-value]


def _conv_out(size: int, kernel: int, stride: int) -> int:
    """Output length of an unpadded convolution."""
    return (size - kernel) // stride + 1


class SpatialEncoder(nn.Module):
    """Per-frame convolutional encoder: unpadded strided convolutions, each followed by tanh.

    Args:
        in_channels: frame channels.
        channels: filters of each convolution (paper: 128, 64).
        kernel_sizes: kernel of each convolution (paper: 11, 5).
        strides: stride of each convolution (paper: 4, 2).
    """

    def __init__(
        self, *, in_channels: int, channels: Sequence[int], kernel_sizes: Sequence[int], strides: Sequence[int]
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for ch, k, s in zip(channels, kernel_sizes, strides):
            layers += [nn.Conv2d(prev, ch, k, s), nn.Tanh()]
            prev = ch
        self.net = nn.Sequential(*layers)
        self.out_channels = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` frames -> ``(N, channels[-1], h, w)`` features."""
        return self.net(x)


class TemporalAutoencoder(nn.Module):
    """Stack of ConvLSTM layers (paper: 64, 32, 64 filters, 3 x 3), each run over the whole sequence.

    Args:
        in_channels: channels of the encoded frames.
        hidden_channels: filters of each ConvLSTM layer, in order.
        kernel_size: odd gate kernel size.
        layer_norm: LayerNorm over channels after each ConvLSTM layer (not in the paper).
        peephole: peephole connections in the ConvLSTM cells (not in Keras' ``ConvLSTM2D``).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        hidden_channels: Sequence[int],
        kernel_size: int,
        layer_norm: bool = False,
        peephole: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        self.norms = nn.ModuleList()
        prev = in_channels
        for ch in hidden_channels:
            self.layers.append(
                ConvLSTM(in_channels=prev, hidden_channels=ch, kernel_size=kernel_size, peephole=peephole)
            )
            self.norms.append(nn.LayerNorm(ch) if layer_norm else nn.Identity())
            prev = ch
        self.out_channels = prev

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, h, w)`` feature sequence -> ``(B, hidden_channels[-1], T, h, w)``."""
        for lstm, norm in zip(self.layers, self.norms):
            z, _ = lstm(z)
            if not isinstance(norm, nn.Identity):
                z = rearrange(norm(rearrange(z, "b c t h w -> b t h w c")), "b t h w c -> b c t h w")
        return z


class SpatialDecoder(nn.Module):
    """Per-frame decoder mirroring :class:`SpatialEncoder` with transposed convolutions, each followed by tanh.

    Args:
        in_channels: channels of the temporal block's output.
        channels: filters of each transposed convolution; the last is the frame channel count
            (paper: 128, C).
        kernel_sizes: kernels, in decoder order (paper: 5, 11).
        strides: strides, in decoder order (paper: 2, 4).
    """

    def __init__(
        self, *, in_channels: int, channels: Sequence[int], kernel_sizes: Sequence[int], strides: Sequence[int]
    ) -> None:
        super().__init__()
        self.deconvs = nn.ModuleList()
        prev = in_channels
        for ch, k, s in zip(channels, kernel_sizes, strides):
            self.deconvs.append(nn.ConvTranspose2d(prev, ch, k, s))
            prev = ch
        self.kernel_sizes = tuple(kernel_sizes)
        self.strides = tuple(strides)

    def forward(self, z: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """``(N, C, h, w)`` features -> ``(N, channels[-1], H, W)`` frames in ``[-1, 1]``.

        ``out_size`` is the frame size ``(H, W)``; the intermediate sizes are those of the mirrored encoder
        convolutions, so each transposed convolution gets the exact output size it must produce.
        """
        sizes = [tuple(out_size)]
        # Walk the encoder from the frame inwards: decoder layer i mirrors encoder layer n-1-i.
        for k, s in zip(reversed(self.kernel_sizes), reversed(self.strides)):
            h, w = sizes[-1]
            sizes.append((_conv_out(h, k, s), _conv_out(w, k, s)))
        targets = list(reversed(sizes[:-1]))
        for deconv, size in zip(self.deconvs, targets):
            z = torch.tanh(deconv(z, output_size=list(size)))
        return z


@register_model("convlstm_ae")
class ConvLSTMAE(ReconstructionModel):
    """Spatiotemporal autoencoder (Chong & Tay 2017): conv encoder, ConvLSTM core, deconv decoder.

    Args:
        in_channels: frame channels (1 for grey, as in the paper).
        clip_length: frames per clip (paper: 10). Any length runs; this is what the data loader produces.
        image_size: ``(H, W)`` or one int (paper: 227). Must be at least :attr:`min_size` on each side.
        encoder_channels: filters of the spatial encoder convolutions (paper: 128, 64); the decoder mirrors them.
        encoder_kernels: their kernel sizes (paper: 11, 5).
        encoder_strides: their strides (paper: 4, 2).
        lstm_channels: filters of the ConvLSTM layers (paper: 64, 32, 64).
        lstm_kernel: odd ConvLSTM kernel size (paper: 3).
        layer_norm: LayerNorm after each ConvLSTM layer (not in the paper; default off).
        peephole: ConvLSTM peephole connections (default off).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        clip_length: int = 10,
        image_size: int | Sequence[int] = (227, 227),
        encoder_channels: Sequence[int] = (128, 64),
        encoder_kernels: Sequence[int] = (11, 5),
        encoder_strides: Sequence[int] = (4, 2),
        lstm_channels: Sequence[int] = (64, 32, 64),
        lstm_kernel: int = 3,
        layer_norm: bool = False,
        peephole: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if clip_length < 1:
            raise ValueError(f"clip_length must be >= 1, got {clip_length}")
        n = len(encoder_channels)
        if n < 1 or len(encoder_kernels) != n or len(encoder_strides) != n:
            raise ValueError(
                "encoder_channels, encoder_kernels and encoder_strides must be non-empty and of equal length, got "
                f"{tuple(encoder_channels)}, {tuple(encoder_kernels)}, {tuple(encoder_strides)}"
            )
        if min(encoder_channels) < 1 or min(encoder_kernels) < 1 or min(encoder_strides) < 1:
            raise ValueError("encoder channels, kernels and strides must all be >= 1")
        if len(lstm_channels) < 1 or min(lstm_channels) < 1:
            raise ValueError(f"lstm_channels must be one or more positive ints, got {tuple(lstm_channels)}")
        self.in_channels = in_channels
        self.clip_length = clip_length
        self.image_size = _as_size(image_size)
        # Smallest frame side for which every encoder convolution still has an output of at least 1 pixel.
        size = 1
        for k, s in zip(reversed(encoder_kernels), reversed(encoder_strides)):
            size = (size - 1) * s + k
        self.min_size = size
        self._check_size(self.image_size)

        self.encoder = SpatialEncoder(
            in_channels=in_channels, channels=encoder_channels, kernel_sizes=encoder_kernels, strides=encoder_strides
        )
        self.temporal = TemporalAutoencoder(
            in_channels=self.encoder.out_channels,
            hidden_channels=lstm_channels,
            kernel_size=lstm_kernel,
            layer_norm=layer_norm,
            peephole=peephole,
        )
        # The decoder mirrors the encoder: 64 -> 128 -> C for the paper's (128, 64).
        self.decoder = SpatialDecoder(
            in_channels=self.temporal.out_channels,
            channels=[*reversed(encoder_channels[:-1]), in_channels],
            kernel_sizes=list(reversed(encoder_kernels)),
            strides=list(reversed(encoder_strides)),
        )

    def _check_size(self, size: tuple[int, int]) -> None:
        if min(size) < self.min_size:
            raise ValueError(
                f"convlstm_ae with these encoder kernels/strides needs frames of at least "
                f"{self.min_size} x {self.min_size} pixels, got {size[0]} x {size[1]}"
            )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Reconstruct clips.

        Args:
            frames: ``(B, C, T, H, W)`` in ``[-1, 1]``.

        Returns:
            The reconstruction ``(B, C, T, H, W)`` in ``[-1, 1]``.
        """
        b, _, t, h, w = frames.shape
        self._check_size((h, w))
        # The spatial encoder sees one frame at a time (the paper's time-distributed convolutions).
        z = self.encoder(rearrange(frames, "b c t h w -> (b t) c h w"))
        z = self.temporal(rearrange(z, "(b t) c h w -> b c t h w", b=b, t=t))
        y = self.decoder(rearrange(z, "b c t h w -> (b t) c h w"), (h, w))
        return rearrange(y, "(b t) c h w -> b c t h w", b=b, t=t)
