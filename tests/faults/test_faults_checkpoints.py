"""Broken, unsafe or finished runs: refused by name in one line, and resuming says what it does."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from faultkit import TINY
from oddframe import api, runs
from oddframe.cli import app
from oddframe.data.sources import open_source
from oddframe.errors import CheckpointError, SourceError

runner = CliRunner()


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(".*.lock"))
    return run


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_with_non_finite_values_are_refused_by_name(run_copy, value):
    path = run_copy / "model.safetensors"
    tensors = load_file(str(path))
    name = sorted(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)[0]
    tensors[name].view(-1)[1] = value
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as err:
        api.load_run(run_copy)
    assert f"{path}: refused" in str(err.value) and f"{name} (1 of" in str(err.value)


def test_cut_short_weights_are_named(run_copy):
    path = run_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:300])
    r = runner.invoke(app, ["detect", str(run_copy), "--checkpoint", str(run_copy), "--out", str(run_copy / "d")])
    assert r.exit_code == 2 and f"{path}: cannot read weights" in r.output and "Traceback" not in r.output


class Payload:
    """Unpickling this would run code: torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("where", ["source", "state"])
def test_a_pickled_file_is_refused_in_one_line(run_copy, tmp_path, where):
    if where == "source":
        path = tmp_path / "frames.pt"
        torch.save({"frames": torch.zeros(2, 4, 4), "x": Payload()}, path)
        with pytest.raises(SourceError) as err:
            open_source(path)
    else:
        path = run_copy / "state.pt"
        with path.open("wb") as f:
            pickle.dump(Payload(), f)
        config = api.load_config(run_copy / "config.yaml")
        with pytest.raises(CheckpointError) as err:
            api.train(config, run_copy, resume=True, progress=False)
    text = str(err.value)
    assert "\n" not in text and len(text) < 400, text
    assert str(path) in text and "pickled Python objects" in text and "never unpickles" in text


def test_resume_of_a_finished_run_says_so_and_changes_nothing(run_copy):
    before = (run_copy / "model.safetensors").read_bytes()
    r = runner.invoke(app, ["train", "--out", str(run_copy), "--resume"])
    assert r.exit_code == 0, r.output
    assert "already finished all 1 epochs" in r.output and "nothing to resume" in r.output
    assert (run_copy / "model.safetensors").read_bytes() == before


def test_resume_summary_counts_the_epochs_actually_run(tiny_data, tmp_path):
    out = tmp_path / "run"
    config = api.load_config(None, TINY + [f"data.path={tiny_data}", "train.epochs=3"])

    def stop_after_first(epoch, loss):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.train(config, out, progress=False, on_epoch_end=stop_after_first)
    r = runner.invoke(app, ["train", "--out", str(out), "--resume", "--no-calibrate"])
    assert r.exit_code == 0, r.output
    assert "for 2 epoch(s) (epochs 2-3 of 3, resumed after epoch 1)" in r.output
    assert [h["epoch"] for h in runs.read_history(out)] == [1, 2, 3]


def test_resume_with_nothing_saved_is_a_clear_error(tmp_path):
    (tmp_path / "run").mkdir()
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--resume"])
    assert r.exit_code == 2 and "nothing to resume" in r.output and "without --resume" in r.output


def test_report_on_a_folder_without_evaluation_refuses(tmp_path):
    (tmp_path / "scores.csv").write_text("video,frame,score\n01,0,0.5\n")
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "no evaluation here (metrics.json is missing)" in r.output
    assert not (tmp_path / "report.html").exists()


def test_help_shows_the_sdo_extra_literally():
    for args in (["--help"], ["fetch-sdo", "--help"]):
        r = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert r.exit_code == 0 and "oddframe[sdo]" in r.output, r.output


def test_a_run_config_that_is_not_yaml_is_named(run_copy):
    (run_copy / "config.yaml").write_text("data: [unclosed")
    r = runner.invoke(app, ["calibrate", str(run_copy)])
    assert r.exit_code == 2 and f"{run_copy / 'config.yaml'}: not valid YAML" in r.output
