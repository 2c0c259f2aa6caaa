"""``oddframe bench``: two tiny configs on a synthetic dataset write the table, the plots and the page; a second
call reuses what is done; a run trained with other settings is refused."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from oddframe.cli import app
from oddframe.data.synthetic import write_synthetic_dataset
from oddframe.pipeline.bench import bench, run_names
from oddframe.render.bench import COLUMNS

CHROMIUM = Path("/usr/bin/chromium")
runner = CliRunner()


def tiny_config(path: Path, *, width: float, rule: str) -> Path:
    path.write_text(yaml.safe_dump({
        "model": {"name": "conv3d_ae", "params": {"width": width}},
        "data": {"size": [32, 32], "clip_length": 4, "train_stride": 2},
        "train": {"epochs": 1, "batch_size": 4, "lr": 0.003},
        "score": {"rule": rule, "normalise": "calibrated"},
        "render": {"top_frames": 2},
    }))
    return path


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = root / "data"
    write_synthetic_dataset(data, n_train=6, n_test=3, length=8, size=32, anomaly="object", seed=1)
    configs = [tiny_config(root / "small.yaml", width=0.125, rule="mse"),
               tiny_config(root / "wider.yaml", width=0.25, rule="l1")]
    out = root / "out"
    r = runner.invoke(app, ["bench", *map(str, configs), "--data", str(data), "--out", str(out)])
    assert r.exit_code == 0, r.output
    return root, data, configs, out, r.output


def test_bench_writes_table_plots_and_page(benched):
    _, data, _, out, output = benched
    assert "small" in output and "wider" in output and "bench.html" in output
    for name in ("bench.md", "bench.csv", "bench.json", "roc.png", "scores.png", "bench.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 100, name
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [r["name"] for r in rows] == ["small", "wider"]
    assert set(rows[0]) == {k for k, _ in COLUMNS}
    for r in rows:
        assert 0 <= float(r["frame_auroc_micro"]) <= 1 and 0 <= float(r["rbdc"]) <= 1
        assert float(r["train_seconds"]) > 0 and float(r["detect_fps"]) > 0 and r["epochs"] == "1"
        assert r["uses_test_statistics"] == "False" and r["normalisation"] == "calibrated"
    assert [r["score_rule"] for r in rows] == ["mse", "l1"]
    md = (out / "bench.md").read_text()
    assert md.count("\n| small |") == 1 and "AUROC macro padded (literature)" in md and "RBDC" in md
    page = (out / "bench.html").read_text()
    assert 'id="bench"' in page and "roc.png" in page and "scores.png" in page
    assert 'href="evals/small/report.html"' in page and (out / "evals" / "small" / "report.html").is_file()
    assert "normalisation_uses_test_statistics" in page  # each model's protocol
    saved = json.loads((out / "bench.json").read_text())
    assert saved["data"] == str(data) and len(saved["rows"]) == 2


def test_bench_is_resumable_and_refuses_stale_runs(benched, tmp_path):
    root, data, configs, out, _ = benched
    weights = out / "runs" / "small" / "model.safetensors"
    before = weights.stat().st_mtime
    lines: list[str] = []
    result = bench(configs, data, out, progress=False, log=lines.append)
    assert [r["status"] for r in result.rows] == ["reused", "reused"]
    assert weights.stat().st_mtime == before and sum("evaluation reused" in x for x in lines) == 2
    # A new scoring setting keeps the weights, rewrites the config, recalibrates and re-evaluates.
    changed = tiny_config(root / "small.yaml", width=0.125, rule="max")
    result = bench([changed, configs[1]], data, out, progress=False, log=lines.append)
    assert result.rows[0]["score_rule"] == "max" and weights.stat().st_mtime == before
    # Other weights (a different width) under the same name: refused, not silently reused.
    stale = tiny_config(tmp_path / "small.yaml", width=0.5, rule="mse")
    with pytest.raises(Exception, match="trained with other settings.*model.params.width"):
        bench([stale], data, out, progress=False)


def test_run_names_are_unique():
    assert run_names(["a/x.yaml", "b/x.yaml", "c/y.yml", "x.yaml"]) == ["x", "x_2", "y", "x_3"]


@pytest.mark.browser
def test_bench_page_renders_in_headless_chromium(benched, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed (Debian: apt-get install chromium)")
    out = benched[3]
    png = tmp_path / "bench.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
           "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,2400",
           f"--screenshot={png}", (out / "bench.html").resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    assert png.stat().st_size > 20_000


def test_tables_show_scenes_and_missing_values(tmp_path):
    from oddframe.render.bench import write_tables

    rows = [{"name": "a", "frame_auroc_micro": 0.81234, "rbdc": None, "train_seconds": 123.456, "uses_test_statistics": True,
             "per_scene": {"01": {"frame_auroc_micro": 0.7}, "02": {"frame_auroc_micro": 0.9}}},
            {"name": "b|c", "frame_auroc_micro": float("nan"), "per_scene": {"02": {"frame_auroc_micro": 0.5}}}]
    md, csv_path = write_tables(rows, tmp_path, header="# title")
    text = md.read_text()
    assert text.startswith("# title") and "| a | - | 0.8123 |" in text and "123.5" in text and "| yes |" in text
    assert "b\\|c" in text  # a pipe in a name does not break the table
    assert "| 01 | 0.7000 | - |" in text and "| 02 | 0.9000 | 0.5000 |" in text
    assert next(csv.DictReader(csv_path.open()))["frame_auroc_micro"] == "0.81234"


def test_one_model_per_scene_is_pooled(tmp_path):
    from helpers.layouts import build_shanghaitech

    data = build_shanghaitech(tmp_path / "shanghaitech")
    config = tiny_config(tmp_path / "tiny.yaml", width=0.125, rule="mse")
    r = runner.invoke(app, ["bench", str(config), "--data", str(data), "--out", str(tmp_path / "out"), "--per-scene",
                            "--no-regions", "--no-calibrate"])
    assert r.exit_code == 0, r.output
    # --no-calibrate skips the threshold, except where the scores need it (normalise: calibrated).
    assert (tmp_path / "out" / "runs" / "tiny@01" / "calibration.json").is_file()
    rows = json.loads((tmp_path / "out" / "bench.json").read_text())["rows"]
    assert [row["name"] for row in rows] == ["tiny@per-scene"]
    row = rows[0]
    assert row["n_test_frames"] == 18 and set(row["per_scene"]) == {"01", "02"} and row["rbdc"] is None
    for scene, frames in (("01", 12), ("02", 6)):
        metrics = json.loads((tmp_path / "out" / "evals" / f"tiny@{scene}" / "metrics.json").read_text())
        assert metrics["n_test_frames"] == frames and metrics["protocol"]["scenes"] == [scene]
    assert "| 01 |" in (tmp_path / "out" / "bench.md").read_text()
    pooled = list(csv.DictReader((tmp_path / "out" / "evals" / "tiny@per-scene" / "scores.csv").open()))
    assert len(pooled) == 18
