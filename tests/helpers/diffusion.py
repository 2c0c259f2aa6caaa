"""Detection checks for the diffusion models: train on normal circle clips, score clips with a zeroed frame.

(tests/test_st_diffusion.py has its own copies of these helpers; it can use this module once both branches meet.)
"""

from __future__ import annotations

import numpy as np
import torch

from oddframe.data.clips import Batch
from oddframe.registry import build_model


def circle_clips(n: int, size: int, seed: int) -> torch.Tensor:
    """``(n, 1, 4, size, size)`` normal sequences of seed 000 (a bright circle drifting smoothly) in ``[-1, 1]``."""
    from oddframe.data.synthetic import normal_sequence

    rng = np.random.default_rng(seed)
    arr = np.stack([normal_sequence(rng, length=4, size=size) for _ in range(n)]).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr)[:, None]


def train_on_circles(name: str, *, steps: int, batch_size: int, lr: float, **params: object) -> torch.nn.Module:
    """Model ``name`` trained on normal circle clips with a plain Adam loop (and the EMA hook), in eval mode."""
    torch.manual_seed(0)
    model = build_model(name, clip_length=4, **params)
    train = circle_clips(256, model.image_size[0], seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model.training_loss(Batch.from_frames(train[torch.randint(0, len(train), (batch_size,))]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.on_train_step_end()
    return model.eval()


def zeroed_frame_scores(model: torch.nn.Module, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame scores (mean of the map) ``(n_test, 4)`` of normal test clips and of the same clips with frame 2
    zeroed (pixel value 0, i.e. -1 in ``[-1, 1]``: the circle vanishes, as in seed 000)."""
    test = circle_clips(n_test, model.image_size[0], seed=1)
    corrupted = test.clone()
    corrupted[:, :, 2] = -1.0
    scores = model.anomaly_map(Batch.from_frames(torch.cat([test, corrupted]))).mean(dim=(2, 3))
    return scores[:n_test], scores[n_test:]


def negatives(normal: torch.Tensor, zeroed: torch.Tensor) -> torch.Tensor:
    """Every normal frame: all frames of the normal clips and the untouched frames (0, 1, 3) of the corrupted ones."""
    return torch.cat([normal.flatten(), zeroed[:, [0, 1, 3]].flatten()])


def assert_detects(normal: torch.Tensor, zeroed: torch.Tensor, *, auroc_min: float, ratio_min: float) -> None:
    """Frame-level AUROC of the zeroed frames against the normal frames, and a gap between their means."""
    auroc = (zeroed[:, None] > normal[None, :]).float().mean().item()
    detail = f"normal {[round(v, 3) for v in normal.tolist()]}, zeroed {[round(v, 3) for v in zeroed.tolist()]}"
    assert auroc >= auroc_min, f"AUROC {auroc:.2f}; {detail}"
    assert zeroed.mean() > ratio_min * normal.mean(), detail
