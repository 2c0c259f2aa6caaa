"""Run a trained model over any source, window by window, streaming with bounded memory.

Windows of ``clip_length`` frames start every ``stride`` frames (the last one aligned to the end); each frame's
map is aggregated over the windows that cover it (max or mean) and scored by :mod:`oddframe.scoring` as soon as
no later window can cover it, so memory holds at most one batch of windows whatever the length of the input.
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from oddframe.config import Config
from oddframe.data.clips import Clip, collate
from oddframe.data.layouts import Video, open_input
from oddframe.data.loading import TransformedFrame, iter_frames
from oddframe.errors import CheckpointError
from oddframe.models.base import AnomalyModel
from oddframe.naming import safe_name
from oddframe.runs import CALIBRATION, load_run, read_json
from oddframe.scoring import MapAccumulator, frame_scores, normalise_scores, smooth_scores
from oddframe.train import frame_transform


@dataclass
class FrameResult:
    """The verdict on one frame.

    Attributes:
        video: video name.
        index: frame number in the source.
        time: timestamp in seconds or None.
        score: raw frame score (before smoothing and normalisation), higher = more anomalous.
        amap: ``(H, W)`` float32 anomaly map at model resolution.
        frame: the model input ``(C, H, W)`` in ``[-1, 1]``.
        valid: ``(H, W)`` bool.
        raw: the untransformed frame, when the stream kept it.
    """

    video: str
    index: int
    time: float | None
    score: float
    amap: np.ndarray
    frame: np.ndarray
    valid: np.ndarray
    raw: np.ndarray | None = None


@dataclass
class Timing:
    """Where detection time goes, in seconds."""

    decode: float = 0.0
    model: float = 0.0
    scoring: float = 0.0
    frames: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.decode + self.model + self.scoring + sum(self.extra.values())

    @property
    def fps(self) -> float:
        return self.frames / self.total if self.total > 0 else float("nan")

    def as_dict(self) -> dict[str, float]:
        return {
            "frames": self.frames,
            "decode_s": self.decode,
            "model_s": self.model,
            "scoring_s": self.scoring,
            **{f"{k}_s": v for k, v in self.extra.items()},
            "total_s": self.total,
            "fps": self.fps,
        }


def default_device() -> torch.device:
    """``cuda`` when present, else ``mps`` where available, else ``cpu`` (DESIGN rule 12)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class Detector:
    """Streams frames through a model and yields one :class:`FrameResult` per frame, in order.

    Args:
        model: a trained :class:`AnomalyModel` (put in eval mode here).
        clip_length: frames per window (the model's training clip length).
        stride: frames between window starts; ``< clip_length`` overlaps windows.
        batch_size: windows per forward pass.
        aggregate: ``"max"`` or ``"mean"`` over the windows covering a frame.
        rule: frame scoring rule of :func:`oddframe.scoring.frame_scores`.
        device: where the model runs (default: :func:`default_device`).
    """

    def __init__(
        self,
        model: AnomalyModel,
        *,
        clip_length: int,
        stride: int | None = None,
        batch_size: int = 8,
        aggregate: str = "max",
        rule: str = "mse",
        device: torch.device | str | None = None,
    ) -> None:
        if aggregate not in ("max", "mean"):
            raise ValueError(f"aggregate must be 'max' or 'mean', got {aggregate!r}")
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.clip_length = clip_length
        self.stride = stride or clip_length
        if self.stride > clip_length:
            raise ValueError(f"stride ({self.stride}) larger than clip_length ({clip_length}) would skip frames")
        self.batch_size = batch_size
        self.aggregate = aggregate
        self.rule = rule
        self.map_power = getattr(model, "map_power", 2)
        self.timing = Timing()

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def run(self, frames: Iterable[TransformedFrame], video: str = "") -> Iterator[FrameResult]:
        """Score every frame of the stream ``frames``, yielding results in stream order.

        Stream positions 0, 1, ... index the buffer; a frame is emitted once no window that could still cover it
        is pending: the regular windows start at ``next_start`` or later, and the final, end-aligned window starts
        at ``n_final - clip_length >= n - clip_length``.
        """
        L = self.clip_length
        buffer: deque[TransformedFrame] = deque()  # frames from stream position `first` on
        first = 0
        pending: list[int] = []  # window starts waiting for a forward pass
        acc = MapAccumulator(how=self.aggregate)
        next_start, covered, n = 0, 0, 0
        it = iter(frames)
        while True:
            t0 = time.perf_counter()
            frame = next(it, None)
            self.timing.decode += time.perf_counter() - t0
            done = frame is None
            if not done:
                buffer.append(frame)
                n += 1
                if n - next_start >= L:
                    pending.append(next_start)
                    covered = next_start + L
                    next_start += self.stride
            elif covered < n:  # the tail (or a video shorter than a window) gets one end-aligned window
                pending.append(max(0, n - L))
                covered = n
            if pending and (len(pending) >= self.batch_size or done):
                self._forward(pending, buffer, first, acc, video)
                pending = []
            ready = n if done else min([next_start, max(0, n - L)] + pending)
            yield from self._emit(acc, buffer, first, ready, video)
            while buffer and first < ready:  # emitted frames are needed by no future window
                buffer.popleft()
                first += 1
            if done:
                return

    def _forward(self, starts: list[int], buffer: deque, first: int, acc: MapAccumulator, video: str) -> None:
        clips = []
        for s in starts:
            window = [buffer[p - first] for p in range(s, min(s + self.clip_length, first + len(buffer)))]
            frames = torch.from_numpy(np.stack([f.data for f in window], axis=1))  # (C, T, H, W)
            valid = torch.from_numpy(np.stack([f.valid for f in window]))[None]
            positions = torch.arange(s, s + len(window))
            clips.append(Clip(frames, valid, video, positions))
        batch = collate(clips, self.clip_length).to(self.device)
        t0 = time.perf_counter()
        with torch.inference_mode(), self._autocast():
            maps = self.model.anomaly_map(batch).float()
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # honest timing: kernels run asynchronously
        self.timing.model += time.perf_counter() - t0
        maps_np = maps.cpu().numpy()
        index = batch.frame_index.cpu().numpy()
        for b in range(len(starts)):
            keep = index[b] >= 0
            acc.add(index[b][keep], maps_np[b][keep])

    def _emit(self, acc: MapAccumulator, buffer: deque, first: int, before: int, video: str) -> Iterator[FrameResult]:
        for pos, amap in acc.pop_ready(before):
            f = buffer[pos - first]
            t0 = time.perf_counter()
            score = float(frame_scores(amap[None], f.valid[None], rule=self.rule, map_power=self.map_power)[0])
            self.timing.scoring += time.perf_counter() - t0
            self.timing.frames += 1
            yield FrameResult(video, f.index, f.time, score, amap.astype(np.float32), f.data, f.valid, f.raw)


