"""What ``oddframe prep`` reads: its inputs as named frame sources, frames that skip unreadable files, identity.

Prep must get through long, imperfect downloads: FITS sources skip (and list) unreadable or odd-sized files,
image folders skip unreadable images, and a dataset folder contributes its training videos. A fingerprint of
what the input holds lets a resumed prep refuse an input that changed (its clips would be numbered differently).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterator

from oddframe.data.fits import FitsSource
from oddframe.data.layouts import open_input
from oddframe.data.sources import (
    FITS_ARCHIVE_SUFFIXES,
    FITS_SUFFIXES,
    Frame,
    FrameSource,
    ImageFolderSource,
    path_suffix,
    read_image,
    split_invalid,
)
from oddframe.errors import OddframeError, SourceError


def is_fits_input(path: str | Path) -> bool:
    """True for a FITS file, a tar archive (read as FITS), or a folder holding FITS files directly."""
    path = Path(path)
    if path.is_dir():
        return any(p.is_file() and path_suffix(p) in FITS_SUFFIXES
                   for p in path.iterdir() if not p.name.startswith("."))
    return path_suffix(path) in FITS_SUFFIXES | FITS_ARCHIVE_SUFFIXES


def open_prep_inputs(
    path: str | Path, *, normalise_exposure: bool = True
) -> tuple[list[tuple[str, FrameSource]], list[str]]:
    """The ``(name, source)`` pairs prep reads from ``path``, and problems found on the way.

    FITS inputs skip unreadable files (listed in the source's ``skipped``) and are exposure-normalised when
    asked; a dataset folder contributes its training videos.

    Raises:
        SourceError / LayoutError: ``path`` is missing or neither a source nor a dataset.
        OddframeError: a dataset folder without training videos.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if is_fits_input(path):
        name = path.name[: -len(path_suffix(path))] if path.is_file() else path.name
        return [(name, FitsSource(path, normalise_exposure=normalise_exposure, skip_unreadable=True))], []
    dataset = open_input(path)
    videos = dataset.test if dataset.layout == "source" else dataset.train
    if not videos:
        raise OddframeError(f"{path}: the {dataset.layout} dataset has no training videos to prepare")
    out = []
    for v in videos:
        source = v.source
        if source.kind == "fits":
            source = FitsSource(source.path, normalise_exposure=normalise_exposure, skip_unreadable=True)
        out.append((v.name, source))
    return out, list(dataset.problems)


def iter_frames_skipping(source: FrameSource, unreadable: list[dict[str, str]]) -> Iterator[Frame]:
    """The source's frames; an image folder skips (and lists) unreadable or odd-sized images instead of stopping."""
    if not isinstance(source, ImageFolderSource):
        yield from source  # FITS sources made by open_prep_inputs skip unreadable files themselves
        return
    shape, dtype = source.frame_shape(), source.dtype
    for index, file in enumerate(source.files):
        try:
            data = read_image(file)
        except SourceError as e:
            unreadable.append({"name": str(file), "reason": str(e)})
            continue
        if data.shape != shape or data.dtype != dtype:
            unreadable.append({"name": str(file), "reason": f"{data.shape} {data.dtype} differs from {shape} {dtype}"})
            continue
        data, valid = split_invalid(data)
        yield Frame(index=index, time=None, data=data, valid=valid)


def fingerprint(inputs: list[tuple[str, FrameSource]]) -> str:
    """A hash of what the input holds (names, frame counts, shapes, FITS file names and times) to refuse resuming
    a prep from an input that changed: its clips would be numbered differently."""
    items = []
    for name, s in inputs:
        item: list[Any] = [name, s.kind, s.path.name, len(s), list(s.frame_shape())]
        if isinstance(s, FitsSource):
            item.append([[Path(h["NAME"]).name, h["DATE-OBS"]] for h in s.headers()])
        elif isinstance(s, ImageFolderSource):
            item.append([f.name for f in s.files])
        elif s.path.is_file():
            item.append(s.path.stat().st_size)
        items.append(item)
    return hashlib.sha256(json.dumps(items, default=str).encode()).hexdigest()[:16]


def video_ids(names: list[str]) -> list[str]:
    """File-name-safe, unique ids for the videos (clip ids are ``<id>_<n>``)."""
    ids: list[str] = []
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "video"
        vid, n = base, 1
        while vid in ids:
            n += 1
            vid = f"{base}-{n}"
        ids.append(vid)
    return ids
