"""Exported inference: ONNX Runtime and OpenVINO give PyTorch's scores on trained weights; clear refusals and errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from oddframe import api, backends
from oddframe.cli import app
from oddframe.config import config_from_dict, load_config
from oddframe.data.clips import Batch
from oddframe.errors import BackendError, CheckpointError
from oddframe.registry import build_model, list_models

from test_models_contract import SHAPES, TINY

pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install 'oddframe[onnx]'")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'oddframe[onnx]'")

RUNTIMES = ["onnxruntime"] + (["openvino"] if backends.installed("openvino") else [])


def _scores(path: Path) -> np.ndarray:
    with path.open() as f:
        return np.asarray([float(r["score"]) for r in csv.DictReader(f)])


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny conv3d_ae trained for a few epochs on synthetic sequences (real, trained weights)."""
    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    api.write_synthetic_dataset(data, n_train=8, n_test=2, length=12, size=32, anomaly="object", seed=0)
    config = load_config(None, [f"data.path={data}", "data.size=[32,32]", "data.clip_length=8", "score.stride=4",
                                "model.params.width=0.25", "train.epochs=3", "train.batch_size=4"])
    api.train(config, root / "run", progress=False)
    return root / "run", data


def test_exported_backends_give_torch_scores_on_trained_weights(synthetic_run, tmp_path):
    run, data = synthetic_run
    summary = api.export(run, int8=True)
    assert {p.name for p in summary.files} == {"model.onnx", "model.int8.onnx"}
    for name in RUNTIMES:
        assert summary.agreement[name]["max_map_diff"] <= backends.FP32_ATOL
        assert summary.agreement[f"{name}-int8"]["max_score_diff_rel"] <= backends.INT8_RTOL
    reference = None
    for backend in ["torch", *RUNTIMES, *(f"{r}-int8" for r in RUNTIMES)]:
        api.detect(run, data, tmp_path / backend, progress=False, backend=backend)
        scores = _scores(tmp_path / backend / "scores.csv")
        if reference is None:
            reference = scores
        elif backend.endswith("-int8"):
            assert np.abs(scores - reference).max() <= backends.INT8_RTOL * np.ptp(reference)
            assert np.corrcoef(scores, reference)[0, 1] > 0.99
        else:
            np.testing.assert_allclose(scores, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not backends.installed("openvino"), reason="openvino is not installed: pip install 'oddframe[openvino]'")
def test_openvino_runs_full_batches_on_a_fixed_shape_graph_and_others_on_the_dynamic_one(synthetic_run):
    run, _ = synthetic_run
    api.export(run)
    from oddframe.runs import load_run, open_run_backend

    model, config = load_run(run, overrides=["score.batch_size=3"])
    runner = open_run_backend(run, config, "openvino", threads=1)
    assert runner.fixed_shapes == ((3, 1, 8, 32, 32), (3, 1, 8, 32, 32))
    torch.manual_seed(0)
    for n in (3, 2):  # a full batch (fixed graph), a video's shorter last one (dynamic graph)
        batch = Batch(torch.rand(n, 1, 8, 32, 32) * 2 - 1, torch.ones(n, 1, 8, 32, 32, dtype=torch.bool))
        batch.valid[0, :, :, :4] = False
        with torch.inference_mode():
            expected = model.anomaly_map(batch)
        np.testing.assert_allclose(runner.anomaly_map(batch).numpy(), expected.numpy(), atol=backends.FP32_ATOL)


def test_detect_refuses_missing_stale_or_misshapen_exports(synthetic_run, tmp_path):
    run, data = synthetic_run
    api.export(run)  # fp32 only: the int8 file of an earlier export is not this export's
    with pytest.raises(CheckpointError, match="export .* --int8"):
        api.detect(run, data, tmp_path / "a", progress=False, backend="onnxruntime-int8")
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    info = json.loads((copy / backends.EXPORT_JSON).read_text())
    (copy / backends.EXPORT_JSON).write_text(json.dumps({**info, "clip_shape": [1, 8, 64, 64]}))
    with pytest.raises(CheckpointError, match=r"exported for clips \(1, 8, 64, 64\)"):
        api.detect(copy, data, tmp_path / "b", progress=False, backend="onnxruntime")
    (copy / backends.EXPORT_JSON).write_text(json.dumps(info))
    model = build_model("conv3d_ae", width=0.25, image_size=(32, 32), clip_length=8)
    from oddframe.runs import WEIGHTS, save_weights

    save_weights(model, copy / WEIGHTS)  # other weights than the export's
    with pytest.raises(CheckpointError, match="other weights"):
        api.detect(copy, data, tmp_path / "c", progress=False, backend="onnxruntime")
    (copy / backends.ONNX_FILE).unlink()
    r = CliRunner().invoke(app, ["detect", str(data), "--checkpoint", str(copy), "--out", str(tmp_path / "d"),
                                 "--backend", "onnxruntime"])
    assert r.exit_code == 2 and "oddframe export" in r.output and "Traceback" not in r.output


