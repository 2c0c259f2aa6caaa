"""Dataset layouts: a folder on disk -> training and test videos with optional frame labels and pixel masks.

Six layouts are understood, detected from the folder's contents:

- ``generic`` (the ShanghaiTech convention, also what :mod:`oddframe.data.synthetic` writes):
  ``training/{videos,frames}``, ``testing/{videos,frames}``, ``testing/test_frame_mask/<video>.npy`` ``(T,)``
  and ``testing/test_pixel_mask/<video>.npy`` ``(T, H, W)``; labels and masks optional per video.
- ``ucsd``: UCSD Ped1/Ped2 as distributed: ``Train/Train001/001.tif``, ``Test/Test001/*.tif``,
  ``Test/Test001_gt/*.bmp`` and frame ranges in ``UCSDped1.m`` / ``UCSDped2.m``.
- ``ucsd_redistributed``: UCSD as public VAD code ships it: ``training/frames/01/000.jpg``,
  ``testing/frames/01/...``, ``ped2.mat`` (``gt``: 1-based [start; end] ranges per test video) and optional
  ``testing/masks/01/000.png``.
- ``avenue``: CUHK Avenue as distributed: ``training_videos/01.avi``, ``testing_videos/01.avi`` and
  ``ground_truth_demo/testing_label_mask/1_label.mat`` (``volLabel``: one mask per frame).
- ``shanghaitech``: ShanghaiTech Campus as distributed, the generic layout with videos named ``<scene>_<n>``
  (``training/videos/01_001.avi``, ``testing/frames/01_0014/``): every video knows its scene (``01``..``13``).
- ``ubnormal``: UBnormal as distributed (``Scene1/abnormal_scene_1_scenario_1.mp4`` and annotations), read
  under the one-class protocol by :mod:`oddframe.data.ubnormal`.

``load_dataset(..., scenes=[...])`` keeps the videos of some scenes only (one model per scene).

Frames are read lazily through :mod:`oddframe.data.sources`; pixel masks lazily, one frame at a time.
Inconsistent ground truth is reported in :attr:`Dataset.problems` rather than raised, so that a user can
still look at a half-broken dataset; unreadable ground-truth files raise :class:`LayoutError`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from oddframe.data.dataset import Dataset, Video, open_or_skip, select_scenes, video_number, video_stem
from oddframe.data.groundtruth import (
    ArrayMasks,
    ImageMasks,
    MatMasks,
    PixelMasks,
    entries,
    files_in,
    labels_from_ranges,
    read_mat_ranges,
    read_ucsd_m,
    subdirs,
)
from oddframe.data.sources import FrameSource, is_source, natural_key, open_source
from oddframe.data.ubnormal import EXPECTED as UBNORMAL_EXPECTED
from oddframe.data.ubnormal import is_ubnormal, load_ubnormal
from oddframe.errors import ConfigError, LayoutError, SourceError

__all__ = ["LAYOUTS", "Dataset", "PixelMasks", "Video", "check_video", "detect_layout", "load_dataset", "open_input"]

LAYOUTS: tuple[str, ...] = ("generic", "ucsd", "ucsd_redistributed", "avenue", "shanghaitech", "ubnormal")

# What each layout expects, quoted in the error when a folder fits none of them.
EXPECTED: dict[str, str] = {
    "generic": "training/{videos,frames}/ and/or testing/{videos,frames}/ (ShanghaiTech style; optional "
    "testing/test_frame_mask/<video>.npy and testing/test_pixel_mask/<video>.npy)",
    "ucsd": "Train/Train001/*.tif and Test/Test001/*.tif (UCSD Ped1/Ped2 as distributed; optional "
    "Test/Test001_gt/*.bmp and UCSDped1.m / UCSDped2.m)",
    "ucsd_redistributed": "training/frames/01/000.jpg, testing/frames/01/... and a <name>.mat with a 'gt' "
    "cell array of (start, end) frame ranges (optional testing/masks/01/000.png)",
    "avenue": "training_videos/01.avi and testing_videos/01.avi (CUHK Avenue; optional "
    "ground_truth_demo/testing_label_mask/1_label.mat)",
    "shanghaitech": "training/videos/01_001.avi, testing/frames/01_0014/000.jpg, testing/test_frame_mask/01_0014.npy "
    "and testing/test_pixel_mask/01_0014.npy (ShanghaiTech Campus: the generic layout, scene = name prefix)",
    "ubnormal": UBNORMAL_EXPECTED,
}


def _gt_mat(root: Path) -> Path | None:
    """The frame-level ``.mat`` of a redistributed UCSD folder: ``<root name>.mat`` first, else the only one."""
    mats = files_in(root, (".mat",))
    if not mats:
        return None
    named = [m for m in mats if m.stem.lower() == root.name.lower()]
    return named[0] if named else (mats[0] if len(mats) == 1 else None)


def _ucsd_m(root: Path) -> Path | None:
    """``UCSDped1.m`` / ``UCSDped2.m``: beside ``Train``/``Test`` or (as in the v1p2 archive) inside ``Test``."""
    for folder in (root, root / "Test"):
        found = [p for p in files_in(folder, (".m",)) if p.stem.lower().startswith("ucsdped")]
        if found:
            return found[0]
    return None


_SHANGHAITECH_NAME = re.compile(r"^\d{2}_\d{3,4}$")  # 01_001 (training), 01_0014 (testing)


def _shanghaitech_names(root: Path) -> bool:
    """Whether every video of a generic folder is named ``<scene>_<n>`` as in ShanghaiTech (listing only)."""
    names = [video_stem(p) for s in ("training", "testing") for k in ("frames", "videos") for p in entries(root / s / k)]
    return bool(names) and all(_SHANGHAITECH_NAME.match(n) for n in names)


def _layout_of(root: Path) -> str | None:
    """The layout whose marker folders ``root`` has, or None (folders only: cheap, decodes nothing)."""
    if (root / "training_videos").is_dir() or (root / "testing_videos").is_dir():
        return "avenue"
    if is_ubnormal(root):
        return "ubnormal"
    if (root / "Train").is_dir() or (root / "Test").is_dir():
        return "ucsd"
    splits = [root / s / k for s in ("training", "testing") for k in ("frames", "videos")]
    if not any(p.is_dir() for p in splits):
        return None
    # Both conventions share training/frames and testing/frames; the ground truth tells them apart.
    testing = root / "testing"
    generic_gt = (testing / "test_frame_mask").is_dir() or (testing / "test_pixel_mask").is_dir()
    ucsd_gt = _gt_mat(root) is not None or _ucsd_m(root) is not None or (testing / "masks").is_dir()
    if ucsd_gt and not generic_gt:
        return "ucsd_redistributed"
    return "shanghaitech" if _shanghaitech_names(root) else "generic"


def detect_layout(root: str | Path) -> str:
    """Which of :data:`LAYOUTS` the folder ``root`` is in.

    Raises:
        LayoutError: if ``root`` is not a folder or fits no layout; the message lists what each layout expects
            (and sub-folders that do fit, for a user who pointed one level too high).
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a folder; a dataset is a folder laid out as one of {LAYOUTS}")
    found = _layout_of(root)
    if found is not None:
        return found
    lines = "\n".join(f"  - {name}: {what}" for name, what in EXPECTED.items())
    hint = [f"{p.name} ({layout})" for p in subdirs(root) if (layout := _layout_of(p)) is not None]
    more = f"\nSub-folders that do fit: {', '.join(hint)}" if hint else ""
    raise LayoutError(f"{root}: fits no dataset layout. Expected one of:\n{lines}{more}")


