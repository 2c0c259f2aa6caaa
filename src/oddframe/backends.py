"""Exported inference: a model's anomaly map as one ONNX graph, run by ONNX Runtime or OpenVINO, fp32 or int8.

The graph is the whole contract call, ``anomaly_map(frames, valid) -> (B, T, H, W)``, so an exported backend is a
drop-in object with the same ``anomaly_map(batch)`` the streaming engine calls on a model. It is traced at the
run's clip shape ``(C, T, H, W)`` with a free batch size, from the detector's exact rewrite of the model
(:func:`oddframe.models.inference.for_inference`).

- ``onnxruntime``: Microsoft's ONNX Runtime, CPU execution provider.
- ``openvino``: Intel's OpenVINO runtime, which reads the same ONNX file. On the 2-core Xeon (AVX-512, no VNNI)
  of docs/BENCHMARKS.md it runs ``conv3d_ae``'s 3D convolutions about 2x faster than PyTorch or ONNX Runtime;
  ONNX Runtime is the faster one for ``convlstm_ae``'s 2D convolutions.
- ``-int8``: the same graph after static post-training quantisation of its convolutions (ONNX Runtime's
  ``quantize_static``, QDQ format, per-channel int8 weights, uint8 activations whose ranges come from normal clips
  of the training data; transposed convolutions and the output layer stay fp32). Both runtimes execute the QDQ
  graph in int8.

Agreement with PyTorch (tested on trained weights in ``tests/test_export.py``): fp32 backends give the same maps
to :data:`FP32_ATOL` (float summation order only); int8 backends give frame scores within :data:`INT8_RTOL` of
PyTorch's, relative to the spread of the scores.

A model whose map is not one forward pass is refused (:func:`export_refusal`): samplers (diffusion, many
denoiser calls with fresh noise), models that need derived inputs (optical flow computed outside the model) and
fitted models (density or memory banks whose size is known only after fitting).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from oddframe.data.clips import Batch
from oddframe.errors import BackendError, CheckpointError
from oddframe.models.base import AnomalyModel
from oddframe.models.inference import for_inference

#: Backends of ``oddframe detect --backend``; ``torch`` is the model itself.
BACKENDS = ("torch", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")
#: What each exported backend needs installed: (module, pip requirement).
REQUIREMENTS = {
    "onnxruntime": ("onnxruntime", "oddframe[onnx]"),
    "openvino": ("openvino", "oddframe[openvino]"),
    "onnx": ("onnx", "oddframe[onnx]"),
}
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXPORT_JSON = "export.json"
OPSET = 17
#: fp32 backends: largest absolute difference of map values (squared errors in [0, 4]) allowed against PyTorch.
FP32_ATOL = 1e-4
#: int8 backends: largest frame-score difference against PyTorch, as a share of the range of PyTorch's scores.
INT8_RTOL = 0.1


def require(package: str) -> Any:
    """Import an optional package of an exported backend; a :class:`BackendError` says what to install."""
    module, extra = REQUIREMENTS[package]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendError(f"the {package} backend needs the package {module!r}: pip install '{extra}'") from None


def installed(package: str) -> bool:
    """Whether the optional package of an exported backend imports."""
    try:
        require(package)
    except BackendError:
        return False
    return True


def export_refusal(model: AnomalyModel) -> str | None:
    """Why ``model`` cannot be exported as one graph, or None when it can."""
    name = getattr(model, "model_name", type(model).__name__)
    if not getattr(model, "cheap_reconstruction", True):
        return f"{name}'s map is a sampler (many denoiser passes with fresh noise), not one forward pass"
    if model.derived_inputs():
        return f"{name} needs derived inputs ({', '.join(model.derived_inputs())}) computed outside the model"
    if getattr(model, "_fitted_names", None) or model.fit_before_epoch is not None:
        return f"{name} is a fitted model (its fitted state is not a fixed-size graph)"
    return None


class _MapGraph(nn.Module):
    """``anomaly_map`` as a module of plain tensors, for tracing: ``(frames, valid) -> (B, T, H, W)``."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.model.anomaly_map(Batch(frames, valid)).float()


