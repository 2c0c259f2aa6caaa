"""The streaming engine: a trained model over any frame stream, window by window, with bounded memory.

Windows of ``clip_length`` frames start every ``stride`` frames (the last one aligned to the end); each frame's
map is aggregated over the windows that cover it (max or mean) and scored by :mod:`oddframe.scoring` as soon as
no later window can cover it, so memory holds at most one batch of windows whatever the length of the input.
Every task that scores frames (calibrate, detect, evaluate) runs this engine, so they all report what a user of
``oddframe detect`` gets.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from oddframe.config import Config
from oddframe.data.clips import Clip, collate
from oddframe.data.layouts import Video
from oddframe.data.loading import TransformedFrame, iter_frames, prefetched
from oddframe.data.transforms import conversion_note, frame_transform
from oddframe.errors import CheckpointError, ConfigError
from oddframe.features import with_features
from oddframe.models.base import AnomalyModel
from oddframe.models.fusion import FusionModel
from oddframe.models.inference import for_inference
from oddframe.scoring import MapAccumulator, frame_scores, normalise_scores, smooth_scores
from oddframe.ssim import ssim_map


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
        members: a fused run's calibrated member scores by member name (:mod:`oddframe.pipeline.fusion`).
        invalid: too few valid pixels to judge (``min_valid_fraction``): ``score`` is NaN, never "normal".
    """

    video: str
    index: int
    time: float | None
    score: float
    amap: np.ndarray
    frame: np.ndarray
    valid: np.ndarray
    raw: np.ndarray | None = None
    members: dict[str, float] | None = None
    invalid: bool = False


