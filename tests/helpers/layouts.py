"""Tiny on-disk datasets in each layout :mod:`oddframe.data.layouts` reads, with known ground truth.

Frames are small (``24x32`` by default) and few, so a whole fixture writes in milliseconds. Each builder
returns the dataset root; the ground truth it wrote is given by its arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import av
import cv2
import numpy as np
import scipy.io

Ranges = Sequence[tuple[int, int]]


def frames(n: int, size: tuple[int, int] = (24, 32), seed: int = 0) -> np.ndarray:
    """``(n, H, W)`` uint8 random grey frames."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, *size), dtype=np.uint8)


def labels_of(ranges: Ranges, n: int) -> np.ndarray:
    """``(n,)`` uint8 labels from 1-based inclusive ranges (the hand computation the tests compare with)."""
    out = np.zeros(n, np.uint8)
    for s, e in ranges:
        out[s - 1 : e] = 1
    return out


def masks_of(labels: np.ndarray, size: tuple[int, int] = (24, 32)) -> np.ndarray:
    """``(T, H, W)`` uint8 0/255 masks with a 4x4 blob on exactly the labelled frames."""
    m = np.zeros((len(labels), *size), np.uint8)
    m[labels == 1, 2:6, 3:7] = 255
    return m


def write_image_folder(folder: Path, data: np.ndarray, suffix: str = ".png", digits: int = 3, first: int = 0) -> None:
    """One image per frame, named ``000.png``... (or from ``first``, e.g. UCSD's ``001.tif``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(data):
        path = folder / f"{i + first:0{digits}d}{suffix}"
        if not cv2.imwrite(str(path), frame):
            raise OSError(f"{path}: OpenCV could not write the test frame")


def write_avi(path: Path, data: np.ndarray, fps: int = 25, codec: str = "mjpeg", pix_fmt: str = "yuvj420p") -> None:
    """A Motion-JPEG ``.avi`` (or any ``codec`` in the container ``path`` names) of grey frames ``(T, H, W)``
    (H, W even), written with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = data.shape[1:3]
        stream.pix_fmt = pix_fmt
        for frame in data:
            rgb = np.repeat(frame[:, :, None], 3, axis=2)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


def add_mac_junk(folder: Path) -> None:
    """The ``.DS_Store`` and ``._*`` files a macOS zip leaves behind (they must be ignored)."""
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / f"._{folder.name}").write_bytes(b"\x00\x05\x16\x07")


def build_ucsd(
    root: Path,
    *,
    n_train: int = 2,
    n_frames: int = 6,
    gt: Sequence[Ranges] = (((2, 4),), ((1, 2), (5, 6))),
    masks_for: Sequence[int] = (1,),
    m_name: str = "UCSDped2.m",
) -> Path:
    """UCSD as distributed: ``Train/Train001/001.tif``, ``Test/Test00k/*.tif``, ``Test/Test00k_gt/*.bmp``.

    One test video per entry of ``gt`` (1-based inclusive ranges, written to ``m_name`` in the dataset's
    ``TestVideoFile{end+1}.gt_frame = [a:b, c:d];`` form); ``_gt`` mask folders only for video numbers in
    ``masks_for``; macOS junk in every folder.
    """
    for k in range(1, n_train + 1):
        write_image_folder(root / "Train" / f"Train{k:03d}", frames(n_frames, seed=k), ".tif", first=1)
    for k, ranges in enumerate(gt, start=1):
        write_image_folder(root / "Test" / f"Test{k:03d}", frames(n_frames, seed=100 + k), ".tif", first=1)
        if k in masks_for:
            gt_masks = masks_of(labels_of(ranges, n_frames))
            write_image_folder(root / "Test" / f"Test{k:03d}_gt", gt_masks, ".bmp", first=1)
    lines = ["TestVideoFile = {};"]
    lines += [f"TestVideoFile{{end+1}}.gt_frame = [{', '.join(f'{s}:{e}' for s, e in r)}];" for r in gt]
    (root / m_name).write_text("\n".join(lines) + "\n")
    for folder in (root, root / "Train", root / "Test", root / "Train" / "Train001"):
        add_mac_junk(folder)
    return root