def test_a_missing_runtime_names_what_to_install(synthetic_run, tmp_path, monkeypatch):
    run, data = synthetic_run
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(BackendError, match=r"pip install 'oddframe\[openvino\]'"):
        backends.require("openvino")
    r = CliRunner().invoke(app, ["detect", str(data), "--checkpoint", str(run), "--out", str(tmp_path / "d"),
                                 "--backend", "openvino"])
    assert r.exit_code == 2 and "oddframe[openvino]" in r.output and "Traceback" not in r.output
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    r = CliRunner().invoke(app, ["export", str(run)])
    assert r.exit_code == 2 and "oddframe[onnx]" in r.output


@pytest.mark.parametrize("name", list_models())
def test_every_model_exports_faithfully_or_is_refused_clearly(name, tmp_path):
    torch.manual_seed(0)
    b, c, t, h, w = SHAPES.get(name, (2, 1, 4, 32, 32))
    model = build_model(name, **{"clip_length": t, "image_size": (h, w), **TINY.get(name, {})}).eval()
    reason = backends.export_refusal(model)
    if reason is not None:
        assert name in reason and ("sampler" in reason or "derived inputs" in reason or "fitted" in reason)
        with pytest.raises(BackendError, match="cannot export"):
            backends.export_onnx(model, tmp_path / "m.onnx", clip_shape=(c, t, h, w))
        return
    backends.export_onnx(model, tmp_path / "m.onnx", clip_shape=(c, t, h, w))
    frames = torch.rand(3, c, t, h, w) * 2 - 1  # another batch size than the traced one
    valid = torch.ones(3, 1, t, h, w, dtype=torch.bool)
    valid[2, :, -1] = False  # a padded frame
    batch = Batch(frames, valid)
    with torch.inference_mode():
        expected = model.anomaly_map(batch).numpy()
    for runtime in RUNTIMES:
        runner = backends.OnnxRuntimeMap(tmp_path / "m.onnx") if runtime == "onnxruntime" else \
            backends.OpenVinoMap(tmp_path / "m.onnx")
        np.testing.assert_allclose(runner.anomaly_map(batch).numpy(), expected, atol=backends.FP32_ATOL, rtol=0)


def test_export_of_a_sampler_run_is_refused_in_one_line(tmp_path):
    from oddframe.runs import save_weights, write_config

    params = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY["st_diffusion"].items()
              if k not in ("image_size", "clip_length")}
    cfg = config_from_dict({"model": {"name": "st_diffusion", "params": params},
                            "data": {"size": [16, 16], "clip_length": 4}})
    run = tmp_path / "run"
    run.mkdir()
    write_config(cfg, run)
    save_weights(build_model("st_diffusion", **cfg.model_kwargs()), run / "model.safetensors")
    r = CliRunner().invoke(app, ["export", str(run)])
    assert r.exit_code == 2 and "sampler" in r.output and "--backend torch" in r.output


def test_an_interrupted_exported_detection_resumes_with_the_same_backend_only(synthetic_run, tmp_path, monkeypatch):
    from oddframe.errors import OutputError
    from oddframe.pipeline import detect as detect_module

    run, data = synthetic_run
    api.export(run)
    api.detect(run, data, tmp_path / "ref", progress=False, backend="onnxruntime")
    reference = _scores(tmp_path / "ref" / "scores.csv")
    real = detect_module.stream_video

    def breaks_after_5(*args, **kwargs):  # a crash part-way through the first video
        for i, r in enumerate(real(*args, **kwargs)):
            if i == 5:
                raise RuntimeError("power cut")
            yield r

    monkeypatch.setattr(detect_module, "stream_video", breaks_after_5)
    with pytest.raises(RuntimeError, match="power cut"):
        api.detect(run, data, tmp_path / "det", progress=False, backend="onnxruntime")
    monkeypatch.setattr(detect_module, "stream_video", real)
    assert len(_scores(tmp_path / "det" / "scores.csv")) == 5
    with pytest.raises(OutputError, match="backend: 'onnxruntime' then, 'torch' now"):
        api.detect(run, data, tmp_path / "det", progress=False, resume=True)
    s = api.detect(run, data, tmp_path / "det", progress=False, backend="onnxruntime", resume=True)
    assert s.resumed_after == 5
    np.testing.assert_allclose(_scores(tmp_path / "det" / "scores.csv"), reference, rtol=1e-5, atol=1e-7)
