"""Many inputs in one detect: expansion, parallel workers and a local Dask cluster give the sequential scores, a
broken file is reported while the rest are scored, and a killed run resumes without redoing finished videos."""

from __future__ import annotations

import csv
import json
import signal
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from faults.faultkit import TINY, lines_in, run_cli, start_cli, stop, wait_for
from oddframe import api
from oddframe.cli import app
from oddframe.data.synthetic import write_synthetic_dataset
from oddframe.errors import ConfigError, SourceError
from oddframe.pipeline.archive import expand_inputs, is_many, job_names


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    write_synthetic_dataset(root / "data", n_train=6, n_test=2, length=8, size=32, anomaly="object", seed=3)
    api.train(api.load_config(None, TINY + [f"data.path={root / 'data'}"]), root / "run", progress=False)
    api.calibrate(root / "run", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Four short clips (a bright bar moving down; the third has a square that appears at frame 12) and a broken
    file."""
    folder = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for k in range(4):
        frames = rng.integers(0, 40, (24, 32, 32), dtype=np.uint8)
        for i in range(24):
            frames[i, (i + k) % 26:(i + k) % 26 + 6, :] = 200
        if k == 2:
            frames[12:, 10:20, 10:20] = 255
        np.save(folder / f"cam{k}.npy", frames)
    (folder / "broken.avi").write_bytes(b"\x00not a video" * 100)
    return folder


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def _same_scores(a, b):
    """Two scores.csv: the same rows and columns, scores equal up to float summation order (other processes)."""
    ra, rb = _rows(a), _rows(b)
    assert [(r["job"], r["video"], r["frame"], r["flagged"]) for r in ra] == \
        [(r["job"], r["video"], r["frame"], r["flagged"]) for r in rb]
    for col in ("score", "raw_score"):
        np.testing.assert_allclose([float(r[col]) for r in ra], [float(r[col]) for r in rb], rtol=1e-6, atol=1e-9)


def test_inputs_expand_from_folders_globs_and_lists(videos, tmp_path):
    good = [videos / f"cam{k}.npy" for k in range(4)]
    assert expand_inputs([videos]) == sorted(good + [videos / "broken.avi"])
    assert expand_inputs([str(videos / "cam*.npy")]) == good
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# cameras\n{videos / 'cam1.npy'}\n\n{videos / 'cam0.npy'}\n{videos / 'cam1.npy'}\n")
    assert expand_inputs([listing, videos / "cam3.npy"]) == [good[1], good[0], good[3]]
    assert is_many([videos]) and is_many([listing]) and is_many([str(videos / "*.npy")])
    assert not is_many([good[0]]) and not is_many([str(videos / "cam0.npy")])
    with pytest.raises(SourceError, match="matches no file"):
        expand_inputs([str(videos / "*.mp4")])
    with pytest.raises(SourceError, match="no such file"):
        expand_inputs([videos / "gone.npy"])
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    same = [tmp_path / "a" / "x.npy", tmp_path / "b" / "x.npy"]
    assert job_names(same) == ["a_x", "b_x"] and job_names(good[:2]) == ["cam0", "cam1"]


def test_parallel_workers_give_the_sequential_scores_and_a_broken_file_is_reported(run, videos, tmp_path):
    seq = api.detect_many(run, [videos], tmp_path / "seq", progress=False)
    assert [r["status"] for r in seq.rows] == ["error", "done", "done", "done", "done"]  # broken.avi sorts first
    assert "broken.avi" in seq.errors[0]["input"] and seq.errors[0]["error"]
    assert seq.frames == 4 * 24
    par = api.detect_many(run, [videos], tmp_path / "par", workers=2, threads=1, progress=False)
    _same_scores(tmp_path / "par" / "scores.csv", tmp_path / "seq" / "scores.csv")
    assert {r["status"] for r in par.rows} == {"error", "done"}
    assert all(r["loads"] == 1 for r in par.rows if r["status"] == "done")  # the run loaded once per worker process
    rows = _rows(tmp_path / "par" / "scores.csv")
    raw = {j: np.array([float(r["raw_score"]) for r in rows if r["job"] == j]) for j in ("cam1", "cam2")}
    assert raw["cam2"][14:].min() > raw["cam1"][14:].max()  # the square is scored above every normal frame
    again = api.detect_many(run, [videos], tmp_path / "par", workers=2, threads=1, progress=False)
    assert [r["status"] for r in again.rows] == ["error"] + ["skipped"] * 4  # complete outputs are not redone
    _same_scores(tmp_path / "par" / "scores.csv", tmp_path / "seq" / "scores.csv")


def test_the_command_line_prints_a_summary_and_fails_when_an_input_failed(run, videos, tmp_path):
    r = CliRunner().invoke(app, ["detect", str(videos / "cam0.npy"), str(videos / "broken.avi"), "--checkpoint",
                                 str(run), "--out", str(tmp_path / "out")], env={"COLUMNS": "200"})
    assert r.exit_code == 1, r.output
    assert "2 inputs" in r.output and "error:" in r.output and "broken.avi" in r.output
    assert [s["status"] for s in _rows(tmp_path / "out" / "summary.csv")] == ["done", "error"]
    r = CliRunner().invoke(app, ["detect", str(videos / "cam0.npy"), "--checkpoint", str(run), "--out",
                                 str(tmp_path / "one"), "--workers", "2"])
    assert r.exit_code == 2 and "several inputs" in r.output


def test_a_killed_run_resumes_without_redoing_finished_videos(run, videos, tmp_path):
    # The clips ten times over: long enough that the kill lands while cam1 is being scored (the 24-frame clips were
    # sometimes all scored within the 20 ms between polls, and the test skipped).
    long = tmp_path / "long"
    long.mkdir()
    for k in range(4):
        np.save(long / f"cam{k}.npy", np.tile(np.load(videos / f"cam{k}.npy"), (10, 1, 1)))
    videos = long
    out = tmp_path / "out"
    proc = start_cli("detect", str(videos / "cam*.npy"), "--checkpoint", run, "--out", out)
    wait_for(lambda: lines_in(out / "cam1" / "scores.partial.csv") > 3 or proc.poll() is not None, what="cam1 started")
    code, _, _ = stop(proc, signal.SIGKILL)
    if code == 0:
        pytest.skip("the detection finished before the kill")
    finished = (out / "cam0" / "scores.csv").stat().st_mtime_ns
    r = run_cli("detect", str(videos / "cam*.npy"), "--checkpoint", run, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    status = {s["job"]: s["status"] for s in _rows(out / "summary.csv")}
    assert status["cam0"] == "skipped" and status["cam1"] == "done"
    assert (out / "cam0" / "scores.csv").stat().st_mtime_ns == finished
    ref = api.detect_many(run, [str(videos / "cam*.npy")], tmp_path / "ref", progress=False)
    assert ref.count("done") == 4
    _same_scores(out / "scores.csv", tmp_path / "ref" / "scores.csv")
    assert json.loads((out / "cam1" / "detect.json").read_text())["resumed_after"] > 0


def test_a_local_dask_cluster_gives_the_local_scores(run, videos, tmp_path):
    pytest.importorskip("distributed", reason="the cluster extra is not installed: pip install 'oddframe[cluster]'")
    inputs = [str(videos / "cam*.npy")]
    local = api.detect_many(run, inputs, tmp_path / "local", progress=False)
    dask = api.detect_many(run, inputs, tmp_path / "dask", cluster="auto", workers=2, threads=1, progress=False)
    assert [r["status"] for r in dask.rows] == ["done"] * 4
    assert all(r["loads"] == 1 for r in dask.rows)  # once per worker, not once per video
    _same_scores(tmp_path / "dask" / "scores.csv", tmp_path / "local" / "scores.csv")
    assert local.frames == dask.frames == 96


def test_the_cluster_without_dask_names_what_to_install(run, videos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with pytest.raises(ConfigError, match=r"pip install 'oddframe\[cluster\]'"):
        api.detect_many(run, [videos / "cam0.npy", videos / "cam1.npy"], tmp_path / "o", cluster="auto",
                        progress=False)