def build_ucsd_redistributed(
    root: Path,
    *,
    n_train: int = 2,
    n_frames: int = 6,
    on_disk: Sequence[int] = (1, 3),
    gt: Sequence[Ranges] = (((2, 4),), ((1, 6),), ((3, 3), (5, 6))),
    masks: bool = True,
) -> Path:
    """``training/frames/01/000.jpg``, ``testing/frames/0k/`` for ``k`` in ``on_disk``, ``<root>.mat`` with ``gt``
    for every test video (``[start; end]`` uint8 columns, as ``ped2.mat`` stores them) and 0/255 png masks."""
    for k in range(1, n_train + 1):
        write_image_folder(root / "training" / "frames" / f"{k:02d}", frames(n_frames, seed=k), ".jpg")
    for k in on_disk:
        write_image_folder(root / "testing" / "frames" / f"{k:02d}", frames(n_frames, seed=100 + k), ".jpg")
        if masks:
            m = masks_of(labels_of(gt[k - 1], n_frames))
            write_image_folder(root / "testing" / "masks" / f"{k:02d}", m, ".png")
    cell = np.empty((1, len(gt)), dtype=object)
    for j, ranges in enumerate(gt):
        cell[0, j] = np.array(ranges, dtype=np.uint8).T  # (2, K): one [start; end] column per range
    scipy.io.savemat(root / f"{root.name}.mat", {"gt": cell})
    return root


def build_avenue(
    root: Path,
    *,
    n_train: int = 1,
    n_frames: int = 5,
    size: tuple[int, int] = (32, 48),
    anomalous: dict[int, Sequence[int]] | None = None,
) -> Path:
    """CUHK Avenue: ``training_videos/01.avi``, ``testing_videos/0k.avi`` and
    ``ground_truth_demo/testing_label_mask/k_label.mat`` (``volLabel``: 1xT cell of (H, W) masks).

    ``anomalous`` maps a test video number to its 0-based anomalous frames (default ``{1: [1, 2], 2: []}``).
    """
    anomalous = {1: [1, 2], 2: []} if anomalous is None else anomalous
    for k in range(1, n_train + 1):
        write_avi(root / "training_videos" / f"{k:02d}.avi", frames(n_frames, size, seed=k))
    gt_dir = root / "ground_truth_demo" / "testing_label_mask"
    gt_dir.mkdir(parents=True, exist_ok=True)
    for k, bad in anomalous.items():
        write_avi(root / "testing_videos" / f"{k:02d}.avi", frames(n_frames, size, seed=100 + k))
        labels = np.zeros(n_frames, np.uint8)
        labels[list(bad)] = 1
        cell = np.empty((1, n_frames), dtype=object)
        for t, mask in enumerate(masks_of(labels, size)):
            cell[0, t] = (mask > 0).astype(np.uint8)
        scipy.io.savemat(gt_dir / f"{k}_label.mat", {"volLabel": cell})
    return root


def build_generic_mixed(root: Path, *, n_frames: int = 6) -> Path:
    """Generic layout mixing kinds: ``training/videos/01.avi`` + ``training/frames/02/``; test video ``03.avi``
    (labels 1-based 2..3, pixel masks) and frame folder ``04`` (labels only, frames 5..6)."""
    write_avi(root / "training" / "videos" / "01.avi", frames(n_frames, seed=1))
    write_image_folder(root / "training" / "frames" / "02", frames(n_frames, seed=2))
    write_avi(root / "testing" / "videos" / "03.avi", frames(n_frames, seed=3))
    write_image_folder(root / "testing" / "frames" / "04", frames(n_frames, seed=4))
    (root / "testing" / "test_frame_mask").mkdir(parents=True)
    (root / "testing" / "test_pixel_mask").mkdir(parents=True)
    np.save(root / "testing" / "test_frame_mask" / "03.npy", labels_of([(2, 3)], n_frames))
    np.save(root / "testing" / "test_frame_mask" / "04.npy", labels_of([(5, 6)], n_frames))
    masks = (masks_of(labels_of([(2, 3)], n_frames)) > 0).astype(np.uint8)
    np.save(root / "testing" / "test_pixel_mask" / "03.npy", masks)
    add_mac_junk(root / "training" / "videos")
    return root


def write_mp4(path: Path, data: np.ndarray, fps: int = 30) -> None:
    """An MPEG-4 ``.mp4`` of grey frames ``(T, H, W)`` (H, W even), as UBnormal ships its videos."""
    write_avi(path, data, fps, codec="mpeg4", pix_fmt="yuv420p")


