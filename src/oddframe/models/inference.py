"""Exact rewrites of a trained model for detection: the same function, computed faster on a CPU.

:func:`for_inference` returns a copy of a model in eval mode with three rewrites, none of which changes what the
model computes (up to float summation order; tested for every registered model in ``tests/test_inference.py``):

- **BatchNorm folded into the convolution before it.** In eval mode a BatchNorm is a per-channel affine map with
  its running statistics, so ``bn(conv(x))`` is one convolution with scaled weights and a shifted bias (Ioffe &
  Szegedy 2015, section 3.2: at inference "the normalization ... is simply a linear transform"). On conv3d_ae's
  56 x 56 layers the separate channels-last BatchNorm cost as much as a convolution.
- **Transposed convolutions with few outputs as sub-pixel convolutions.** A transposed convolution of stride
  ``s`` is a convolution on the input grid with ``out * prod(s)`` output channels, one per output phase, followed by
  a pixel shuffle (the equivalence behind Shi et al. 2016, "Real-time single image and video super-resolution
  using an efficient sub-pixel convolutional neural network", CVPR, section 2.2). oneDNN vectorises a
  (transposed) convolution over output channels in blocks of 16 fp32 lanes (AVX-512), so conv3d_ae's last layer
  (one output channel) wasted 15 of 16 lanes: it took half of the model's time. Rewritten only below
  :data:`FEW_OUTPUTS` outputs; wider transposed convolutions are faster as they are (measured in
  docs/BENCHMARKS.md). The converse, a strided convolution of few inputs (conv3d_ae's first layer) as a stride-1
  convolution over a space-to-depth input, was 5-13 % slower on two threads, PyTorch and OpenVINO alike: not done.
- **oneDNN for every float32 CPU convolution.** PyTorch sends a batch-1 convolution with a 3 x 3 kernel and a small
  input (``N * C * D * H <= 20480``) to its reference loop instead of oneDNN, about 8x slower for conv3d_ae's
  8 x 28 x 28 layers; a live stream scores one window at a time, so those are its convolutions. When tracing for
  ONNX export the plain operator is recorded instead, so exported graphs hold standard convolutions.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Transposed convolutions with fewer output channels than this become sub-pixel convolutions (one AVX-512 vector
#: of fp32 is 16 lanes).
FEW_OUTPUTS = 16

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _onednn(x: torch.Tensor) -> bool:
    """Whether ``x`` should go straight to oneDNN: a float32 CPU tensor outside ONNX tracing."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and not torch.jit.is_tracing())


