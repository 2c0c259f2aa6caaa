"""Frame sources: video files, image folders, FITS files (and tar archives of them), ``.npy``/``.pt`` arrays.

Every source is lazy and streaming: constructing one reads only what is needed to describe it (the first
frame, or FITS headers), and iterating decodes one frame at a time, so a two-hour video never sits in memory.
Iteration is repeatable: each ``iter(source)`` starts again from the first frame.

:func:`open_source` picks the kind from the path. FITS sources live in :mod:`oddframe.data.fits`.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import av
import cv2
import numpy as np
import torch

from oddframe.errors import SourceError

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".avi", ".mkv", ".mov", ".webm", ".gif", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts",
     ".m2ts", ".3gp", ".ogv", ".asf", ".mjpeg", ".y4m"}
)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
FITS_SUFFIXES = frozenset({".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fz"})
#: Tar archives are read as archives of FITS files (how solar data is usually shipped).
FITS_ARCHIVE_SUFFIXES = frozenset({".tar", ".tar.gz", ".tgz"})
ARRAY_SUFFIXES = frozenset({".npy", ".pt"})
KINDS = ("video", "images", "fits", "array")

_COMPOUND = re.compile(r"\.(fits|fit|fts|tar)\.gz$")


def path_suffix(path: str | Path) -> str:
    """Lowercase suffix of ``path``, compound where it matters (``.fits.gz``, ``.tar.gz``), else ``Path.suffix``."""
    name = Path(path).name.lower()
    match = _COMPOUND.search(name)
    return match.group(0) if match else Path(name).suffix


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders digit runs by value, so ``frame2`` comes before ``frame10``.

    ``re.split`` with a capture group alternates text and digits (text first, possibly empty), so
    tuples from any two names compare str with str and int with int; the full name breaks ties
    (``a01`` vs ``a1``) so the order is total.
    """
    parts = re.split(r"(\d+)", name.lower())
    return (*(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


@dataclass(frozen=True, eq=False)
class Frame:
    """One frame of a source.

    ``eq=False``: comparing frames field by field would compare arrays, which has no single truth value.

    Attributes:
        index: frame number in the source, 0-based, in reading order.
        time: seconds. Video: presentation time from the first frame; FITS: POSIX seconds of ``DATE-OBS``;
            ``None`` if unknown.
        data: ``(H, W)`` or ``(H, W, C)``; uint8 RGB for video, the file's dtype for images (grey stays
            ``(H, W)``, colour is RGB/RGBA), float32 for FITS, the array's dtype for ``.npy``/``.pt``.
        valid: ``(H, W)`` bool, False for NaN/BLANK/invalid pixels (their ``data`` is 0); ``None``: all valid.
    """

    index: int
    time: float | None
    data: np.ndarray
    valid: np.ndarray | None


class FrameSource(ABC):
    """A lazily read, re-iterable sequence of :class:`Frame`.

    Attributes:
        path: the file or folder read.
        kind: ``"video" | "images" | "fits" | "array"``.
        fps: frames per second where the container says so, else ``None``.
        dtype: dtype of ``Frame.data``.
    """

    kind: str = ""

    def __init__(self, path: Path, *, fps: float | None, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = path
        self.fps = fps
        self.dtype = np.dtype(dtype)
        self._shape = tuple(int(s) for s in shape)

    @abstractmethod
    def __len__(self) -> int:
        """Number of frames (for video: the container's count, or an estimate from duration * fps)."""

    @abstractmethod
    def __iter__(self) -> Iterator[Frame]:
        """Stream the frames in order; each call starts again from the first frame."""

    def frame_shape(self) -> tuple[int, ...]:
        """``(H, W)`` or ``(H, W, C)`` of the first frame, known since construction (no decoding)."""
        return self._shape

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: kind, path, n_frames, height, width, channels, fps, dtype."""
        shape = self.frame_shape()
        return {
            "kind": self.kind,
            "path": str(self.path),
            "n_frames": len(self),
            "height": shape[0],
            "width": shape[1],
            "channels": shape[2] if len(shape) == 3 else 1,
            "fps": self.fps,
            "dtype": str(self.dtype),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, n_frames={len(self)}, shape={self._shape})"


def split_invalid(data: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Mark non-finite pixels of float data invalid and set them to 0.

    Args:
        data: ``(H, W)`` or ``(H, W, C)``.

    Returns:
        ``(data, valid)``: data unchanged for non-float input; ``valid`` ``(H, W)`` bool (a pixel is
        invalid if any channel is NaN/inf), or ``None`` when every pixel is valid.
    """
    if data.dtype.kind != "f":
        return data, None
    finite = np.isfinite(data)
    if finite.all():
        return data, None
    valid = finite.all(axis=2) if data.ndim == 3 else finite
    # A copy: the input may be a read-only memory map of the user's file.
    data = np.where(finite, data, 0).astype(data.dtype, copy=False)
    return data, valid


# --------------------------------------------------------------------------------------------- video


class VideoSource(FrameSource):
    """Any video FFmpeg decodes (mp4, avi, mkv, mov, gif, ...), through PyAV, as RGB uint8 ``(H, W, 3)`` frames.

    A file whose header promises more frames than decode yields what decodes and warns once; after one
    complete pass ``len()`` is the number of frames actually decoded.
    """

    kind = "video"

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self._warned = False
        with self._open(path) as container:
            stream = container.streams.video[0]
            fps = _rate(stream.average_rate) or _rate(stream.guessed_rate)
            # stream.frames comes from the container header; 0 means the container does not say.
            self._promised: int | None = stream.frames or None
            self._n_frames = self._promised or _estimate_frames(container, stream, fps)
            first = next(_decode(path, container, stream, fps), None)
        if first is None:
            raise SourceError(f"{path}: the video stream decodes no frame (empty or corrupt file)")
        super().__init__(path, fps=fps, shape=first.data.shape, dtype=first.data.dtype)

    @staticmethod
    def _open(path: Path) -> Any:
        try:
            container = av.open(str(path))
        except (av.FFmpegError, OSError) as e:
            raise SourceError(f"{path}: not a readable video ({e})") from e
        if not container.streams.video:
            container.close()
            raise SourceError(f"{path}: the file holds no video stream")
        return container

    def __len__(self) -> int:
        if self._n_frames is None:
            self._n_frames = self._count_packets()
        return self._n_frames

    def _count_packets(self) -> int:
        # Last resort when neither a frame count nor a duration is known (raw streams): demuxing without
        # decoding is cheap, and each video packet holds one frame.
        with self._open(self.path) as container:
            stream = container.streams.video[0]
            return sum(1 for p in container.demux(stream) if p.size > 0)

    def __iter__(self) -> Iterator[Frame]:
        container = self._open(self.path)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame + slice threading: several times faster on long videos
            n = 0
            for n, frame in enumerate(_decode(self.path, container, stream, self.fps), start=1):
                yield frame
        finally:
            # Runs on exhaustion, on error and when the consumer stops early (generator close).
            container.close()
        if n == 0:
            raise SourceError(f"{self.path}: the video stream decodes no frame (empty or corrupt file)")
        if self._promised is not None and n < self._promised and not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.path}: the container promises {self._promised} frames but only {n} decode "
                "(truncated or damaged file); using the frames that decode",
                stacklevel=2,
            )
        self._n_frames = n


def _decode(path: Path, container: Any, stream: Any, fps: float | None) -> Iterator[Frame]:
    """Decode ``stream`` to RGB frames; a decoding error after the first frame ends the stream early."""
    frames = container.decode(stream)
    pts0: int | None = None
    index = 0
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except av.FFmpegError as e:
            if index == 0:
                raise SourceError(f"{path}: cannot decode the video ({e})") from e
            return  # damaged tail: keep what decoded (the caller warns if frames are missing)
        if frame.pts is not None and frame.time_base is not None:
            # Presentation time relative to the first frame: containers often start at pts > 0.
            pts0 = frame.pts if pts0 is None else pts0
            time: float | None = float((frame.pts - pts0) * frame.time_base)
        else:
            time = index / fps if fps else None
        yield Frame(index=index, time=time, data=frame.to_ndarray(format="rgb24"), valid=None)
        index += 1


def _rate(rate: Fraction | None) -> float | None:
    return float(rate) if rate else None


def _estimate_frames(container: Any, stream: Any, fps: float | None) -> int | None:
    """Frame count from duration * fps when the container has no count; ``None`` if neither is known."""
    if not fps:
        return None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base  # container duration is in microseconds
    else:
        return None
    return max(1, round(seconds * fps))


# -------------------------------------------------------------------------------------------- images


class ImageFolderSource(FrameSource):
    """A folder of images (png, jpg, tif, bmp) read with OpenCV in natural order (``frame2`` before ``frame10``).

    Grey images stay ``(H, W)``, colour becomes RGB (RGBA with alpha), 16-bit images keep their dtype.
    """

    kind = "images"

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.files = image_files(path)
        if not self.files:
            raise SourceError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        first = read_image(self.files[0])
        super().__init__(path, fps=None, shape=first.shape, dtype=first.dtype)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[Frame]:
        for index, file in enumerate(self.files):
            data = read_image(file)
            if data.shape != self._shape or data.dtype != self.dtype:
                raise SourceError(
                    f"{file}: shape {data.shape} {data.dtype} differs from the folder's first image "
                    f"{self.files[0].name} ({self._shape} {self.dtype}); a sequence needs one frame size"
                )
            data, valid = split_invalid(data)
            yield Frame(index=index, time=None, data=data, valid=valid)


def image_files(folder: Path) -> list[Path]:
    """Image files of ``folder`` (hidden files skipped), in natural order."""
    files = [p for p in folder.iterdir()
             if not p.name.startswith(".") and path_suffix(p) in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


def read_image(file: Path) -> np.ndarray:
    """Read one image unchanged in depth: ``(H, W)`` grey or ``(H, W, 3|4)`` RGB(A), dtype as stored."""
    data = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise SourceError(f"{file}: OpenCV cannot decode this image (corrupt, empty or unsupported)")
    if data.ndim == 3:
        if data.shape[2] == 1:
            data = data[:, :, 0]
        elif data.shape[2] == 3:
            data = cv2.cvtColor(data, cv2.COLOR_BGR2RGB)  # OpenCV stores colour as BGR
        elif data.shape[2] == 4:
            data = cv2.cvtColor(data, cv2.COLOR_BGRA2RGBA)
    return data


# -------------------------------------------------------------------------------------------- arrays

_ARRAY_SHAPES = "(T, H, W) or (T, H, W, C) with C in {1, 3, 4}"


class ArraySource(FrameSource):
    """A ``.npy`` array or a ``.pt`` tensor of shape ``(T, H, W)`` or ``(T, H, W, C)``, C in {1, 3, 4}.

    Memory-mapped where the format allows (``np.load(mmap_mode="r")``, ``torch.load(mmap=True)``), so a big
    file is not read at once. Neither format is ever unpickled: ``allow_pickle=False`` and
    ``weights_only=True``. ``C = 1`` frames come out as ``(H, W)``; NaN/inf pixels are invalid.
    """

    kind = "array"

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self._array: np.ndarray | torch.Tensor = _load_npy(path) if path_suffix(path) == ".npy" else _load_pt(path)
        shape = tuple(self._array.shape)
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)):
            raise SourceError(f"{path}: array of shape {shape}; allowed shapes are {_ARRAY_SHAPES}")
        if min(shape) == 0:
            raise SourceError(f"{path}: array of shape {shape} holds no frame (a zero-length axis)")
        try:
            first = self._frame(0)
        except TypeError as e:  # a torch dtype numpy lacks (float8, ...)
            raise SourceError(f"{path}: tensor dtype {self._array.dtype} has no numpy equivalent") from e
        super().__init__(path, fps=None, shape=first.shape, dtype=first.dtype)

    def __len__(self) -> int:
        return int(self._array.shape[0])

    def _frame(self, index: int) -> np.ndarray:
        item = self._array[index]
        if isinstance(item, torch.Tensor):
            # numpy has no bfloat16: widen it (and only it) to float32.
            data = (item.float() if item.dtype == torch.bfloat16 else item).contiguous().numpy()
        else:
            data = np.array(item)  # copy out of the memory map
        return data[:, :, 0] if data.ndim == 3 and data.shape[2] == 1 else data

    def __iter__(self) -> Iterator[Frame]:
        for index in range(len(self)):
            data, valid = split_invalid(self._frame(index))
            yield Frame(index=index, time=None, data=data, valid=valid)


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        # Object arrays need pickle, which would run code from the file: refused on purpose.
        raise SourceError(f"{path}: not a readable .npy array of numbers ({e})") from e
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise SourceError(f"{path}: expected a numeric array, found {getattr(array, 'dtype', type(array))}")
    return array


