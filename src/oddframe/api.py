"""The Python API: the same path as the command line in a few calls.

>>> from oddframe import api                                          # doctest: +SKIP
>>> config = api.load_config("configs/ped2_conv3d_ae.yaml", ["train.epochs=2"])
>>> api.train(config, "runs/ped2")
>>> api.calibrate("runs/ped2")
>>> metrics = api.evaluate("runs/ped2", "../shared/data/ped2", "runs/ped2/eval")
>>> api.detect("runs/ped2", "video.mp4", "runs/ped2/detect", video="runs/ped2/detect/anomaly.mp4")
>>> api.watch("runs/ped2", "rtsp://camera.local/stream", events="events.jsonl", duration=60)
>>> api.export("runs/ped2", int8=True)                                # then detect(..., backend="openvino")
>>> api.bench(["configs/ped2_conv3d_ae.yaml", "configs/ped2_convlstm_ae.yaml"], "../shared/data/ped2", "bench/ped2")
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from oddframe.config import Config, load_config
from oddframe.data.layouts import load_dataset, open_input
from oddframe.data.sources import open_source
from oddframe.data.synthetic import write_synthetic_dataset
from oddframe.pipeline.bench import bench
from oddframe.pipeline.archive import detect_many
from oddframe.pipeline.detect import detect
from oddframe.pipeline.calibrate import calibrate
from oddframe.pipeline.evaluate import evaluate
from oddframe.pipeline.export import export
from oddframe.registry import build_model, list_models
from oddframe.runs import load_run
from oddframe.pipeline.train import fuse, train
from oddframe.pipeline.watch import watch

__all__ = [
    "Config",
    "bench",
    "build_model",
    "builtin_config",
    "calibrate",
    "detect",
    "detect_many",
    "evaluate",
    "export",
    "fuse",
    "list_models",
    "load_config",
    "load_dataset",
    "load_run",
    "open_input",
    "open_source",
    "train",
    "watch",
    "write_synthetic_dataset",
]


def builtin_config(name: str) -> Path:
    """Path of a config shipped inside the package (``demo``), for use with :func:`load_config`."""
    path = Path(str(resources.files("oddframe") / "configs" / f"{name}.yaml"))
    if not path.is_file():
        raise FileNotFoundError(f"no built-in config {name!r}")
    return path
