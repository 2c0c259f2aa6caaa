"""Stream anomaly panels (frame | heatmap, boxes, text) into an H.264 MP4 with PyAV.

The writer composes and encodes one panel per call and keeps no frames, so memory stays flat however long
the video is (the seed 001 eval videos run for two days of 1-minute cadence solar images).

Nothing half-written reaches the final path: frames go to ``NAME.partial.mp4``, a fragmented MP4 flushed packet
by packet, which plays up to its last fragment even after ``kill -9``; closing the writer remuxes it (no
re-encoding) into a regular MP4 at the final path. :class:`BackgroundVideoWriter` runs composing and encoding in a
thread, so detection does not wait for them.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterator, Sequence

import av
import cv2
import numpy as np

from oddframe.errors import OddframeError
from oddframe.files import atomic_write
from oddframe.render.panel import compose_panel

PREFERRED_CODEC = "libx264"
FALLBACK_CODEC = "mpeg4"


def pick_codec() -> str:
    """``"libx264"`` when this PyAV build can encode with it, otherwise ``"mpeg4"`` (with a warning).

    PyPI wheels of PyAV ship FFmpeg with libx264; some distribution builds leave it out.
    """
    try:
        av.codec.Codec(PREFERRED_CODEC, "w")
        return PREFERRED_CODEC
    except Exception:  # av raises UnknownCodecError (a ValueError) or FFmpegError depending on the version
        warnings.warn(
            f"this PyAV build has no {PREFERRED_CODEC} encoder; writing MPEG-4 part 2 ({FALLBACK_CODEC}) instead, "
            "which browsers may not play",
            RuntimeWarning,
            stacklevel=2,
        )
        return FALLBACK_CODEC


def _pad_even(rgb: np.ndarray) -> np.ndarray:
    """Pad an ``(H, W, 3)`` image with black to even height and width (yuv420p halves chroma resolution)."""
    h, w = rgb.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return rgb
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)))


class AnomalyVideoWriter:
    """Context manager that writes anomaly panels to an MP4, one frame at a time.

    Example:
        >>> with AnomalyVideoWriter("anomaly.mp4", fps=10, map_power=2) as video:  # doctest: +SKIP
        ...     for frame, amap in stream:
        ...         video.write(frame, amap)

    Args:
        path: output file (``.mp4``); parent folders are created.
        fps: frames per second of the video.
        crf: x264 constant rate factor (0 lossless .. 51 worst; 23 is x264's default).
        preset: x264 speed/size preset (``"ultrafast"`` .. ``"veryslow"``).
        **compose_kwargs: options of :func:`oddframe.render.panel.compose_panel` used for every frame
            (``map_power``, ``mode``, ``style``, ``frame_scale``, thresholds, ``vmax``, ...).

    The container is opened at the first :meth:`write`, when the panel size is known; closing a writer that
    got no frame writes no file. ``render_s`` and ``encode_s`` add up the seconds spent composing and encoding.
    """

    def __init__(
        self, path: str | Path, *, fps: float = 10, crf: int = 23, preset: str = "medium", **compose_kwargs: Any
    ) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {crf}")
        for key in ("frame", "amap", "gt_mask", "frame_loss", "title"):
            if key in compose_kwargs:
                raise ValueError(f"{key!r} changes per frame: pass it to write(), not to the writer")
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)  # 29.97 -> 30000/1001, as FFmpeg expects
        self.crf, self.preset = crf, preset
        self.compose_kwargs = compose_kwargs
        self.partial = partial_path(self.path)
        self.codec: str | None = None
        self.n_frames = 0
        self.closed = False
        self.render_s = self.encode_s = 0.0
        self._size: tuple[int, int] | None = None  # (height, width) of the encoded frames
        self._container: Any = None
        self._stream: Any = None

    def __enter__(self) -> "AnomalyVideoWriter":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _open(self, height: int, width: int) -> None:
        """Open the container and the video stream for frames of ``height x width``."""
        self.codec = pick_codec()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Fragments of <= 1 s, each written out at once: a killed process leaves a file that plays to the end.
            self._container = av.open(str(self.partial), mode="w", format="mp4", options=_FRAGMENTED)
        except Exception as e:  # av.error.*: permission denied, unknown extension, ...
            raise OddframeError(f"cannot open {self.partial} to write a video: {e}") from e
        stream = self._container.add_stream(self.codec, rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if self.codec == PREFERRED_CODEC:
            stream.options = {"crf": str(self.crf), "preset": self.preset}
        else:
            stream.bit_rate = 4_000_000  # mpeg4's default (200 kb/s) smears the heatmap
        self._stream, self._size = stream, (height, width)

    def write_rgb(self, rgb: np.ndarray) -> None:
        """Encode one ready-made ``(H, W, 3)`` uint8 RGB image; all images of a video must have one size."""
        rgb = _pad_even(np.ascontiguousarray(rgb, dtype=np.uint8))
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
        if self.closed:
            raise ValueError(f"{self.path}: the writer is closed")
        if self._container is None:
            self._open(*rgb.shape[:2])
        if rgb.shape[:2] != self._size:
            raise ValueError(
                f"{self.path}: frame {self.n_frames} is {rgb.shape[:2]} but the video is {self._size}; "
                "use the same frame size and compose options for every frame"
            )
        t0 = time.perf_counter()
        # OpenCV's RGB -> YUV 4:2:0 (BT.601, as FFmpeg's default) is about twice as fast as FFmpeg's own here.
        packet_frame = av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        for packet in self._stream.encode(packet_frame):
            self._container.mux(packet)
        self.n_frames += 1
        self.encode_s += time.perf_counter() - t0

    def copy_from(self, path: Path, n_frames: int) -> int:
        """Re-encode the first ``n_frames`` frames of an earlier video of this writer (a resumed run); returns how
        many it held (fewer when it was cut short)."""
        done = 0
        for rgb in read_rgb_frames(path, n_frames):
            self.write_rgb(rgb)
            done += 1
        return done

    def write(
        self,
        frame: Any,
        amap: Any,
        *,
        gt_mask: Any = None,
        frame_loss: float | None = None,
        title: str | None = None,
        **per_frame: Any,
    ) -> None:
        """Compose the panel of one frame and encode it.

        Args:
            frame: ``(H, W)`` or ``(C, H, W)`` floats in ``[-1, 1]``.
            amap: ``(H, W)`` anomaly map ``>= 0``.
            gt_mask: optional ``(H, W)`` ground-truth mask, outlined in green.
            frame_loss: the frame's loss or score to print (default: mean ``[0, 1]`` loss).
            title: the frame's name in the header, e.g. the video name and frame index.
            **per_frame: other per-frame options of :func:`~oddframe.render.panel.compose_panel` (``flagged``,
                ``invalid``).
        """
        t0 = time.perf_counter()
        panel = compose_panel(frame, amap, gt_mask=gt_mask, frame_loss=frame_loss, title=title,
                              **{**self.compose_kwargs, **per_frame})
        self.render_s += time.perf_counter() - t0
        self.write_rgb(panel)

    def close(self) -> None:
        """Flush the encoder's delayed frames, close the file and move it to its final path. Safe to call twice."""
        if self._container is not None:
            try:
                for packet in self._stream.encode(None):  # None drains frames x264 holds for lookahead
                    self._container.mux(packet)
            finally:
                self._container.close()
                self._container = self._stream = None
            finish_video(self.partial, self.path)
        self.closed = True


_FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "1000000",
               "flush_packets": "1"}


