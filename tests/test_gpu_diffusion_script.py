"""benchmarks/gpu_diffusion.py (run once on a GPU by the lead) works end to end on a CPU with tiny sizes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from oddframe import api

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_diffusion.py"
TINY = ["--size", "16", "--clip-length", "8", "--base", "8", "--channel-mult", "1", "2", "--res-blocks", "1",
        "--attention-resolutions", "2", "--diffusion-steps", "100", "--batch-size", "2", "--epoch-steps", "1",
        "--detect-batch", "4"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("gpu_diffusion", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    api.write_synthetic_dataset(root, n_train=2, n_test=2, length=10, size=16, seed=0)
    return root


def test_trains_and_sweeps_steps_writing_results(script, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    doc = script.main(["--out", str(out), "--data", str(data), "--budget", "600", "--train-seconds", "0",
                       "--models", "mamba_diffusion", "--steps", "4", "2", *TINY])
    stages = [(s["model"], s["stage"], s.get("ddim_steps"), s["status"]) for s in doc["stages"]]
    assert stages == [
        ("mamba_diffusion", "train", None, "ok"), ("mamba_diffusion", "eval", 2, "ok"),
        ("mamba_diffusion", "eval", 4, "ok"),
    ], doc["stages"]
    assert all(s["train_steps"] == 1 for s in doc["stages"] if s["stage"] == "train")  # stopped after one epoch
    for s in doc["stages"]:
        if s["stage"] == "eval":
            assert 0.0 <= s["frame_auroc_micro"] <= 1.0 and s["detect_fps"] > 0
    assert json.loads((out / "results.json").read_text())["stages"] == doc["stages"]
    table = (out / "results.md").read_text()
    assert "| mamba_diffusion | eval | 4 | ok |" in table and "mamba_ssm fused scan" in table


def test_failures_and_the_budget_are_recorded_not_raised(script, data: Path, tmp_path: Path) -> None:
    # 15x15 frames cannot be halved by the U-Net: training fails, is recorded, and the next model is still tried.
    doc = script.main(["--out", str(tmp_path / "bad"), "--data", str(data), "--budget", "600", "--train-seconds",
                       "0", "--steps", "2", *TINY, "--size", "15"])
    assert [s["status"].split(":")[0] for s in doc["stages"]] == ["failed", "failed"]
    assert "divisible" in doc["stages"][0]["status"]
    spent = script.main(["--out", str(tmp_path / "spent"), "--data", str(data), "--budget", "0", *TINY])
    assert {s["status"] for s in spent["stages"]} == {"skipped: time budget spent"}
