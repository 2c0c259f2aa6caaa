"""Live sources for ``oddframe watch``: network streams, cameras, pipes, standard input, and files played as streams.

A :class:`LiveSource` reads its frames in a background thread, stamps each with the moment it arrived, and hands
them over through a bounded queue, so a slow consumer never stalls the sender (a camera, an RTSP server) and never
piles frames up without end: when the queue is full the oldest frame is dropped and counted. Network streams and
cameras that drop are reopened with exponential backoff; the loss and the return are reported in the queue
(:class:`Lost`, :class:`Resumed`) so the consumer can close what was going on and say how long the gap was.

What SOURCE may be (everything but files goes straight to FFmpeg through PyAV):

- ``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``tcp://``, ``srt://`` ... URLs: live, reopened when lost;
- ``/dev/videoN``: a camera through v4l2, live, reopened when lost;
- ``-``: standard input (e.g. MPEG-TS piped from ffmpeg), live, ends with its input;
- a named pipe (FIFO): live, ends when the writer closes it;
- any file or folder oddframe reads (:func:`oddframe.data.sources.open_source`): played as fast as it decodes, or
  at its own frame rate with ``realtime`` (then a slow consumer drops frames, as with a live source), optionally
  looped.

Frames are numbered 0, 1, ... in arrival order across reconnections and loops; ``Frame.time`` is the stream's
clock in seconds: for live sources the arrival time since the watch started, for files the presentation time
(continued across loops).
"""

from __future__ import annotations

import os
import re
import stat
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import av

from oddframe.data.sources import Frame, open_source
from oddframe.errors import SourceError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass
class Arrival:
    """One frame as it arrived: ``frame`` (index and stream time as above, RGB data), ``arrival`` on
    :func:`time.monotonic`, ``wall`` on :func:`time.time`."""

    frame: Frame
    arrival: float
    wall: float


@dataclass
class Lost:
    """The source stopped delivering (``reason``) at ``at`` (monotonic); it is being reopened."""

    at: float
    wall: float
    reason: str


@dataclass
class Resumed:
    """The source delivers again after a gap of ``seconds`` and ``attempts`` reconnection attempts."""

    seconds: float
    attempts: int
    wall: float


@dataclass
class Ended:
    """The source is finished (``error`` set when it failed and will not be reopened)."""

    reason: str
    error: Exception | None = None


Item = Arrival | Lost | Resumed | Ended


def source_kind(source: str) -> str:
    """``"url"``, ``"camera"``, ``"stdin"``, ``"pipe"`` or ``"file"`` for a SOURCE argument."""
    if source == "-":
        return "stdin"
    if _URL.match(source):
        return "url"
    if source.startswith("/dev/video"):
        return "camera"
    path = Path(source).expanduser()
    try:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            return "pipe"
    except OSError:
        raise SourceError(f"{source}: no such file, folder, device or pipe (a stream needs a scheme, e.g. "
                          "rtsp://host/path, tcp://host:port, udp://@:port; - reads standard input)") from None
    return "file"