class InferenceConv(nn.Module):
    """A convolution for detection only, optionally followed by a pixel shuffle (a rewritten transposed convolution).

    Args:
        weight: ``(out * prod(shuffle), in / groups, *kernel)``.
        bias: ``(out * prod(shuffle),)`` or None.
        stride, padding, dilation, groups: as for ``nn.ConvNd`` (``padding`` symmetric, zeros).
        shuffle: per spatial axis, the factor by which the output channels are shuffled into space (all 1: none).
        pad: explicit ``(left, right)`` padding per spatial axis applied before the convolution (negative crops),
            used by the sub-pixel form; None = ``padding`` only.
        crop: output size per spatial axis after the shuffle as a function of the input size
            ``(a, b)``: ``a * n + b``; None = no crop.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
        groups: int = 1,
        shuffle: Sequence[int] | None = None,
        pad: Sequence[tuple[int, int]] | None = None,
        crop: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        super().__init__()
        self.dims = weight.dim() - 2
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups = groups
        self.shuffle = list(shuffle) if shuffle is not None else [1] * self.dims
        self.pad = [tuple(p) for p in pad] if pad is not None else None
        self.crop = [tuple(c) for c in crop] if crop is not None else None
        if self.dims == 3:
            # The layout oneDNN's 3D convolutions are fastest in (docs/BENCHMARKS.md); the values are unchanged.
            self.weight.data = self.weight.data.contiguous(memory_format=torch.channels_last_3d)

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        """``(B, C, *spatial)`` -> ``(B, out, *spatial_out)``; ``output_size`` as for a transposed convolution (its
        last axes are the spatial size to crop to)."""
        sizes = x.shape[2:]
        if self.pad is not None:
            x = F.pad(x, [p for pair in reversed(self.pad) for p in pair])  # F.pad lists the last axis first
        if _onednn(x) and self.dims in (2, 3):
            if self.dims == 3:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            y = torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride,
                                                  self.dilation, self.groups)
        else:
            y = _CONV_FN[self.dims](x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if any(s > 1 for s in self.shuffle):
            y = pixel_shuffle(y, self.shuffle)
        if output_size is not None:
            y = y[(slice(None), slice(None)) + tuple(slice(0, n) for n in list(output_size)[-self.dims:])]
        elif self.crop is not None:
            y = y[(slice(None), slice(None)) + tuple(slice(0, a * n + b) for (a, b), n in zip(self.crop, sizes))]
        return y


def pixel_shuffle(y: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """Move channel phases into space: ``(B, C * prod(f), *n)`` -> ``(B, C, *(n_i * f_i))``.

    Channel ``c * prod(f) + flat(phase)`` (phase in row-major order over the axes) lands at position
    ``n_i * f_i + phase_i`` of axis ``i``: :func:`torch.nn.functional.pixel_shuffle` for any number of axes.
    """
    b, cf = y.shape[:2]
    n = list(y.shape[2:])
    d = len(factors)
    c = cf // math.prod(factors)
    y = y.reshape(b, c, *factors, *n)
    # (B, C, f1..fd, n1..nd) -> (B, C, n1, f1, ..., nd, fd)
    order = [0, 1] + [x for i in range(d) for x in (2 + d + i, 2 + i)]
    return y.permute(order).reshape(b, c, *(ni * fi for ni, fi in zip(n, factors)))


def _taps(kernel: int, stride: int, padding: int) -> list[list[tuple[int, int]]]:
    """For each output phase ``a`` of a transposed convolution along one axis: its ``(input offset, kernel tap)``.

    A transposed convolution writes input ``i`` times tap ``k`` to output ``o = i * s - p + k``. Output
    ``o = s * q + a`` therefore reads taps ``k = (a + p) mod s + s * m`` from inputs ``i = q + offset``, with
    ``offset = (a + p - k) / s``.
    """
    out = []
    for a in range(stride):
        k0 = (a + padding) % stride
        out.append([((a + padding - k) // stride, k) for k in range(k0, kernel, stride)])
    return out


def subpixel(conv: nn.Module) -> InferenceConv | None:
    """A transposed convolution (groups 1, dilation 1) as a sub-pixel convolution; None if it is not such a one."""
    if not isinstance(conv, _TRANSPOSED) or conv.groups != 1 or any(d != 1 for d in conv.dilation):
        return None
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    w = conv.weight.detach()  # (in, out, *kernel)
    c_in, c_out = w.shape[:2]
    kernel, stride = w.shape[2:], conv.stride
    dims = len(kernel)
    taps = [_taps(k, s, p) for k, s, p in zip(kernel, stride, conv.padding)]
    lo = [min(off for phase in t for off, _ in phase) for t in taps]
    hi = [max(off for phase in t for off, _ in phase) for t in taps]
    width = [h - low + 1 for h, low in zip(hi, lo)]
    phases = math.prod(stride)
    v = w.new_zeros(c_out, *stride, c_in, *width)
    for phase in itertools.product(*(range(s) for s in stride)):
        for combo in itertools.product(*(t[a] for t, a in zip(taps, phase))):
            # Cross-correlation: output q reads input q + j + lo at weight position j, so j = offset - lo.
            j = tuple(off - low for (off, _), low in zip(combo, lo))
            k = tuple(tap for _, tap in combo)
            v[(slice(None), *phase, slice(None), *j)] = w[(slice(None), slice(None), *k)].T
    v = v.reshape(c_out * phases, c_in, *width)
    bias = None if conv.bias is None else conv.bias.detach().repeat_interleave(phases)
    # Input n gives q in [0, Q) with Q = ceil(O / s), O = (n - 1) s - 2p + K + output_padding; the conv over the
    # padded input needs Q + width - 1 positions starting at offset lo.
    pad, crop = [], []
    for k, s, p, op, low, wd in zip(kernel, stride, conv.padding, conv.output_padding, lo, width):
        # O = s * n + (K - 2p + op - s); Q = ceil(O / s) = n + ceil((K - 2p + op - s) / s). Q is computed for the
        # largest output padding (s - 1: more only appends outputs), so a call with output_size is a crop.
        extra = -(-(k - 2 * p + (s - 1) - s) // s)
        pad.append((-low, extra + wd - 1 + low))
        crop.append((s, k - 2 * p + op - s))
    if all(a == b >= 0 for a, b in pad):  # the convolution pads by itself, without a copy of the input
        return InferenceConv(v, bias, stride=[1] * dims, padding=[a for a, _ in pad], dilation=[1] * dims,
                             shuffle=list(stride), crop=crop)
    return InferenceConv(v, bias, stride=[1] * dims, padding=[0] * dims, dilation=[1] * dims,
                         shuffle=list(stride), pad=pad, crop=crop)


def fold_batch_norm(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """``bn(conv(x))`` in eval mode as one convolution: a copy of ``conv`` with scaled weights and shifted bias."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(
        bn.running_var + bn.eps)
    shift = (bn.bias.detach() if bn.affine else 0) - bn.running_mean * scale
    fused = copy.deepcopy(conv)
    w = fused.weight.detach()
    # Output channels are axis 0 of a convolution's weight and axis 1 of a transposed one's (groups 1).
    shape = [1] * w.dim()
    shape[1 if isinstance(conv, _TRANSPOSED) else 0] = -1
    fused.weight = nn.Parameter(w * scale.reshape(shape), requires_grad=False)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(shift)
    fused.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
    return fused


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(bn, _NORMS) or not bn.track_running_stats or bn.running_mean is None:
        return False
    if isinstance(conv, _CONVS):
        return conv.out_channels == bn.num_features
    return isinstance(conv, _TRANSPOSED) and conv.groups == 1 and conv.out_channels == bn.num_features


