"""Ground-truth readers for :mod:`oddframe.data.layouts`: lazy pixel masks, frame-range files, folder listing.

Split from ``layouts.py`` to keep both readable in one sitting. Folder listings skip hidden entries and the
junk macOS archives leave (``._*``, ``.DS_Store``) and sort like :mod:`oddframe.data.sources` reads image
folders, so mask ``i`` lines up with frame ``i``. Formats:

- pixel masks as a ``(T, H, W)`` ``.npy`` (ShanghaiTech), one image per frame (UCSD ``*.bmp``, redistributed
  UCSD ``*.png``) or a MATLAB cell array of ``(H, W)`` masks (Avenue ``volLabel``);
- frame labels as 1-based inclusive ranges, from ``UCSDped*.m`` text (``TestVideoFile{end+1}.gt_frame =
  [61:180];``) or a ``.mat`` cell array (``gt``: one ``[start; end]`` column per range).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import scipy.io

from oddframe.data.sources import natural_key
from oddframe.errors import LayoutError

_JUNK = {".ds_store", "thumbs.db", "desktop.ini"}


def visible(path: Path) -> bool:
    """False for hidden entries, macOS ``._*`` resource forks and ``.DS_Store``/``Thumbs.db`` junk."""
    return not path.name.startswith(".") and path.name.lower() not in _JUNK


def by_name(path: Path) -> tuple:
    """Sort key on the file name in the order :mod:`oddframe.data.sources` reads image folders (``2`` before
    ``10``), so that mask ``i`` lines up with frame ``i``."""
    return natural_key(path.name)


def subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder`` in natural order (none if it is not a folder)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and visible(p)), key=by_name)


def files_in(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Visible files of ``folder`` whose lower-case suffix is one of ``suffixes``, in natural order."""
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and visible(p) and p.suffix.lower() in suffixes),
        key=by_name,
    )


def entries(folder: Path) -> list[Path]:
    """Every visible file and sub-folder of ``folder`` in natural order (a ``videos/`` folder may hold both)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if visible(p)), key=by_name)


class PixelMasks(ABC):
    """Lazy per-frame ground-truth masks of one video: ``masks[i]`` is an ``(H, W)`` bool array."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of masks ``T``."""

    @abstractmethod
    def _get(self, i: int) -> np.ndarray:
        """Mask ``i`` (``0 <= i < T``) as ``(H, W)`` bool."""

    def __getitem__(self, i: int) -> np.ndarray:
        """Mask of frame ``i`` (negative counts from the end), ``(H, W)`` bool; IndexError outside ``[-T, T)``."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"mask index {i} out of range for {n} masks")
        return self._get(i % n)

    def any_per_frame(self) -> np.ndarray:
        """``(T,)`` bool: whether each mask has any pixel (reads every mask)."""
        return np.array([self._get(i).any() for i in range(len(self))], dtype=bool)


class ArrayMasks(PixelMasks):
    """Masks held in (or memory-mapped from) a ``(T, H, W)`` array; non-zero = anomalous."""

    def __init__(self, array: np.ndarray, *, origin: str = "array") -> None:
        if array.ndim != 3:
            raise LayoutError(f"{origin}: pixel masks must be (T, H, W), got shape {array.shape}")
        self.array = array
        self.origin = origin

    @classmethod
    def from_npy(cls, path: Path) -> "ArrayMasks":
        """Memory-map a ``.npy`` of masks, so that only the frames asked for are read."""
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise LayoutError(f"{path}: cannot read pixel masks ({err})") from err
        return cls(arr, origin=str(path))

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def _get(self, i: int) -> np.ndarray:
        return np.asarray(self.array[i]) != 0

    def any_per_frame(self) -> np.ndarray:
        # Chunks of 64 frames: vectorised, yet bounded memory for memory-mapped ShanghaiTech masks.
        return np.concatenate(
            [np.asarray(self.array[s : s + 64] != 0).any(axis=(1, 2)) for s in range(0, len(self), 64)]
            or [np.zeros(0, dtype=bool)]
        )


class ImageMasks(PixelMasks):
    """One mask image per frame (UCSD ``*_gt/*.bmp``, redistributed ``masks/*/*.png``); non-zero = anomalous."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def _get(self, i: int) -> np.ndarray:
        path = self.paths[i]
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise LayoutError(f"{path}: cannot read mask image")
        # JPEG masks carry compression noise around 0 and 255: threshold at mid-grey; lossless ones at > 0
        # (some datasets store masks as 0/1, others as 0/255).
        return img > 127 if path.suffix.lower() in (".jpg", ".jpeg") else img > 0


