"""Synthetic image sequences with known anomalies: the demo's data and most tests' fixtures.

A normal sequence is the longitudinal toy problem of the spatiotemporal diffusion work
(``shared/seeds/000``): one bright circle on a black background whose position and radius evolve
smoothly (a random start and a small random constant drift per sequence, reflected off the borders so
that long sequences stay inside the frame). Anomalies are drawn over a normal sequence, and their pixel
masks are *computed*, not drawn: ``mask = anomalous != normal``, so they are exact by construction, and a
frame is labelled anomalous exactly when its mask has a pixel.

Everything is numpy and deterministic for a given seed; :func:`write_synthetic_dataset` is the only
function that touches the disk (it writes the generic layout that :mod:`oddframe.data.layouts` reads).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from oddframe.errors import LayoutError

ANOMALY_KINDS: tuple[str, ...] = ("zeroed", "object", "jump", "appearance", "frozen")
FORMATS: tuple[str, ...] = ("png", "jpg", "npy")

# Circle radius and per-frame drift, as fractions of the frame size: a radius of 10-18 % keeps the
# circle clearly visible at 64x64 (6-11 px) while leaving room to move; 1.5-4 % per frame (1-2.5 px at 64)
# is "smooth" yet large enough that consecutive frames always differ (which "frozen" relies on).
_RADIUS = (0.10, 0.18)
_SPEED = (0.015, 0.04)
_RADIUS_DRIFT = 0.006
_MIN_SIZE = 16


@dataclass
class SyntheticVideo:
    """One generated video with its ground truth.

    Attributes:
        name: video name (the folder / file stem when written to disk).
        frames: ``(T, H, W)`` uint8.
        labels: ``(T,)`` uint8, 1 where ``masks[t]`` has any pixel.
        masks: ``(T, H, W)`` bool, True where the frame differs from the normal one it replaced.
    """

    name: str
    frames: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold values into ``[lo, hi]`` like a ball bouncing between two walls (a triangle wave)."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    y = np.mod(x - lo, 2 * span)
    return lo + np.where(y > span, 2 * span - y, y)


def _disk(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    """``(size, size)`` bool, True inside the circle of centre ``(cy, cx)`` and radius ``r`` (pixels)."""
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _check(length: int, size: int) -> None:
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if size < _MIN_SIZE:
        raise ValueError(f"size must be >= {_MIN_SIZE} pixels, got {size}")


def _trajectory(rng: np.random.Generator, length: int, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Centres ``(T, 2)`` (y, x), radii ``(T,)`` and intensity of one smoothly moving circle."""
    r_lo, r_hi = _RADIUS[0] * size, _RADIUS[1] * size
    # Keep one pixel of margin beyond the largest radius so the disk never touches the border.
    c_lo, c_hi = r_hi + 1.0, size - 2.0 - r_hi
    t = np.arange(length, dtype=np.float64)
    start = rng.uniform(c_lo, c_hi, size=2)
    angle = rng.uniform(0.0, 2 * np.pi)
    speed = rng.uniform(*_SPEED) * size
    velocity = speed * np.array([np.sin(angle), np.cos(angle)])
    centres = _reflect(start[None, :] + t[:, None] * velocity[None, :], c_lo, c_hi)
    r0 = rng.uniform(r_lo, r_hi)
    dr = rng.uniform(-_RADIUS_DRIFT, _RADIUS_DRIFT) * size
    radii = _reflect(r0 + t * dr, r_lo, r_hi)
    intensity = int(rng.integers(180, 256))
    return centres, radii, intensity


def _render(centres: np.ndarray, radii: np.ndarray, intensity: int, size: int) -> np.ndarray:
    """``(T, H, W)`` uint8 frames of the circle at each centre/radius on a zero background."""
    frames = np.zeros((len(radii), size, size), dtype=np.uint8)
    for i, ((cy, cx), r) in enumerate(zip(centres, radii)):
        frames[i][_disk(size, cy, cx, r)] = intensity
    return frames