# --- From a run folder and an input path to files -------------------------------------------------------------


def detector_for(model: AnomalyModel, config: Config, *, device: torch.device | str | None = None) -> Detector:
    """A :class:`Detector` set up from the run's data and score sections."""
    return Detector(
        model,
        clip_length=config.data.clip_length,
        stride=config.score.stride,
        batch_size=config.score.batch_size,
        aggregate=config.score.aggregate,
        rule=config.score.rule,
        device=device,
    )


def stream_video(detector: Detector, video: Video, config: Config, *, keep_raw: bool = False) -> Iterator[FrameResult]:
    """Score one video of a dataset frame by frame."""
    frames = iter_frames(
        video.source,
        frame_transform(config),
        sample_interval=config.data.sample_interval,
        sample_interval_sec=config.data.sample_interval_sec,
        keep_raw=keep_raw,
    )
    return detector.run(frames, video.name)


def postprocess(scores: np.ndarray, config: Config, reference: dict[str, float] | None = None) -> np.ndarray:
    """Smooth and normalise one video's raw score curve as the score section says.

    ``reference`` holds ``mean`` and ``std`` of raw scores of normal frames (from calibration), needed by the
    ``calibrated`` normalisation.
    """
    s = smooth_scores(np.asarray(scores, dtype=np.float64), config.score.smoothing_sigma)
    ref = None
    if config.score.normalise == "calibrated":
        if not reference:
            raise CheckpointError(
                "score.normalise=calibrated needs a calibrated run: run `oddframe calibrate RUN` first"
            )
        # The run stores only the mean and std of its normal scores; these two points have exactly that mean and
        # (population) std, which is all the z-score of normalise_scores uses.
        ref = np.asarray([reference["mean"] - reference["std"], reference["mean"] + reference["std"]])
    return normalise_scores(s, config.score.normalise, reference=ref)


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


