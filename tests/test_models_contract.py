"""The contract holds for every registered model (parametrised over the registry, as timm does).

A model registered without an entry in TINY below fails ``test_every_model_has_a_tiny_config``, so every new
model is tested the day it is registered.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oddframe.data.clips import Batch
from oddframe.data.loading import TransformedFrame
from oddframe.features import with_features
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
    "motion_density": {"components": 1, "min_area": 4, "bank_size": 64},
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


def tiny_model_and_batch(name: str):
    """The tiny model ``name`` (seeded) and a batch of two random clips for it, the second with a padded last
    frame, carrying the derived inputs the model asks for."""
    torch.manual_seed(0)
    params = dict(TINY.get(name, {}))
    b, c, t, h, w = SHAPES.get(name, (2, 1, 4, 32, 32))
    params.setdefault("clip_length", t)
    params.setdefault("image_size", (h, w))
    model = build_model(name, **params)
    frames = torch.rand(b, c, t, h, w) * 2 - 1
    valid = torch.ones(b, 1, t, h, w, dtype=torch.bool)
    valid[1, :, -1] = False  # a padded frame
    batch = Batch(frames, valid, ["a", "b"], torch.arange(t).expand(b, t).clone())
    batch.extras = _derived_inputs(model, batch)
    return model, batch


@pytest.mark.parametrize("name", list_models())
def test_contract(name):
    model, batch = tiny_model_and_batch(name)
    b, _, t, h, w = batch.frames.shape
    valid = batch.valid
    assert describe(name), "the model class needs a docstring whose first line describes it"
    assert model.map_power in (1, 2)

    if model.fit_before_epoch is not None:  # fitted models: one pass over normal clips first
        with torch.no_grad():
            model.fit([batch])
    if any(p.requires_grad for p in model.parameters()):
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


def _derived_inputs(model, batch: Batch) -> dict[str, torch.Tensor]:
    """The derived inputs a model asks for, computed per clip as the stream does (``(B, C_k, T, H, W)``)."""
    specs = model.derived_inputs()
    if not specs:
        return {}
    per_clip = []
    for i in range(len(batch)):
        frames = [TransformedFrame(j, None, batch.frames[i, :, j].numpy(), batch.valid[i, 0, j].numpy())
                  for j in range(batch.frames.shape[2])]
        done = list(with_features(frames, specs))
        per_clip.append({k: np.stack([f.features[k] for f in done], axis=1) for k in specs})
    return {k: torch.from_numpy(np.stack([c[k] for c in per_clip])) for k in specs}
