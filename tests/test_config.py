"""Typed config: YAML, --set overrides, and errors that name the allowed keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from oddframe.config import load_config, parse_override, save_config
from oddframe.errors import ConfigError


def test_defaults_and_overrides_are_typed():
    cfg = load_config(None, ["train.lr=1e-4", "data.size=[64, 48]", "train.epochs=3", "model.params.width=0.5"])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.data.size == (64, 48)
    assert cfg.train.epochs == 3
    assert cfg.model.params == {"width": 0.5}


def test_unknown_key_names_allowed_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epoch'.*epochs"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="allowed keys in this section: data, model, train, score, render"):
        load_config(None, ["trian.epochs=3"])


def test_unknown_model_param_names_allowed_params():
    with pytest.raises(ConfigError, match=r"no parameter\(s\) not_a_param; allowed: .*clip_length"):
        load_config(None, ["model.params.not_a_param=1"])


def test_unknown_model_lists_registered():
    with pytest.raises(ConfigError, match="conv3d_ae"):
        load_config(None, ["model.name=nope"])


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=0"])
    with pytest.raises(ConfigError, match="threshold_low"):
        load_config(None, ["render.threshold_low=0.5", "render.threshold_high=0.1"])
    with pytest.raises(ConfigError, match="must look like"):
        parse_override("train.epochs")


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=7", "score.rule=l1"])
    save_config(cfg, tmp_path / "c.yaml")
    back = load_config(tmp_path / "c.yaml")
    assert back == cfg


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_model_kwargs_take_shapes_from_data():
    cfg = load_config(None, ["data.clip_length=8", "data.size=[32,32]", "model.params.width=0.25"])
    kw = cfg.model_kwargs()
    assert kw["clip_length"] == 8 and tuple(kw["image_size"]) == (32, 32) and kw["in_channels"] == 1


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg.data.path, "benchmark configs name their data"
    from oddframe.registry import build_model

    if cfg.model.name == "fusion":  # members are trained run folders, resolved when the fusion is fitted
        assert all(isinstance(m, str) for m in cfg.model.params["members"]), cfg.model.params
        return
    build_model(cfg.model.name, **cfg.model_kwargs())  # every model param is accepted by the constructor


def test_packaged_demo_config_is_valid():
    from oddframe.demo import demo_config_path

    cfg = load_config(demo_config_path())
    assert cfg.model.name == "conv3d_ae"