def _split_videos(split: Path, problems: list[str]) -> list[tuple[str, FrameSource]]:
    """Videos of a generic split: files in ``videos/`` and frame folders in ``frames/`` (mixed), by name."""
    found: dict[str, Path] = {}
    for path in subdirs(split / "frames") + entries(split / "videos"):
        if not is_source(path):
            problems.append(f"ignored {path}: not a video file, image folder, FITS or array")
            continue
        name = video_stem(path)
        if name in found:
            problems.append(f"two videos named {name!r} in {split}: kept {found[name]}, ignored {path}")
            continue
        found[name] = path
    videos = []
    for name in sorted(found, key=natural_key):
        source = open_or_skip(found[name], problems)
        if source is not None:
            videos.append((name, source))
    return videos


def _load_generic(root: Path, problems: list[str]) -> tuple[list[Video], list[Video]]:
    train = [Video(name, src) for name, src in _split_videos(root / "training", problems)]
    label_dir, mask_dir = root / "testing" / "test_frame_mask", root / "testing" / "test_pixel_mask"
    test = []
    for name, src in _split_videos(root / "testing", problems):
        label_file, mask_file = label_dir / f"{name}.npy", mask_dir / f"{name}.npy"
        labels = _read_label_npy(label_file) if label_file.is_file() else None
        masks = ArrayMasks.from_npy(mask_file) if mask_file.is_file() else None
        test.append(Video(name, src, labels, masks))
    names = {v.name for v in test}
    for folder in (label_dir, mask_dir):
        orphans = [p.stem for p in files_in(folder, (".npy",)) if p.stem not in names]
        if orphans:
            problems.append(f"{folder}: ground truth for {len(orphans)} videos not in testing/: {orphans[:5]}")
    return train, test


def _read_label_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise LayoutError(f"{path}: cannot read frame labels ({err})") from err
    if arr.ndim != 1:
        raise LayoutError(f"{path}: frame labels must be a 1-D array (T,), got shape {arr.shape}")
    return (arr != 0).astype(np.uint8)


