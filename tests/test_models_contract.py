"""The contract holds for every registered model (parametrised over the registry, as timm does).

A model registered without an entry in TINY below fails ``test_every_model_has_a_tiny_config``, so every new
model is tested the day it is registered.
"""

from __future__ import annotations

import pytest
import torch

from oddframe.data.clips import Batch
from oddframe.registry import build_model, describe, list_models

#: Small, fast settings of each model for contract tests (CPU, seconds).
TINY: dict[str, dict] = {
    "conv3d_ae": {"width": 0.125},
    "convlstm_ae": {"image_size": (64, 64), "clip_length": 4},
    "st_diffusion": {
        "image_size": (16, 16), "clip_length": 4, "base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1,
        "attention_resolutions": (2,), "num_heads": 2, "diffusion_steps": 100, "sampling_steps": 4,
    },
    "mamba_diffusion": {
        "image_size": (16, 16), "clip_length": 4, "base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1,
        "attention_resolutions": (2,), "d_state": 4, "diffusion_steps": 100, "sampling_steps": 4,
    },
    "graph_oneclass": {
        "motion": "none", "widths": (4, 8), "convs_per_stage": (1, 1), "embed_dim": 8, "heads": 2, "hidden": 4,
        "out_dim": 4, "k": 3,
    },
}
# A fusion's members are run configs; at the level of one batch they share its clip length and size.
TINY["fusion"] = {
    "members": [
        {"data": {"size": [32, 32], "clip_length": 4}, "model": {"name": name, "params": TINY[name]}}
        for name in ("conv3d_ae", "graph_oneclass")
    ],
}
SHAPES = {"conv3d_ae": (2, 1, 8, 32, 32), "convlstm_ae": (2, 1, 4, 64, 64), "st_diffusion": (2, 1, 4, 16, 16),
          "mamba_diffusion": (2, 1, 4, 16, 16)}


def test_every_model_has_a_tiny_config():
    missing = set(list_models()) - set(TINY)
    assert not missing, f"add tiny settings for {sorted(missing)} to TINY"


def test_registry_errors_name_the_choices():
    from oddframe.errors import ConfigError

    with pytest.raises(ConfigError, match="registered models"):
        build_model("no_such_model")


@pytest.mark.parametrize("name", list_models())
def test_contract(name):
    torch.manual_seed(0)
    params = dict(TINY.get(name, {}))
    b, c, t, h, w = SHAPES.get(name, (2, 1, 4, 32, 32))
    params.setdefault("clip_length", t)
    params.setdefault("image_size", (h, w))
    model = build_model(name, **params)
    assert describe(name), "the model class needs a docstring whose first line describes it"
    assert model.map_power in (1, 2)
    frames = torch.rand(b, c, t, h, w) * 2 - 1
    valid = torch.ones(b, 1, t, h, w, dtype=torch.bool)
    valid[1, :, -1] = False  # a padded frame
    batch = Batch(frames, valid, ["a", "b"], torch.arange(t).expand(b, t).clone())

    model.train()
    loss = model.training_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reaches the parameters"

    model.eval()
    with torch.inference_mode():
        amap = model.anomaly_map(batch)
    assert amap.shape == (b, t, h, w)
    assert torch.isfinite(amap[valid[:, 0]]).all()
    assert (amap >= 0).all(), "maps are errors: higher = more anomalous, never negative"