def normal_sequence(rng: np.random.Generator, *, length: int = 4, size: int = 64) -> np.ndarray:
    """A normal sequence: one bright circle drifting smoothly on a black background.

    Args:
        rng: random generator (the sequence is a pure function of its state).
        length: number of frames ``T``.
        size: frame height and width ``H = W``.

    Returns:
        ``(T, H, W)`` uint8; the background is exactly 0 and the circle one intensity in ``[180, 255]``.
    """
    _check(length, size)
    return _render(*_trajectory(rng, length, size), size)


def default_anomaly_frames(anomaly: str, length: int) -> list[int]:
    """The frames an anomaly covers when none are given.

    ``"zeroed"`` hides the 3rd frame (index 2, clamped to the sequence), as in the diffusion seed; every
    other kind covers a stretch of about a quarter of the video (at least one frame) centred in it.
    """
    if anomaly not in ANOMALY_KINDS:
        raise ValueError(f"anomaly must be one of {ANOMALY_KINDS}, got {anomaly!r}")
    if anomaly == "zeroed":
        return [min(2, length - 1)]
    n = max(1, round(length / 4))
    start = max(1, length // 2 - n // 2) if length > 1 else 0
    return list(range(start, min(length, start + n)))


def _far_square(
    rng: np.random.Generator, centres: np.ndarray, radii: np.ndarray, side: int, size: int
) -> tuple[int, int]:
    """Top-left corner of a ``side`` square that overlaps the circle as little as possible in the given frames."""
    best, best_gap = (0, 0), -np.inf
    for _ in range(64):
        y, x = (int(v) for v in rng.integers(1, size - side - 1, size=2))
        # Gap between the square's centre and each circle's rim; the square should sit clear of all of them.
        d = np.hypot(centres[:, 0] - (y + side / 2), centres[:, 1] - (x + side / 2)) - radii - side * 0.75
        gap = float(d.min())
        if gap > best_gap:
            best, best_gap = (y, x), gap
        if gap > 0:
            break
    return best


def _apply_anomaly(
    rng: np.random.Generator,
    normal: np.ndarray,
    traj: tuple[np.ndarray, np.ndarray, int],
    anomaly: str,
    frames: list[int],
) -> np.ndarray:
    """The anomalous version of ``normal`` ``(T, H, W)``: ``anomaly`` drawn into ``frames``."""
    out = normal.copy()
    centres, radii, intensity = traj
    size = normal.shape[-1]
    if anomaly == "zeroed":
        out[frames] = 0
    elif anomaly == "object":
        # A mid-grey square: distinct from both the black background and the bright circle.
        side = max(4, round(size * 0.2))
        y, x = _far_square(rng, centres[frames], radii[frames], side, size)
        out[frames, y : y + side, x : x + side] = 110
    elif anomaly == "jump":
        # The circle teleports by ~1/3 of the frame along the axis direction that leaves it most room
        # and keeps that offset; the valid box is at least 2/3 of the frame wide, so the best direction
        # always moves it by more than a radius (clearly off its smooth path). It comes back afterwards.
        r_hi = _RADIUS[1] * size
        lo, hi = r_hi + 1.0, size - 2.0 - r_hi
        steps = [np.array(d, dtype=float) * size / 3 for d in ((1, 0), (-1, 0), (0, 1), (0, -1))]

        def best_step(c: np.ndarray) -> np.ndarray:
            return steps[int(np.argmax([np.hypot(*(np.clip(c + s, lo, hi) - c)) for s in steps]))]

        step = best_step(centres[frames[0]])
        for f in frames:
            # Over a long stretch the smooth path can carry the circle to the wall the jump points at;
            # switch direction there rather than let clamping undo the jump.
            if np.hypot(*(np.clip(centres[f] + step, lo, hi) - centres[f])) < radii[f]:
                step = best_step(centres[f])
            cy, cx = np.clip(centres[f] + step, lo, hi)
            out[f] = 0
            out[f][_disk(size, cy, cx, radii[f])] = intensity
    elif anomaly == "appearance":
        # A checkerboard of 3-pixel cells at a third of the brightness inside the circle: a texture the
        # normal, uniformly bright circle never has.
        yy, xx = np.mgrid[0:size, 0:size]
        checker = ((yy // 3 + xx // 3) % 2) == 0
        for f in frames:
            disk = _disk(size, centres[f][0], centres[f][1], radii[f])
            out[f][disk & checker] = intensity // 3
    elif anomaly == "frozen":
        if 0 in frames:
            raise ValueError("a 'frozen' anomaly cannot start at frame 0: there is no earlier frame to repeat")
        for f in sorted(frames):
            out[f] = out[f - 1]
    return out


def make_video(
    name: str,
    *,
    rng: np.random.Generator,
    length: int = 4,
    size: int = 64,
    anomaly: str | None = None,
    anomaly_frames: Sequence[int] | None = None,
) -> SyntheticVideo:
    """One synthetic video, normal or with one kind of anomaly.

    Args:
        name: video name.
        rng: random generator; the video is a pure function of its state.
        length: frames ``T`` (4 in the diffusion seed; 16-200 for demos).
        size: frame height and width.
        anomaly: ``None`` for a normal video, or one of :data:`ANOMALY_KINDS`.
        anomaly_frames: frame indices the anomaly covers; ``None`` uses :func:`default_anomaly_frames`.

    Returns:
        A :class:`SyntheticVideo`: frames ``(T, H, W)`` uint8, labels ``(T,)`` uint8, masks ``(T, H, W)`` bool.

    Raises:
        ValueError: for an unknown ``anomaly``, frame indices outside ``[0, T)``, or a bad length/size.
    """
    _check(length, size)
    traj = _trajectory(rng, length, size)
    normal = _render(*traj, size)
    if anomaly is None:
        if anomaly_frames:
            raise ValueError(f"anomaly_frames given without an anomaly kind; pass anomaly=one of {ANOMALY_KINDS}")
        frames = normal
    else:
        if anomaly not in ANOMALY_KINDS:
            raise ValueError(f"anomaly must be None or one of {ANOMALY_KINDS}, got {anomaly!r}")
        chosen = default_anomaly_frames(anomaly, length) if anomaly_frames is None else list(anomaly_frames)
        bad = [f for f in chosen if not 0 <= int(f) < length]
        if bad or not chosen:
            raise ValueError(f"anomaly_frames must be non-empty indices in [0, {length}), got {list(chosen)}")
        frames = _apply_anomaly(rng, normal, traj, anomaly, sorted({int(f) for f in chosen}))
    masks = frames != normal
    labels = masks.any(axis=(1, 2)).astype(np.uint8)
    return SyntheticVideo(name=name, frames=frames, labels=labels, masks=masks)


def make_split(
    *,
    n_videos: int,
    length: int = 4,
    size: int = 64,
    anomaly: str | None = "zeroed",
    seed: int | np.random.SeedSequence = 0,
    anomaly_fraction: float = 1.0,
) -> list[SyntheticVideo]:
    """``n_videos`` videos named ``01, 02, ...``; ``round(n_videos * anomaly_fraction)`` of them anomalous.

    Each video draws from its own child of ``SeedSequence(seed)``, so video ``i`` is the same whatever
    ``n_videos`` is; which videos are anomalous is drawn from a further child.

    Returns:
        The videos, in name order.
    """
    if n_videos < 0:
        raise ValueError(f"n_videos must be >= 0, got {n_videos}")
    if not 0.0 <= anomaly_fraction <= 1.0:
        raise ValueError(f"anomaly_fraction must be in [0, 1], got {anomaly_fraction}")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    pick_ss, videos_ss = ss.spawn(2)
    n_bad = round(n_videos * anomaly_fraction) if anomaly is not None else 0
    bad = set(np.random.default_rng(pick_ss).permutation(n_videos)[:n_bad].tolist())
    width = max(2, len(str(n_videos)))
    return [
        make_video(
            f"{i + 1:0{width}d}",
            rng=np.random.default_rng(child),
            length=length,
            size=size,
            anomaly=anomaly if i in bad else None,
        )
        for i, child in enumerate(videos_ss.spawn(n_videos))
    ]


def _write_video(video: SyntheticVideo, split_dir: Path, fmt: str) -> None:
    if fmt == "npy":
        (split_dir / "videos").mkdir(parents=True, exist_ok=True)
        np.save(split_dir / "videos" / f"{video.name}.npy", video.frames)
        return
    folder = split_dir / "frames" / video.name
    folder.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(len(video.frames) - 1)))
    for i, frame in enumerate(video.frames):
        path = folder / f"{i:0{digits}d}.{fmt}"
        if not cv2.imwrite(str(path), frame):
            raise LayoutError(f"{path}: OpenCV could not write the frame")


def write_synthetic_dataset(
    out: str | Path,
    *,
    n_train: int = 64,
    n_test: int = 16,
    length: int = 4,
    size: int = 64,
    anomaly: str = "zeroed",
    seed: int = 0,
    anomaly_fraction: float = 1.0,
    fmt: str = "png",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a synthetic dataset in the generic (ShanghaiTech-style) layout.

    Layout written::

        training/frames/<name>/000.png ...        (or training/videos/<name>.npy with fmt="npy")
        testing/frames/<name>/000.png ...
        testing/test_frame_mask/<name>.npy        (T,) uint8
        testing/test_pixel_mask/<name>.npy        (T, H, W) uint8, 0/1

    Training videos are always normal. ``fmt="jpg"`` is lossy: the stored frames then differ slightly
    from the generated ones, the masks still describe the generated anomaly.

    Args:
        out: dataset root; created if missing.
        n_train, n_test: numbers of videos.
        length, size: frames per video and frame size.
        anomaly: kind of anomaly in the test videos, one of :data:`ANOMALY_KINDS`.
        seed: master seed; training and test videos use independent child seeds.
        anomaly_fraction: fraction of test videos that get the anomaly.
        fmt: frame storage, one of :data:`FORMATS`.
        overwrite: replace ``training/`` and ``testing/`` in a non-empty ``out`` instead of refusing.

    Returns:
        A summary with the keys :func:`oddframe.data.inspect.inspect_path` reports (``layout``,
        ``n_train_videos``, ``n_train_frames``, ``n_test_videos``, ``n_test_frames``,
        ``n_anomalous_frames``, ``has_pixel_masks``, ``resolution``) plus ``root``, ``anomaly``, ``seed``, ``fmt``.

    Raises:
        ValueError: for an unknown ``anomaly`` or ``fmt``.
        LayoutError: if ``out`` is a non-empty folder (or a file) and ``overwrite`` is False.
    """
    if anomaly not in ANOMALY_KINDS:
        raise ValueError(f"anomaly must be one of {ANOMALY_KINDS}, got {anomaly!r}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LayoutError(f"{out}: exists and is not a folder; cannot write a dataset there")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise LayoutError(f"{out}: folder is not empty; refusing to overwrite it (pass overwrite=True)")
        for sub in ("training", "testing"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
    train_ss, test_ss = np.random.SeedSequence(seed).spawn(2)
    train = make_split(n_videos=n_train, length=length, size=size, anomaly=None, seed=train_ss)
    test = make_split(
        n_videos=n_test, length=length, size=size, anomaly=anomaly, seed=test_ss, anomaly_fraction=anomaly_fraction
    )
    for video in train:
        _write_video(video, out / "training", fmt)
    frame_dir, pixel_dir = out / "testing" / "test_frame_mask", out / "testing" / "test_pixel_mask"
    for video in test:
        _write_video(video, out / "testing", fmt)
        frame_dir.mkdir(parents=True, exist_ok=True)
        pixel_dir.mkdir(parents=True, exist_ok=True)
        np.save(frame_dir / f"{video.name}.npy", video.labels.astype(np.uint8))
        np.save(pixel_dir / f"{video.name}.npy", video.masks.astype(np.uint8))
    return {
        "root": str(out),
        "layout": "generic",
        "n_train_videos": len(train),
        "n_train_frames": sum(len(v.frames) for v in train),
        "n_test_videos": len(test),
        "n_test_frames": sum(len(v.frames) for v in test),
        "n_anomalous_frames": int(sum(int(v.labels.sum()) for v in test)),
        "has_pixel_masks": bool(test),
        "resolution": [size, size],
        "anomaly": anomaly,
        "seed": seed,
        "fmt": fmt,
    }
