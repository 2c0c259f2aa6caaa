"""What every dataset layout returns: videos (frames, labels, masks, scene) and a dataset of them.

Split from :mod:`oddframe.data.layouts` so that a layout family in its own module (:mod:`oddframe.data.ubnormal`)
builds the same objects without importing the layout registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from oddframe.data.groundtruth import PixelMasks
from oddframe.data.sources import FrameSource, open_source, path_suffix
from oddframe.errors import ConfigError, SourceError


@dataclass
class Video:
    """One video of a dataset.

    Attributes:
        name: video name (file stem or folder name).
        source: the frames, read lazily.
        labels: ``(T,)`` uint8 frame labels (1 = anomalous), or None when unknown.
        masks: lazy ``(H, W)`` bool pixel masks, one per frame, or None when unknown.
        scene: the camera/scene the video belongs to (ShanghaiTech ``01``..``13``, UBnormal ``1``..``29``), or
            None for single-scene datasets.
    """

    name: str
    source: FrameSource
    labels: np.ndarray | None = None
    masks: PixelMasks | None = None
    scene: str | None = None


@dataclass
class Dataset:
    """A dataset: training (normal) and test videos.

    Attributes:
        layout: a layout name, or ``"source"`` for a single source opened by ``open_input``.
        root: the folder (or source file) it was read from.
        train: training videos (normal, no labels).
        test: test videos, with labels/masks where the dataset has them.
        problems: human-readable warnings about inconsistent ground truth.
        notes: what the layout decided for the user (e.g. UBnormal's one-class protocol), not problems.
    """

    layout: str
    root: Path
    train: list[Video] = field(default_factory=list)
    test: list[Video] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def scenes(self) -> list[str]:
        """The scenes of its videos in natural order (empty for single-scene datasets)."""
        found = {v.scene for v in self.train + self.test if v.scene is not None}
        return sorted(found, key=scene_key)


def open_or_skip(path: Path, problems: list[str]) -> FrameSource | None:
    """Open a video source, or record why it is skipped in ``problems`` and return None."""
    try:
        return open_source(path)
    except SourceError as err:
        problems.append(f"skipped unreadable video {path}: {err}")
        return None


def video_stem(path: Path) -> str:
    """Video name of a source: a folder's name, a file's name without its (possibly compound) suffix."""
    return path.name[: -len(path_suffix(path))] if path.is_file() and path_suffix(path) else path.name


def video_number(name: str) -> int | None:
    """The video number in a name like ``01``, ``Test007`` or ``3`` (None if there is none)."""
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else None


def scene_key(scene: str | int) -> int | str:
    """Compare scenes by number where they are numbers, so that ``1``, ``"1"`` and ``"01"`` are one scene."""
    text = str(scene).strip()
    return int(text) if text.isdigit() else text


def select_scenes(dataset: Dataset, scenes: list[str | int] | tuple[str | int, ...]) -> Dataset:
    """Keep only the videos of ``scenes`` (training and test alike), for one model per scene.

    Raises:
        ConfigError: the dataset has no scenes, or a requested scene has no video (the message lists the scenes).
    """
    have = dataset.scenes
    if not have:
        raise ConfigError(f"data.scenes is set but {dataset.root} ({dataset.layout} layout) has no scenes")
    wanted = {scene_key(s) for s in scenes}
    missing = sorted(wanted - {scene_key(s) for s in have}, key=str)
    if missing:
        raise ConfigError(f"data.scenes: no videos of scene(s) {missing} in {dataset.root}; its scenes are {have}")
    dataset.train = [v for v in dataset.train if scene_key(v.scene) in wanted]
    dataset.test = [v for v in dataset.test if scene_key(v.scene) in wanted]
    return dataset