@dataclass
class DetectSummary:
    """What :func:`detect` wrote and how fast it ran."""

    out: Path
    n_videos: int
    n_frames: int
    timing: dict[str, float]
    threshold: float | None


def detect(
    run_dir: str | Path,
    input_path: str | Path,
    out: str | Path,
    *,
    overrides: tuple[str, ...] | list[str] = (),
    maps: bool = False,
    video: str | Path | None = None,
    progress: bool = True,
    device: str | None = None,
) -> DetectSummary:
    """Score every frame of ``input_path`` (any source or dataset; a dataset's test split) with a trained run.

    Writes ``scores.csv`` (video, frame, time, score, flagged), with ``maps=True`` the anomaly maps as
    ``maps/<video>.npy`` (float16, ``(T, H, W)`` at model resolution), and with ``video`` an MP4 of the frames
    beside their anomaly heatmaps.
    """
    from oddframe.render.video import AnomalyVideoWriter

    model, config = load_run(run_dir, overrides=overrides)
    calibration = read_calibration(run_dir)
    dataset = open_input(input_path)
    videos = dataset.test or dataset.train
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    detector = detector_for(model, config, device=device)
    threshold = calibration.get("threshold") if calibration else None
    writer = None
    if video is not None:
        writer = AnomalyVideoWriter(Path(video), fps=config.render.fps or _fps(videos) or 10.0, **render_kwargs(config, model))
    rows: list[dict] = []
    n_frames = 0
    with progress_bar(progress) as bar:
        task = bar.add_task("detecting", total=sum(len(v.source) // config.data.sample_interval for v in videos))
        for v in videos:
            bar.update(task, description=f"detecting {v.name}")
            map_writer = NpyWriter(out / "maps" / f"{safe_name(v.name)}.npy") if maps else None
            idx, times, raw_scores = [], [], []
            for r in stream_video(detector, v, config, keep_raw=writer is not None):
                idx.append(r.index)
                times.append(r.time)
                raw_scores.append(r.score)
                if map_writer is not None:
                    map_writer.append(r.amap)
                if writer is not None:
                    t0 = time.perf_counter()
                    shown = display_frame(r)
                    writer.write(shown, resize_map(r.amap, shown.shape[-2:]), title=f"{v.name} #{r.index}")
                    detector.timing.extra["render"] = detector.timing.extra.get("render", 0.0) + time.perf_counter() - t0
                bar.advance(task)
            if map_writer is not None:
                map_writer.close()
            scores = postprocess(np.asarray(raw_scores), config, calibration.get("reference") if calibration else None)
            for i, t, s in zip(idx, times, scores):
                rows.append({"video": v.name, "frame": i, "time": "" if t is None else f"{t:.6f}", "score": float(s),
                             "flagged": "" if threshold is None else int(s > threshold)})
            n_frames += len(idx)
    if writer is not None:
        writer.close()
    write_scores_csv(rows, out / "scores.csv", ["video", "frame", "time", "score", "flagged"])
    return DetectSummary(out, len(videos), n_frames, detector.timing.as_dict(), threshold)


# --- small helpers shared with evaluation -------------------------------------------------------------------------


def read_calibration(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``calibration.json`` (threshold and reference statistics), or None if not calibrated."""
    path = Path(run_dir) / CALIBRATION
    return read_json(path) if path.is_file() else None


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


def _fps(videos: list[Video]) -> float | None:
    return next((v.source.fps for v in videos if v.source.fps), None)


def progress_bar(enabled: bool) -> Progress:
    """The Rich progress bar of detection, calibration and evaluation (a no-op when disabled)."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=not enabled,
    )


def write_scores_csv(rows: list[dict[str, Any]], path: Path, fields: list[str]) -> None:
    """Write frame scores as CSV with the given columns."""
    with Path(path).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
