"""Anomaly events from a stream of frame scores, with hysteresis: when something unusual starts and when it ends.

A frame score above the calibrated threshold is one frame's verdict; a person watching a camera wants to hear once
that something started, and once that it ended. :class:`EventTracker` turns scores into events with two rules of
hysteresis (as a thermostat or a Schmitt trigger does, so noise around the threshold does not start and end
events every frame):

- an event **starts** when ``min_frames`` consecutive scored frames are above ``threshold``; it starts at the first
  of them (so its start time is when the anomaly began, not when it was confirmed);
- it **ends** once no frame has been above ``end_threshold`` (default: ``threshold``) for ``quiet`` seconds; it
  ends at its last frame above ``end_threshold``.

Frames without a score (NaN: too few valid pixels) carry no evidence: they never count as above, so they break a
run of frames that would start an event, and the quiet period runs on through them. Pure logic: numbers in,
events out; what an event's peak frame shows (boxes) is the caller's ``payload``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: Why an event ended: a quiet period, a gap in the source, the watch stopped (signal or end of the source).
END_REASONS = ("quiet", "gap", "stopped")


@dataclass
class Event:
    """One anomaly event.

    Attributes:
        id: 1, 2, ... in the order events start.
        start_frame, start_time: the first frame above the threshold of the run that started the event.
        end_frame, end_time: its last frame above ``end_threshold`` (None while the event is open).
        peak_frame, peak_time, peak_score: the frame with the highest score so far.
        n_frames: scored frames from the start frame to the last frame above ``end_threshold`` so far.
        n_above: of those, frames above ``threshold``.
        ended_by: one of :data:`END_REASONS` once ended.
        payload: what the caller passed with the peak frame (e.g. its anomaly map); not serialised.
    """

    id: int
    start_frame: int
    start_time: float
    peak_frame: int
    peak_time: float
    peak_score: float
    end_frame: int | None = None
    end_time: float | None = None
    n_frames: int = 0
    n_above: int = 0
    ended_by: str | None = None
    payload: Any = field(default=None, repr=False)

    @property
    def open(self) -> bool:
        return self.ended_by is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (times in seconds on the stream's clock, rounded to the millisecond)."""

        def t(x: float | None) -> float | None:
            return None if x is None else round(float(x), 3)

        return {
            "id": self.id,
            "start_frame": self.start_frame,
            "start_time": t(self.start_time),
            "end_frame": self.end_frame,
            "end_time": t(self.end_time),
            "duration": t(None if self.end_time is None else self.end_time - self.start_time),
            "peak_frame": self.peak_frame,
            "peak_time": t(self.peak_time),
            "peak_score": float(self.peak_score),
            "frames": self.n_frames,
            "frames_above": self.n_above,
            "ended_by": self.ended_by,
        }


@dataclass
class EventUpdate:
    """What :meth:`EventTracker.update` reports: ``kind`` is ``"start"`` or ``"end"`` of ``event``."""

    kind: str
    event: Event


class EventTracker:
    """Hysteresis over frame scores: consecutive frames above a threshold start an event, a quiet period ends it.

    Args:
        threshold: a frame is above when its score is strictly greater (as ``flagged`` in ``scores.csv``).
        min_frames: consecutive frames above ``threshold`` that start an event (>= 1).
        quiet: seconds without a frame above ``end_threshold`` that end an event (>= 0; 0 = the first frame not
            above ends it).
        end_threshold: the level an open event must stay above; ``<= threshold`` (lower = events hold on through
            dips). Default: ``threshold``.

    Example:
        >>> tr = EventTracker(threshold=1.0, min_frames=2, quiet=0.2)
        >>> [u.kind for i, s in enumerate([0, 2, 2, 0, 0, 0]) for u in tr.update(i, i / 10, s)]
        ['start', 'end']
    """

    def __init__(self, *, threshold: float, min_frames: int = 3, quiet: float = 1.0,
                 end_threshold: float | None = None) -> None:
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold}")
        if min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {min_frames}")
        if not quiet >= 0:
            raise ValueError(f"quiet must be >= 0 seconds, got {quiet}")
        end_threshold = threshold if end_threshold is None else end_threshold
        if not end_threshold <= threshold:
            raise ValueError(f"end_threshold ({end_threshold}) must be <= threshold ({threshold})")
        self.threshold, self.min_frames, self.quiet, self.end_threshold = threshold, min_frames, quiet, end_threshold
        self.current: Event | None = None
        self.n_events = 0
        self._run: list[tuple[int, float, float, Any]] = []  # frames above in a row, before an event starts
        self._last_active: tuple[int, float] | None = None  # last frame above end_threshold in the open event
        self._quiet_frames = 0  # frames since then

    def update(self, frame: int, time: float, score: float, payload: Any = None) -> list[EventUpdate]:
        """Add one scored frame (in stream order); returns the events that start or end with it (at most one
        ``end`` then one ``start``)."""
        score = float(score)
        above = score > self.threshold  # NaN compares False: no evidence
        updates: list[EventUpdate] = []
        ev = self.current
        if ev is not None:
            active = score > self.end_threshold
            if active:
                self._last_active = (frame, time)
                ev.n_frames += self._quiet_frames + 1  # a dip shorter than the quiet period is part of the event
                ev.n_above += above
                self._quiet_frames = 0
            elif time - self._last_active[1] >= self.quiet:
                updates += self._end("quiet")
                ev = None
            else:
                self._quiet_frames += 1
            if ev is not None:
                if score > ev.peak_score:
                    ev.peak_frame, ev.peak_time, ev.peak_score, ev.payload = frame, time, score, payload
                return updates
        if not above:
            self._run = []
            return updates
        self._run.append((frame, time, score, payload))
        if len(self._run) >= self.min_frames:
            updates.append(self._start())
        return updates

    def _start(self) -> EventUpdate:
        self.n_events += 1
        first, peak = self._run[0], max(self._run, key=lambda r: r[2])
        ev = Event(self.n_events, start_frame=first[0], start_time=first[1], peak_frame=peak[0], peak_time=peak[1],
                   peak_score=peak[2], n_frames=len(self._run), n_above=len(self._run), payload=peak[3])
        self._last_active = self._run[-1][:2]
        self._run = []
        self.current = ev
        return EventUpdate("start", ev)

    def _end(self, reason: str) -> list[EventUpdate]:
        ev = self.current
        if ev is None:
            return []
        ev.end_frame, ev.end_time = self._last_active
        ev.ended_by = reason
        self.current, self._last_active, self._quiet_frames = None, None, 0
        return [EventUpdate("end", ev)]

    def close(self, reason: str = "stopped") -> list[EventUpdate]:
        """End the open event now (a gap in the source, the end of the watch); a run too short to start an event is
        forgotten. ``reason`` is one of :data:`END_REASONS`."""
        if reason not in END_REASONS:
            raise ValueError(f"reason must be one of {', '.join(END_REASONS)}, got {reason!r}")
        self._run = []
        return self._end(reason)
