"""Tiny media fixtures for the source and transform tests: videos, image folders, FITS files, tar archives.

Everything is generated with the libraries oddframe reads with (PyAV, OpenCV, astropy), in a few
milliseconds, with known content so decoded frames can be checked against what was written.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import av
import cv2
import numpy as np
from astropy.io import fits

SQUARE = 8  # side of the bright square, pixels


def square_position(index: int) -> tuple[int, int]:
    """Top-left ``(row, col)`` of the bright square in frame ``index``: it moves 3 pixels right per frame."""
    return 8, 2 + 3 * index


def moving_square(n_frames: int = 12, height: int = 32, width: int = 48, *, noise: bool = False,
                  seed: int = 0) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 RGB: a white square moving right on black (or on dim noise, which compresses badly).

    The square must fit: ``2 + 3 * (n_frames - 1) + SQUARE <= width``.
    """
    rng = np.random.default_rng(seed)
    frames = np.zeros((n_frames, height, width, 3), dtype=np.uint8)
    if noise:
        frames[:] = rng.integers(0, 60, size=frames.shape, dtype=np.uint8)
    for i in range(n_frames):
        r, c = square_position(i)
        frames[i, r:r + SQUARE, c:c + SQUARE] = 255
    return frames


def h264_or_mpeg4() -> str:
    """libx264 where this PyAV build has it, else FFmpeg's built-in MPEG-4 part 2 encoder."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_video(path: Path, frames: np.ndarray, *, codec: str, fps: int = 10, bit_rate: int | None = None) -> Path:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames to ``path`` (container chosen by the suffix)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if bit_rate:
            stream.bit_rate = bit_rate
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    return path


def truncated_copy(path: Path, dest: Path, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of the bytes of ``path`` to ``dest`` (a download cut short)."""
    data = path.read_bytes()
    dest.write_bytes(data[: int(len(data) * fraction)])
    return dest


def write_image(path: Path, image: np.ndarray) -> Path:
    """Write ``(H, W)`` grey or ``(H, W, 3)`` RGB (converted to OpenCV's BGR) with OpenCV; any depth it supports."""
    bgr = image[:, :, ::-1] if image.ndim == 3 else image
    if not cv2.imwrite(str(path), np.ascontiguousarray(bgr)):
        raise RuntimeError(f"OpenCV could not write {path}")
    return path


def fits_hdul(data: np.ndarray, *, header: dict | None = None, blank: int | None = None,
              compressed: bool = False) -> fits.HDUList:
    """An HDU list holding ``data``: in the primary HDU, or tile-compressed in HDU 1 as SDO/AIA level-1 files."""
    keys = dict(header or {})
    if blank is not None:
        keys["BLANK"] = blank
    if compressed:
        image = fits.CompImageHDU(data)
        for key, value in keys.items():
            image.header[key] = value
        return fits.HDUList([fits.PrimaryHDU(), image])
    primary = fits.PrimaryHDU(data)
    for key, value in keys.items():
        primary.header[key] = value
    return fits.HDUList([primary])


def write_fits(path: Path, data: np.ndarray, **kwargs: object) -> Path:
    """Write :func:`fits_hdul` ``(data, **kwargs)`` to ``path``."""
    fits_hdul(data, **kwargs).writeto(path)  # type: ignore[arg-type]
    return path


def fits_bytes(data: np.ndarray, **kwargs: object) -> bytes:
    """The bytes of a FITS file, for tar members."""
    buffer = io.BytesIO()
    fits_hdul(data, **kwargs).writeto(buffer)  # type: ignore[arg-type]
    return buffer.getvalue()


def write_tar(path: Path, members: dict[str, bytes], *, links: dict[str, str] | None = None) -> Path:
    """A tar archive (gzip if the name ends in .gz/.tgz) of ``members`` (name -> bytes), names written as given.

    ``links`` adds symbolic links (name -> target). Names are not sanitised, so malicious archives can be built.
    """
    mode = "w:gz" if path.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path
