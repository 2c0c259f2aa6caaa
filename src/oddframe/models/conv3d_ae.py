"""``conv3d_ae``: the 3D convolutional autoencoder of Yan et al. 2020, as used for solar EUV video.

Source: Yan et al. (Mengjia Yan, first author), "Detecting spatiotemporal irregularities in videos via a 3D
convolutional autoencoder", J. Vis. Commun. Image Represent., 2020, doi:10.1016/j.jvcir.2019.102747
("3D-FCAE"), in the configuration of the solar-EUV pipeline that uses it (seed 001).

What follows the sources:

- A 3D *fully convolutional* encoder-decoder (no fully connected layer), trained end to end on clips of normal
  frames to reconstruct them with a mean squared error loss (Yan et al., abstract).
- Temporal irregularities are frames with a high reconstruction error and spatiotemporal irregularities are the
  poorly reconstructed regions; hence the per-pixel squared error is the anomaly map (``map_power = 2``).
- From the solar pipeline: 13 parameterised (convolution) layers, no skip connections (a skip would let the
  decoder copy anomalies straight through), wide early layers, 16-frame clips of 112 x 112 grey frames.

What is our choice (only the paper's abstract could be consulted, not its layer table, so the exact layout is
ours):

- Layer table below: kernels 3 x 3 x 3 (the first and last 3 x 5 x 5), downsampling by strided convolutions
  instead of pooling, spatial stride 16 and temporal stride 4 in all, channel widths
  ``channels = (96, 96, 64, 32)`` from the input side to the bottleneck. "Wide early layers" is read as the widest
  layers being the first ones, narrowing to the bottleneck, as in the earlier Conv-AE of Hasan et al. 2016
  (512, 256, 128 filters). The early spatial stride is there for speed: the default model reconstructs a
  ``(1, 1, 16, 112, 112)`` clip in about 0.15 s on 2 CPU cores (1.70 M parameters), i.e. the model alone runs
  at about 100 frames/s, leaving time for decoding within the 30 frames/s target.
- BatchNorm + ReLU after every layer but the last, a tanh output so reconstructions lie in ``[-1, 1]``.
- Arbitrary sizes: the clip is padded by edge replication to a multiple of 4 frames and of 16 pixels and the
  reconstruction is cropped back, so every ``clip_length`` and ``image_size`` works.

Layers (``c1..c4 = channels * width``; output size for the default 16 x 112 x 112 input):

====  =====================  ===============  ==========  =================
 #    layer                  kernel           stride      output (T, H, W)
====  =====================  ===============  ==========  =================
 1    conv   C  -> c1        3 x 5 x 5        1, 2, 2     16 x 56 x 56
 2    conv   c1 -> c2        3 x 3 x 3        2, 2, 2      8 x 28 x 28
 3    conv   c2 -> c2        3 x 3 x 3        1            8 x 28 x 28
 4    conv   c2 -> c3        3 x 3 x 3        2, 2, 2      4 x 14 x 14
 5    conv   c3 -> c3        3 x 3 x 3        1            4 x 14 x 14
 6    conv   c3 -> c4        3 x 3 x 3        1, 2, 2      4 x  7 x  7
 7    conv   c4 -> c4        3 x 3 x 3        1            4 x  7 x  7   (bottleneck)
 8    deconv c4 -> c3        3 x 3 x 3        1, 2, 2      4 x 14 x 14
 9    conv   c3 -> c3        3 x 3 x 3        1            4 x 14 x 14
10    deconv c3 -> c2        3 x 3 x 3        2, 2, 2      8 x 28 x 28
11    conv   c2 -> c2        3 x 3 x 3        1            8 x 28 x 28
12    deconv c2 -> c1        3 x 3 x 3        2, 2, 2     16 x 56 x 56
13    deconv c1 -> C, tanh   3 x 5 x 5        1, 2, 2     16 x 112 x 112
====  =====================  ===============  ==========  =================
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oddframe.models.base import ReconstructionModel
from oddframe.registry import register_model

#: Total downsampling of the encoder along time and along each spatial axis; inputs are padded to multiples.
TIME_STRIDE = 4
SPACE_STRIDE = 16


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from an int or a pair; ValueError otherwise."""
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be a positive int or an (H, W) pair of positive ints, got {image_size!r}")
    return size  # type: ignore[return-value]


