"""What the tasks write: scores, maps, panels, and the frames and maps handed to the renderer.

Shared by detection and evaluation (neither imports the other's helpers). Files are written here and in
:mod:`oddframe.render`; the numbers come from :mod:`oddframe.pipeline.engine`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from oddframe.config import Config
from oddframe.data.layouts import Video
from oddframe.files import safe_name
from oddframe.models.base import AnomalyModel
from oddframe.pipeline.engine import FrameResult


class NpyWriter:
    """Append ``(H, W)`` frames to a ``.npy`` file of shape ``(T, H, W)`` without holding them in memory.

    The header is written with room to spare and rewritten with the final frame count on close.
    """

    _HEADER = 128  # bytes reserved for the .npy header (version 1.0 allows any multiple of 64)

    def __init__(self, path: Path, dtype: str = "float16") -> None:
        self.path, self.dtype, self.count, self.shape = Path(path), np.dtype(dtype), 0, None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("wb")
        self._f.write(b"\0" * self._HEADER)

    def append(self, frame: np.ndarray) -> None:
        if self.shape is None:
            self.shape = frame.shape
        self._f.write(np.ascontiguousarray(frame, dtype=self.dtype).tobytes())
        self.count += 1

    def close(self) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.count, *(self.shape or (0, 0)))}
        text = repr(header).encode("latin1")
        pad = self._HEADER - 10 - len(text) - 1
        self._f.seek(0)
        self._f.write(b"\x93NUMPY\x01\x00" + (self._HEADER - 10).to_bytes(2, "little") + text + b" " * pad + b"\n")
        self._f.close()


def write_scores_csv(rows: list[dict[str, Any]], path: Path, fields: list[str]) -> None:
    """Write frame scores as CSV with the given columns."""
    with Path(path).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def render_kwargs(config: Config, model: AnomalyModel) -> dict[str, Any]:
    """Keyword arguments of :class:`~oddframe.render.video.AnomalyVideoWriter` from the render section."""
    r = config.render
    return {
        "map_power": getattr(model, "map_power", 2),
        "mode": r.mode,
        "style": r.style,
        "frame_scale": r.frame_scale,
        "frame_cmap": r.frame_cmap,
        "vmax": r.vmax,
        "threshold_low": r.threshold_low,
        "threshold_high": r.threshold_high,
    }


def display_frame(r: FrameResult) -> np.ndarray:
    """The frame to show: the original (scaled to ``[-1, 1]``) when kept, else the model input; ``(C, H, W)``."""
    if r.raw is None:
        return r.frame
    raw = r.raw.astype(np.float32)
    if r.raw.dtype == np.uint8:
        raw = raw / 127.5 - 1.0
    else:  # float or 16-bit data: the model input's scaling is per frame, so show the model input instead
        return r.frame
    return raw[None] if raw.ndim == 2 else np.moveaxis(raw, -1, 0)


def resize_map(amap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize an ``(h, w)`` map to ``shape`` (H, W) bilinearly (no-op when equal)."""
    h, w = shape
    if amap.shape == (h, w):
        return amap
    return cv2.resize(amap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def video_fps(videos: list[Video]) -> float | None:
    """The frame rate of the first video that has one (None if none has)."""
    return next((v.source.fps for v in videos if v.source.fps), None)


@dataclass
class Panel:
    """A rendered frame | map panel of one frame, for the report (most anomalous or labelled frames)."""

    score: float
    video: str
    frame: int
    panel: np.ndarray


def write_panels(panels: list[Panel], folder: Path) -> None:
    """Save panels as PNG with a ``top.json`` listing (video, frame, score, image) in order."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = []
    for rank, t in enumerate(panels):
        name = f"{rank:02d}_{safe_name(t.video)}_{t.frame:06d}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(t.panel, cv2.COLOR_RGB2BGR))
        listing.append({"video": t.video, "frame": t.frame, "score": t.score, "image": name})
    (folder / "top.json").write_text(json.dumps(listing, indent=2))
