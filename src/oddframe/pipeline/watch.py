"""``oddframe watch``: score a live source as its frames arrive and say when something unusual starts and ends.

Frames come from a :class:`~oddframe.data.live.LiveSource` (network streams, cameras, pipes, standard input, files
played as streams) and go through the same streaming engine as ``oddframe detect``, one window per forward pass so
a frame waits for its window and no more. Latency stays bounded: a frame that waited longer than ``max_latency``
seconds for the model is dropped (counted) rather than queued without end. Final scores (smoothed and normalised
as the run says, :class:`~oddframe.pipeline.outputs.LiveScores`) go through :class:`~oddframe.events.EventTracker`
(hysteresis), and each event start and end is written as a JSON line (standard output or ``events``), posted to a
webhook, and recorded as a clip. A source that drops is reopened with backoff; the open event is closed at the gap
and the gap is reported. SIGINT/SIGTERM end the watch cleanly: the last frames are scored, the open event is
closed, every file is complete.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from oddframe.data.layouts import Video
from oddframe.data.live import Arrival, Ended, LiveSource, Lost, Resumed
from oddframe.errors import CheckpointError, ConfigError
from oddframe.events import EventTracker, EventUpdate
from oddframe.files import output_lock
from oddframe.pipeline.engine import FrameResult, detector_for, stream_video
from oddframe.pipeline.live_outputs import EventClips, EventLog, RollingCsv, Webhook
from oddframe.pipeline.live_view import LiveView
from oddframe.pipeline.outputs import LiveScores, render_kwargs
from oddframe.render.regions import exceedance, find_regions
from oddframe.runs import load_run, open_run_backend, read_calibration
from oddframe.stopping import StopRequest

FIELDS = ["frame", "time", "wall", "score", "raw_score", "flagged", "invalid", "latency_ms", "model_latency_ms"]


@dataclass
class WatchSummary:
    """How a watch went.

    Attributes:
        received: frames that arrived; ``scored`` of them were scored; ``dropped_late`` waited longer than
            ``max_latency`` for the model, ``dropped_queue`` found the source's queue full (both: not scored).
        latency: seconds from a frame's arrival to its score (``model_*``: the model's raw score; the others: the
            final, smoothed score that decides events), ``p50``, ``p95``, ``max``.
        stopped_by: what ended the watch (a signal's name, ``duration``, ``frames``, or the source's end).
    """

    source: str
    threshold: float
    received: int = 0
    scored: int = 0
    dropped_late: int = 0
    dropped_queue: int = 0
    corrupt_packets: int = 0
    events: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    latency: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    stopped_by: str = ""
    clips: list[Path] = field(default_factory=list)
    webhook: dict[str, int] | None = None
    timing: dict[str, float] = field(default_factory=dict)  #: the engine's (decode, model, scoring seconds, frames)


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds")


class _Segment:
    """The frames of a source from one (re)connection to the next loss, as a one-pass frame source."""

    def __init__(self, frames: Iterator[Any], path: str) -> None:
        self._frames, self.path = frames, path

    def __iter__(self) -> Iterator[Any]:
        return self._frames


class _Watch:
    """One watch: the source, the run's detector, the event tracker and the outputs (see :func:`watch`)."""

    def __init__(self, src: LiveSource, model: Any, config: Any, box_rule: Any, *, threshold: float,
                 reference: dict[str, float] | None, tracker: EventTracker, max_latency: float,
                 log: Callable[[str], None], event_log: EventLog, webhook: Webhook | None, clips: EventClips | None,
                 scores: RollingCsv | None, view: LiveView | None, stop: StopRequest, duration: float | None,
                 max_frames: int | None, device: str | None, backend: Any = None) -> None:
        self.src, self.model, self.config, self.box_rule = src, model, config, box_rule
        self.threshold, self.reference, self.tracker = threshold, reference, tracker
        self.max_latency, self.log, self.stop = max_latency, log, stop
        self.event_log, self.webhook, self.clips, self.scores, self.view = event_log, webhook, clips, scores, view
        self.detector = detector_for(model, config, device=device, backend=backend)
        for det in getattr(self.detector, "members", [self.detector]):
            det.batch_size = 1  # a window goes to the model as soon as it is complete: latency before throughput
            det.eager = True  # and a frame goes out once its windows are scored, not one window later
        self.summary = WatchSummary(src.source, threshold)
        self.deadline = None if duration is None else time.monotonic() + duration
        self.max_frames = max_frames
        self.arrivals: dict[int, tuple[float, float]] = {}  # frame -> (arrival, wall) until it is scored
        self.model_latency: deque[float] = deque(maxlen=100_000)
        self.final_latency: deque[float] = deque(maxlen=100_000)
        self.frame_size: tuple[int, int] | None = None
        self.finished = False
        self.lost: Lost | None = None
        self.clip_paths: dict[int, Path] = {}

    # --- frames in

    def _frames(self) -> Iterator[Any]:
        """Frames of the source until it is lost or ends, or the watch stops (a generator the engine pulls)."""
        s = self.summary
        while True:
            if self.stop.requested:
                s.stopped_by = signal.Signals(self.stop.signum).name
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                s.stopped_by = "duration"
            elif self.max_frames is not None and s.received >= self.max_frames:
                s.stopped_by = "frames"
            if s.stopped_by:
                self.finished = True
                return
            item = self.src.get(0.1)
            if isinstance(item, Arrival):
                s.received += 1
                if self.src.live and time.monotonic() - item.arrival > self.max_latency:
                    s.dropped_late += 1  # the model fell behind: skip to fresher frames
                    continue
                self.frame_size = self.frame_size or item.frame.data.shape[:2]
                self.arrivals[item.frame.index] = (item.arrival, item.wall)
                yield item.frame
            elif isinstance(item, Lost):
                self.lost = item
                self.log(f"source lost at {_iso(item.wall)} ({item.reason}); reconnecting")
                return
            elif isinstance(item, Resumed):
                gap = {"type": "gap", "lost_at": _iso(self.lost.wall) if self.lost else None,
                       "resumed_at": _iso(item.wall), "seconds": round(item.seconds, 3), "attempts": item.attempts,
                       "reason": self.lost.reason if self.lost else None}
                self.lost = None
                s.gaps.append(gap)
                self._publish(gap)
                self.log(f"source back after a gap of {item.seconds:.1f} s ({item.attempts} attempt(s))")
            elif isinstance(item, Ended):
                s.stopped_by = s.stopped_by or item.reason
                self.finished = True
                if item.error is not None:
                    raise item.error
                return

    # --- scores out

    def run(self) -> WatchSummary:
        t0 = time.monotonic()
        tr = self.tracker
        self.log(f"watching {self.src.source} (threshold {self.threshold:.4g}: an event starts after {tr.min_frames} "
                 f"frames above it and ends after {tr.quiet:g} s below; frames waiting over {self.max_latency:g} s "
                 "for the model are dropped)")
        self.src.start()
        try:
            while not self.finished:
                live = LiveScores(self.config, self.reference, self.threshold)
                video = Video("live", _Segment(self._frames(), self.src.source))  # type: ignore[arg-type]
                try:
                    keep_raw = self.clips is not None or self.view is not None  # frames shown as they came
                    for r in stream_video(self.detector, video, self.config, keep_raw=keep_raw, prefetch=False):
                        self._model_scored(r, live)
                finally:  # the segment's last frames: scored by the engine's end-aligned window, then final
                    for (r, lat), score, flagged in live.finish():
                        self._final(r, score, flagged, lat)
                    if self.lost is not None or self.finished:
                        self._updates(self.tracker.close("gap" if self.lost is not None else "stopped"))
        finally:
            self.src.close()
            s = self.summary
            s.wall_s = time.monotonic() - t0
            s.dropped_queue, s.corrupt_packets, s.events = self.src.dropped, self.src.corrupt, self.tracker.n_events
            s.latency = {**_stats("model_", self.model_latency), **_stats("", self.final_latency)}
            s.timing = self.detector.timing.as_dict()
        return self.summary

    def _model_scored(self, r: FrameResult, live: LiveScores) -> None:
        model_latency = time.monotonic() - self.arrivals[r.index][0]
        self.model_latency.append(model_latency)
        for (done, lat), score, flagged in live.push(r.score, (r, model_latency)):
            self._final(done, score, flagged, lat)

    def _final(self, r: FrameResult, score: float, flagged: bool | None, model_latency: float) -> None:
        while next(iter(self.arrivals)) < r.index:  # frames left out by data.sample_interval
            self.arrivals.pop(next(iter(self.arrivals)))
        arrival, wall = self.arrivals.pop(r.index)
        latency = time.monotonic() - arrival
        self.final_latency.append(latency)
        self.summary.scored += 1
        if self.scores is not None:
            self.scores.append({
                "frame": r.index, "time": f"{r.time:.3f}", "wall": _iso(wall), "score": _num(score),
                "raw_score": _num(r.score), "flagged": "" if flagged is None else int(flagged),
                "invalid": int(r.invalid), "latency_ms": f"{1000 * latency:.1f}",
                "model_latency_ms": f"{1000 * model_latency:.1f}"})
        if self.clips is not None:
            self.clips.add(r, score, flagged)
        if self.view is not None:
            self.view.frame(r, score, flagged)
        self._updates(self.tracker.update(r.index, r.time, score, payload=r))

    def _updates(self, updates: list[EventUpdate]) -> None:
        for u in updates:
            ev = u.event
            record = {"type": u.kind, **ev.to_dict(), "threshold": self.threshold}
            if self.src.kind != "file":  # live: the stream's clock is the arrival time since the watch started
                record["start_wall"] = _iso(self.src.wall0 + ev.start_time)
                record["end_wall"] = None if ev.end_time is None else _iso(self.src.wall0 + ev.end_time)
            record["boxes"], record["frame_size"] = self._boxes(ev.payload), self.frame_size
            if self.clips is not None:
                if u.kind == "start":
                    self.clips.fps = self.config.render.fps or self.src.fps or self.clips.fps  # a stream's rate is
                    self.clip_paths[ev.id] = self.clips.start(ev.id, ev.start_time)  # known once it is open
                else:
                    self.clips.end(ev.end_time)
                record["clip"] = str(self.clip_paths.get(ev.id))
            self._publish(record)
            what = (f"event {ev.id} started at frame {ev.start_frame} (t={ev.start_time:.2f} s), "
                    f"peak {ev.peak_score:.4g}" if u.kind == "start" else
                    f"event {ev.id} ended at frame {ev.end_frame} (t={ev.end_time:.2f} s, {ev.ended_by}), "
                    f"{ev.end_time - ev.start_time:.2f} s, peak {ev.peak_score:.4g} at frame {ev.peak_frame}")
            self.log(what)

    def _boxes(self, r: FrameResult | None) -> list[dict[str, Any]] | None:
        """Boxes of the unusual regions of the peak frame, in the source frame's pixels (None: no per-pixel
        thresholds in the run)."""
        if r is None or self.box_rule is None:
            return None
        ratio = exceedance(r.amap, self.box_rule)
        h, w = ratio.shape
        H, W = self.frame_size or (h, w)
        return [{"x0": round(b.x0 * W / w), "y0": round(b.y0 * H / h), "x1": round(b.x1 * W / w),
                 "y1": round(b.y1 * H / h), "level": b.level, "peak_ratio": round(b.peak, 3)}
                for b in find_regions(ratio, self.box_rule)]

    def _publish(self, record: dict[str, Any]) -> None:
        self.event_log.write(record)
        if self.webhook is not None:
            self.webhook.post(record)
        if self.view is not None:
            self.view.event(record)