def _plain(conv: nn.Module) -> InferenceConv | None:
    """A zero-padded convolution as an :class:`InferenceConv` (oneDNN at any batch size); None otherwise."""
    if not isinstance(conv, _CONVS) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    return InferenceConv(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(),
                         stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)


def _rewrite(module: nn.Module) -> None:
    """Rewrite ``module``'s children in place (recursively)."""
    for child in module.children():
        _rewrite(child)
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if _foldable(conv, bn):
                module._modules[a] = fold_batch_norm(conv, bn)
                module._modules[b] = nn.Identity()  # keeps the indices other code may use
    for name, child in list(module._modules.items()):
        if isinstance(child, _TRANSPOSED) and child.out_channels < FEW_OUTPUTS:
            module._modules[name] = subpixel(child) or child
        elif isinstance(child, _CONVS):
            module._modules[name] = _plain(child) or child


def for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode, rewritten for fast detection (see the module docstring); ``model`` is left
    as it was (it may go on training). The copy computes the same maps and must not be trained. A model without
    convolutions is returned itself, in eval mode."""
    if not any(isinstance(m, _CONVS + _TRANSPOSED) for m in model.modules()):
        return model.eval()  # nothing to rewrite: no copy of (possibly large) fitted state
    fast = copy.deepcopy(model).eval()
    _rewrite(fast)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast
