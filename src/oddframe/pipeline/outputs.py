"""What the tasks write: scores, maps, panels, and the frames and maps handed to the renderer.

Shared by detection and evaluation (neither imports the other's helpers). Files are written here and in
:mod:`oddframe.render`; the numbers come from :mod:`oddframe.pipeline.engine`.
"""

from __future__ import annotations

import csv
import functools
import inspect
import json
import math
import os
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from oddframe.config import Config
from oddframe.data.layouts import Video
from oddframe.errors import OutputError
from oddframe.files import atomic_write, output_lock, safe_name
from oddframe.models.base import AnomalyModel
from oddframe.pipeline.engine import FrameResult, postprocess
from oddframe.render.regions import BoxRule
from oddframe.runs import read_pixel_thresholds


class NpyWriter:
    """Append ``(H, W)`` frames to a ``.npy`` file of shape ``(T, H, W)`` without holding them in memory.

    Frames go to ``.NAME.partial`` (flushed one by one) and the file is moved to ``path`` with its final header on
    close, so ``path`` never holds a file numpy cannot read. ``keep`` reopens the partial (or a closed) file of an
    interrupted run and continues after its first ``keep`` frames of ``frame_shape``.
    """

    _HEADER = 128  # bytes reserved for the .npy header (version 1.0 allows any multiple of 64)

    def __init__(self, path: Path, dtype: str = "float16", *, keep: int = 0,
                 frame_shape: tuple[int, int] | None = None) -> None:
        self.path, self.dtype, self.count, self.shape = Path(path), np.dtype(dtype), 0, frame_shape
        self.partial = self.path.with_name(f".{self.path.name}.partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep:
            if self.path.is_file() and not self.partial.is_file():
                os.replace(self.path, self.partial)
            held = self.frames_in(self.partial, frame_shape, dtype) if frame_shape else 0
            if held < keep:
                raise OutputError(f"{self.path}: holds {held} maps, fewer than the {keep} frames scored; "
                                  "detect again with --overwrite")
            self._f = self.partial.open("r+b")
            self._f.truncate(self._HEADER + keep * self._frame_bytes(frame_shape, dtype))
            self._f.seek(0, os.SEEK_END)
            self.count = keep
        else:
            self._f = self.partial.open("wb")
            self._f.write(b"\0" * self._HEADER)

    @classmethod
    def _frame_bytes(cls, frame_shape: tuple[int, int] | None, dtype: str | np.dtype) -> int:
        return int(np.prod(frame_shape or (0,))) * np.dtype(dtype).itemsize

    @classmethod
    def frames_in(cls, path: Path, frame_shape: tuple[int, int], dtype: str | np.dtype = "float16") -> int:
        """Whole frames held by a (partial or closed) file of this writer; 0 if it is missing."""
        if not Path(path).is_file():
            return 0
        return max(0, (Path(path).stat().st_size - cls._HEADER) // max(1, cls._frame_bytes(frame_shape, dtype)))

    def append(self, frame: np.ndarray) -> None:
        if self.shape is None:
            self.shape = frame.shape
        self._f.write(np.ascontiguousarray(frame, dtype=self.dtype).tobytes())
        self._f.flush()
        self.count += 1

    def close(self) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.count, *(self.shape or (0, 0)))}
        text = repr(header).encode("latin1")
        pad = self._HEADER - 10 - len(text) - 1
        self._f.seek(0)
        self._f.write(b"\x93NUMPY\x01\x00" + (self._HEADER - 10).to_bytes(2, "little") + text + b" " * pad + b"\n")
        self._f.close()
        os.replace(self.partial, self.path)


