"""Exponential moving average of a network's weights, as a submodule so it lives in the ``state_dict``.

Diffusion models sample far better from an EMA of their weights (Ho et al. 2020, appendix B; RaMViD and
improved-diffusion sample from ``ema_0.9999_*.pt``). The shadow copy is an ordinary submodule, so it is saved
in ``model.safetensors`` with the live weights and moves with ``.to(device)``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """A frozen copy of ``model`` updated as ``shadow <- d * shadow + (1 - d) * live`` after each step.

    The effective decay ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the warm-up of
    TensorFlow's ``ExponentialMovingAverage(num_updates=...)``) lets the average follow the fast early
    changes instead of remembering the random initialisation for ~1/(1-decay) steps.

    Args:
        model: the network to track (deep-copied; the copy never requires grad and stays in eval mode).
        decay: target decay in ``[0, 1)``.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9999) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        # A buffer, not a Python int, so that a resumed run continues the warm-up where it stopped.
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True) -> "EMA":
        """Keep the shadow copy in eval mode whatever the parent's mode (dropout must not touch sampling)."""
        super().train(mode)
        self.module.eval()
        return self

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        n = int(self.num_updates)
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow weights toward ``model``'s; buffers (e.g. norm statistics) are copied."""
        d = self.current_decay()
        for shadow, live in zip(self.module.parameters(), model.parameters()):
            shadow.lerp_(live.detach().to(shadow.dtype), 1.0 - d)
        for shadow, live in zip(self.module.buffers(), model.buffers()):
            shadow.copy_(live)
        self.num_updates += 1