def _block(conv: nn.Module, out_channels: int, batch_norm: bool) -> list[nn.Module]:
    """A (de)convolution followed by BatchNorm (optional) and ReLU."""
    layers = [conv]
    if batch_norm:
        layers.append(nn.BatchNorm3d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return layers


@register_model("conv3d_ae")
class Conv3dAE(ReconstructionModel):
    """3D convolutional autoencoder (Yan et al. 2020): reconstructs a clip; per-pixel squared error = anomaly.

    Args:
        in_channels: channels of the frames (1 for grey).
        clip_length: frames per clip (any; padded internally to a multiple of 4).
        image_size: ``(H, W)`` of the frames, or one int for square frames (any; padded to multiples of 16).
        channels: widths ``(c1, c2, c3, c4)`` from the input side to the bottleneck, before ``width``.
        width: multiplier applied to ``channels`` (e.g. 0.25 for the tiny models of the tests).
        batch_norm: BatchNorm after every hidden layer.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        clip_length: int = 16,
        image_size: int | Sequence[int] = (112, 112),
        channels: Sequence[int] = (96, 96, 64, 32),
        width: float = 1.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if clip_length < 1:
            raise ValueError(f"clip_length must be >= 1, got {clip_length}")
        if len(channels) != 4 or min(channels) < 1:
            raise ValueError(f"channels must be 4 positive ints (c1, c2, c3, c4), got {tuple(channels)}")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.in_channels = in_channels
        self.clip_length = clip_length
        self.image_size = _as_size(image_size)
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in channels)
        self.channels = (c1, c2, c3, c4)
        bn = batch_norm
        # A BatchNorm right after a convolution makes its bias redundant.
        self.encoder = nn.Sequential(
            *_block(nn.Conv3d(in_channels, c1, (3, 5, 5), (1, 2, 2), (1, 2, 2), bias=not bn), c1, bn),
            *_block(nn.Conv3d(c1, c2, 3, 2, 1, bias=not bn), c2, bn),
            *_block(nn.Conv3d(c2, c2, 3, 1, 1, bias=not bn), c2, bn),
            *_block(nn.Conv3d(c2, c3, 3, 2, 1, bias=not bn), c3, bn),
            *_block(nn.Conv3d(c3, c3, 3, 1, 1, bias=not bn), c3, bn),
            *_block(nn.Conv3d(c3, c4, 3, (1, 2, 2), 1, bias=not bn), c4, bn),
            *_block(nn.Conv3d(c4, c4, 3, 1, 1, bias=not bn), c4, bn),
        )
        # output_padding makes each transposed convolution exactly undo its mirror's stride (2n - 1 + 1 = 2n).
        self.decoder = nn.Sequential(
            *_block(nn.ConvTranspose3d(c4, c3, 3, (1, 2, 2), 1, (0, 1, 1), bias=not bn), c3, bn),
            *_block(nn.Conv3d(c3, c3, 3, 1, 1, bias=not bn), c3, bn),
            *_block(nn.ConvTranspose3d(c3, c2, 3, 2, 1, 1, bias=not bn), c2, bn),
            *_block(nn.Conv3d(c2, c2, 3, 1, 1, bias=not bn), c2, bn),
            *_block(nn.ConvTranspose3d(c2, c1, 3, 2, 1, 1, bias=not bn), c1, bn),
            nn.ConvTranspose3d(c1, in_channels, (3, 5, 5), (1, 2, 2), (1, 2, 2), (0, 1, 1)),
            nn.Tanh(),
        )
        # Channels-last weights (NDHWC): oneDNN's 3D convolutions run 1.4x faster forward and 1.3x in training
        # this way on CPU (docs/BENCHMARKS.md, detection speed); the values are the same, only the layout changes.
        self.to(memory_format=torch.channels_last_3d)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Reconstruct clips.

        Args:
            frames: ``(B, C, T, H, W)`` in ``[-1, 1]``, any ``T``, ``H``, ``W``.

        Returns:
            The reconstruction, ``(B, C, T, H, W)`` in ``[-1, 1]``.
        """
        _, _, t, h, w = frames.shape
        # Edge replication rather than zeros: a constant border would be an edge the model must reconstruct.
        pad = (0, -w % SPACE_STRIDE, 0, -h % SPACE_STRIDE, 0, -t % TIME_STRIDE)
        x = F.pad(frames, pad, mode="replicate") if any(pad) else frames
        # The input in the weights' channels-last layout, or oneDNN falls back to its slow path (not when traced for
        # export: ONNX has no memory formats, its runtimes choose their own layouts).
        if x.is_cpu and not torch.jit.is_tracing():
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.decoder(self.encoder(x))[:, :, :t, :h, :w]