def _num(x: float) -> str:
    return "nan" if not np.isfinite(x) else repr(float(x))


def _stats(prefix: str, values: deque[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {f"{prefix}p50": float(np.percentile(a, 50)), f"{prefix}p95": float(np.percentile(a, 95)),
            f"{prefix}max": float(a.max())}


def watch(
    run_dir: str | Path,
    source: str | Path,
    *,
    events: str | Path | None = None,
    webhook: str | None = None,
    clips: str | Path | None = None,
    scores: str | Path | None = None,
    realtime: bool = False,
    loop: bool = False,
    max_latency: float = 1.0,
    min_frames: int = 3,
    quiet: float = 2.0,
    threshold: float | None = None,
    end_threshold: float | None = None,
    clip_before: float = 3.0,
    clip_after: float = 3.0,
    input_format: str | None = None,
    input_options: dict[str, str] | None = None,
    retry_for: float | None = None,
    webhook_timeout: float = 5.0,
    webhook_retries: int = 3,
    duration: float | None = None,
    max_frames: int | None = None,
    view: int | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    device: str | None = None,
    backend: str = "torch",
    log: Callable[[str], None] | None = None,
) -> WatchSummary:
    """Watch ``source`` with the trained run ``run_dir`` until it ends, ``duration`` passes, or SIGINT/SIGTERM.

    Event records (``{"type": "start" | "end", "id", "start_frame", "start_time", "end_frame", "end_time",
    "duration", "peak_frame", "peak_time", "peak_score", "boxes", ...}`` and ``{"type": "gap", ...}`` when the source
    dropped and came back) go as JSON lines to ``events`` (appended) or standard output, and to ``webhook``.

    Args:
        threshold: the event threshold on final scores (default: the run's calibrated one).
        max_latency: seconds a frame may wait for the model (beyond filling its window) before it is dropped.
        min_frames, quiet, end_threshold: the hysteresis of :class:`~oddframe.events.EventTracker`.
        clips: folder for an annotated MP4 of each event, ``clip_before``/``clip_after`` seconds around it.
        scores: a CSV of every scored frame (rolled over at 100 MB), with its latency.
        retry_for: give up on a lost network source after this many seconds (default: never).
        duration, max_frames: stop after this many seconds or arrived frames.
        view: serve a live view for a person on ``http://127.0.0.1:view/`` (0: any free port; the log says which).
        backend: run the model with PyTorch (``torch``) or an exported runtime, as ``oddframe detect --backend``
            (a faster forward pass is a shorter wait for each window's score).

    Raises:
        CheckpointError: the run has no threshold (not calibrated) and none is given.
        ConfigError: the run normalises scores per video (minmax, regularity), which a stream cannot do.
        SourceError: the source cannot be opened (a network source is retried instead).
    """
    log = log or (lambda line: (sys.stderr.write(line + "\n"), sys.stderr.flush()))
    source = str(source)  # a path given as a Path
    model, config = load_run(run_dir, overrides=overrides)
    runner = open_run_backend(run_dir, config, backend, batch=1)  # None for torch; windows go one by one
    if config.score.normalise not in ("none", "calibrated"):
        raise ConfigError(f"score.normalise={config.score.normalise} needs each video whole; a live stream has no "
                          "end: use none or calibrated (--set score.normalise=calibrated)")
    calibration = read_calibration(run_dir) or {}
    threshold = calibration.get("threshold") if threshold is None else threshold
    if threshold is None:
        raise CheckpointError(f"{run_dir} has no alarm threshold: run `oddframe calibrate {run_dir}` or pass "
                              "--threshold")
    tracker = EventTracker(threshold=threshold, min_frames=min_frames, quiet=quiet, end_threshold=end_threshold)
    if not max_latency > 0:
        raise ValueError(f"--max-latency must be > 0 seconds, got {max_latency}")
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        raise ValueError(f"--webhook must be an http:// or https:// URL, got {webhook!r}")
    src = LiveSource(source, realtime=realtime, loop=loop, input_format=input_format, options=input_options,
                     retry_for=retry_for, log=log,
                     queue_frames=max(4, int(max_latency * 30) + 4))  # frames older than max_latency go anyway
    session = time.strftime("%Y%m%dT%H%M%S")
    with contextlib.ExitStack() as stack:
        for path, folder in ((events, False), (scores, False), (clips, True)):
            if path is not None:
                stack.enter_context(output_lock(Path(path), "oddframe watch", folder=folder))
        event_log = EventLog(Path(events) if events is not None else None)
        stack.callback(event_log.close)
        hook = Webhook(webhook, timeout=webhook_timeout, retries=webhook_retries, log=log) if webhook else None
        if hook is not None:
            stack.callback(hook.close)
        csv_out = RollingCsv(Path(scores), FIELDS) if scores is not None else None
        if csv_out is not None:
            stack.callback(csv_out.close)
        drawing = render_kwargs(config, model, Path(run_dir))
        clip_out = None
        if clips is not None:
            fps = config.render.fps or src.fps or 10.0
            clip_out = EventClips(Path(clips), fps=fps, pre=clip_before, post=clip_after, session=session,
                                  preset=config.render.preset, writer_kwargs=drawing)
            stack.callback(clip_out.close)
        live_view = None
        if view is not None:
            live_view = LiveView(port=view, source=source, compose_kwargs=drawing)
            stack.callback(live_view.close)
            log(f"live view: {live_view.url}")
        stop = stack.enter_context(StopRequest("the watch"))
        w = _Watch(src, model, config, drawing["box_rule"], threshold=threshold,
                   reference=calibration.get("reference"), tracker=tracker, max_latency=max_latency, log=log,
                   event_log=event_log, webhook=hook, clips=clip_out, scores=csv_out, view=live_view, stop=stop,
                   duration=duration, max_frames=max_frames, device=device, backend=runner)
        summary = w.run()
    if hook is not None:
        summary.webhook = {"sent": hook.sent, "failed": hook.failed, "dropped": hook.dropped}
    summary.clips = list(clip_out.written) if clip_out is not None else []
    return summary