class LiveSource:
    """Frames of SOURCE read in a background thread, handed over through a bounded queue.

    Args:
        source: the SOURCE argument (see the module docstring).
        realtime: play a file at its own frame rate (live sources always arrive at theirs).
        loop: start a file again at its end (with ``realtime``, a camera that never stops; for benchmarks).
        fps: frame rate of a file that has none (image folders, arrays), for ``realtime``.
        input_format: FFmpeg input format to force (``mpegts``, ``v4l2``, ...); default: probed (``v4l2`` for
            ``/dev/video*``).
        options: FFmpeg options of the input (``{"rtsp_transport": "tcp"}``, ``{"video_size": "640x480"}``).
        queue_frames: frames waiting at most; when full the oldest is dropped (live) or the reader waits (a file
            played as fast as possible, which loses nothing).
        timeout: seconds to wait when opening or reading a network stream before it counts as lost.
        backoff: first and longest wait between reconnection attempts, in seconds (doubling in between).
        retry_for: give up after this many seconds without frames (None: never).
        log: called with a line for a person (a reconnection attempt that failed).
    """

    def __init__(self, source: str, *, realtime: bool = False, loop: bool = False, fps: float | None = None,
                 input_format: str | None = None, options: dict[str, str] | None = None, queue_frames: int = 32,
                 timeout: float = 10.0, backoff: tuple[float, float] = (0.5, 30.0), retry_for: float | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.source, self.kind = source, source_kind(source)
        self.realtime, self.loop, self.fps = realtime, loop, fps
        self.input_format = input_format or ("v4l2" if self.kind == "camera" else None)
        self.options = dict(options or {})
        if self.kind != "file":  # FFmpeg probes 5 s of a stream by default before the first frame: 1 s is enough
            self.options.setdefault("analyzeduration", "1000000")
        self.timeout, self.backoff, self.retry_for = timeout, backoff, retry_for
        self.log = log or (lambda line: None)
        if queue_frames < 1:
            raise ValueError(f"queue_frames must be >= 1, got {queue_frames}")
        self.live = self.kind != "file" or realtime  #: frames arrive on their own clock: a slow reader drops
        self.reconnects = self.kind in ("url", "camera")
        self.dropped = 0  #: frames dropped because the queue was full
        self.corrupt = 0  #: packets that did not decode (skipped)
        self._file = open_source(Path(source).expanduser()) if self.kind == "file" else None
        if self._file is not None and self.fps is None:
            self.fps = self._file.fps
        self._queue: deque[Item] = deque()
        self._max = queue_frames
        self._cond = threading.Condition()
        self._closed = False
        self._t0, self.wall0 = time.monotonic(), time.time()  # the stream clock's zero (set again by start)
        self._thread = threading.Thread(target=self._run, name="oddframe-live-source", daemon=True)

    # --- the consumer's side

    def start(self) -> "LiveSource":
        self._t0, self.wall0 = time.monotonic(), time.time()
        self._thread.start()
        return self

    def get(self, timeout: float = 0.1) -> Item | None:
        """The next item, or None when none came within ``timeout`` seconds (so the caller can check for a stop)."""
        with self._cond:
            if not self._queue:
                self._cond.wait(timeout)
            if not self._queue:
                return None
            item = self._queue.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """Stop reading (the thread ends at its next frame or read timeout; it is a daemon either way)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- the reader thread

    def _put(self, item: Item) -> None:
        with self._cond:
            if isinstance(item, Arrival):
                if self.live:
                    while sum(isinstance(i, Arrival) for i in self._queue) >= self._max:
                        oldest = next(i for i in self._queue if isinstance(i, Arrival))
                        self._queue.remove(oldest)
                        self.dropped += 1
                else:
                    while len(self._queue) >= self._max and not self._closed:
                        self._cond.wait(0.1)
            self._queue.append(item)
            self._cond.notify_all()

    def _sleep(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._closed, timeout=max(0.0, seconds))

    def _run(self) -> None:
        try:
            if self._file is not None:
                self._play_file()
                self._put(Ended("end of file"))
            else:
                self._read_stream()
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it in its own thread
            self._put(Ended(f"failed: {exc}", exc))

    def _play_file(self) -> None:
        index, offset, start = 0, 0.0, None
        step = 1.0 / self.fps if self.fps else 0.1
        while not self._closed:
            last = None
            for frame in self._file:  # type: ignore[union-attr]
                t = offset + (frame.time if frame.time is not None else frame.index * step)
                if self.realtime:
                    start = time.monotonic() - t if start is None else start
                    self._sleep(start + t - time.monotonic())  # presentation time on the wall clock
                if self._closed:
                    return
                self._put(Arrival(Frame(index, t, frame.data, frame.valid), time.monotonic(), time.time()))
                index, last = index + 1, t
            if not self.loop or last is None:
                return
            offset = last + step

    def _open(self) -> Any:
        target: Any = sys.stdin.buffer if self.kind == "stdin" else self.source
        kwargs: dict[str, Any] = {"format": self.input_format, "options": self.options}
        if self.kind in ("url", "camera"):
            kwargs["timeout"] = (self.timeout, self.timeout)
        try:
            container = av.open(target, **kwargs)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise SourceError(f"{self.source}: cannot open ({e})") from e
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.source}: holds no video stream")
        return container

    def _read_stream(self) -> None:
        index, attempts, lost, delay = 0, 0, None, self.backoff[0]
        last_frame_at = time.monotonic()
        while not self._closed:
            reason, error = "end of stream", None
            try:
                container = self._open()
                if lost is not None:
                    self._put(Resumed(time.monotonic() - lost.at, attempts, time.time()))
                    lost, attempts, delay = None, 0, self.backoff[0]
                with container:
                    stream = container.streams.video[0]
                    stream.thread_type = "AUTO"
                    rate = stream.average_rate or stream.guessed_rate
                    self.fps = self.fps or (float(rate) if rate else None)
                    for frame in self._decode(container, stream):
                        if self._closed:
                            return
                        now = time.monotonic()
                        data = frame.to_ndarray(format="rgb24")
                        self._put(Arrival(Frame(index, now - self._t0, data, None), now, time.time()))
                        index, last_frame_at = index + 1, now
            except (SourceError, av.FFmpegError, OSError) as e:
                reason, error = str(e), e
            if self._closed:
                return
            if not self.reconnects:
                if error is not None and index == 0:
                    raise error if isinstance(error, SourceError) else SourceError(f"{self.source}: {error}")
                self._put(Ended(reason if error is None else f"stopped: {reason}"))
                return
            if lost is None and index > 0:
                lost = Lost(time.monotonic(), time.time(), reason)
                self._put(lost)
            elif lost is None:  # never connected yet: a camera or server still starting
                lost = Lost(time.monotonic(), time.time(), reason)
            attempts += 1
            if self.retry_for is not None and time.monotonic() - last_frame_at > self.retry_for:
                error = error or SourceError(f"{self.source}: {reason}")
                self._put(Ended(f"gave up after {attempts} attempts over {self.retry_for:g} s: {reason}",
                                error if index == 0 else None))
                return
            where = "" if reason.startswith(self.source) else f"{self.source}: "
            self.log(f"{where}{reason}; reconnecting in {delay:g} s (attempt {attempts})")
            self._sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    def _decode(self, container: Any, stream: Any) -> Iterator[Any]:
        """Decoded frames; a packet that does not decode (a corrupt UDP datagram) is skipped and counted."""
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                self.corrupt += 1
                continue
            yield from frames
