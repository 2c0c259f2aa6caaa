"""Config conflicts are found at load, before any work, and every message names the setting and where it came from."""

from __future__ import annotations

import shutil
import time

import pytest
import torch
from typer.testing import CliRunner

from faultkit import TINY
from oddframe import api, runs
from oddframe.cli import app
from oddframe.config import load_config, origin
from oddframe.errors import ConfigError
from oddframe.models.base import ReconstructionModel

runner = CliRunner()


def test_stride_longer_than_clip_stops_train_before_any_work(tiny_data, tmp_path):
    """Case 3 of issue 12: training ran to the end and only calibration failed."""
    out = tmp_path / "run"
    t0 = time.perf_counter()
    r = runner.invoke(app, ["train", "--out", str(out), *sum((["--set", s] for s in TINY), []),
                            "--set", f"data.path={tiny_data}", "--set", "score.stride=8"])
    assert r.exit_code == 2, r.output
    assert "score.stride=8 (--set score.stride=8)" in r.output and "data.clip_length=4 (--set data.clip_length=4)" in r.output
    assert not out.exists(), "nothing may be written before the config is known to be good"
    assert time.perf_counter() - t0 < 30


def test_a_conflict_from_the_file_names_the_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {clip_length: 4}\nscore: {stride: 6}\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert f"score.stride=6 ({cfg})" in str(err.value) and f"data.clip_length=4 ({cfg})" in str(err.value)


def test_override_errors_name_the_override_not_the_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {epochs: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, ["train.epochs=zero"])
    text = str(err.value)
    assert "--set train.epochs=zero" in text and str(cfg) not in text
    with pytest.raises(ConfigError, match=r"'train.lr_max' \(--set train.lr_max=1\)"):
        load_config(cfg, ["train.lr_max=1"])
    with pytest.raises(ConfigError, match=r"model\.params\.in_channels=3 \(--set .*\) contradicts data\.channels=1 \(default\)"):
        load_config(None, ["model.params.in_channels=3"])
    config = load_config(cfg, ["score.rule=l1"])
    assert (origin(config, "score.rule"), origin(config, "train.epochs"), origin(config, "train.lr")) == (
        "--set score.rule=l1", str(cfg), "default")


@pytest.mark.parametrize("overrides,names", [
    (["data.sample_interval=2", "data.sample_interval_sec=1"], ["data.sample_interval=2", "data.sample_interval_sec=1.0"]),
    (["data.start_frame=10", "data.stop_frame=5"], ["data.stop_frame=5", "data.start_frame=10"]),
    (["data.percentiles=[90, 10]"], ["data.percentiles=[90.0, 10.0]"]),
    (["render.threshold_low=0.5", "render.threshold_high=0.1"], ["threshold_low"]),
    (["score.stride=0"], ["score.stride"]),
])
def test_more_conflicts_are_refused_at_load(overrides, names):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    for name in names:
        assert name in str(err.value)


class _SquareOnly(ReconstructionModel):
    """A model whose architecture only takes square frames, and says so only when it runs."""

    def __init__(self, *, in_channels: int = 1, clip_length: int = 4, image_size=(32, 32)) -> None:
        super().__init__()
        self.in_channels, self.clip_length = in_channels, clip_length
        self.conv = torch.nn.Conv3d(in_channels, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise RuntimeError(f"frames must be square, got {tuple(x.shape[-2:])}")
        return self.conv(x)


def test_a_models_own_constraints_are_checked_before_data_is_read(monkeypatch):
    from oddframe import registry

    registry.list_models()
    monkeypatch.setitem(registry._REGISTRY, "square_only", _SquareOnly)
    config = load_config(None, ["model.name=square_only", "data.size=[32,48]", "data.clip_length=4"])
    with pytest.raises(ConfigError) as err:  # found by one blank clip through the model, not by training on data
        runs.build_checked_model(config)
    text = str(err.value)
    assert "square_only cannot take clips of shape (1, 1, 4, 32, 48) (B, C, T, H, W): frames must be square" in text
    assert "data.size=[32, 48] (--set data.size=[32,48])" in text
    assert runs.build_checked_model(load_config(None, ["model.name=square_only", "data.size=[32,32]"])).training
    # Constructor checks name the settings too: st_diffusion's U-Net halves the frame per level.
    config = load_config(None, ["model.name=st_diffusion", "data.size=[30,30]", "model.params.channel_mult=[1,2,2]"])
    with pytest.raises(ConfigError, match=r"(?s)refuses its settings: image_size \(30, 30\) must be divisible by 4.*"
                                          r"data\.size=\[30, 30\] \(--set data\.size=\[30,30\]\)"):
        runs.build_checked_model(config)


def test_detect_refuses_a_run_fed_other_input_than_it_was_trained_on(tiny_run, tiny_data, tmp_path):
    for override, expect in (("data.size=[16,16]", "data.size=[16, 16] (--set data.size=[16,16]) but the model was "
                                                    "trained at data.size=[32, 32]"),
                             ("data.channels=3", "data.channels=3 (--set data.channels=3)"),
                             ("data.clip_length=8", "data.clip_length=8 (--set data.clip_length=8)")):
        r = runner.invoke(app, ["detect", str(tiny_data), "--checkpoint", str(tiny_run), "--out", str(tmp_path / "d"),
                                "--set", override])
        assert r.exit_code == 2 and expect in r.output, r.output
    for command in (["calibrate", str(tiny_run)],
                    ["eval", "--checkpoint", str(tiny_run), "--data", str(tiny_data), "--out", str(tmp_path / "e")],
                    ["detect", str(tiny_data), "--checkpoint", str(tiny_run), "--out", str(tmp_path / "d")]):
        r = runner.invoke(app, command + ["--set", "score.stride=8"])
        assert r.exit_code == 2 and "score.stride=8 (--set score.stride=8)" in r.output, (command, r.output)
    for folder in (tmp_path / "d", tmp_path / "e"):  # nothing written (eval's lock file, hidden, at most)
        assert not folder.exists() or not [p for p in folder.iterdir() if not p.name.startswith(".")]


def test_an_edited_run_config_is_caught_by_the_weights_metadata(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    text = (run / "config.yaml").read_text().replace("- 32\n  - 32", "- 48\n  - 48")
    (run / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"model\.safetensors metadata"):
        api.load_run(run)


def test_resume_with_another_model_is_refused(tiny_run, tiny_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = api.load_config(None, TINY + [f"data.path={tiny_data}", "model.params.width=0.25"])
    with pytest.raises(ConfigError, match=r"(?s)--resume continues the run as it was configured.*model\.params=\{.width.: 0\.25\} \(--set model\.params\.width=0\.25\)"):
        api.train(config, run, resume=True, progress=False)


def test_grey_model_on_colour_input_says_it_converts(tiny_run, tmp_path):
    from helpers.media import h264_or_mpeg4, moving_square, write_video

    clip = write_video(tmp_path / "colour.mp4", moving_square(8, 32, 48), codec=h264_or_mpeg4())
    r = runner.invoke(app, ["detect", str(clip), "--checkpoint", str(tiny_run), "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert "warning: colour: colour frames are converted to grey (BT.601 luma) for a 1-channel model" in r.output
