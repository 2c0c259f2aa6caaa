"""FITS frame sources: one FITS file, a folder of them, or a ``.tar``/``.tar.gz``/``.tgz`` archive of them.

Solar image series (SDO/AIA, SOHO/EIT, ...) come as one FITS file per image, often shipped in tar archives.
Frames are ordered by observation time, which needs every header before the first frame: construction reads
headers only (cheap: astropy loads HDU data lazily), and iteration then reads the data one frame at a time.

Tar members are read straight from the archive into memory, never extracted to disk, and an archive holding
a member that could escape an extraction folder (absolute name, ``..``) or a link or device is refused whole:
such an archive was not made by a telescope pipeline.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import tarfile
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from astropy.io import fits
from astropy.time import Time

from oddframe.data.sources import (
    FITS_ARCHIVE_SUFFIXES,
    FITS_SUFFIXES,
    Frame,
    FrameSource,
    natural_key,
    path_suffix,
)
from oddframe.errors import SourceError

#: Header keys exposed per frame by :meth:`FitsSource.headers` (EXPTIME and WAVELNTH feed exposure normalisation).
HEADER_KEYS = ("DATE-OBS", "EXPTIME", "WAVELNTH", "TELESCOP", "INSTRUME", "BUNIT")
#: Observation-time keys in order of preference: DATE-OBS is the FITS standard, the others are mission variants.
TIME_KEYS = ("DATE-OBS", "DATE_OBS", "T_OBS")
_OLD_DATE = re.compile(r"^(\d\d)/(\d\d)/(\d\d)$")  # dd/mm/yy, the FITS date format before 2000


@dataclass(frozen=True)
class _Entry:
    """What the header pass learns about one frame."""

    name: str  # file path or archive member name, for messages and ordering
    member: tarfile.TarInfo | None  # the archive member, or None for a file on disk
    hdu: int  # index of the first HDU with 2-D image data
    shape: tuple[int, int]  # (H, W)
    time: float | None  # POSIX seconds of the observation
    header: dict[str, Any]  # HEADER_KEYS -> JSON-able values


class FitsSource(FrameSource):
    """Float32 ``(H, W)`` frames from FITS images, ordered by observation time, then by name.

    The image is the first HDU with 2-D data (SDO/AIA level-1 files keep it, tile-compressed, in HDU 1).
    NaN, inf and BLANK pixels are invalid in ``Frame.valid`` and 0 in ``Frame.data``. ``Frame.time`` is the
    POSIX time of ``DATE-OBS`` (or ``DATE_OBS``, ``T_OBS``); frames without one come after those with one.

    Args:
        path: a FITS file (``.fits``, ``.fit``, ``.fts``, optionally ``.gz``; ``.fz``), a folder of them,
            or a tar archive of them (other members are skipped).
        normalise_exposure: divide each image by its ``EXPTIME`` (seconds) where the header has a positive one,
            so frames taken with different exposures compare (DN -> DN/s; AIA shortens exposures during flares).
        skip_unreadable: skip files that cannot be read, hold no 2-D image, or differ in shape from the
            most common one, listing them in :attr:`skipped`, instead of raising (long downloads often hold
            a broken file).

    Attributes:
        skipped: ``{"name", "reason"}`` of every file skipped so far (grows during iteration when a file's
            data turns out unreadable); always empty without ``skip_unreadable``.

    Raises:
        SourceError: naming the file or archive member that is unreadable, unsafe, has no 2-D image,
            or differs in shape from the first frame (without ``skip_unreadable``), or when no frame is left.
    """

    kind = "fits"

    def __init__(self, path: str | Path, *, normalise_exposure: bool = False, skip_unreadable: bool = False) -> None:
        path = Path(path)
        self.normalise_exposure = normalise_exposure
        self.skip_unreadable = skip_unreadable
        self.skipped: list[dict[str, str]] = []
        make = self._entry_or_skip if skip_unreadable else _entry
        self._archive = path_suffix(path) in FITS_ARCHIVE_SUFFIXES
        if self._archive:
            found = _archive_entries(path, make)
        elif path.is_dir():
            files = [p for p in path.iterdir()
                     if not p.name.startswith(".") and path_suffix(p) in FITS_SUFFIXES and p.is_file()]
            found = [make(str(p), None, lambda p=p: fits.open(p)) for p in files]
        else:
            found = [make(str(path), None, lambda: fits.open(path))]
        entries = [e for e in found if e is not None]
        if not entries:
            why = f"; skipped: {self.skipped[:3]}" if self.skipped else ""
            raise SourceError(f"{path}: no FITS files ({', '.join(sorted(FITS_SUFFIXES))}) found{why}")
        if skip_unreadable:
            entries = self._drop_odd_shapes(entries)
        # Time order first; frames without a time go last, by name (natural order: img2 before img10).
        entries.sort(key=lambda e: (e.time is None, e.time or 0.0, natural_key(e.name)))
        for e in entries[1:]:
            if e.shape != entries[0].shape:
                raise SourceError(f"{path}: {e.name} has shape {e.shape} but {entries[0].name} has "
                                  f"{entries[0].shape}; a sequence needs one frame size")
        self._entries = entries
        super().__init__(path, fps=None, shape=entries[0].shape, dtype=np.dtype(np.float32))

    def __len__(self) -> int:
        return len(self._entries)

    def _entry_or_skip(self, name: str, member: tarfile.TarInfo | None, opener: Any) -> _Entry | None:
        """:func:`_entry`, recording an unreadable file in :attr:`skipped` instead of raising."""
        try:
            return _entry(name, member, opener)
        except SourceError as e:
            self.skipped.append({"name": name, "reason": str(e)})
            return None

    def _drop_odd_shapes(self, entries: list[_Entry]) -> list[_Entry]:
        """Keep the frames of the most common shape (a stray full-disk or cut-out file is skipped, not fatal)."""
        common = Counter(e.shape for e in entries).most_common(1)[0][0]
        for e in entries:
            if e.shape != common:
                self.skipped.append({"name": e.name, "reason": f"shape {e.shape} differs from the sequence's {common}"})
        return [e for e in entries if e.shape == common]

    def headers(self) -> list[dict[str, Any]]:
        """Per frame, in frame order: ``HEADER_KEYS`` (None where absent) plus ``NAME`` (file or member name).

        ``DATE-OBS`` holds the observation time as written under whichever of ``TIME_KEYS`` was found.
        """
        return [{**e.header, "NAME": e.name} for e in self._entries]

    def __iter__(self) -> Iterator[Frame]:
        if not self._archive:
            for index, e in enumerate(self._entries):
                frame = self._frame_or_skip(index, e, lambda e=e: fits.open(e.name))
                if frame is not None:
                    yield frame
            return
        with _open_tar(self.path) as tar:
            for index, e in enumerate(self._entries):
                data = _member_bytes(self.path, tar, e.member)
                frame = self._frame_or_skip(index, e, lambda data=data: fits.open(io.BytesIO(data)))
                if frame is not None:
                    yield frame

    def _frame_or_skip(self, index: int, entry: _Entry, opener: Any) -> Frame | None:
        """:meth:`_frame`; with ``skip_unreadable`` a file whose data cannot be read is recorded and skipped."""
        if not self.skip_unreadable:
            return self._frame(index, entry, opener)
        try:
            return self._frame(index, entry, opener)
        except SourceError as e:
            if not any(s["name"] == entry.name for s in self.skipped):  # once, however often the source is iterated
                self.skipped.append({"name": entry.name, "reason": str(e)})
            return None

    def _frame(self, index: int, entry: _Entry, opener: Any) -> Frame:
        data, valid = _read_image(entry.name, opener, entry.hdu)
        if data.shape != self._shape:
            raise SourceError(f"{entry.name}: shape {data.shape} differs from the header's {self._shape}")
        if self.normalise_exposure:
            seconds = exposure_seconds(entry.header)
            if seconds is not None:
                data /= np.float32(seconds)  # invalid pixels hold 0 and stay 0
        return Frame(index=index, time=entry.time, data=data, valid=valid)


def exposure_seconds(header: dict[str, Any]) -> float | None:
    """The header's ``EXPTIME`` as a positive finite number of seconds, else ``None`` (absent, 0, text, NaN).

    A zero or negative exposure (dark frames, some engineering images) cannot normalise anything, so such
    frames are left as they are rather than divided into infinities.
    """
    value = header.get("EXPTIME")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


@dataclass(frozen=True)
class CadenceGap:
    """An interval between two consecutive frames longer than the sequence's usual cadence allows.

    Attributes:
        before, after: positions (in the ``times`` passed to :func:`cadence_gaps`) of the frames on either side.
        start, end: their times in seconds.
        median_cadence: the median interval of the sequence, seconds.
    """

    before: int
    after: int
    start: float
    end: float
    median_cadence: float

    @property
    def seconds(self) -> float:
        """Length of the interval, seconds."""
        return self.end - self.start


def median_cadence(times: Sequence[float | None]) -> float | None:
    """Median positive interval between consecutive known times (seconds), or ``None`` with fewer than 2.

    Zero intervals (duplicated ``DATE-OBS``) are left out so that duplicates cannot make the cadence 0.
    """
    known = [t for t in times if t is not None]
    steps = [b - a for a, b in zip(known, known[1:]) if b - a > 0]
    return float(np.median(steps)) if steps else None


def cadence_gaps(times: Sequence[float | None], *, factor: float = 1.5) -> list[CadenceGap]:
    """Intervals longer than ``factor`` times the median cadence: missing images in a time series.

    Args:
        times: ``N`` frame times in seconds, in frame order (``None`` for frames without one: skipped, so a
            gap is measured between the nearest frames that have a time).
        factor: an interval ``> factor * median`` is a gap (1.5: one missing frame at a regular cadence
            doubles the interval, while the jitter of a regular cadence stays far below 1.5).

    Returns:
        The gaps in time order.

    Raises:
        ValueError: if ``factor <= 1``.
    """
    if not factor > 1:
        raise ValueError(f"factor must be > 1 (an interval longer than factor x the median cadence), got {factor}")
    median = median_cadence(times)
    if median is None:
        return []
    known = [(i, t) for i, t in enumerate(times) if t is not None]
    return [
        CadenceGap(before=i, after=j, start=a, end=b, median_cadence=median)
        for (i, a), (j, b) in zip(known, known[1:])
        if b - a > factor * median
    ]


def _entry(name: str, member: tarfile.TarInfo | None, opener: Any) -> _Entry:
    """Header pass for one file: find the image HDU, its shape, the observation time and the header keys."""
    try:
        with _quiet(), opener() as hdul:
            for i, hdu in enumerate(hdul):
                shape = _image_shape(hdu)
                if shape is not None:
                    # Keys may sit in the image's header or the primary one (compressed AIA: the image's).
                    primary = hdul[0].header
                    header = {k: hdu.header.get(k, primary.get(k)) for k in {*HEADER_KEYS, *TIME_KEYS, "TIME-OBS"}}
                    date, time = _obs_time(header)
                    values = {k: _jsonable(header[k]) for k in HEADER_KEYS}
                    return _Entry(name, member, i, shape, time, {**values, "DATE-OBS": date})
            found = [_axes(hdu) for hdu in hdul]
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001 - astropy raises OSError, ValueError, VerifyError, ... on bad files
        raise SourceError(f"{name}: not a readable FITS file ({e})") from e
    raise SourceError(f"{name}: no HDU holds a 2-D image (NAXISn of each HDU: {found})")


def _image_shape(hdu: Any) -> tuple[int, int] | None:
    """``(H, W)`` of an image HDU whose data is 2-D (extra axes of length 1 allowed), from the header only."""
    if not getattr(hdu, "is_image", False):
        return None
    axes = _axes(hdu)  # FITS order: x (W) first
    if len(axes) < 2 or min(axes[:2]) < 1 or any(n != 1 for n in axes[2:]):
        return None
    return axes[1], axes[0]


def _axes(hdu: Any) -> list[int]:
    """``[NAXIS1, NAXIS2, ...]`` from the header (the data is not loaded)."""
    return [int(hdu.header.get(f"NAXIS{i}", 0)) for i in range(1, int(hdu.header.get("NAXIS", 0)) + 1)]


def _read_image(name: str, opener: Any, index: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Float32 ``(H, W)`` image of HDU ``index`` and its valid mask (None if all valid)."""
    try:
        with _quiet(), opener() as hdul:
            hdu = hdul[index]
            raw = hdu.data
            raw = raw.reshape(raw.shape[-2:])
            # astropy turns BLANK into NaN when it scales integer data; unscaled integers keep the raw code.
            blank = hdu.header.get("BLANK")
            invalid = raw == blank if raw.dtype.kind in "iu" and isinstance(blank, int) else None
            data = raw.astype(np.float32)  # a copy in native byte order (FITS is big-endian)
    except Exception as e:  # noqa: BLE001 - see _entry
        raise SourceError(f"{name}: cannot read the image data of HDU {index} ({e})") from e
    # Values beyond float32 range become inf: invalid too, rather than silently wrong.
    bad = ~np.isfinite(data) if invalid is None else invalid | ~np.isfinite(data)
    if not bad.any():
        return data, None
    data[bad] = 0.0
    return data, ~bad


