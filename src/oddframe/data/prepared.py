"""Prepared folders: clips written by ``oddframe prep``, reviewed by ``oddframe review``, read for training.

A prepared folder holds::

    prep.json        format tag, oddframe version, input, settings, the config used, status, summary
    index.csv        one row per clip: id, file, video, source, frame numbers, times (ISO and seconds), raw stats
    clips/<id>.npy   one clip, float16 (C, T, H, W) in [-1, 1]; NaN marks invalid pixels
    movie.mp4        the raw input as a movie
    review.csv       statistics, robust z-scores and the decision of each clip (``oddframe review``)
    decisions.json   clips set aside by the automatic review and the manual include/exclude decisions
    sheets/*.png     contact sheets (``oddframe review --sheets``)

Clips are stored one per file so an interrupted ``prep`` resumes by skipping the clips already written, in
float16 to halve the size (the ``[-1, 1]`` data needs no more: float16 resolves ~5e-4 near 1, finer than an
8-bit grey level), and as plain ``.npy`` read with ``allow_pickle=False``, so nothing is ever unpickled.
Invalid pixels (NaN in FITS, padding) are stored as NaN, so one file holds both frames and valid mask.

This module owns the format: :mod:`oddframe.curation.prep` and :mod:`oddframe.curation.review` write through it and
:func:`prepared_dataset` reads it for training.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from oddframe.data.clips import Clip, pad_or_crop
from oddframe.data.transforms import FrameTransform
from oddframe.errors import ConfigError, SourceError
from oddframe.files import atomic_write, write_json

FORMAT = "oddframe-prepared"
FORMAT_VERSION = 1
PREP_FILE = "prep.json"
INDEX_FILE = "index.csv"
DECISIONS_FILE = "decisions.json"
REVIEW_FILE = "review.csv"
MOVIE_FILE = "movie.mp4"
CLIPS_DIR = "clips"
SHEETS_DIR = "sheets"
#: Decisions a person can take on a clip.
MANUAL_DECISIONS = ("exclude", "include")
#: Transform settings a model trained on prepared clips must share with the frames it will score later.
TRANSFORM_KEYS = ("size", "channels", "scaling", "percentiles", "stretch")


@dataclass(frozen=True, kw_only=True)
class ClipRecord:
    """One row of ``index.csv``.

    Attributes:
        clip: clip id, unique in the folder (``<video>_<window number>``).
        file: the clip's file, relative to the folder (``clips/<id>.npy``).
        video: name of the video (or FITS series) the clip comes from.
        source: path of that video's source.
        frames: the ``T`` frame numbers in the source.
        start_sec, end_sec: times of the first and last frame in seconds (POSIX for FITS, from the first frame
            for videos), ``None`` when the source has no times.
        start_iso, end_iso: the same as ISO 8601 UTC, empty when the times are not absolute.
        raw_mean, raw_std, raw_max: intensity statistics of the clip's valid pixels before scaling (after
            exposure normalisation for FITS), so clips compare in physical units; ``None`` if no pixel is valid.
    """

    clip: str
    file: str
    video: str
    source: str
    frames: tuple[int, ...]
    start_sec: float | None = None
    end_sec: float | None = None
    start_iso: str = ""
    end_iso: str = ""
    raw_mean: float | None = None
    raw_std: float | None = None
    raw_max: float | None = None

    def to_row(self) -> dict[str, str]:
        """The CSV row: frame numbers space-separated, ``None`` as an empty cell, floats at full precision."""
        row: dict[str, str] = {}
        for key, value in asdict(self).items():
            if key == "frames":
                row[key] = " ".join(str(i) for i in value)
            elif value is None:
                row[key] = ""
            else:
                row[key] = repr(value) if isinstance(value, float) else str(value)
        row.update(first_frame=str(self.frames[0]), last_frame=str(self.frames[-1]), n_frames=str(len(self.frames)))
        return row

    @classmethod
    def from_row(cls, row: dict[str, str], where: str) -> "ClipRecord":
        """Parse a CSV row; ``where`` names the file in errors."""
        try:
            frames = tuple(int(x) for x in row["frames"].split())
            if not frames:
                raise ValueError("no frame numbers")
            opt = {k: (float(row[k]) if row.get(k) else None)
                   for k in ("start_sec", "end_sec", "raw_mean", "raw_std", "raw_max")}
            return cls(clip=row["clip"], file=row["file"], video=row["video"], source=row["source"], frames=frames,
                       start_iso=row.get("start_iso", ""), end_iso=row.get("end_iso", ""), **opt)
        except (KeyError, ValueError, TypeError) as e:
            raise SourceError(f"{where}: malformed row for clip {row.get('clip', '?')!r} ({e})") from None


#: Columns of ``index.csv``: the record's fields, with first/last frame and count beside the frame list for people.
INDEX_FIELDS = ["clip", "file", "video", "source", "first_frame", "last_frame", "n_frames",
                *(f.name for f in fields(ClipRecord) if f.name not in ("clip", "file", "video", "source"))]


# ------------------------------------------------------------------------------------------ clip files


def encode_clip(frames: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Pack a clip and its valid mask into one float16 array, NaN where a pixel is invalid.

    Args:
        frames: ``(C, T, H, W)`` float in ``[-1, 1]``.
        valid: ``(1, T, H, W)`` or ``(T, H, W)`` bool.

    Returns:
        ``(C, T, H, W)`` float16.
    """
    if frames.ndim != 4:
        raise ValueError(f"frames must be (C, T, H, W), got shape {frames.shape}")
    mask = valid if valid.ndim == 4 else valid[None]
    if mask.shape != (1, *frames.shape[1:]):
        raise ValueError(f"valid must be (1, T, H, W) = {(1, *frames.shape[1:])}, got {valid.shape}")
    return np.where(mask, frames, np.nan).astype(np.float16)