def _cell(value: Any) -> Any:
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def write_scores_csv(rows: list[dict[str, Any]], path: Path, fields: list[str]) -> None:
    """Write frame scores as CSV with the given columns, atomically (NaN scores as ``nan``)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows({k: _cell(v) for k, v in row.items()} for row in rows)

    atomic_write(Path(path), write)


class ScoreJournal:
    """Raw frame scores appended to a CSV as they are produced (one flushed line per frame), so an interrupted
    detection keeps everything it scored and ``--resume`` knows where to continue.

    Columns: ``video, frame, time, raw_score, invalid``. Reopening an existing journal drops a last line cut short
    by a kill.
    """

    FIELDS = ["video", "frame", "time", "raw_score", "invalid"]

    def __init__(self, path: Path, *, resume: bool = False) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = self.read(self.path) if resume and self.path.is_file() else []
        self._rewrite()

    @classmethod
    def read(cls, path: Path) -> list[dict[str, Any]]:
        """The complete rows of a journal, typed (a torn last line is dropped)."""
        rows = []
        with Path(path).open(newline="") as f:
            for line in f.read().splitlines(keepends=True)[1:]:
                parts = next(csv.reader([line]))
                if not line.endswith("\n") or len(parts) != len(cls.FIELDS):
                    break
                video, frame, t, score, invalid = parts
                rows.append({"video": video, "frame": int(frame), "time": float(t) if t else None,
                             "raw_score": float(score), "invalid": invalid == "1"})
        return rows

    def _rewrite(self) -> None:
        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(self.FIELDS)
                w.writerows(self._line(r) for r in self.rows)

        atomic_write(self.path, write)
        self._f = self.path.open("a", newline="")
        self._w = csv.writer(self._f)

    @staticmethod
    def _line(r: dict[str, Any]) -> list[Any]:
        return [r["video"], r["frame"], "" if r["time"] is None else f"{r['time']:.6f}", repr(float(r["raw_score"])),
                int(r["invalid"])]

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` rows only (what every other output of the run also holds)."""
        if n < len(self.rows):
            self._f.close()
            self.rows = self.rows[:n]
            self._rewrite()

    def append(self, result: FrameResult) -> None:
        row = {"video": result.video, "frame": result.index, "time": result.time, "raw_score": result.score,
               "invalid": result.invalid}
        self.rows.append(row)
        self._w.writerow(self._line(row))
        self._f.flush()

    def close(self, *, delete: bool = False) -> None:
        self._f.close()
        if delete:
            self.path.unlink(missing_ok=True)


class LiveScores:
    """Final scores and flags of one video's frames while they stream by, for the on-screen verdict of the video.

    Smoothing needs the scores of the next ``r = int(4 sigma + 0.5)`` frames (scipy's Gaussian support), so items
    come out ``r`` frames late, each with exactly the score :func:`~oddframe.pipeline.engine.postprocess` gives it
    over the whole video (the filter at a frame reads only its neighbours within ``r``; the ends are the video's
    own). Per-video normalisations (``minmax``, ``regularity``) need the whole video: then the score shown is the
    raw one and the verdict is unknown (None).
    """

    def __init__(self, config: Config, reference: dict[str, float] | None, threshold: float | None,
                 earlier: list[float] = ()) -> None:
        self.config, self.reference, self.threshold = config, reference, threshold
        self.pointwise = config.score.normalise in ("none", "calibrated")
        sigma = config.score.smoothing_sigma
        self.radius = int(4.0 * sigma + 0.5) if sigma > 0 else 0
        self.raw: list[float] = list(earlier)  # the video's raw scores so far (earlier ones: from a resumed run)
        self._pending: deque[tuple[int, Any]] = deque()

    def _final(self, i: int) -> tuple[float, bool | None]:
        if not self.pointwise:
            return self.raw[i], None
        lo, hi = max(0, i - self.radius), min(len(self.raw), i + self.radius + 1)
        value = float(postprocess(np.asarray(self.raw[lo:hi]), self.config, self.reference)[i - lo])
        flagged = None if self.threshold is None or math.isnan(value) else value > self.threshold
        return value, flagged

    def push(self, score: float, item: Any) -> list[tuple[Any, float, bool | None]]:
        """Add one frame's raw score; return the items whose final score is now known, in order."""
        self.raw.append(score)
        self._pending.append((len(self.raw) - 1, item))
        return self._ready(len(self.raw) - 1 - (self.radius if self.pointwise else 0))

    def finish(self) -> list[tuple[Any, float, bool | None]]:
        """The end of the video: every remaining item."""
        return self._ready(len(self.raw) - 1)

    def _ready(self, last: int) -> list[tuple[Any, float, bool | None]]:
        out = []
        while self._pending and self._pending[0][0] <= last:
            i, item = self._pending.popleft()
            out.append((item, *self._final(i)))
        return out


