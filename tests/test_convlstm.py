"""ConvLSTM cell and layer: gates against a hand computation, causality, state, shapes, gradient flow."""

from __future__ import annotations

import math

import pytest
import torch

from oddframe.models.convlstm import ConvLSTM, ConvLSTMCell


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _set_1x1_weights(cell: ConvLSTMCell) -> None:
    # One input and one hidden channel, 1x1 kernel: weight (4, 2, 1, 1) over [x, h], gates in order (i, f, o, g).
    w = torch.tensor([[0.5, -0.3], [0.2, 0.4], [-0.6, 0.1], [0.9, -0.7]]).reshape(4, 2, 1, 1)
    b = torch.tensor([0.1, 0.8, -0.2, 0.05])
    with torch.no_grad():
        cell.gates.weight.copy_(w)
        cell.gates.bias.copy_(b)


def _hand_step(x: float, h: float, c: float) -> tuple[float, float]:
    """Shi et al. 2015 eq. 3 without peepholes, written out with the weights of ``_set_1x1_weights``."""
    i = _sigmoid(0.5 * x - 0.3 * h + 0.1)
    f = _sigmoid(0.2 * x + 0.4 * h + 0.8)
    o = _sigmoid(-0.6 * x + 0.1 * h - 0.2)
    g = math.tanh(0.9 * x - 0.7 * h + 0.05)
    c_new = f * c + i * g
    return o * math.tanh(c_new), c_new


def test_cell_matches_hand_computation_over_two_steps() -> None:
    cell = ConvLSTMCell(in_channels=1, hidden_channels=1, kernel_size=1)
    _set_1x1_weights(cell)
    xs = [0.7, -1.2]
    h, c = 0.0, 0.0
    state = None
    for x in xs:
        h, c = _hand_step(x, h, c)
        state = cell(torch.full((1, 1, 2, 3), x), state)
        # A 1x1 kernel acts on every pixel alike, so every pixel must equal the scalar computation.
        assert torch.allclose(state[0], torch.full((1, 1, 2, 3), h), atol=1e-6)
        assert torch.allclose(state[1], torch.full((1, 1, 2, 3), c), atol=1e-6)


def test_peephole_terms_match_hand_computation() -> None:
    cell = ConvLSTMCell(in_channels=1, hidden_channels=1, kernel_size=1, peephole=True)
    _set_1x1_weights(cell)
    with torch.no_grad():
        cell.w_ci.fill_(0.3)
        cell.w_cf.fill_(-0.5)
        cell.w_co.fill_(0.7)
    x, h0, c0 = 0.4, 0.2, -0.6
    i = _sigmoid(0.5 * x - 0.3 * h0 + 0.1 + 0.3 * c0)
    f = _sigmoid(0.2 * x + 0.4 * h0 + 0.8 - 0.5 * c0)
    g = math.tanh(0.9 * x - 0.7 * h0 + 0.05)
    c1 = f * c0 + i * g
    o = _sigmoid(-0.6 * x + 0.1 * h0 - 0.2 + 0.7 * c1)  # the output gate peeps at the new cell state
    h1 = o * math.tanh(c1)
    state = (torch.full((1, 1, 1, 1), h0), torch.full((1, 1, 1, 1), c0))
    h, c = cell(torch.full((1, 1, 1, 1), x), state)
    assert h.item() == pytest.approx(h1, abs=1e-6)
    assert c.item() == pytest.approx(c1, abs=1e-6)


def test_peephole_off_by_default_and_forget_bias_initialised() -> None:
    cell = ConvLSTMCell(in_channels=2, hidden_channels=3, kernel_size=3)
    assert not cell.peephole and not hasattr(cell, "w_ci")
    bias = cell.gates.bias.detach()
    assert torch.equal(bias[3:6], torch.ones(3))  # forget gate
    assert torch.equal(torch.cat([bias[:3], bias[6:]]), torch.zeros(9))


def test_layer_shapes_and_last_state() -> None:
    torch.manual_seed(0)
    layer = ConvLSTM(in_channels=3, hidden_channels=5, kernel_size=3)
    x = torch.randn(2, 3, 4, 6, 7)
    out, (h, c) = layer(x)
    assert out.shape == (2, 5, 4, 6, 7)
    assert h.shape == c.shape == (2, 5, 6, 7)
    assert torch.equal(out[:, :, -1], h)
    assert out.abs().max() < 1.0  # h = o * tanh(c) with o in (0, 1)


def test_layer_is_causal_and_carries_state() -> None:
    torch.manual_seed(0)
    layer = ConvLSTM(in_channels=2, hidden_channels=4, kernel_size=3)
    x = torch.randn(1, 2, 5, 8, 8)
    out, _ = layer(x)
    # Changing frame 3 must leave outputs 0..2 exactly as they were (no dependence on the future) ...
    x_future = x.clone()
    x_future[:, :, 3] += 2.0
    out_future, _ = layer(x_future)
    assert torch.equal(out_future[:, :, :3], out[:, :, :3])
    # ... and change output 3 (the present) and output 4 through the carried state (the past).
    assert not torch.allclose(out_future[:, :, 3], out[:, :, 3])
    assert not torch.allclose(out_future[:, :, 4], out[:, :, 4])


def test_running_in_two_halves_equals_running_at_once() -> None:
    torch.manual_seed(0)
    layer = ConvLSTM(in_channels=2, hidden_channels=3, kernel_size=3)
    x = torch.randn(2, 2, 6, 5, 5)
    full, last = layer(x)
    first, state = layer(x[:, :, :3])
    second, last2 = layer(x[:, :, 3:], state)
    assert torch.allclose(torch.cat([first, second], dim=2), full, atol=1e-6)
    assert torch.allclose(last2[1], last[1], atol=1e-6)
    # A fresh zero state gives a different second half: the state really is carried.
    fresh, _ = layer(x[:, :, 3:])
    assert not torch.allclose(fresh, second)


def test_gradient_reaches_the_first_time_step() -> None:
    torch.manual_seed(0)
    layer = ConvLSTM(in_channels=1, hidden_channels=4, kernel_size=3)
    x = torch.randn(1, 1, 8, 6, 6, requires_grad=True)
    out, _ = layer(x)
    out[:, :, -1].sum().backward()
    assert x.grad is not None
    assert x.grad[:, :, 0].abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


@pytest.mark.parametrize("kernel_size", [0, 2, 4])
def test_even_or_zero_kernel_is_rejected(kernel_size: int) -> None:
    with pytest.raises(ValueError, match="odd"):
        ConvLSTMCell(in_channels=1, hidden_channels=1, kernel_size=kernel_size)


def test_wrong_input_shape_is_rejected() -> None:
    layer = ConvLSTM(in_channels=3, hidden_channels=2, kernel_size=3)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        layer(torch.zeros(1, 2, 4, 5, 5))
    with pytest.raises(ValueError, match="T = 0"):
        layer(torch.zeros(1, 3, 0, 5, 5))
