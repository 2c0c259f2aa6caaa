"""The first complete path: train -> calibrate -> detect -> eval, through the Python API, on tiny synthetic data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from oddframe import api, runs
from oddframe.data.synthetic import write_synthetic_dataset
from oddframe.errors import CheckpointError, ConfigError

TINY = [
    "model.name=conv3d_ae",
    "model.params.width=0.125",
    "data.size=[32,32]",
    "data.clip_length=4",
    "data.train_stride=2",
    "train.epochs=2",
    "train.batch_size=4",
    "train.lr=0.003",
    "render.top_frames=3",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, n_train=8, n_test=3, length=8, size=32, anomaly="object", seed=1)
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    config = api.load_config(None, TINY + [f"data.path={data}"])
    result = api.train(config, out, progress=False)
    assert result.epochs == 2 and np.isfinite(result.final_loss)
    return out


def test_run_folder_is_self_describing(run):
    for name in ("config.yaml", "model.safetensors", "state.pt", "history.csv", "loss.png"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir()), "TensorBoard logs"
    history = runs.read_history(run)
    assert [h["epoch"] for h in history] == [1, 2]
    model, config = api.load_run(run)
    assert config.model.name == "conv3d_ae" and model.clip_length == 4
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), "pt") as f:
        assert f.metadata()["model"] == "conv3d_ae" and "oddframe_version" in f.metadata()


def _weights(run) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def _interrupted_then_resumed(config, out):
    def stop_after_first(epoch, loss):
        if epoch == 1:
            raise KeyboardInterrupt  # a user pressing Ctrl-C (or a killed job) after the first checkpoint

    with pytest.raises(KeyboardInterrupt):
        api.train(config, out, progress=False, on_epoch_end=stop_after_first)
    assert [h["epoch"] for h in runs.read_history(out)] == [1]
    return api.train(config, out, resume=True, progress=False)


RESUME = TINY + ["train.epochs=3", "train.augment.hflip=0.5", "train.augment.brightness=0.2"]


def test_interrupted_then_resumed_training_equals_uninterrupted_training(data, tmp_path):
    config = api.load_config(None, RESUME + [f"data.path={data}"])
    straight = api.train(config, tmp_path / "straight", progress=False)
    resumed = _interrupted_then_resumed(config, tmp_path / "resumed")
    history = runs.read_history(tmp_path / "resumed")
    assert [h["epoch"] for h in history] == [1, 2, 3]
    steps_1 = history[0]["step"]
    assert history[1]["step"] == 2 * steps_1 and history[2]["step"] == 3 * steps_1  # steps continue, not restart
    assert resumed.epochs == 3 and runs.load_state(tmp_path / "resumed" / "state.pt")["epoch"] == 3
    # Same weights (so same data order, augmentations and optimiser state from epoch 2 on), same losses.
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in history] == [h["loss"] for h in runs.read_history(tmp_path / "straight")]
    assert resumed.final_loss == straight.final_loss


def test_resume_starts_from_the_saved_weights(data, tmp_path, monkeypatch):
    """Planted defect: a resume that does not load the checkpoint's weights ends elsewhere than the straight run."""
    config = api.load_config(None, RESUME + [f"data.path={data}"])
    api.train(config, tmp_path / "straight", progress=False)
    monkeypatch.setattr(runs, "load_weights", lambda model, path: None)
    _interrupted_then_resumed(config, tmp_path / "broken")
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "broken")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_each_epoch_sees_a_different_order(data, tmp_path):
    from oddframe.pipeline.train import epoch_seed

    orders = {tuple(torch.randperm(20, generator=torch.Generator().manual_seed(epoch_seed(0, e))).tolist())
              for e in range(3)}
    assert len(orders) == 3


def test_training_into_an_existing_run_needs_resume(run, data):
    config = api.load_config(run / "config.yaml")
    with pytest.raises(CheckpointError, match="--resume"):
        api.train(config, run, progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        api.train(config, run.parent / "fresh", resume=True, progress=False)


def test_missing_data_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="data.path"):
        api.train(api.load_config(None, TINY), tmp_path / "r", progress=False)


def test_calibrate_detect_eval(run, data, tmp_path):
    cal = api.calibrate(run, progress=False)
    assert np.isfinite(cal["threshold"]) and 0 <= cal["heldout_fpr"] <= 1
    assert json.loads((run / "calibration.json").read_text())["threshold"] == pytest.approx(cal["threshold"])

    summary = api.detect(run, data / "testing" / "frames" / "01", tmp_path / "det", maps=True,
                         video=tmp_path / "det" / "a.mp4", progress=False)
    assert summary.n_frames == 8
    rows = list(csv.DictReader((tmp_path / "det" / "scores.csv").open()))
    assert [int(r["frame"]) for r in rows] == list(range(8))
    assert all(r["flagged"] in ("0", "1") for r in rows)
    maps = np.load(tmp_path / "det" / "maps" / "01.npy")
    assert maps.shape == (8, 32, 32)
    import av

    with av.open(str(tmp_path / "det" / "a.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 8

    metrics = api.evaluate(run, data, tmp_path / "eval", progress=False)
    for key in ("frame_auroc_micro", "frame_auroc_macro", "frame_ap", "eer", "pixel_auroc", "n_test_frames", "detect_fps"):
        assert key in metrics
    assert metrics["n_test_frames"] == 24
    assert metrics["pixel_auroc"] is not None
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["n_test_frames"] == 24
    assert (tmp_path / "eval" / "report.html").is_file()
    labels = [int(r["label"]) for r in csv.DictReader((tmp_path / "eval" / "scores.csv").open())]
    assert sum(labels) == metrics["n_anomalous_frames"] > 0


def test_detect_rejects_a_folder_that_is_not_a_run(data, tmp_path):
    with pytest.raises(CheckpointError, match="not a finished run"):
        api.detect(tmp_path, data, tmp_path / "o", progress=False)


def test_inference_overrides_reach_the_model_and_architecture_changes_are_refused(run):
    model, config = api.load_run(run, overrides=["score.rule=l1"])
    assert config.score.rule == "l1"
    with pytest.raises(CheckpointError, match="do not fit"):
        api.load_run(run, overrides=["model.params.width=0.25"])


class _Trap:
    """Unpickling this object would create a file: the proof that a loader unpickled user data."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_refuses_a_booby_trapped_state_file(run, tmp_path):
    trapped = tmp_path / "trapped"
    trapped.mkdir()
    for name in ("config.yaml", "model.safetensors", "history.csv"):
        (trapped / name).write_bytes((run / name).read_bytes())
    marker = tmp_path / "pwned"
    torch.save({"epoch": 1, "step": 1, "optimizer": _Trap(str(marker))}, trapped / "state.pt")
    config = api.load_config(trapped / "config.yaml")
    with pytest.raises(CheckpointError, match="state.pt"):
        api.train(config, trapped, resume=True, progress=False)
    assert not marker.exists(), "the state file was unpickled"