@dataclass
class Timing:
    """Where detection time goes, in seconds: waiting for the next decoded and transformed frame (``decode``: what
    the prefetching thread did not hide behind the model), the model's forward passes, frame scoring, and ``extra``
    by name (each derived input, e.g. ``flow``; ``render`` for videos)."""

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
        rule: frame scoring rule of :func:`oddframe.scoring.frame_scores`; ``"ssim"`` scores ``1 - SSIM`` maps of
            the observed against the reconstructed clip (:func:`oddframe.ssim.ssim_map`) instead of the model's map.
        rule_options: keyword options of the rule (e.g. ``{"weighting": "log_area"}`` for ``"blob"``).
        device: where the model runs (default: :func:`default_device`).
        backend: an exported runner of the same map (:mod:`oddframe.backends`: anything with
            ``anomaly_map(batch) -> (B, T, H, W)``) called instead of the model; it runs on the CPU.
        min_valid_fraction: a frame with a smaller share of valid pixels gets no score (NaN, ``invalid``).
        eager: emit a frame as soon as the regular windows covering it are scored (a live stream: up to one window
            sooner), instead of waiting until the end-aligned last window of the stream can no longer cover it;
            that last window then adds to the frames not yet emitted only (the last ``clip_length - 1`` frames
            before the stream ends may score lower than without ``eager``).
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
        rule_options: dict[str, object] | None = None,
        device: torch.device | str | None = None,
        min_valid_fraction: float = 0.0,
        eager: bool = False,
        backend: Any = None,
    ) -> None:
        if aggregate not in ("max", "mean"):
            raise ValueError(f"aggregate must be 'max' or 'mean', got {aggregate!r}")
        if rule == "ssim" and type(model).reconstruct is AnomalyModel.reconstruct:
            raise ConfigError(
                f"score.rule=ssim compares each frame with the model's reconstruction, and "
                f"{getattr(model, 'model_name', type(model).__name__)} reconstructs nothing; choose another score.rule"
            )
        if rule == "ssim" and backend is not None:
            raise ConfigError("score.rule=ssim needs the model's reconstruction, and an exported backend gives only "
                              "its map: use --backend torch, or another score.rule")
        self.backend = backend
        if backend is not None:
            device = "cpu"  # exported runtimes take CPU arrays
        self.device = torch.device(device) if device is not None else default_device()
        # An exact rewrite for speed (folded BatchNorm, sub-pixel transposed convolutions, oneDNN at batch 1); the
        # caller's model is not changed, it may go on training. With an exported backend the model only names its
        # derived inputs, so it is not rewritten (the export holds the rewrite already).
        self.model = model.to(self.device).eval() if backend is not None else for_inference(model.to(self.device))
        self.clip_length = clip_length
        self.stride = stride or clip_length
        if self.stride > clip_length:
            raise ValueError(f"stride ({self.stride}) larger than clip_length ({clip_length}) would skip frames")
        self.batch_size = batch_size
        self.aggregate = aggregate
        self.rule = rule
        self.rule_options = dict(rule_options or {})
        self.map_power = getattr(model, "map_power", 2)
        self.min_valid_fraction = min_valid_fraction
        self.eager = eager
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
        next_start, covered, n, emitted = 0, 0, 0, 0  # frames before `emitted` are out
        it = iter(frames)
        failure: Exception | None = None  # a source that breaks part-way: score what came before, then raise it
        while True:
            t0, derived = time.perf_counter(), sum(self.timing.extra.values())
            try:
                frame = next(it, None)
            except Exception as exc:  # noqa: BLE001 - re-raised below, once the frames read so far are out
                frame, failure = None, exc
            # Derived inputs computed inside the stream record their own time in timing.extra (stream_video).
            self.timing.decode += time.perf_counter() - t0 - (sum(self.timing.extra.values()) - derived)
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
                self._forward(pending, buffer, first, acc, video, emitted)
                pending = []
            ready = n if done else min([next_start] + ([] if self.eager else [max(0, n - L)]) + pending)
            yield from self._emit(acc, buffer, first, ready, video)
            emitted = max(emitted, ready)
            while buffer and first < min(ready, max(0, n - L)):  # frames no future window needs (the end-aligned
                buffer.popleft()  # last one may start at n - L)
                first += 1
            if done:
                if failure is not None:
                    raise failure
                return

    def _forward(self, starts: list[int], buffer: deque, first: int, acc: MapAccumulator, video: str,
                 emitted: int = 0) -> None:
        clips = []
        for s in starts:
            window = [buffer[p - first] for p in range(s, min(s + self.clip_length, first + len(buffer)))]
            frames = torch.from_numpy(np.stack([f.data for f in window], axis=1))  # (C, T, H, W)
            valid = torch.from_numpy(np.stack([f.valid for f in window]))[None]
            # The model sees the frames' numbers in their source (as in training), not stream positions: they
            # differ when frames are sampled (data.sample_interval > 1).
            numbers = torch.as_tensor([f.index for f in window], dtype=torch.long)
            extras = {k: torch.from_numpy(np.stack([f.features[k] for f in window], axis=1)) for k in window[0].features}
            clips.append(Clip(frames, valid, video, numbers, extras))
        batch = collate(clips, self.clip_length).to(self.device)
        t0 = time.perf_counter()
        with torch.inference_mode(), self._autocast():
            if self.rule == "ssim":  # the one rule that needs the reconstruction rather than the model's map
                maps = ssim_map(batch.frames, self.model.reconstruct(batch), batch.valid)
            else:
                runner = self.model if self.backend is None else self.backend
                maps = runner.anomaly_map(batch).float()
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # honest timing: kernels run asynchronously
        self.timing.model += time.perf_counter() - t0
        maps_np = maps.cpu().numpy()
        for b, s in enumerate(starts):  # padded frames come last in a window: the first n are the real ones
            n = min(self.clip_length, first + len(buffer) - s)
            k = max(0, emitted - s)  # (eager) frames already emitted keep the score they went out with
            if k < n:
                acc.add(np.arange(s + k, s + n), maps_np[b][k:n])

    def _emit(self, acc: MapAccumulator, buffer: deque, first: int, before: int, video: str) -> Iterator[FrameResult]:
        for pos, amap in acc.pop_ready(before):
            f = buffer[pos - first]
            t0 = time.perf_counter()
            # A frame (almost) without valid pixels carries no evidence: no score rather than a "normal" 0.
            invalid = not f.valid.any() or f.valid.mean() < self.min_valid_fraction
            score = math.nan if invalid else float(
                frame_scores(amap[None], f.valid[None], rule=self.rule, map_power=self.map_power, **self.rule_options)[0]
            )
            self.timing.scoring += time.perf_counter() - t0
            self.timing.frames += 1
            yield FrameResult(video, f.index, f.time, score, amap.astype(np.float32), f.data, f.valid, f.raw,
                              invalid=invalid)


