"""UBnormal (Acsintoae et al., CVPR 2022) as distributed, read under the one-class protocol.

The archive holds one folder per scene with the videos and, beside each, its annotations::

    Scene1/abnormal_scene_1_scenario_1.mp4
    Scene1/abnormal_scene_1_scenario_1_annotations/abnormal_scene_1_scenario_1_tracks.txt
    Scene1/abnormal_scene_1_scenario_1_annotations/abnormal_scene_1_scenario_1_0000_gt.png ...
    Scene1/normal_scene_1_scenario_2.mp4 ...

``{name}_tracks.txt`` lists the anomalous objects, one ``track_id,start,end`` line each (0-based inclusive frame
numbers, as the official ``write_frame_level_ground_truth.py`` reads them); ``{name}_{frame:04d}_gt.png`` labels
every object of that frame with its id, normal people included, so a pixel is anomalous only where its value is
the id of a track active in that frame (as the official ``create_tracks_for_tbdc_rbdc.py`` reads them). Where an
annotation folder also has ``{name}_new_tracks.txt`` (corrected tracks), it is used instead, as the official
RBDC/TBDC script does.

The split is given by the official files of the dataset's repository (``scripts/`` of
github.com/lilygeorgescu/UBnormal): ``{normal,abnormal}_{training,validation,test}_video_names.txt``, looked for
in the dataset folder and in its ``scripts/`` sub-folder. UBnormal is a supervised open-set benchmark: its
training split also holds abnormal videos. oddframe learns normality only, so training uses the **normal training
videos only** (the one-class protocol); the abnormal training videos are left out and the dataset says so in
``notes``. The test split (normal and abnormal test videos) is evaluated; ``split="validation"`` evaluates the
validation split instead, the one to tune on.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from oddframe.data.dataset import Video, open_or_skip, scene_key
from oddframe.data.groundtruth import PixelMasks, subdirs
from oddframe.errors import LayoutError

SPLITS = ("test", "validation")
SPLIT_FILE = "{kind}_{split}_video_names.txt"  # kind: normal | abnormal; split: training | validation | test
_NAME = re.compile(r"^(normal|abnormal)_scene_(\d+)_scenario", re.IGNORECASE)
_SCENE_DIR = re.compile(r"^Scene(\d+)$")

EXPECTED = (
    "Scene1/{normal,abnormal}_scene_1_scenario_1.mp4 with {name}_annotations/ ({name}_tracks.txt, "
    "{name}_0000_gt.png ...) and the official split files normal_training_video_names.txt, ... "
    "(scripts/ of github.com/lilygeorgescu/UBnormal) in the folder or its scripts/"
)


def is_ubnormal(root: Path) -> bool:
    """Whether ``root`` has ``Scene<N>`` folders holding ``*_scene_<N>_scenario_*`` videos (lists one folder)."""
    scenes = [d for d in subdirs(root) if _SCENE_DIR.match(d.name)]
    return any(_NAME.match(p.name) for d in scenes[:1] for p in d.iterdir())


def split_folder(root: Path) -> Path | None:
    """Where the official split files are: ``root`` or ``root/scripts`` (None if in neither)."""
    needed = [SPLIT_FILE.format(kind="normal", split="training")]
    for folder in (root, root / "scripts"):
        if all((folder / name).is_file() for name in needed):
            return folder
    return None


def read_names(path: Path) -> list[str]:
    """Video names of a split file, one per line (blank lines skipped); empty when the file is absent."""
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def scene_of(name: str) -> str:
    """The scene number of a UBnormal video name (``abnormal_scene_8_scenario_4_fog`` -> ``8``)."""
    m = _NAME.match(name)
    if m is None:
        raise LayoutError(f"UBnormal video name {name!r} does not look like {{normal,abnormal}}_scene_N_scenario_M")
    return str(int(m.group(2)))


def read_tracks(path: Path) -> np.ndarray:
    """``(K, 3)`` int64 ``track_id, start, end`` rows of a ``*_tracks.txt`` (0-based inclusive frames)."""
    try:
        rows = np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as err:
        raise LayoutError(f"{path}: cannot read tracks ({err}); expected track_id,start,end lines") from err
    if rows.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if rows.shape[1] != 3:
        raise LayoutError(f"{path}: expected 3 columns (track_id,start,end), got {rows.shape[1]}")
    return rows.astype(np.int64)


class TrackMasks(PixelMasks):
    """UBnormal's per-frame id images, read lazily: a pixel is anomalous where its id is an active track's.

    Frames no track covers are all normal and read no file. :meth:`instances` keeps the ids, so that region
    metrics follow UBnormal's own tracks instead of linking components.
    """

    def __init__(self, folder: Path, name: str, n_frames: int, shape: tuple[int, int], tracks: np.ndarray) -> None:
        self.folder, self.name, self.n, self.shape = Path(folder), name, n_frames, shape
        self.tracks = tracks

    def __len__(self) -> int:
        return self.n

    def active(self, i: int) -> np.ndarray:
        """Ids of the tracks that cover frame ``i``."""
        t = self.tracks
        return t[(t[:, 1] <= i) & (i <= t[:, 2]), 0]

    def instances(self, i: int) -> np.ndarray:
        """``(H, W)`` int32: the track id of each anomalous pixel of frame ``i``, 0 elsewhere."""
        i = range(self.n)[i]  # negative counts from the end; IndexError outside [-T, T)
        ids = self.active(i)
        if ids.size == 0:
            return np.zeros(self.shape, dtype=np.int32)
        path = self.folder / f"{self.name}_{i:04d}_gt.png"
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)  # the official scripts read the ids as grey values
        if img is None:
            raise LayoutError(f"{path}: missing or unreadable annotation of frame {i} (tracks {ids.tolist()} cover it)")
        return np.where(np.isin(img, ids), img, 0).astype(np.int32)

    def _get(self, i: int) -> np.ndarray:
        return self.instances(i) != 0


def _video(root: Path, name: str, problems: list[str]) -> Video | None:
    scene = scene_of(name)
    path = root / f"Scene{scene}" / f"{name}.mp4"
    if not path.is_file():
        problems.append(f"{path}: listed in the split files but missing")
        return None
    source = open_or_skip(path, problems)
    return None if source is None else Video(name, source, scene=scene)


def _with_ground_truth(video: Video, folder: Path, problems: list[str]) -> Video:
    """Frame labels and masks from the annotation folder of an abnormal video (none: a normal video)."""
    n, shape = len(video.source), tuple(video.source.frame_shape()[:2])
    tracks = np.zeros((0, 3), dtype=np.int64)
    newer, plain = folder / f"{video.name}_new_tracks.txt", folder / f"{video.name}_tracks.txt"
    if newer.is_file() or plain.is_file():
        tracks = read_tracks(newer if newer.is_file() else plain)
    elif video.name.lower().startswith("abnormal"):
        problems.append(f"{plain}: missing; abnormal test video {video.name} has no anomalous frames")
    labels = np.zeros(n, dtype=np.uint8)
    for track_id, start, end in tracks:
        if not 0 <= start <= end < n:
            problems.append(f"{video.name}: track {track_id} covers frames {start}..{end}, outside its {n} frames")
        labels[max(start, 0) : min(end, n - 1) + 1] = 1
    video.labels, video.masks = labels, TrackMasks(folder, video.name, n, shape, tracks)
    return video


def load_ubnormal(root: Path, problems: list[str], *, split: str = "test") -> tuple[list[Video], list[Video], list[str]]:
    """Training (normal training videos) and test videos (``split``: ``test`` or ``validation``) of UBnormal.

    Returns:
        ``(train, test, notes)``; ``notes`` says which videos the one-class protocol left out.

    Raises:
        ValueError: an unknown ``split``.
        LayoutError: the official split files are not found (the message says where to get them).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = split_folder(root)
    if folder is None:
        raise LayoutError(
            f"{root}: a UBnormal folder, but its official split files (normal_training_video_names.txt, "
            "abnormal_test_video_names.txt, ...) are in neither it nor its scripts/ folder; copy scripts/*.txt "
            "from github.com/lilygeorgescu/UBnormal there"
        )

    def names(kind: str, which: str) -> list[str]:
        return read_names(folder / SPLIT_FILE.format(kind=kind, split=which))

    train = [v for n in names("normal", "training") if (v := _video(root, n, problems)) is not None]
    test = []
    for n in sorted(names("normal", split) + names("abnormal", split), key=lambda x: (scene_key(scene_of(x)), x)):
        if (v := _video(root, n, problems)) is not None:
            test.append(_with_ground_truth(v, root / f"Scene{v.scene}" / f"{n}_annotations", problems))
    if not test:
        problems.append(f"{folder}: no {split} videos listed (expected normal_{split}_video_names.txt and "
                        f"abnormal_{split}_video_names.txt)")
    left_out = len(names("abnormal", "training"))
    notes = [f"one-class protocol: trains on the {len(train)} normal training videos only; the {left_out} abnormal "
             f"training videos are left out; evaluates the {split} split"]
    return train, test, notes
