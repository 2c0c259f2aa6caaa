"""Convolutional LSTM (Shi et al. 2015, "Convolutional LSTM Network: A Machine Learning Approach for
Precipitation Nowcasting", arXiv 1506.04214), a layer PyTorch does not ship.

A ConvLSTM is an LSTM whose input-to-state and state-to-state transitions are convolutions, so its hidden
and cell states are feature maps ``(B, hidden, H, W)`` and it models how local patterns move over time.
With ``*`` a convolution, ``∘`` the Hadamard product and ``σ`` the logistic sigmoid (Shi et al., eq. 3):

    i_t = σ(W_xi * x_t + W_hi * h_{t-1} [+ w_ci ∘ c_{t-1}] + b_i)        input gate
    f_t = σ(W_xf * x_t + W_hf * h_{t-1} [+ w_cf ∘ c_{t-1}] + b_f)        forget gate
    g_t = tanh(W_xc * x_t + W_hc * h_{t-1} + b_c)                        cell candidate
    c_t = f_t ∘ c_{t-1} + i_t ∘ g_t
    o_t = σ(W_xo * x_t + W_ho * h_{t-1} [+ w_co ∘ c_t] + b_o)            output gate
    h_t = o_t ∘ tanh(c_t)

Implementation choices (ours, stated because the paper leaves them open):

- All four gates come from **one** convolution over the channel concatenation ``[x_t, h_{t-1}]`` producing
  ``4 * hidden`` channels, split in the order ``(i, f, o, g)``. This equals the separate ``W_x* + W_h*`` terms
  and is one large convolution instead of eight small ones.
- Peephole terms (bracketed above) are **off by default**: Keras' ``ConvLSTM2D``, which the spatiotemporal
  autoencoder re-implementations use, has none. When on, the peephole weights are one scalar per hidden
  channel (``(hidden, 1, 1)``) instead of Shi et al.'s full ``(hidden, H, W)`` tensors, so the layer keeps
  working at any frame size.
- The forget-gate bias starts at ``forget_bias`` (1.0 by default, Jozefowicz et al. 2015 and Keras'
  ``unit_forget_bias``) so that early in training the cell remembers instead of forgetting.
- "Same" zero padding: odd kernel sizes only, the state keeps the input's ``H x W``.
"""

from __future__ import annotations

import torch
from torch import nn


def _check_kernel(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 1 (same padding), got {kernel_size}")


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step (Shi et al. 2015, eq. 3) with the four gates from a single convolution.

    Args:
        in_channels: channels of the input ``x_t``.
        hidden_channels: channels of the hidden and cell states.
        kernel_size: odd size of the square gate convolution.
        bias: whether the gate convolution has a bias.
        peephole: add the per-channel peephole terms ``w_c* ∘ c`` of Shi et al. (off by default).
        forget_bias: initial value of the forget-gate bias (needs ``bias=True``).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 3,
        bias: bool = True,
        peephole: bool = False,
        forget_bias: float = 1.0,
    ) -> None:
        super().__init__()
        if in_channels < 1 or hidden_channels < 1:
            raise ValueError(
                f"in_channels and hidden_channels must be >= 1, got {in_channels} and {hidden_channels}"
            )
        _check_kernel(kernel_size)
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        self.peephole = peephole
        # One convolution over [x, h] gives the pre-activations of all four gates, in the order (i, f, o, g).
        self.gates = nn.Conv2d(
            in_channels + hidden_channels, 4 * hidden_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )
        if bias:
            with torch.no_grad():
                self.gates.bias.zero_()
                self.gates.bias[hidden_channels : 2 * hidden_channels].fill_(forget_bias)
        if peephole:
            # Zero start: the cell behaves as a plain ConvLSTM until training finds the peepholes useful.
            self.w_ci = nn.Parameter(torch.zeros(hidden_channels, 1, 1))
            self.w_cf = nn.Parameter(torch.zeros(hidden_channels, 1, 1))
            self.w_co = nn.Parameter(torch.zeros(hidden_channels, 1, 1))

    def init_state(
        self, batch: int, size: tuple[int, int], *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero hidden and cell states, each ``(batch, hidden, H, W)``."""
        shape = (batch, self.hidden_channels, *size)
        zeros = torch.zeros(shape, device=device, dtype=dtype)
        return zeros, zeros.clone()

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step.

        Args:
            x: input ``(B, in_channels, H, W)``.
            state: ``(h, c)`` from the previous step, each ``(B, hidden, H, W)``; zeros if None.

        Returns:
            The new ``(h, c)``, each ``(B, hidden, H, W)``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ConvLSTMCell expects x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if state is None:
            state = self.init_state(x.shape[0], (x.shape[2], x.shape[3]), device=x.device, dtype=x.dtype)
        h, c = state
        pre = self.gates(torch.cat([x, h], dim=1))
        pre_i, pre_f, pre_o, pre_g = pre.chunk(4, dim=1)
        if self.peephole:
            pre_i = pre_i + self.w_ci * c
            pre_f = pre_f + self.w_cf * c
        i = torch.sigmoid(pre_i)
        f = torch.sigmoid(pre_f)
        g = torch.tanh(pre_g)
        c_next = f * c + i * g
        if self.peephole:
            # Shi et al. peep at the *new* cell state for the output gate.
            pre_o = pre_o + self.w_co * c_next
        o = torch.sigmoid(pre_o)
        h_next = o * torch.tanh(c_next)
        return h_next, c_next


class ConvLSTM(nn.Module):
    """A ConvLSTM layer run over a whole sequence (one :class:`ConvLSTMCell` unrolled in time).

    Args:
        in_channels: channels of each input frame.
        hidden_channels: channels of the hidden and cell states (and of the output sequence).
        kernel_size: odd size of the square gate convolution.
        bias: whether the gate convolution has a bias.
        peephole: per-channel peephole connections (off by default, see the module docstring).
        forget_bias: initial forget-gate bias.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 3,
        bias: bool = True,
        peephole: bool = False,
        forget_bias: float = 1.0,
    ) -> None:
        super().__init__()
        self.cell = ConvLSTMCell(
            in_channels=in_channels,
            hidden_channels=hidden_channels,
            kernel_size=kernel_size,
            bias=bias,
            peephole=peephole,
            forget_bias=forget_bias,
        )
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run over the time axis, first frame first.

        Args:
            x: sequence ``(B, in_channels, T, H, W)``.
            state: initial ``(h, c)``, each ``(B, hidden, H, W)``; zeros if None.

        Returns:
            ``(out, (h, c))``: the hidden state at every step ``(B, hidden, T, H, W)`` and the last state.
        """
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"ConvLSTM expects x of shape (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        if x.shape[2] == 0:
            raise ValueError("ConvLSTM got a sequence with T = 0 frames")
        h, c = self.cell(x[:, :, 0], state)
        outputs = [h]
        for t in range(1, x.shape[2]):
            h, c = self.cell(x[:, :, t], (h, c))
            outputs.append(h)
        return torch.stack(outputs, dim=2), (h, c)