# --- From a run's config to a detector and a scored stream ---------------------------------------------------


def detector_for(
    model: AnomalyModel, config: Config, *, device: torch.device | str | None = None, backend: Any = None
) -> Detector:
    """A :class:`Detector` set up from the run's data and score sections (a fused run's members each get theirs;
    ``backend``: see :class:`Detector`)."""
    if isinstance(model, FusionModel):
        if backend is not None:
            raise ConfigError("a fused run detects with its members' PyTorch models: use --backend torch")
        from oddframe.pipeline.fusion import FusedDetector  # the fused detector builds on this module

        return FusedDetector(model, config, device=device)  # type: ignore[return-value]
    return Detector(
        model,
        clip_length=config.data.clip_length,
        stride=config.score.stride,
        batch_size=config.score.batch_size,
        aggregate=config.score.aggregate,
        rule=config.score.rule,
        rule_options={"weighting": config.score.blob_weighting} if config.score.rule == "blob" else None,
        device=device,
        min_valid_fraction=config.score.min_valid_fraction,
        backend=backend,
    )


def stream_video(
    detector: Detector, video: Video, config: Config, *, keep_raw: bool = False, start: int = 0,
    prefetch: bool = True,
) -> Iterator[FrameResult]:
    """Score one video of a dataset frame by frame (with the derived inputs its model asks for).

    ``start`` > 0 continues an interrupted run: results begin at stream position ``start`` and are the ones a run
    from the beginning gives. The stream restarts at the last window start ``s0 <= start - clip_length`` (a
    multiple of the stride), so every window covering a frame from ``start`` on, the end-aligned last one included,
    is the same window; a derived input that needs the previous frame (flow) starts one frame earlier still.
    ``prefetch`` decodes and transforms in a background thread, overlapping the model (off for a live source, whose
    reader thread and bounded queue must see how far the model is behind).
    """
    if hasattr(detector, "stream"):  # a fused detector: each member transforms the decoded frames its own way
        fused = detector.stream(video, keep_raw=keep_raw)
        return fused if start == 0 else itertools.islice(fused, start, None)
    s0 = max(0, (start - detector.clip_length) // detector.stride * detector.stride) if start > 0 else 0
    lead = 1 if s0 > 0 and detector.model.derived_inputs() else 0
    frames = iter_frames(
        video.source,
        frame_transform(config.data),
        sample_interval=config.data.sample_interval,
        sample_interval_sec=config.data.sample_interval_sec,
        keep_raw=keep_raw,
        start=s0 - lead,
    )
    # Decoding, transforms and derived inputs run in a background thread, overlapping the model.
    derived = with_features(frames, detector.model.derived_inputs(), timing=detector.timing.extra)
    stream = itertools.islice(derived, lead, None)
    if prefetch:  # a live source has its own reader thread, and must not be pulled ahead of the model
        stream = prefetched(stream)
    results = detector.run(stream, video.name)
    return results if start == 0 else (r for p, r in enumerate(results, start=s0) if p >= start)


def warn_conversions(videos: list[Video], config: Config) -> None:
    """Say (a warning per kind of conversion) when input frames are converted to the model's channels, never silently."""
    seen: dict[str, list[str]] = {}
    for v in videos:
        note = conversion_note(v.source.frame_shape(), config.data.channels)
        if note:
            seen.setdefault(note, []).append(v.name)
    for note, names in seen.items():
        which = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        warnings.warn(f"{which}: {note} (data.channels={config.data.channels}, as the model was trained)", stacklevel=2)


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
