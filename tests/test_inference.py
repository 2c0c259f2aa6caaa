"""The rewrites of models.inference compute the same function: folded BatchNorm, sub-pixel transposed convolutions,
oneDNN convolutions; every registered model's map is unchanged, and the trained model is left as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oddframe.models.inference import InferenceConv, fold_batch_norm, for_inference, pixel_shuffle, subpixel
from oddframe.registry import build_model, list_models

from test_models_contract import tiny_model_and_batch

_TRANSPOSED = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _randomise_norms(model: nn.Module) -> None:
    """Running statistics and affine parameters far from the identity, so folding them is exercised."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


def _rewritten(conv: nn.Module, rewrite, size: tuple[int, ...]):
    """``rewrite(conv)`` checked against ``conv`` on a random input of spatial ``size``; returns both, the input and
    the reference output."""
    torch.manual_seed(0)
    conv = conv.eval()
    x = torch.randn(2, conv.in_channels, *size)
    fast = rewrite(conv)
    assert isinstance(fast, InferenceConv)
    with torch.inference_mode():
        expected, got = conv(x), fast(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    return conv, fast, x, expected


@pytest.mark.parametrize("dims,kernel,stride,padding,output_padding,size", [
    (3, (3, 5, 5), (1, 2, 2), (1, 2, 2), (0, 1, 1), (5, 7, 6)),  # conv3d_ae's last layer
    (3, 3, 2, 1, 1, (3, 4, 5)),  # its middle ones
    (2, 4, 2, 1, 0, (5, 6)),
    (2, 3, 3, 0, 2, (4, 3)),
    (2, 1, 2, 0, 1, (3, 3)),
    (1, 5, 3, 2, 1, (7,)),
    (1, 2, 1, 0, 0, (4,)),
])
def test_subpixel_equals_the_transposed_convolution(dims, kernel, stride, padding, output_padding, size):
    conv, fast, x, expected = _rewritten(_TRANSPOSED[dims](5, 3, kernel, stride, padding, output_padding), subpixel,
                                         size)
    with torch.inference_mode():
        # output_size picks another output padding (0 .. stride - 1), as nn.ConvTranspose's forward allows
        larger = [o + s - 1 - p for o, s, p in zip(expected.shape[2:], conv.stride, conv.output_padding)]
        torch.testing.assert_close(fast(x, output_size=larger), conv(x, output_size=larger), atol=1e-5, rtol=1e-5)


def test_subpixel_refuses_what_it_cannot_express():
    assert subpixel(nn.ConvTranspose2d(4, 2, 3, 2, groups=2)) is None
    assert subpixel(nn.ConvTranspose2d(4, 2, 3, 2, dilation=2)) is None
    assert subpixel(nn.Conv2d(4, 2, 3)) is None


def test_pixel_shuffle_matches_torch_and_places_each_phase():
    y = torch.randn(2, 3 * 4, 4, 5)
    torch.testing.assert_close(pixel_shuffle(y, (2, 2)), F.pixel_shuffle(y, 2))
    y = torch.randn(1, 2 * 6, 3, 4, 5)  # 3D, a factor per axis: (1, 2, 3)
    out = pixel_shuffle(y, (1, 2, 3))
    assert out.shape == (1, 2, 3, 8, 15)
    # channel c * 6 + (a * 3 + b) lands at (t, 2 h + a, 3 w + b)
    torch.testing.assert_close(out[0, 1, 2, 2 * 3 + 1, 3 * 4 + 2], y[0, 1 * 6 + 1 * 3 + 2, 2, 3, 4])


@pytest.mark.parametrize("conv", [nn.Conv3d(3, 4, 3, padding=1, bias=False), nn.Conv2d(3, 4, 3, 2, bias=True),
                                  nn.ConvTranspose3d(3, 4, 3, 2, 1, 1, bias=False),
                                  nn.ConvTranspose2d(3, 4, 3, 2, bias=True)])
def test_batch_norm_folds_into_the_convolution_before_it(conv):
    torch.manual_seed(0)
    dims = conv.weight.dim() - 2
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(4)
    _randomise_norms(bn)
    seq = nn.Sequential(conv, bn).eval()
    x = torch.randn(2, 3, *([6] * dims))
    with torch.inference_mode():
        torch.testing.assert_close(fold_batch_norm(conv, bn)(x), seq(x), atol=1e-5, rtol=1e-5)


#: Models with a discrete step on their features (graph_oneclass's top-k neighbours, also inside fusion): float32
#: rounding, which differs between two exact computations (and between CPUs), can swap two nearly equal
#: neighbours and change a map by far more than the rounding (0.37 of 5.6 on an AMD EPYC), so they are compared
#: in float64, where the rewrite's algebra is checked to 1e-15.
DISCRETE = {"graph_oneclass", "fusion"}


@pytest.mark.parametrize("name", list_models())
def test_every_model_maps_the_same_after_the_rewrite(name):
    model, batch = tiny_model_and_batch(name)
    if name in DISCRETE:
        model = model.double()
        batch.frames = batch.frames.double()
        batch.extras = {k: v.double() if v.is_floating_point() else v for k, v in batch.extras.items()}
    valid = batch.valid
    _randomise_norms(model)
    if model.fit_before_epoch is not None:
        with torch.no_grad():
            model.fit([batch])
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p.requires_grad for p in model.parameters()]
    fast = for_inference(model)
    if not any(isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)) for m in model.modules()):
        assert fast is model  # nothing to rewrite: no copy
        return
    assert fast is not model
    maps = []
    for m in (model, fast):
        torch.manual_seed(0)  # samplers draw noise: the same draws for both
        with torch.inference_mode():
            maps.append(m.anomaly_map(batch))
    scale = maps[0][valid[:, 0]].abs().max().item()
    torch.testing.assert_close(maps[1], maps[0], atol=1e-5 * max(scale, 1.0), rtol=1e-4)
    # The trained model is untouched: same state, same layers, still trainable.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == trainable
    assert not any(p.requires_grad for p in fast.parameters())


def test_conv3d_ae_rewrite_at_batch_one_and_odd_sizes():
    """conv3d_ae pads odd inputs by itself; the rewritten layers must follow at batch 1 (a live stream's windows)."""
    torch.manual_seed(0)
    model = build_model("conv3d_ae", clip_length=7, image_size=(29, 35), width=0.25)
    _randomise_norms(model)
    model.eval()
    fast = for_inference(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fast.modules())
    x = torch.rand(1, 1, 7, 29, 35) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-4)
