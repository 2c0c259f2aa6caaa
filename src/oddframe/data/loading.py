"""From sources to model inputs: transformed frame streams and in-memory training windows.

Detection streams frames (:func:`iter_frames`) so memory stays bounded; training materialises the resized
training videos once (:func:`load_video_frames`, float16) and cuts windows from them (:class:`WindowDataset`).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from oddframe.data.augment import ClipAugment
from oddframe.data.clips import Clip, window_starts
from oddframe.data.dataset import select_scenes
from oddframe.data.layouts import Video, open_input
from oddframe.data.sources import FrameRangeSource, FrameSource
from oddframe.data.transforms import FrameTransform

T = TypeVar("T")


@dataclass
class TransformedFrame:
    """One frame ready for a model.

    Attributes:
        index: frame number in its source.
        time: timestamp in seconds, or None.
        data: ``(C, H, W)`` float32 in ``[-1, 1]``.
        valid: ``(H, W)`` bool.
        raw: the untransformed frame data ``(H0, W0)`` or ``(H0, W0, C)``, kept only when asked for.
        features: derived inputs by name (:mod:`oddframe.features`), each ``(C_k, H, W)`` float32.
    """

    index: int
    time: float | None
    data: np.ndarray
    valid: np.ndarray
    raw: np.ndarray | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)


def iter_frames(
    source: FrameSource,
    transform: FrameTransform,
    *,
    sample_interval: int = 1,
    sample_interval_sec: float | None = None,
    keep_raw: bool = False,
    start: int = 0,
) -> Iterator[TransformedFrame]:
    """Stream the frames of ``source`` through ``transform``, keeping every ``sample_interval``-th frame or
    frames at least ``sample_interval_sec`` seconds apart (greedy, from the first frame); the first ``start`` kept
    frames are skipped without being transformed (a resumed run)."""
    last_time: float | None = None
    kept = 0
    for i, frame in enumerate(source):
        if sample_interval_sec is not None:
            if frame.time is None:
                raise ValueError(f"{source.path}: frame {frame.index} has no timestamp; use data.sample_interval")
            if last_time is not None and frame.time - last_time < sample_interval_sec * (1 - 1e-3):
                continue
            last_time = frame.time
        elif i % sample_interval:
            continue
        kept += 1
        if kept <= start:
            continue
        data, valid = transform(frame)
        yield TransformedFrame(frame.index, frame.time, data, valid, frame.data if keep_raw else None)


def prefetched(items: Iterable[T], *, depth: int = 32) -> Iterator[T]:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead, so that decoding and transforming the
    next frames overlaps with what the consumer does (the model: PyAV, OpenCV and torch all release the GIL).

    The order and the items are those of ``items``; an exception raised while producing is raised here, with its
    traceback; closing this generator early stops the thread and closes ``items`` (e.g. a video container).
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                q.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for x in it:
                if not put(("item", x)):
                    break
            else:
                put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put(("error", exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="oddframe-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "item":
                yield x  # type: ignore[misc]
            elif kind == "error":
                raise x  # type: ignore[misc]
            else:
                return
    finally:
        stop.set()
        thread.join()


def normal_videos(
    path: str | Path, *, start_frame: int = 0, stop_frame: int | None = None,
    scenes: Sequence[str | int] | None = None,
) -> tuple[str, list[Video]]:
    """The normal videos at ``path`` (the config's ``data.path``) and the layout that holds them.

    A dataset folder gives its training videos; a single source (one video, image folder, FITS, array) is one
    normal video. ``start_frame``/``stop_frame`` keep that range of frames of each (``data.start_frame``,
    ``data.stop_frame``); ``scenes`` keeps the videos of those scenes (``data.scenes``, ShanghaiTech, UBnormal).
    """
    dataset = open_input(path)
    if scenes:
        dataset = select_scenes(dataset, list(scenes))
    videos = dataset.test if dataset.layout == "source" else dataset.train
    if start_frame or stop_frame is not None:
        videos = [Video(v.name, FrameRangeSource(v.source, start=start_frame, stop=stop_frame)) for v in videos]
    return dataset.layout, videos


@dataclass
class VideoFrames:
    """A whole (resized) video in memory, for training.

    Attributes:
        name: video name.
        frames: ``(N, C, H, W)`` float16 in ``[-1, 1]``.
        valid: ``(N, H, W)`` bool.
        index: ``(N,)`` int64 frame numbers in the source.
        extras: derived inputs by name, each ``(N, C_k, H, W)`` float16.
    """

    name: str
    frames: torch.Tensor
    valid: torch.Tensor
    index: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


def stack_frames(name: str, items: Iterable[TransformedFrame], path: object = "") -> VideoFrames:
    """Stack a stream of transformed frames (and their derived inputs) into one in-memory video, float16."""
    items = list(items)
    if not items:
        raise ValueError(f"{path or name}: no frames")
    frames = torch.from_numpy(np.stack([f.data for f in items])).to(torch.float16)
    valid = torch.from_numpy(np.stack([f.valid for f in items]))
    index = torch.as_tensor([f.index for f in items], dtype=torch.long)
    extras = {k: torch.from_numpy(np.stack([f.features[k] for f in items])).to(torch.float16) for k in items[0].features}
    return VideoFrames(name, frames, valid, index, extras)


def load_video_frames(
    name: str,
    source: FrameSource,
    transform: FrameTransform,
    *,
    sample_interval: int = 1,
    sample_interval_sec: float | None = None,
) -> VideoFrames:
    """Decode, transform and stack all frames of ``source`` (float16 to halve memory)."""
    items = iter_frames(source, transform, sample_interval=sample_interval, sample_interval_sec=sample_interval_sec)
    return stack_frames(name, items, source.path)


class WindowDataset(Dataset):
    """Windows of ``clip_length`` frames every ``stride`` frames over in-memory videos.

    Each item is a :class:`Clip` with frames ``(C, T, H, W)`` float32; videos shorter than a window give one
    clip that the collate function pads (padded frames are invalid).
    """

    def __init__(
        self,
        videos: Sequence[VideoFrames],
        *,
        clip_length: int,
        stride: int,
        augment: ClipAugment | None = None,
    ) -> None:
        self.videos = list(videos)
        self.clip_length = clip_length
        self.augment = augment
        self.items = [
            (v, s) for v, video in enumerate(self.videos) for s in window_starts(len(video.frames), clip_length, stride)
        ]
        if not self.items:
            raise ValueError("no training windows: the training videos have no frames")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Clip:
        v, s = self.items[i]
        video = self.videos[v]
        sl = slice(s, s + self.clip_length)
        clip = Clip(
            frames=video.frames[sl].float().permute(1, 0, 2, 3),  # (T, C, H, W) -> (C, T, H, W)
            valid=video.valid[sl].unsqueeze(0),
            video=video.name,
            frame_index=video.index[sl],
            extras={k: v[sl].float().permute(1, 0, 2, 3) for k, v in video.extras.items()},
        )
        return self.augment(clip) if self.augment is not None else clip