def export_onnx(model: AnomalyModel, path: str | Path, *, clip_shape: tuple[int, int, int, int]) -> None:
    """Trace ``model.anomaly_map`` at ``clip_shape = (C, T, H, W)`` (any batch size) and write it as ONNX.

    Raises:
        BackendError: the model is refused (:func:`export_refusal`) or the tracer fails.
    """
    reason = export_refusal(model)
    if reason:
        raise BackendError(f"cannot export: {reason}; use --backend torch")
    require("onnx")
    c, t, h, w = clip_shape
    frames = torch.rand(2, c, t, h, w) * 2 - 1
    valid = torch.ones(2, 1, t, h, w, dtype=torch.bool)
    # The detector's exact rewrite (models.inference: folded BatchNorm, sub-pixel transposed convolutions): OpenVINO
    # ran conv3d_ae's one-channel transposed convolution as slowly as PyTorch did (docs/BENCHMARKS.md). Contiguous
    # weights: the tracer writes channels-last ones (conv3d_ae's) in their memory order, scrambled.
    fast = for_inference(copy.deepcopy(model).cpu())
    graph = _MapGraph(fast.to(memory_format=torch.contiguous_format))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The tracer warns about Python-side input checks (NaN, shapes): they hold for the engine's clips.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph, (frames, valid), str(path), dynamo=False, opset_version=OPSET,
                input_names=["frames", "valid"], output_names=["map"],
                dynamic_axes={"frames": {0: "batch"}, "valid": {0: "batch"}, "map": {0: "batch"}},
            )
    except Exception as exc:  # the exporter raises many types; name the model and the cause in one line
        first = next((line for line in str(exc).splitlines() if line.strip()), "")[:300]
        raise BackendError(f"cannot export {model.model_name} to ONNX: {type(exc).__name__}: {first}") from None


class _CalibrationReader:
    """ONNX Runtime's calibration data reader protocol over batches of normal clips."""

    def __init__(self, batches: Iterable[Batch]) -> None:
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        return {"frames": batch.frames.float().numpy(), "valid": batch.valid.numpy()}


def quantize_int8(onnx_path: str | Path, out_path: str | Path, calibration: Iterable[Batch]) -> None:
    """Static int8 quantisation of an exported graph with activation ranges from normal clips.

    QDQ format (QuantizeLinear/DequantizeLinear pairs, which both runtimes fuse into int8 kernels) on the
    convolutions (transposed convolutions and the output layer stay fp32, see the comments below), per-channel int8
    weights and uint8 activations calibrated by min-max over ``calibration``. ``reduce_range`` keeps weights to 7
    bits: CPUs without VNNI multiply uint8 x int8 with 16-bit intermediate sums that 8-bit weights can saturate.
    """
    require("onnxruntime")
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # The output layer stays fp32 as well: it writes the reconstruction whose small differences from the input are
    # the anomaly map, finer than 8 bits over [-1, 1] resolve. (A transposed output layer is a Conv after
    # models.inference's sub-pixel rewrite.) ONNX lists nodes in topological order, so it is the last Conv.
    convs = [node.name for node in onnx.load(str(onnx_path)).graph.node if node.op_type == "Conv"]

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser advises (on the root logger) shape pre-processing: BN is folded already
    try:
        quantize_static(
            str(onnx_path), str(out_path), _CalibrationReader(calibration),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            # Convolutions only: with ConvTranspose quantised too (per channel on either axis, or per tensor) the
            # int8 map of trained conv3d_ae weights on Ped2 was uncorrelated with PyTorch's (corr -0.4), while
            # the 1-step weights of a speed run hid it; Conv alone kept frame scores within 5 % (corr 0.998).
            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"], nodes_to_exclude=convs[-1:],
        )
    finally:
        root.setLevel(level)


# ------------------------------------------------------------------------------------------ runtimes


