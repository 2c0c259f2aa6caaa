"""The command line: a thin layer over the library, with clear errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from oddframe.cli import app

runner = CliRunner()


def test_synth_then_inspect_reports_what_was_written(tmp_path):
    out = tmp_path / "synth"
    r = runner.invoke(app, ["synth", str(out), "--n-train", "5", "--n-test", "3", "--length", "6", "--size", "32",
                            "--anomaly", "object"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["inspect", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["layout"] == "generic"
    assert (info["n_train_videos"], info["n_train_frames"]) == (5, 30)
    assert (info["n_test_videos"], info["n_test_frames"]) == (3, 18)
    assert info["has_pixel_masks"] is True and info["n_anomalous_frames"] > 0


def test_inspect_a_missing_path_is_one_clear_line(tmp_path):
    r = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert r.exit_code == 2
    assert "error:" in r.output and "nope" in r.output and "Traceback" not in r.output


def test_models_lists_every_registered_model():
    from oddframe.registry import list_models

    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0
    for name in list_models():
        assert name in r.output


def test_unknown_config_key_names_the_allowed_ones(tmp_path):
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--set", "train.epoch=1"])
    assert r.exit_code == 2 and "'train.epoch'" in r.output
    r = runner.invoke(app, ["train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "config file not found" in r.output
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epoch: 3\n")
    r = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "'train.epoch'" in r.output and "epochs" in r.output


def test_train_detect_eval_report_commands(tmp_path):
    data = tmp_path / "data"
    assert runner.invoke(app, ["synth", str(data), "--n-train", "6", "--n-test", "2", "--size", "32"]).exit_code == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "data: {size: [32, 32], clip_length: 4}\nmodel: {name: conv3d_ae, params: {width: 0.125}}\n"
        "train: {epochs: 1, batch_size: 4}\n"
    )
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(cfg), "--out", str(run), "--set", f"data.path={data}"])
    assert r.exit_code == 0, r.output
    assert "threshold" in r.output and (run / "calibration.json").is_file()
    r = runner.invoke(app, ["detect", str(data), "--checkpoint", str(run), "--out", str(tmp_path / "det")])
    assert r.exit_code == 0, r.output
    assert "frames/s" in r.output and (tmp_path / "det" / "scores.csv").is_file()
    r = runner.invoke(app, ["eval", "--checkpoint", str(run), "--data", str(data), "--out", str(tmp_path / "ev"), "--json"])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout[r.stdout.index("{"):])
    assert metrics["n_test_frames"] == 8
    (tmp_path / "ev" / "report.html").unlink()
    r = runner.invoke(app, ["report", str(tmp_path / "ev")])
    assert r.exit_code == 0 and (tmp_path / "ev" / "report.html").is_file()