@lru_cache(maxsize=2)
def _load_mat_masks(path: Path, key: str) -> tuple[np.ndarray, ...]:
    """All masks of one ``.mat`` as bool arrays; cached for two files only, so that a pass over Avenue's
    test set (about 3.5 GB of masks) reads each file once and never holds more than two."""
    m = _loadmat(path)
    if key not in m:
        raise LayoutError(f"{path}: no variable {key!r} (found {sorted(k for k in m if not k.startswith('__'))})")
    arr = m[key]
    if arr.dtype == object:
        masks = [np.asarray(e) for e in arr.ravel()]
    elif arr.ndim == 3:
        # A numeric volume saved from MATLAB is (H, W, T).
        masks = list(np.moveaxis(arr, -1, 0))
    else:
        raise LayoutError(f"{path}: {key!r} must be a cell array of (H, W) masks, got shape {arr.shape}")
    if any(mask.ndim != 2 for mask in masks):
        raise LayoutError(f"{path}: every entry of {key!r} must be an (H, W) mask")
    return tuple(mask != 0 for mask in masks)


class MatMasks(PixelMasks):
    """Masks stored as a MATLAB cell array of ``(H, W)`` arrays (CUHK Avenue ``volLabel``), read lazily."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = Path(path)
        self.key = key
        self._n: int | None = None

    def __len__(self) -> int:
        if self._n is None:
            self._n = len(_load_mat_masks(self.path, self.key))
        return self._n

    def _get(self, i: int) -> np.ndarray:
        return _load_mat_masks(self.path, self.key)[i]


def _loadmat(path: Path) -> dict:
    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError as err:  # MATLAB v7.3 files are HDF5, which scipy does not read
        raise LayoutError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; re-save with -v7") from err
    except (OSError, ValueError, TypeError) as err:
        raise LayoutError(f"{path}: cannot read MATLAB file ({err})") from err


Ranges = list[tuple[int, int]]


def _pairs(entry: np.ndarray, path: Path) -> Ranges:
    """1-based ``(start, end)`` pairs from one ``gt`` entry: ``[start; end]`` columns (``(2, K)``) or rows."""
    # ped2.mat stores the ranges as uint8: cast before any arithmetic to avoid wrap-around.
    e = np.atleast_2d(np.asarray(entry, dtype=np.int64))
    if e.shape[0] == 2:
        return [(int(s), int(t)) for s, t in e.T]
    if e.shape[1] == 2:
        return [(int(s), int(t)) for s, t in e]
    raise LayoutError(f"{path}: a ground-truth entry must hold [start; end] pairs, got shape {e.shape}")


def read_mat_ranges(path: Path, key: str = "gt") -> list[Ranges]:
    """Per-test-video frame ranges from a ``.mat`` (``gt``: a 1xN cell of ``[start; end]`` columns).

    Returns:
        One list of 1-based inclusive ``(start, end)`` ranges per test video, in file order.
    """
    m = _loadmat(path)
    if key not in m:
        raise LayoutError(f"{path}: no variable {key!r} (found {sorted(k for k in m if not k.startswith('__'))})")
    arr = m[key]
    if arr.dtype == object:
        return [_pairs(e, path) for e in arr.ravel()]
    if arr.ndim == 2 and arr.shape[0] == 2:  # a plain numeric 2xN array: one [start; end] column per video
        return [_pairs(arr[:, [j]], path) for j in range(arr.shape[1])]
    raise LayoutError(f"{path}: {key!r} must be a cell array of [start; end] ranges, got shape {arr.shape}")


_M_LINE = re.compile(r"TestVideoFile\s*\{\s*end\s*\+\s*1\s*\}\s*\.\s*gt_frame\s*=\s*\[([^\]]*)\]")


def read_ucsd_m(path: Path) -> list[Ranges]:
    """Per-test-video frame ranges from ``UCSDped1.m`` / ``UCSDped2.m``.

    Each ``TestVideoFile{end+1}.gt_frame = [61:180];`` line is one test video; a line may hold several
    ranges (``[1:100, 120:150]``) or single frames (``[7]``).

    Returns:
        One list of 1-based inclusive ``(start, end)`` ranges per test video, in file order.
    """
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as err:
        raise LayoutError(f"{path}: cannot read ({err})") from err
    videos: list[Ranges] = []
    for body in _M_LINE.findall(text):
        ranges: Ranges = []
        for token in re.sub(r"\s*:\s*", ":", body).replace(",", " ").split():
            parts = token.split(":")
            if not all(p.isdigit() for p in parts) or len(parts) not in (1, 2):
                raise LayoutError(f"{path}: cannot parse frame range {token!r} in [{body}]")
            ranges.append((int(parts[0]), int(parts[-1])))
        videos.append(ranges)
    if not videos:
        raise LayoutError(f"{path}: no 'TestVideoFile{{end+1}}.gt_frame = [start:end];' lines found")
    return videos


def labels_from_ranges(ranges: Ranges, n_frames: int) -> tuple[np.ndarray, Ranges]:
    """``(T,)`` uint8 frame labels from 1-based inclusive ranges, and the ranges that fell outside ``[1, T]``
    (clipped into the labels where they overlap it)."""
    labels = np.zeros(n_frames, dtype=np.uint8)
    bad: Ranges = []
    for start, end in ranges:
        if not 1 <= start <= end <= n_frames:
            bad.append((start, end))
        labels[max(start, 1) - 1 : min(end, n_frames)] = 1
    return labels, bad