class OnnxRuntimeMap:
    """An exported graph run by ONNX Runtime, with the ``anomaly_map(batch)`` of the model contract.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: torch's thread count, i.e. every core).
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the engine's batches are fine; ORT's shape warnings are noise
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def anomaly_map(self, batch: Batch) -> torch.Tensor:
        """``(B, T, H, W)`` float32 map of a CPU batch ``(B, C, T, H, W)``."""
        feeds = {"frames": batch.frames.float().numpy(), "valid": batch.valid.numpy()}
        return torch.from_numpy(self.session.run(None, feeds)[0])


class OpenVinoMap:
    """An exported graph compiled by OpenVINO for the CPU, with the ``anomaly_map(batch)`` of the model contract.

    Given the detector's full batch shape, the graph is compiled a second time with that shape fixed, and full
    batches run there: with the batch dimension left dynamic OpenVINO keeps generic kernels and runs activations
    as separate passes (convlstm_ae at its Ped2 config, int8, two windows per pass: 59 ms dynamic, 45-50 ms fixed;
    docs/BENCHMARKS.md). Other batches (a video's shorter last one) run on the dynamic graph.

    Args:
        path: the ``.onnx`` file (OpenVINO reads ONNX directly).
        threads: inference threads (default: torch's thread count).
        batch_shape: ``(B, C, T, H, W)`` of the detector's full batches, or None (dynamic graph only).
    """

    def __init__(
        self, path: str | Path, *, threads: int | None = None, batch_shape: tuple[int, ...] | None = None
    ) -> None:
        ov = require("openvino")
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}
        graph = core.read_model(str(path))
        self.compiled = core.compile_model(graph, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.fixed_shapes = None
        if batch_shape:
            b, _, t, h, w = batch_shape
            self.fixed_shapes = (tuple(batch_shape), (b, 1, t, h, w))  # frames, valid
            fixed = graph.clone()
            fixed.reshape({"frames": list(self.fixed_shapes[0]), "valid": list(self.fixed_shapes[1])})
            self.fixed = core.compile_model(fixed, "CPU", config)
            self.fixed_request = self.fixed.create_infer_request()

    def anomaly_map(self, batch: Batch) -> torch.Tensor:
        """``(B, T, H, W)`` float32 map of a CPU batch ``(B, C, T, H, W)``."""
        feeds = {"frames": batch.frames.float().numpy(), "valid": batch.valid.numpy()}
        if (tuple(batch.frames.shape), tuple(batch.valid.shape)) == self.fixed_shapes:
            compiled, request = self.fixed, self.fixed_request
        else:
            compiled, request = self.compiled, self.request
        return torch.from_numpy(np.array(request.infer(feeds)[compiled.output(0)]))


def weights_digest(path: str | Path) -> str:
    """SHA-256 of a weights file: ties an export to the weights it was made from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def open_backend(
    name: str, run_dir: str | Path, *, clip_shape: tuple[int, int, int, int], weights: str | Path,
    threads: int | None = None, batch: int | None = None,
) -> OnnxRuntimeMap | OpenVinoMap | None:
    """The map runner of backend ``name`` for a run (None for ``torch``: the model itself runs).

    Args:
        name: one of :data:`BACKENDS`.
        run_dir: the run folder holding the export (``oddframe export RUN``).
        clip_shape: ``(C, T, H, W)`` the detector will feed; must be the exported one.
        weights: the run's weights file; the export must have been made from these weights.
        threads: runtime threads.
        batch: windows in the detector's full batches (``score.batch_size``): OpenVINO compiles that shape fixed too.

    Raises:
        ValueError: unknown backend name.
        BackendError: the runtime is not installed.
        CheckpointError: no export, a stale export (other weights) or another clip shape.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    if name == "torch":
        return None
    runtime, _, precision = name.partition("-")
    require(runtime)  # a missing runtime is reported before a missing export
    run_dir = Path(run_dir)
    path = run_dir / (INT8_FILE if precision == "int8" else ONNX_FILE)
    info_path = run_dir / EXPORT_JSON
    if not path.is_file() or not info_path.is_file():
        flag = " --int8" if precision == "int8" else ""
        raise CheckpointError(f"{run_dir}: no {path.name} for the {name} backend: run `oddframe export {run_dir}{flag}` first")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{info_path}: cannot read ({exc})") from None
    if path.name not in info.get("files", ()):
        raise CheckpointError(f"{path}: left from an older export: run `oddframe export {run_dir} --int8` again")
    if info.get("weights_sha256") != weights_digest(weights):
        raise CheckpointError(f"{path}: exported from other weights than {weights}: run `oddframe export {run_dir}` again")
    if tuple(info.get("clip_shape", ())) != tuple(clip_shape):
        raise CheckpointError(
            f"{path}: exported for clips {tuple(info.get('clip_shape', ()))} (C, T, H, W) but the config now gives "
            f"{tuple(clip_shape)}: drop the --set that changes data.size/clip_length/channels, or use --backend torch"
        )
    if runtime == "onnxruntime":
        return OnnxRuntimeMap(path, threads=threads)
    return OpenVinoMap(path, threads=threads, batch_shape=(batch, *clip_shape) if batch else None)
