"""Two writers never share an output: the second refuses with a message naming the output and the holder, and the
first one's results are complete and consistent. A folder holding results is replaced only with --overwrite."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from faultkit import TINY, lines_in, start_cli, wait_for
from oddframe import api
from oddframe.cli import app
from oddframe.errors import OutputError
from oddframe.files import output_lock
from oddframe.render.video import count_frames

runner = CliRunner()


def long_input(path, n: int = 200):
    """``(n, 32, 32)`` uint8 frames of a bar moving across noise, as .npy."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 40, (n, 32, 32), dtype=np.uint8)
    for i in range(n):
        frames[i, :, (i % 28):(i % 28) + 4] = 220
    np.save(path, frames)
    return path


def test_two_detections_into_one_folder_and_one_video(tiny_run, tmp_path):
    """Case 1 of issue 12: both runs said they wrote scores.csv; it held one of them and the shared MP4 was cut."""
    full = long_input(tmp_path / "full.npy")
    cut = tmp_path / "cut.npy"
    np.save(cut, np.load(full)[:80])
    out, video = tmp_path / "det", tmp_path / "det" / "anomaly.mp4"
    first = start_cli("detect", full, "--checkpoint", tiny_run, "--out", out, "--video", video)
    try:
        wait_for(lambda: lines_in(out / "scores.partial.csv") > 5 or first.poll() is not None, what="the first run")
        r = runner.invoke(app, ["detect", str(cut), "--checkpoint", str(tiny_run), "--out", str(out),
                                "--video", str(video)])
        assert r.exit_code == 2
        assert (f"{out} is being written by another process (task oddframe detect, pid {first.pid}" in r.output
                or "already holds a detection" in r.output), r.output  # the latter if the first one just finished
        other = runner.invoke(app, ["detect", str(cut), "--checkpoint", str(tiny_run), "--out", str(tmp_path / "o2"),
                                    "--video", str(video)])
        assert other.exit_code == 2 and str(video) in other.output, other.output
        _, err = first.communicate(timeout=240)
    finally:
        first.kill()
    assert first.returncode == 0, err[-3000:]
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 200 and count_frames(video) == 200
    assert not (out / "scores.partial.csv").exists() and not list(out.glob("*.partial*"))


def test_a_second_detection_needs_overwrite(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "d"
    assert runner.invoke(app, ["detect", str(tiny_data), "--checkpoint", str(tiny_run), "--out", str(out)]).exit_code == 0
    before = (out / "scores.csv").read_bytes()
    r = runner.invoke(app, ["detect", str(tiny_data / "testing" / "frames" / "01"), "--checkpoint", str(tiny_run),
                            "--out", str(out)])
    assert r.exit_code == 2 and "already holds a detection" in r.output and "--overwrite" in r.output
    assert (out / "scores.csv").read_bytes() == before
    r = runner.invoke(app, ["detect", str(tiny_data / "testing" / "frames" / "01"), "--checkpoint", str(tiny_run),
                            "--out", str(out), "--overwrite"])
    assert r.exit_code == 0 and len(list(csv.DictReader((out / "scores.csv").open()))) == 8


def test_train_calibrate_and_eval_refuse_a_folder_in_use(tiny_run, tiny_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(".*.lock"))
    with output_lock(run, "oddframe train"):  # as if another process were training into it
        for command in (["train", "--out", str(run), "--resume"], ["calibrate", str(run)]):
            r = runner.invoke(app, command)
            assert r.exit_code == 2 and f"{run} is being written by another process (task oddframe train" in r.output
        config = api.load_config(None, TINY + [f"data.path={tiny_data}"])
        with pytest.raises(OutputError, match="being written by another process"):
            api.train(config, tmp_path / "run", progress=False)
    ev = tmp_path / "eval"
    with output_lock(ev, "oddframe eval"):
        r = runner.invoke(app, ["eval", "--checkpoint", str(run), "--data", str(tiny_data), "--out", str(ev)])
        assert r.exit_code == 2 and "being written by another process (task oddframe eval" in r.output


def test_an_evaluation_is_replaced_only_with_overwrite(tiny_run, tiny_data, tmp_path):
    ev = tmp_path / "eval"
    args = ["eval", "--checkpoint", str(tiny_run), "--data", str(tiny_data), "--out", str(ev)]
    assert runner.invoke(app, args).exit_code == 0
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "already holds the results of an earlier oddframe eval" in r.output
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0


def test_two_trainings_into_one_run(tiny_data, tmp_path):
    out = tmp_path / "run"
    first = start_cli("train", "--out", out, *sum((["--set", s] for s in TINY), []), "--set", f"data.path={tiny_data}",
                      "--set", "train.epochs=200", "--no-calibrate")
    try:
        wait_for(lambda: lines_in(out / "history.csv") >= 2 or first.poll() is not None, what="the first training")
        assert first.poll() is None, first.communicate()[1][-2000:]
        r = runner.invoke(app, ["train", "--out", str(out), *sum((["--set", s] for s in TINY), []),
                                "--set", f"data.path={tiny_data}"])
        assert r.exit_code == 2 and f"pid {first.pid}" in r.output and "being written by another process" in r.output
    finally:
        first.kill()
        first.communicate()