def build_shanghaitech(root: Path, *, n_frames: int = 6, size: tuple[int, int] = (24, 32)) -> Path:
    """ShanghaiTech Campus as distributed: ``training/videos/{01_001,01_002,02_001}.avi``, test frame folders
    ``testing/frames/{01_0014,01_0015,02_0128}/000.jpg``, ``testing/test_frame_mask/<video>.npy`` (int64 0/1) and
    ``testing/test_pixel_mask/<video>.npy`` (uint8 ``(T, H, W)`` 0/1).

    Ground truth (0-based frames): ``01_0014`` frames 2-3 (blob at rows 2-5, cols 3-6), ``01_0015`` all normal,
    ``02_0128`` frames 1-4 (the same blob moving one column right per frame).
    """
    for k, name in enumerate(("01_001", "01_002", "02_001")):
        write_avi(root / "training" / "videos" / f"{name}.avi", frames(n_frames, size, seed=k))
    gt = {"01_0014": [2, 3], "01_0015": [], "02_0128": [1, 2, 3, 4]}
    for k, (name, bad) in enumerate(gt.items()):
        write_image_folder(root / "testing" / "frames" / name, frames(n_frames, size, seed=50 + k), ".jpg")
        labels = np.zeros(n_frames, np.int64)
        labels[bad] = 1
        masks = np.zeros((n_frames, *size), np.uint8)
        for t in bad:
            shift = t if name == "02_0128" else 0
            masks[t, 2:6, 3 + shift : 7 + shift] = 1
        for sub, arr in (("test_frame_mask", labels), ("test_pixel_mask", masks)):
            (root / "testing" / sub).mkdir(parents=True, exist_ok=True)
            np.save(root / "testing" / sub / f"{name}.npy", arr)
    return root


# UBnormal fixture: (name, split, tracks (id, start, end)); every frame's id image also holds a normal person (id 9).
UBNORMAL_VIDEOS = (
    ("normal_scene_1_scenario_1", "normal_training", ()),
    ("normal_scene_2_scenario_3_fog", "normal_training", ()),
    ("abnormal_scene_1_scenario_4", "abnormal_training", ((1, 0, 2),)),
    ("normal_scene_1_scenario_2", "normal_test", ()),
    ("abnormal_scene_1_scenario_3", "abnormal_test", ((2, 1, 3),)),
    ("abnormal_scene_2_scenario_1", "abnormal_test", ((1, 0, 1), (3, 3, 4))),
    ("abnormal_scene_2_scenario_2", "abnormal_validation", ((1, 2, 4),)),
    ("normal_scene_2_scenario_2", "normal_validation", ()),
)
UBNORMAL_SPLITS = ("training", "validation", "test")


def ubnormal_object(t: int, track_id: int) -> tuple[slice, slice]:
    """Where object ``track_id`` is in frame ``t``: rows ``2k``..``2k+3``, columns ``4k+t``..``4k+t+3`` (moving right)."""
    return slice(2 * track_id, 2 * track_id + 4), slice(4 * track_id + t, 4 * track_id + t + 4)


def ubnormal_ids(t: int, tracks: Sequence[tuple[int, int, int]], size: tuple[int, int] = (24, 32)) -> np.ndarray:
    """The id image of frame ``t``: a normal person (id 9) and every track's object, in every frame (UBnormal
    labels all objects; a track's object is anomalous only from its start to its end frame)."""
    ids = np.zeros(size, np.uint8)
    ids[16:20, 24:28] = 9
    for track_id, _, _ in tracks:
        ids[ubnormal_object(t, track_id)] = track_id
    return ids


def build_ubnormal(root: Path, *, n_frames: int = 5, size: tuple[int, int] = (24, 32), scripts: bool = True) -> Path:
    """UBnormal as distributed: ``Scene{N}/{name}.mp4``, ``Scene{N}/{name}_annotations/{name}_tracks.txt``
    (``track_id,start,end``, 0-based inclusive) and ``{name}_{frame:04d}_gt.png`` id images for every frame of
    every video, with the official split files in ``scripts/`` (``scripts=False``: in the root)."""
    names: dict[str, list[str]] = {}
    for k, (name, split, tracks) in enumerate(UBNORMAL_VIDEOS):
        scene = name.split("_")[2]
        folder = root / f"Scene{scene}"
        write_mp4(folder / f"{name}.mp4", frames(n_frames, size, seed=200 + k))
        ann = folder / f"{name}_annotations"
        ann.mkdir(parents=True, exist_ok=True)
        for t in range(n_frames):
            cv2.imwrite(str(ann / f"{name}_{t:04d}_gt.png"), ubnormal_ids(t, tracks, size))
        if tracks:
            (ann / f"{name}_tracks.txt").write_text("".join(f"{i},{s},{e}\n" for i, s, e in tracks))
        names.setdefault(split, []).append(name)
    target = root / "scripts" if scripts else root
    target.mkdir(parents=True, exist_ok=True)
    for kind in ("normal", "abnormal"):
        for split in UBNORMAL_SPLITS:
            (target / f"{kind}_{split}_video_names.txt").write_text("\n".join(names.get(f"{kind}_{split}", [])) + "\n")
    return root