def torch_load_error(exc: BaseException) -> str:
    """One line saying why ``torch.load(..., weights_only=True)`` refused or failed (torch's own text is a paragraph).

    A file that needs unpickling (any Python object beyond tensors and plain containers) is refused on purpose:
    unpickling a file runs code from it.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "weights only load failed" in text.lower():
        return ("refused: the file holds pickled Python objects, not only tensors; oddframe never unpickles a file "
                "(save plain tensors with torch.save, or use .npy / safetensors)")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"not a readable torch file ({first[:200]})"


def _load_pt(path: Path) -> torch.Tensor:
    # mmap only works for the zip format torch.save has written since 1.6; older files load whole.
    mmap = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except Exception as e:  # noqa: BLE001 - torch raises many types (UnpicklingError, RuntimeError, ...)
        raise SourceError(f"{path}: {torch_load_error(e)}") from None
    if not isinstance(obj, torch.Tensor):
        raise SourceError(f"{path}: expected a single tensor, found {type(obj).__name__}")
    if obj.layout != torch.strided or obj.is_complex() or obj.is_quantized:
        raise SourceError(f"{path}: expected a dense real tensor, found {obj.dtype} with layout {obj.layout}")
    return obj


# ---------------------------------------------------------------------------------------- frame range


class FrameRangeSource(FrameSource):
    """Frames ``start`` to ``stop`` (excluded) of another source, keeping their frame numbers and times.

    For training on part of one long recording (the first 500 frames of a video) and detecting on the rest.
    Frames before ``start`` are still decoded (streams do not seek exactly) but not transformed.
    """

    def __init__(self, source: FrameSource, *, start: int = 0, stop: int | None = None) -> None:
        if start < 0 or (stop is not None and stop <= start):
            raise ValueError(f"need 0 <= start < stop, got start={start}, stop={stop}")
        self.source, self.start, self.stop = source, start, stop
        self.kind = source.kind
        super().__init__(source.path, fps=source.fps, shape=source.frame_shape(), dtype=source.dtype)

    def __len__(self) -> int:
        n = len(self.source) if self.stop is None else min(len(self.source), self.stop)
        return max(0, n - self.start)

    def __iter__(self) -> Iterator[Frame]:
        for frame in self.source:
            if self.stop is not None and frame.index >= self.stop:
                return
            if frame.index >= self.start:
                yield frame


# ---------------------------------------------------------------------------------------- open_source


def _guess_kind(path: Path) -> tuple[str | None, str]:
    """``(kind, "")`` if ``path`` looks like a source by its form, else ``(None, reason)``."""
    if path.is_dir():
        n_images = n_fits = 0
        for entry in path.iterdir():
            if entry.name.startswith(".") or not entry.is_file():
                continue
            suffix = path_suffix(entry)
            n_images += suffix in IMAGE_SUFFIXES
            n_fits += suffix in FITS_SUFFIXES
        if n_images and n_fits:
            return None, f"the folder mixes {n_images} image files and {n_fits} FITS files"
        if n_images or n_fits:
            return ("images" if n_images else "fits"), ""
        return None, (f"the folder holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                      f"or FITS ({', '.join(sorted(FITS_SUFFIXES))}) files")
    if not path.is_file():
        return None, "no such file or folder"
    suffix = path_suffix(path)
    for kind, suffixes in (("video", VIDEO_SUFFIXES), ("fits", FITS_SUFFIXES | FITS_ARCHIVE_SUFFIXES),
                           ("array", ARRAY_SUFFIXES)):
        if suffix in suffixes:
            return kind, ""
    if suffix in IMAGE_SUFFIXES:
        return None, "a single image is not a sequence; pass the folder that holds the frames"
    known = sorted(VIDEO_SUFFIXES | FITS_SUFFIXES | FITS_ARCHIVE_SUFFIXES | ARRAY_SUFFIXES)
    return None, f"unknown suffix {suffix or '(none)'!r}; known: {', '.join(known)}, or a folder of images/FITS"


def is_source(path: str | Path) -> bool:
    """True if :func:`open_source` would accept ``path`` by its form (suffix, folder of images, folder of FITS).

    Only names are looked at; a file with the right suffix may still fail to decode.
    """
    return _guess_kind(Path(path))[0] is not None


def open_source(path: str | Path, *, kind: str | None = None) -> FrameSource:
    """Open ``path`` as a frame source, picking the kind from the path.

    Args:
        path: a video file, a folder of images, a FITS file, a folder or tar archive of FITS files,
            or a ``.npy``/``.pt`` array.
        kind: force one of ``"video" | "images" | "fits" | "array"`` (e.g. a video with an odd suffix).

    Raises:
        SourceError: naming the path, if it is missing, of an unknown kind, or unreadable.
        ValueError: if ``kind`` is not one of the allowed values.
    """
    path = Path(path).expanduser()
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if kind is None:
        kind, reason = _guess_kind(path)
        if kind is None:
            raise SourceError(f"{path}: not a frame source: {reason}")
    if kind == "video":
        return VideoSource(path)
    if kind == "images":
        return ImageFolderSource(path)
    if kind == "array":
        return ArraySource(path)
    from oddframe.data.fits import FitsSource  # deferred: fits.py builds on this module's classes

    return FitsSource(path)