def partial_path(path: Path) -> Path:
    """Where a video is written until it is complete: ``NAME.partial.mp4`` beside ``NAME.mp4``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix or '.mp4'}")


def read_rgb_frames(path: Path, limit: int | None = None) -> Iterator[np.ndarray]:
    """Decode up to ``limit`` frames of a video as ``(H, W, 3)`` uint8 RGB, stopping quietly where a cut-short
    (killed) file ends."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError):
        return
    with container:
        n = 0
        try:
            for frame in container.decode(video=0):
                if limit is not None and n >= limit:
                    return
                yield frame.to_ndarray(format="rgb24")
                n += 1
        except av.FFmpegError:
            return


def count_frames(path: Path) -> int:
    """Frames that decode from a video (0 when it is missing or unreadable)."""
    return sum(1 for _ in read_rgb_frames(path)) if Path(path).is_file() else 0


def finish_video(partial: Path, final: Path) -> None:
    """Remux a fragmented MP4 (no re-encoding) into a regular one at ``final`` (index up front, so browsers can
    seek at once), atomically, and delete ``partial``. Should remuxing fail, the fragmented file is kept as it is."""
    try:
        def remux(tmp: Path) -> None:
            with av.open(str(partial)) as src, av.open(str(tmp), "w", format="mp4",
                                                       options={"movflags": "faststart"}) as dst:
                stream = dst.add_stream_from_template(src.streams.video[0])
                try:
                    for packet in src.demux(src.streams.video[0]):
                        if packet.dts is not None:
                            packet.stream = stream
                            dst.mux(packet)
                except av.FFmpegError:  # a cut-short fragment at the end: keep what came before
                    pass

        atomic_write(final, remux)
        Path(partial).unlink()
    except (av.FFmpegError, OSError, ValueError, AttributeError):  # AttributeError: a PyAV without templates
        os.replace(partial, final)