def _obs_time(header: Any) -> tuple[str | None, float | None]:
    """The observation time as written and as POSIX seconds (UTC), from the first of ``TIME_KEYS`` found."""
    for key in TIME_KEYS:
        value = header.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        text = value.strip()
        old = _OLD_DATE.match(text)
        if old:  # dd/mm/yy: years 00-99 meant 1900-1999 (FITS standard before 2000)
            text = f"19{old.group(3)}-{old.group(2)}-{old.group(1)}"
        if "T" not in text and isinstance(header.get("TIME-OBS"), str):
            text = f"{text}T{header['TIME-OBS'].strip()}"  # date and time in separate keys (older files)
        try:
            return value.strip(), float(Time(text, scale="utc").unix)
        except ValueError:
            continue
    return None, None


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else None


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence astropy's header verification warnings (e.g. a BLANK key on float data, as in AIA files)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        yield


# ---------------------------------------------------------------------------------------------- tar


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SourceError(f"{path}: not a readable tar archive ({e})") from e


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    """Refuse members that would escape an extraction folder or are not plain data."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in PurePosixPath(name).parts:
        raise SourceError(f"{archive}: unsafe member {member.name!r} (absolute path or '..'); archive refused")
    if member.issym() or member.islnk():
        raise SourceError(f"{archive}: member {member.name!r} is a link; archive refused")
    if member.isdev():
        raise SourceError(f"{archive}: member {member.name!r} is a device or FIFO; archive refused")


def _member_bytes(archive: Path, tar: tarfile.TarFile, member: tarfile.TarInfo | None) -> bytes:
    """Bytes of one member, read into memory (never extracted), gunzipped if it is ``.fits.gz``."""
    try:
        handle = tar.extractfile(member)  # type: ignore[arg-type]
        data = handle.read() if handle is not None else b""
        # astropy recognises gzip only in files on disk, not in memory.
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (tarfile.TarError, OSError, EOFError, AttributeError) as e:
        name = member.name if member is not None else "?"
        raise SourceError(f"{archive}: cannot read member {name!r} ({e})") from e


def _archive_entries(path: Path, make: Callable[..., _Entry | None] = _entry) -> list[_Entry | None]:
    """Header pass over a tar archive: check every member, read the FITS members' headers with ``make``."""
    entries = []
    with _open_tar(path) as tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise SourceError(f"{path}: damaged tar archive ({e})") from e
        for member in members:
            _check_member(path, member)  # every member first: one bad member refuses the archive
        for member in members:
            if member.isfile() and path_suffix(member.name) in FITS_SUFFIXES:
                data = _member_bytes(path, tar, member)
                name = f"{path}:{member.name}"
                entries.append(make(name, member, lambda data=data: fits.open(io.BytesIO(data))))
    return entries
