"""What ``oddframe watch`` writes while it watches: event lines, a webhook, a rolling scores.csv, event clips.

Everything here is written as it happens and survives the process being stopped at any moment: event lines and
score rows are flushed one by one, a clip is a fragmented MP4 until it is complete (:mod:`oddframe.render.video`).
Nothing here may stop the watch: a webhook that fails is retried in its own thread, then given up and counted.
"""

from __future__ import annotations

import csv
import json
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any, Callable, TextIO

from oddframe.files import json_safe
from oddframe.pipeline.engine import FrameResult
from oddframe.pipeline.outputs import panel_maker


class EventLog:
    """Event records as JSON lines, one flushed line each, to a file (appended: a log) or standard output."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: TextIO = self.path.open("a") if self.path is not None else sys.stdout

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self.path is not None:
            self._f.close()


class RollingCsv:
    """A CSV appended row by row (flushed), rolled over when it grows past ``max_bytes``: ``NAME.csv`` is moved to
    ``NAME.1.csv`` (replacing the one before) and a new ``NAME.csv`` starts with the header, so an endless watch uses
    at most about twice ``max_bytes`` of disk."""

    def __init__(self, path: Path, fields: list[str], *, max_bytes: int = 100 * 2**20) -> None:
        self.path, self.fields, self.max_bytes = Path(path), fields, max_bytes
        self.previous = self.path.with_name(f"{self.path.stem}.1{self.path.suffix}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self._open()

    def _open(self) -> None:
        fresh = not self.path.is_file() or self.path.stat().st_size == 0
        self._f = self.path.open("a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=self.fields, extrasaction="ignore")
        if fresh:
            self._w.writeheader()

    def append(self, row: dict[str, Any]) -> None:
        self._w.writerow(row)
        self._f.flush()
        self.rows += 1
        if self._f.tell() > self.max_bytes:
            self._f.close()
            os.replace(self.path, self.previous)
            self._open()

    def close(self) -> None:
        self._f.close()


class Webhook:
    """POST each record as JSON to ``url`` from a background thread, with a timeout and retries.

    A record is tried ``1 + retries`` times, ``backoff * 2**k`` seconds apart; then it is given up (counted in
    ``failed``, one line to ``log``). At most ``max_pending`` records wait; beyond that the oldest is dropped
    (``dropped``), so a dead endpoint never grows memory and never slows the watch.
    """

    def __init__(self, url: str, *, timeout: float = 5.0, retries: int = 3, backoff: float = 0.5,
                 max_pending: int = 100, log: Callable[[str], None] | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--webhook must be an http:// or https:// URL, got {url!r}")
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.log = log or (lambda line: None)
        self.sent = self.failed = self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oddframe-webhook", daemon=True)
        self._thread.start()

    def post(self, record: dict[str, Any]) -> None:
        """Queue ``record`` (never blocks)."""
        while True:
            try:
                self._queue.put_nowait(json.dumps(json_safe(record), allow_nan=False).encode())
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _send(self, body: bytes) -> None:
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "oddframe-watch"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            response.read()

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                return
            for attempt in range(self.retries + 1):
                try:
                    self._send(body)
                    self.sent += 1
                    break
                except (urllib.error.URLError, OSError, ValueError) as e:
                    # The last try, or the watch is closing (no time left to wait): give this record up.
                    if attempt == self.retries or self._closing.wait(self.backoff * 2**attempt):
                        self.failed += 1
                        self.log(f"webhook {self.url}: gave up on a record after {attempt + 1} tries ({e})")
                        break

    def close(self, wait: float = 10.0) -> None:
        """Send what is queued (within ``wait`` seconds; retries are cut short) and stop the thread."""
        deadline = time.monotonic() + wait
        while not self._queue.empty() and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        self._closing.set()
        try:
            self._queue.put(None, timeout=max(0.1, deadline - time.monotonic()))
        except queue.Full:
            pass
        self._thread.join(max(0.1, deadline - time.monotonic()))


class EventClips:
    """An annotated MP4 of each event with ``pre`` seconds before it and ``post`` seconds after.

    The last ``pre`` seconds of scored frames are kept (raw frame and map: memory for ``pre * fps`` frames);
    when an event starts they are written, then every frame until ``post`` seconds after its end. Composing and
    encoding run in the video writer's thread (:class:`~oddframe.render.video.BackgroundVideoWriter`). A new event
    that starts while the last clip still records its ``post`` seconds closes that clip and starts its own.

    Args:
        folder: where ``event-<session>-<id>.mp4`` files go.
        fps: frame rate of the clips (the source's; frames dropped by the watch are missing from them).
        writer_kwargs: options of :class:`~oddframe.render.video.AnomalyVideoWriter` (from ``render_kwargs``).
    """

    def __init__(self, folder: Path, *, fps: float, pre: float = 3.0, post: float = 3.0, session: str = "",
                 preset: str = "ultrafast", writer_kwargs: dict[str, Any] | None = None) -> None:
        self.folder, self.fps, self.pre, self.post, self.session = Path(folder), fps, pre, post, session
        self.preset, self.writer_kwargs = preset, dict(writer_kwargs or {})
        self.folder.mkdir(parents=True, exist_ok=True)
        self._recent: deque[tuple[FrameResult, float, bool | None]] = deque()
        self._writer: Any = None
        self._until: float | None = None  # stream time after which the current clip closes (None: event open)
        self.written: list[Path] = []

    def path_for(self, event_id: int) -> Path:
        return self.folder / f"event-{self.session}-{event_id:04d}.mp4"

    def add(self, r: FrameResult, score: float, flagged: bool | None) -> None:
        """One scored frame (in order), before the event tracker sees it."""
        self._recent.append((r, score, flagged))
        while self._recent and self._recent[0][0].time < r.time - self.pre:
            self._recent.popleft()
        if self._writer is not None:
            self._submit(r, score, flagged)
            if self._until is not None and r.time >= self._until:
                self._close()

    def start(self, event_id: int, start_time: float) -> Path:
        """An event started: a new clip with the kept frames from ``pre`` seconds before ``start_time`` on."""
        from oddframe.render.video import AnomalyVideoWriter, BackgroundVideoWriter

        self._close()
        path = self.path_for(event_id)
        writer = AnomalyVideoWriter(path, fps=self.fps, preset=self.preset, **self.writer_kwargs)
        self._writer, self._until = BackgroundVideoWriter(writer), None
        for r, score, flagged in self._recent:
            if r.time >= start_time - self.pre:
                self._submit(r, score, flagged)
        self.written.append(path)
        return path

    def end(self, end_time: float) -> None:
        """The event ended at ``end_time``: the clip goes on for ``post`` seconds."""
        if self._writer is not None:
            self._until = end_time + self.post

    def _submit(self, r: FrameResult, score: float, flagged: bool | None) -> None:
        self._writer.submit(panel_maker(r, score, flagged, title=f"#{r.index}  t={r.time:.1f}s"))

    def _close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def close(self) -> None:
        """Finish the clip being written (a watch that stops)."""
        self._close()
        self._recent.clear()