def _load_ucsd(root: Path, problems: list[str]) -> tuple[list[Video], list[Video]]:
    is_video = re.compile(r"(Train|Test)\d+$")
    train = [
        Video(d.name, s)
        for d in subdirs(root / "Train")
        if is_video.match(d.name) and (s := open_or_skip(d, problems)) is not None
    ]
    m_file = _ucsd_m(root)
    ranges = read_ucsd_m(m_file) if m_file else None
    if ranges is None:
        problems.append(f"{root}: no UCSDped1.m / UCSDped2.m found; test videos have no frame labels")
    test = []
    for d in subdirs(root / "Test"):
        if not is_video.match(d.name) or (src := open_or_skip(d, problems)) is None:
            continue
        labels = _labels_for(d.name, len(src), ranges, m_file, problems)
        gt = files_in(d.with_name(f"{d.name}_gt"), (".bmp", ".png", ".tif", ".tiff"))
        test.append(Video(d.name, src, labels, ImageMasks(gt) if gt else None))
    return train, test


def _labels_for(
    name: str, n_frames: int, ranges: list[list[tuple[int, int]]] | None, gt_file: Path | None, problems: list[str]
) -> np.ndarray | None:
    """Frame labels of test video ``name`` from per-video 1-based ranges, matched by the number in its name."""
    if ranges is None:
        return None
    k = video_number(name)
    if k is None or not 1 <= k <= len(ranges):
        problems.append(f"test video {name}: no entry in {gt_file} ({len(ranges)} videos listed)")
        return None
    labels, bad = labels_from_ranges(ranges[k - 1], n_frames)
    if bad:
        problems.append(f"test video {name}: ranges {bad} in {gt_file} fall outside its {n_frames} frames")
    return labels


def _load_ucsd_redistributed(root: Path, problems: list[str]) -> tuple[list[Video], list[Video]]:
    frames = root / "training" / "frames"
    train = [Video(d.name, s) for d in subdirs(frames) if (s := open_or_skip(d, problems)) is not None]
    mat, m_file = _gt_mat(root), _ucsd_m(root)
    ranges, gt_file = None, None
    if mat is not None:
        ranges, gt_file = read_mat_ranges(mat, "gt"), mat
        # ped2.mat and UCSDped2.m often ship together; they must say the same thing.
        if m_file is not None and read_ucsd_m(m_file) != ranges:
            problems.append(f"{mat} and {m_file} give different frame ranges; using {mat.name}")
    elif m_file is not None:
        ranges, gt_file = read_ucsd_m(m_file), m_file
    else:
        problems.append(f"{root}: no <name>.mat with 'gt' (nor UCSDped*.m) found; test videos have no frame labels")
    test = []
    for d in subdirs(root / "testing" / "frames"):
        if (src := open_or_skip(d, problems)) is None:
            continue
        labels = _labels_for(d.name, len(src), ranges, gt_file, problems)
        gt = files_in(root / "testing" / "masks" / d.name, (".png", ".bmp", ".tif", ".tiff", ".jpg"))
        test.append(Video(d.name, src, labels, ImageMasks(gt) if gt else None))
    return train, test


def _load_avenue(root: Path, problems: list[str]) -> tuple[list[Video], list[Video]]:
    def videos(folder: Path) -> list[tuple[str, FrameSource]]:
        out = []
        for p in entries(folder):
            if is_source(p) and (s := open_or_skip(p, problems)) is not None:
                out.append((video_stem(p), s))
        return out

    train = [Video(name, s) for name, s in videos(root / "training_videos")]
    gt_dir = root / "ground_truth_demo" / "testing_label_mask"
    test = []
    if not gt_dir.is_dir() and (root / "testing_videos").is_dir():
        problems.append(f"{gt_dir}: missing; test videos have no frame labels or pixel masks")
    for name, src in videos(root / "testing_videos"):
        k = video_number(name)
        mat = gt_dir / f"{k}_label.mat" if k is not None else None
        if mat is None or not mat.is_file():
            if gt_dir.is_dir():
                problems.append(f"test video {name}: no ground truth ({gt_dir.name}/<number>_label.mat)")
            test.append(Video(name, src))
            continue
        masks = MatMasks(mat, "volLabel")
        # Avenue has no separate frame labels: a frame is anomalous where its mask has a pixel.
        test.append(Video(name, src, masks.any_per_frame().astype(np.uint8), masks))
    return train, test


def _load_shanghaitech(root: Path, problems: list[str]) -> tuple[list[Video], list[Video]]:
    train, test = _load_generic(root, problems)
    for video in train + test:  # 01_001 -> scene 01: the camera, one of 13
        video.scene = video.name.split("_")[0]
    return train, test


