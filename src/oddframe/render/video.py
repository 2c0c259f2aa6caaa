"""Stream anomaly panels (frame | heatmap, boxes, text) into an H.264 MP4 with PyAV.

The writer composes and encodes one panel per call and keeps no frames, so memory stays flat however long
the video is (the seed 001 eval videos run for two days of 1-minute cadence solar images).
"""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Sequence

import av
import numpy as np

from oddframe.errors import OddframeError
from oddframe.render.overlay import compose_panel

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
        **compose_kwargs: options of :func:`oddframe.render.overlay.compose_panel` used for every frame
            (``map_power``, ``mode``, ``style``, ``frame_scale``, thresholds, ``vmax``, ...).

    The container is opened at the first :meth:`write`, when the panel size is known; closing a writer that
    got no frame writes no file.
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
        self.codec: str | None = None
        self.n_frames = 0
        self.closed = False
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
            self._container = av.open(str(self.path), mode="w")
        except Exception as e:  # av.error.*: permission denied, unknown extension, ...
            raise OddframeError(f"cannot open {self.path} to write a video: {e}") from e
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
        packet_frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        for packet in self._stream.encode(packet_frame):
            self._container.mux(packet)
        self.n_frames += 1

    def write(
        self,
        frame: Any,
        amap: Any,
        *,
        gt_mask: Any = None,
        frame_loss: float | None = None,
        title: str | None = None,
    ) -> None:
        """Compose the panel of one frame and encode it.

        Args:
            frame: ``(H, W)`` or ``(C, H, W)`` floats in ``[-1, 1]``.
            amap: ``(H, W)`` anomaly map ``>= 0``.
            gt_mask: optional ``(H, W)`` ground-truth mask, outlined in green.
            frame_loss: the frame's loss or score to print (default: mean ``[0, 1]`` loss).
            title: diagnostic-style header text, e.g. the video name and frame index.
        """
        panel = compose_panel(frame, amap, gt_mask=gt_mask, frame_loss=frame_loss, title=title, **self.compose_kwargs)
        self.write_rgb(panel)

    def close(self) -> None:
        """Flush the encoder's delayed frames and close the file. Safe to call twice."""
        if self._container is not None:
            try:
                for packet in self._stream.encode(None):  # None drains frames x264 holds for lookahead
                    self._container.mux(packet)
            finally:
                self._container.close()
                self._container = self._stream = None
        self.closed = True


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
        **compose_kwargs: options of :func:`oddframe.render.overlay.compose_panel`.

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
