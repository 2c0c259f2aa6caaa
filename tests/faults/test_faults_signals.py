"""SIGINT, SIGTERM and SIGKILL at random points of ``train`` and ``detect``, then ``--resume``: what was done is saved,
every output is complete and consistent with the others, and the resumed result is the one an uninterrupted run
gives."""

from __future__ import annotations

import csv
import json
import random
import signal

import numpy as np
import pytest

from faultkit import TINY, lines_in, run_cli, start_cli, stop, wait_for
from oddframe import api, runs
from oddframe.render.video import count_frames

N = 200  # frames of the detection input


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("signals") / "long.npy"
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 40, (N, 32, 32), dtype=np.uint8)
    for i in range(N):
        frames[i, (i % 26):(i % 26) + 6, :] = 230
    np.save(path, frames)
    return path


@pytest.fixture(scope="module")
def reference(tiny_run, long_video, tmp_path_factory):
    """Scores of an uninterrupted detection."""
    out = tmp_path_factory.mktemp("reference") / "det"
    api.detect(tiny_run, long_video, out, progress=False)
    return _scores(out)


def _scores(out):
    rows = list(csv.DictReader((out / "scores.csv").open()))
    return np.array([[float(r["raw_score"]), float(r["score"])] for r in rows]), [int(r["frame"]) for r in rows]


def _detect_args(run, video_in, out):
    return ["detect", video_in, "--checkpoint", run, "--out", out, "--maps", "--video", out / "anomaly.mp4"]


def _consistent(out, n):
    """scores.csv, the maps and the video hold the same n frames."""
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == n
    assert np.load(out / "maps" / "long.npy").shape == (n, 32, 32)
    assert count_frames(out / "anomaly.mp4") == n


def _resume_and_compare(tiny_run, long_video, out, reference):
    r = run_cli(*_detect_args(tiny_run, long_video, out), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "continuing after frame" in r.stdout or f"scored {N} frames" in r.stdout
    _consistent(out, N)
    scores, frames = _scores(out)
    assert frames == reference[1]
    np.testing.assert_allclose(scores, reference[0], rtol=1e-4, atol=1e-7)
    assert not (out / "scores.partial.csv").exists()
    assert json.loads((out / "detect.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_detection_cleanly_and_resume_finishes_it(tiny_run, long_video, reference, tmp_path, sig):
    """Case 4 of issue 12: Ctrl-C left no scores.csv and an unplayable MP4."""
    out = tmp_path / "det"
    proc = start_cli(*_detect_args(tiny_run, long_video, out))
    wait_for(lambda: lines_in(out / "scores.partial.csv") > 40 or proc.poll() is not None, what="40 scored frames")
    code, stdout, stderr = stop(proc, sig)
    if code == 0:
        pytest.skip("the detection finished before the signal arrived (a very fast machine)")
    assert code == 128 + sig, stderr[-3000:]
    assert "stopped: detection stopped after" in stderr and "continue with --resume" in stderr
    n = len(list(csv.DictReader((out / "scores.csv").open())))
    assert 40 <= n < N
    _consistent(out, n)  # the video plays to the last frame scored, the maps hold as many frames
    assert lines_in(out / "scores.partial.csv") == n + 1
    assert json.loads((out / "detect.json").read_text())["status"] == "interrupted"
    scores, _ = _scores(out)
    np.testing.assert_allclose(scores[:, 0], reference[0][:n, 0], rtol=1e-4, atol=1e-7)  # raw scores: final
    _resume_and_compare(tiny_run, long_video, out, reference)


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_kill_9_during_detection_then_resume(tiny_run, long_video, reference, tmp_path, seed):
    out = tmp_path / "det"
    at = random.Random(seed).randint(1, N - 60)
    proc = start_cli(*_detect_args(tiny_run, long_video, out))
    wait_for(lambda: lines_in(out / "scores.partial.csv") > at or proc.poll() is not None, what=f"{at} frames")
    code, _, stderr = stop(proc, signal.SIGKILL)
    if code == 0:
        pytest.skip("the detection finished before the kill")
    assert code == -signal.SIGKILL
    assert not (out / "scores.csv").exists() and not (out / "anomaly.mp4").exists()  # no half-written final file
    _resume_and_compare(tiny_run, long_video, out, reference)


def _train_args(data, out, epochs):
    return ["train", "--out", out, *sum((["--set", s] for s in TINY), []), "--set", f"data.path={data}",
            "--set", f"train.epochs={epochs}", "--no-calibrate"]


def test_sigint_stops_training_after_a_step_and_resume_finishes_it(tiny_data, tmp_path):
    out = tmp_path / "run"
    proc = start_cli(*_train_args(tiny_data, out, 12))
    wait_for(lambda: lines_in(out / "history.csv") >= 3 or proc.poll() is not None, what="two epochs")
    code, _, stderr = stop(proc, signal.SIGINT)
    if code == 0:
        pytest.skip("training finished before the signal arrived")
    done = len(runs.read_history(out))
    assert code == 130 and f"holds {done} completed epoch(s)" in stderr and "--resume" in stderr, stderr[-3000:]
    r = run_cli("train", "--out", out, "--resume", "--no-calibrate")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"for {12 - done} epoch(s) (epochs {done + 1}-12 of 12" in r.stdout
    assert [h["epoch"] for h in runs.read_history(out)] == list(range(1, 13))
    api.load_run(out)  # the weights load and are finite


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_kill_9_during_training_then_resume(tiny_data, tmp_path, seed):
    out = tmp_path / "run"
    proc = start_cli(*_train_args(tiny_data, out, 8))
    wait_for(lambda: (out / "config.yaml").exists() or proc.poll() is not None, what="training to start")
    wait_for(lambda: lines_in(out / "history.csv") >= random.Random(seed).randint(0, 5) or proc.poll() is not None,
             what="some epochs")
    code, _, _ = stop(proc, signal.SIGKILL)
    if code == 0:
        pytest.skip("training finished before the kill")
    r = run_cli("train", "--out", out, "--resume", "--no-calibrate")
    if r.returncode == 2:  # killed before the first epoch was saved: said clearly, and a fresh start works
        assert "nothing to resume" in r.stderr, r.stderr[-3000:]
        r = run_cli(*_train_args(tiny_data, out, 8))
    assert r.returncode == 0, r.stderr[-3000:]
    assert [h["epoch"] for h in runs.read_history(out)] == list(range(1, 9))
    api.load_run(out)