def decode_clip(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_clip`.

    Args:
        array: ``(C, T, H, W)`` float16 (NaN = invalid).

    Returns:
        frames ``(C, T, H, W)`` float32 with invalid pixels at -1 (the clip contract), valid ``(1, T, H, W)`` bool.
    """
    data = array.astype(np.float32)
    valid = np.isfinite(data).all(axis=0, keepdims=True)
    data[:, ~valid[0]] = -1.0
    return data, valid


def save_clip(path: Path, frames: np.ndarray, valid: np.ndarray) -> None:
    """Write one clip atomically (a temporary file renamed), so an interrupted prep never leaves half a clip."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.save would append ".npy" to the temporary name
            np.save(handle, encode_clip(frames, valid), allow_pickle=False)

    atomic_write(path, write)


def load_clip_array(path: Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a clip file: float16 ``(C, T, H, W)`` (of ``shape`` when given), never unpickled."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise SourceError(f"{path}: not a readable clip file ({e}); run `oddframe prep` again to rewrite it") from None
    if array.dtype != np.float16 or array.ndim != 4 or (shape is not None and array.shape != tuple(shape)):
        raise SourceError(f"{path}: expected a float16 clip of shape {shape or '(C, T, H, W)'}, "
                          f"found {array.dtype} {array.shape}")
    return array


def clip_file_ok(path: Path, shape: tuple[int, ...]) -> bool:
    """True if ``path`` is a clip file of ``shape`` (only the ``.npy`` header is read: cheap on resume)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    return array.dtype == np.float16 and array.shape == tuple(shape)


# ------------------------------------------------------------------------------- prep.json and index


def read_prep(folder: str | Path) -> dict[str, Any]:
    """The ``prep.json`` of a prepared folder.

    Raises:
        SourceError: missing, unreadable, or not written by ``oddframe prep``.
    """
    path = Path(folder) / PREP_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SourceError(f"{folder}: not a prepared folder ({PREP_FILE} is missing; run `oddframe prep`)") from None
    except (OSError, ValueError) as e:
        raise SourceError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SourceError(f"{path}: not written by `oddframe prep` (format is not {FORMAT!r})")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise SourceError(f"{path}: format version {data['format_version']} is newer than this oddframe reads "
                          f"({FORMAT_VERSION}); upgrade oddframe")
    return data


def is_prepared(path: str | Path) -> bool:
    """True if ``path`` is a folder written by ``oddframe prep`` (it has a ``prep.json`` of the right format)."""
    path = Path(path)
    if not (path / PREP_FILE).is_file():
        return False
    try:
        read_prep(path)
    except SourceError:
        return False
    return True


def write_index(folder: Path, records: Iterable[ClipRecord]) -> None:
    """Write ``index.csv`` atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=INDEX_FIELDS)
            writer.writeheader()
            writer.writerows(r.to_row() for r in records)

    atomic_write(folder / INDEX_FILE, write)


def read_index(folder: str | Path) -> list[ClipRecord]:
    """The clips of a prepared folder, in ``index.csv`` order.

    Raises:
        SourceError: if ``index.csv`` is missing or malformed, or a clip id repeats.
    """
    path = Path(folder) / INDEX_FILE
    try:
        with open(path, newline="") as handle:
            records = [ClipRecord.from_row(row, str(path)) for row in csv.DictReader(handle)]
    except FileNotFoundError:
        raise SourceError(f"{folder}: {INDEX_FILE} is missing (prep did not finish; run it again to resume)") from None
    seen: set[str] = set()
    for r in records:
        if r.clip in seen:
            raise SourceError(f"{path}: clip id {r.clip!r} appears twice")
        seen.add(r.clip)
    return records


# ------------------------------------------------------------------------------------------ decisions


@dataclass
class Decisions:
    """What training leaves out: the automatic review's set-aside clips and the manual decisions.

    Attributes:
        automatic: clip id -> reason, for clips the last automatic review set aside.
        manual: clip id -> ``"exclude"`` or ``"include"``; manual decisions win over automatic ones.
        limit: the ``|z|`` limit of the last automatic review, ``None`` before any.
    """

    automatic: dict[str, str] = field(default_factory=dict)
    manual: dict[str, str] = field(default_factory=dict)
    limit: float | None = None

    def decision(self, clip: str) -> tuple[str, str]:
        """``("train" | "set_aside", reason)`` for one clip."""
        manual, auto = self.manual.get(clip), self.automatic.get(clip)
        if manual == "exclude":
            return "set_aside", "manual exclude" + (f" (automatic: {auto})" if auto else "")
        if manual == "include":
            return "train", "manual include" + (f" (automatic would set aside: {auto})" if auto else "")
        if auto:
            return "set_aside", f"automatic: {auto}"
        return "train", ""

    def excluded(self) -> set[str]:
        """Ids of the clips training leaves out."""
        return {c for c in {*self.automatic, *self.manual} if self.decision(c)[0] == "set_aside"}


def read_decisions(folder: str | Path) -> Decisions:
    """The ``decisions.json`` of a prepared folder (empty decisions when there is none yet)."""
    path = Path(folder) / DECISIONS_FILE
    if not path.is_file():
        return Decisions()
    try:
        data = json.loads(path.read_text())
        manual = {str(k): str(v) for k, v in data.get("manual", {}).items()}
        auto = data.get("automatic", {})
        decisions = Decisions(automatic={str(k): str(v) for k, v in auto.get("set_aside", {}).items()},
                              manual=manual, limit=auto.get("limit"))
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise SourceError(f"{path}: unreadable decisions ({e}); fix or delete it (it holds the manual decisions)"
                          ) from None
    bad = {k: v for k, v in decisions.manual.items() if v not in MANUAL_DECISIONS}
    if bad:
        raise SourceError(f"{path}: manual decisions must be one of {', '.join(MANUAL_DECISIONS)}; found {bad}")
    return decisions


def write_decisions(folder: str | Path, decisions: Decisions, *, when: str) -> None:
    """Write ``decisions.json`` atomically; ``when`` is the ISO time of this review."""
    data = {
        "format": "oddframe-decisions",
        "updated": when,
        "manual": dict(sorted(decisions.manual.items())),
        "automatic": {"limit": decisions.limit, "set_aside": dict(sorted(decisions.automatic.items()))},
    }
    write_json(data, Path(folder) / DECISIONS_FILE)


# ------------------------------------------------------------------------------------------- training


class PreparedDataset(Dataset):
    """The training clips of a prepared folder, each a :class:`~oddframe.data.clips.Clip`.

    Items: frames ``(C, T, H, W)`` float32 in ``[-1, 1]``, valid ``(1, T, H, W)`` bool, the video name and the
    ``(T,)`` frame numbers; clips shorter than ``clip_length`` (a sequence shorter than one clip) are padded
    with invalid frames (frame number -1).

    Attributes:
        folder: the prepared folder.
        records: the clips used, in index order.
        excluded: ids of the clips left out (set aside by the review and not re-included).
    """

    def __init__(self, folder: Path, records: list[ClipRecord], excluded: set[str], *, clip_length: int,
                 shape: tuple[int, int, int], augment: Callable[[Clip], Clip] | None = None) -> None:
        self.folder = folder
        self.records = records
        self.excluded = excluded
        self.clip_length = clip_length
        self.shape = shape  # (C, H, W)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Clip:
        r = self.records[i]
        c, h, w = self.shape
        frames, valid = decode_clip(load_clip_array(self.folder / r.file, (c, len(r.frames), h, w)))
        index = torch.as_tensor(r.frames, dtype=torch.long)
        clip = Clip(torch.from_numpy(frames), torch.from_numpy(valid), r.video, index)
        clip = pad_or_crop(clip, self.clip_length)
        return self.augment(clip) if self.augment is not None else clip


def prepared_dataset(
    path: str | Path,
    *,
    clip_length: int,
    augment: Callable[[Clip], Clip] | None = None,
    transform: FrameTransform | None = None,
) -> PreparedDataset:
    """The clips of a prepared (and possibly reviewed) folder that training may use.

    Clips the automatic review set aside or a person excluded are left out, unless a person re-included them
    (``decisions.json``).

    Args:
        path: a folder written by ``oddframe prep``.
        clip_length: frames per training clip; must equal the prepared clip length.
        augment: applied to every clip (e.g. :class:`oddframe.data.augment.ClipAugment`).
        transform: the frame transform the run's config describes; when given, its size, channels, scaling,
            percentiles and stretch must match the prepared clips, so that the model is later scored on frames
            transformed the way it was trained.

    Raises:
        SourceError: not a prepared folder, unfinished, or a clip file is missing.
        ConfigError: the clip length or transform differs from the prepared one, or no clip is left.
    """
    folder = Path(path)
    prep = read_prep(folder)
    if prep.get("status") != "complete":
        raise SourceError(f"{folder}: prep did not finish; run `oddframe prep` again with the same arguments to resume")
    settings = prep["settings"]
    if clip_length != settings["clip_length"]:
        raise ConfigError(f"{folder}: clips were prepared with clip_length {settings['clip_length']} but "
                          f"data.clip_length is {clip_length}; set --set data.clip_length={settings['clip_length']} "
                          "or prepare the data again")
    if transform is not None:
        _check_transform(folder, settings, transform)
    records = read_index(folder)
    if not records:
        raise SourceError(f"{folder}: prep made no clips (see the summary in {PREP_FILE}: frames skipped or too few)")
    excluded = read_decisions(folder).excluded()
    keep = [r for r in records if r.clip not in excluded]
    if not keep:
        raise ConfigError(f"{folder}: all {len(records)} clips are set aside; re-include some with "
                          "`oddframe review DIR --include ID`")
    missing = [r.file for r in keep if not (folder / r.file).is_file()]
    if missing:
        raise SourceError(f"{folder}: {len(missing)} clip files are missing (e.g. {missing[0]}); "
                          "run `oddframe prep` again to rewrite them")
    h, w = settings["size"]
    return PreparedDataset(folder, keep, excluded & {r.clip for r in records}, clip_length=clip_length,
                           shape=(int(settings["channels"]), int(h), int(w)), augment=augment)


def _check_transform(folder: Path, settings: dict[str, Any], transform: FrameTransform) -> None:
    """Raise ConfigError naming every transform setting that differs from the prepared clips'."""
    wanted = {"size": list(transform.size) if transform.size else None, "channels": transform.channels,
              "scaling": transform.scaling, "percentiles": list(transform.percentiles), "stretch": transform.stretch}
    diffs = []
    for key in TRANSFORM_KEYS:
        have, want = settings.get(key), wanted[key]
        if key == "percentiles":
            same = have is not None and all(math.isclose(a, b) for a, b in zip(have, want))
        else:
            same = have == want
        if not same:
            diffs.append((key, _plain(have), _plain(want)))
    if diffs:
        prepared = ", ".join(f"data.{k}={have}" for k, have, _ in diffs)
        config = ", ".join(f"data.{k}={want}" for k, _, want in diffs)
        fix = " ".join(f"--set data.{k}={have}" for k, have, _ in diffs)
        raise ConfigError(f"{folder}: the clips were prepared with {prepared} but the config has {config}; add "
                          f"{fix} so that detection later transforms frames as in training")


def _plain(value: Any) -> str:
    """A setting as ``--set`` takes it: strings bare, lists as compact YAML/JSON (``[32,32]``)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