class BackgroundVideoWriter:
    """Compose and encode panels in a background thread, so the caller (detection) does not wait for them.

    ``submit(make)`` queues a function returning ``(frame, amap, per_frame_kwargs)`` for
    :meth:`AnomalyVideoWriter.write` (called with True when the writer has a calibrated box rule, which takes the
    map at model resolution); the thread runs it (part of the render time) and writes the panel. The queue
    is bounded (``maxsize`` panels' worth of inputs): a writer slower than detection makes ``submit`` wait, and
    ``wait_s`` adds up that wait. An error in the thread is raised again by the next ``submit`` or ``close``.
    numpy, OpenCV and FFmpeg release the GIL, so composing and encoding really run beside the model.

    Args:
        writer: the :class:`AnomalyVideoWriter` to feed (owned: closed by :meth:`close`).
        maxsize: frames waiting at most.
    """

    def __init__(self, writer: AnomalyVideoWriter, *, maxsize: int = 16) -> None:
        self.writer = writer
        self.wait_s = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="oddframe-video-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            make = self._queue.get()
            if make is None:
                return
            if self._error is not None:
                continue  # drain: the caller learns of the error at its next call
            try:
                t0 = time.perf_counter()
                frame, amap, kwargs = make(self.writer.compose_kwargs.get("box_rule") is not None)
                self.writer.render_s += time.perf_counter() - t0
                self.writer.write(frame, amap, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, make: Callable[[bool], tuple[Any, Any, dict[str, Any]]]) -> None:
        """Queue one panel (blocks while the queue is full)."""
        self._check()
        t0 = time.perf_counter()
        self._queue.put(make)
        self.wait_s += time.perf_counter() - t0

    def close(self) -> None:
        """Write every queued panel, close the video (moving it to its final path) and stop the thread."""
        self._queue.put(None)
        self._thread.join()
        try:
            self._check()
        finally:
            self.writer.close()


def write_side_by_side(
    path: str | Path,
    frames: Any,
    maps: Any,
    *,
    fps: float = 10,
    gt_masks: Any = None,
    frame_losses: Sequence[float] | None = None,
    titles: Sequence[str] | None = None,
    **compose_kwargs: Any,
) -> Path:
    """Write a short sequence held in memory as an anomaly video.

    Args:
        path: output ``.mp4``.
        frames: ``(T, H, W)`` or ``(T, C, H, W)`` floats in ``[-1, 1]``.
        maps: ``(T, H, W)`` anomaly maps.
        fps: frames per second.
        gt_masks: optional ``(T, H, W)`` ground-truth masks.
        frame_losses: optional ``T`` per-frame losses or scores to print.
        titles: optional ``T`` header texts (diagnostic style).
        **compose_kwargs: options of :func:`oddframe.render.panel.compose_panel`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    n = len(frames)
    if len(maps) != n:
        raise ValueError(f"got {n} frames but {len(maps)} anomaly maps")
    for name, seq in (("gt_masks", gt_masks), ("frame_losses", frame_losses), ("titles", titles)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"got {n} frames but {len(seq)} {name}")
    with AnomalyVideoWriter(path, fps=fps, **compose_kwargs) as video:
        for i in range(n):
            video.write(
                frames[i],
                maps[i],
                gt_mask=None if gt_masks is None else gt_masks[i],
                frame_loss=None if frame_losses is None else float(frame_losses[i]),
                title=None if titles is None else titles[i],
            )
    return Path(path)