_LOADERS: dict[str, Callable[[Path, list[str]], tuple[list[Video], list[Video]]]] = {
    "generic": _load_generic,
    "shanghaitech": _load_shanghaitech,
    "ucsd": _load_ucsd,
    "ucsd_redistributed": _load_ucsd_redistributed,
    "avenue": _load_avenue,
}


def check_video(video: Video, *, masks: bool = False) -> list[str]:
    """Consistency problems of one test video's ground truth (empty when all is well).

    Always compares label and mask counts with the frame count (``len(source)``, no decoding). With
    ``masks=True`` it also reads every mask and reports labelled frames without mask pixels, mask pixels on
    unlabelled frames and a mask size different from the frame size.
    """
    out: list[str] = []
    n = len(video.source)
    if video.labels is not None and len(video.labels) != n:
        out.append(f"test video {video.name}: {len(video.labels)} frame labels for {n} frames")
    if video.masks is None:
        return out
    if len(video.masks) != n:
        out.append(f"test video {video.name}: {len(video.masks)} pixel masks for {n} frames")
    if not masks or len(video.masks) == 0:
        return out
    mask_hw, frame_hw = tuple(video.masks[0].shape), tuple(video.source.frame_shape()[:2])
    if mask_hw != frame_hw:
        out.append(f"test video {video.name}: masks are {mask_hw[0]}x{mask_hw[1]}, frames {frame_hw[0]}x{frame_hw[1]}")
    if video.labels is not None:
        k = min(len(video.labels), len(video.masks))
        has = video.masks.any_per_frame()[:k]
        lab = video.labels[:k].astype(bool)
        if (n_miss := int((lab & ~has).sum())) > 0:
            out.append(f"test video {video.name}: {n_miss} labelled frames have no mask pixels")
        if (n_extra := int((has & ~lab).sum())) > 0:
            out.append(f"test video {video.name}: {n_extra} unlabelled frames have mask pixels")
    return out


def load_dataset(
    root: str | Path,
    layout: str | None = None,
    *,
    check_masks: bool = False,
    scenes: list[str | int] | tuple[str | int, ...] | None = None,
    split: str = "test",
) -> Dataset:
    """Read a dataset folder.

    Args:
        root: the dataset folder.
        layout: one of :data:`LAYOUTS`; detected from the folder's contents when None.
        check_masks: also read every pixel mask to cross-check it against the frame labels (slow on big
            datasets; :func:`oddframe.data.inspect.inspect_path` does it).
        scenes: keep only the training and test videos of these scenes (ShanghaiTech, UBnormal); None = all.
        split: the test split to read: ``test``, or ``validation`` (UBnormal only).

    Returns:
        The :class:`Dataset`, with inconsistencies listed in ``problems``.

    Raises:
        ValueError: for an unknown ``layout``.
        LayoutError: if the folder fits no layout or a ground-truth file cannot be read.
        ConfigError: ``scenes`` on a dataset without them (or naming none of them), ``split`` on one without it.
    """
    root = Path(root)
    if layout is None:
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS} (or None to detect it), got {layout!r}")
    elif not root.is_dir():
        raise LayoutError(f"{root}: not a folder; a {layout} dataset is a folder: {EXPECTED[layout]}")
    problems: list[str] = []
    notes: list[str] = []
    if layout == "ubnormal":
        train, test, notes = load_ubnormal(root, problems, split=split)
    elif split != "test":
        raise ConfigError(f"data.eval_split={split!r}: only UBnormal has a validation split; {root} is {layout}")
    else:
        train, test = _LOADERS[layout](root, problems)
    if not train and not test:
        problems.append(f"{root}: no readable videos found (expected {EXPECTED[layout]})")
    dataset = Dataset(layout=layout, root=root, train=train, test=test, problems=problems, notes=notes)
    if scenes:
        select_scenes(dataset, scenes)
    for video in dataset.test:
        problems.extend(check_video(video, masks=check_masks))
    return dataset


def open_input(path: str | Path, *, check_masks: bool = False) -> Dataset:
    """Open a dataset folder (any layout) or a single frame source.

    A single source (video file, image folder, FITS file/folder/tar, ``.npy``/``.pt`` array) becomes a
    dataset of layout ``"source"`` with no training videos and one unlabelled test video.

    Raises:
        SourceError: if ``path`` does not exist.
        LayoutError: if it is neither a dataset nor a readable source (the message lists the layouts).
    """
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_dir() and _layout_of(path) is not None:
        return load_dataset(path, check_masks=check_masks)
    if is_source(path):
        source = open_source(path)
        name = path.stem if path.is_file() else path.name
        return Dataset(layout="source", root=path, test=[Video(name, source)])
    detect_layout(path)  # raises the LayoutError that lists what each layout expects
    raise LayoutError(f"{path}: neither a dataset folder nor a frame source")  # pragma: no cover