def render_kwargs(config: Config, model: AnomalyModel, run_dir: Path | None = None) -> dict[str, Any]:
    """Keyword arguments of :class:`~oddframe.render.video.AnomalyVideoWriter` from the render section, with the
    run's calibrated per-pixel thresholds as the box rule when ``run_dir`` has them (a warning says when it has not)."""
    r = config.render
    box_rule = None
    if run_dir is not None:
        found = read_pixel_thresholds(run_dir)
        if found is None:
            warnings.warn(f"{run_dir} has no per-pixel map thresholds (run oddframe calibrate): boxes fall back to "
                          "fixed levels of the 0-1 loss (render.threshold_low/high)", stacklevel=2)
        else:
            tmap, info = found
            box_rule = BoxRule(threshold=tmap, smoothing=float(info.get("smoothing", r.box_smoothing)),
                               high_ratio=r.box_high_ratio, min_area=r.box_min_area, merge=r.box_merge,
                               max_boxes=r.max_boxes)
    return {
        "box_rule": box_rule,
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
    """The frame to show: the original 8-bit frame as decoded, ``(H, W)`` or ``(H, W, 3)`` uint8, when kept, else
    the model input ``(C, H, W)`` in ``[-1, 1]`` (float or 16-bit data: the model input's scaling is per frame)."""
    if r.raw is None or r.raw.dtype != np.uint8:
        return r.frame
    if r.raw.ndim == 3 and r.raw.shape[2] == 4:
        return np.ascontiguousarray(r.raw[:, :, :3])  # alpha dropped
    return r.raw[:, :, 0] if r.raw.ndim == 3 and r.raw.shape[2] == 1 else r.raw


def shown_size(frame: np.ndarray) -> tuple[int, int]:
    """``(H, W)`` of a frame from :func:`display_frame` (8-bit frames are ``(H, W[, 3])``, others ``(C, H, W)``)."""
    return tuple(frame.shape[:2]) if frame.dtype == np.uint8 else tuple(frame.shape[-2:])  # type: ignore[return-value]


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
        png = cv2.imencode(".png", cv2.cvtColor(t.panel, cv2.COLOR_RGB2BGR))[1].tobytes()
        atomic_write(folder / name, lambda tmp, png=png: tmp.write_bytes(png))
        listing.append({"video": t.video, "frame": t.frame, "score": t.score, "image": name})
    text = json.dumps(listing, indent=2)
    atomic_write(folder / "top.json", lambda tmp: tmp.write_text(text))


def exclusive_output(task: str, *, marker: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a task that writes into an ``out`` folder: hold the folder's lock while it runs (two processes never
    write one folder), and refuse a folder that already holds ``marker`` unless called with ``overwrite=True``
    (an extra keyword the decorator takes).

    Raises:
        OutputError: the folder is locked by another process, or holds ``marker`` without ``overwrite``.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, overwrite: bool = False, **kwargs: Any) -> Any:
            out = Path(signature.bind(*args, **kwargs).arguments["out"])
            with output_lock(out, task):
                if (out / marker).exists() and not overwrite:
                    raise OutputError(f"{out} already holds the results of an earlier {task} ({out / marker}); add "
                                      "--overwrite to replace them or choose another output")
                return fn(*args, **kwargs)

        return wrapper

    return decorate
