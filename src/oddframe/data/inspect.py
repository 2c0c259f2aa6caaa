"""``oddframe inspect PATH``: what a dataset folder or a single source holds, and what is wrong with it.

:func:`inspect_path` returns a JSON-able dict (``--json`` prints it as is); :func:`format_inspect` renders
it as a table for people. Frame counts come from ``len(source)`` (the container's count for videos, the
number of files for image folders). Then every frame is decoded, streaming (one frame in memory), to find what
would otherwise be scored silently: frames with no valid pixel (all-NaN FITS) or mostly invalid ones, blank and
constant frames, frames that duplicate an earlier one, videos that decode fewer frames than their header says,
and files that stop decoding part-way. ``decode=False`` (``--quick``) skips that pass.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from oddframe.data.layouts import Video, open_input
from oddframe.data.sources import Frame
from oddframe.errors import OddframeError
from oddframe.progress import progress_bar

#: Frames with a smaller share of valid pixels are reported (detection gives them no score by default).
MOSTLY_INVALID = 0.5
#: What :func:`frame_issue` can find, in the order reports list them.
ISSUES = {
    "no valid pixel": "frames with no valid pixel (all NaN or BLANK)",
    "mostly invalid": f"frames with under {MOSTLY_INVALID:.0%} valid pixels",
    "blank": "blank frames (every pixel 0)",
    "constant": "constant frames (every pixel the same, not 0)",
    "duplicate": "frames identical to an earlier frame",
}


def frame_issue(frame: Frame, seen: dict[bytes, int]) -> str | None:
    """What is wrong with one frame's content, if anything (one of :data:`ISSUES`).

    Args:
        frame: a frame of a source.
        seen: digests of the earlier frames of the video, updated here (to find duplicates).
    """
    valid = frame.valid
    if valid is not None and not valid.any():
        return "no valid pixel"
    if valid is not None and valid.mean() < MOSTLY_INVALID:
        return "mostly invalid"
    values = frame.data[valid] if valid is not None else frame.data
    if values.size and values.min() == values.max():
        return "blank" if float(values.flat[0]) == 0 else "constant"
    digest = hashlib.blake2b(np.ascontiguousarray(frame.data).data, digest_size=16).digest()
    if digest in seen:
        return "duplicate"
    seen[digest] = frame.index
    return None


def frame_ranges(frames: list[int]) -> str:
    """``3, 7-9, 12`` (the first 8 runs) from sorted frame numbers."""
    runs: list[list[int]] = []
    for f in frames:
        if runs and f == runs[-1][1] + 1:
            runs[-1][1] = f
        else:
            runs.append([f, f])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:8])
    return text + (", ..." if len(runs) > 8 else "")


def _decode_check(split: str, video: Video, row: dict[str, Any], advance: Any) -> list[str]:
    """Decode every frame of ``video``: fill ``row["n_decoded"]`` and ``row["frame_issues"]``; return problems."""
    found: dict[str, list[int]] = {}
    seen: dict[bytes, int] = {}
    problems, n = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short video warns while decoding; it is reported below instead
        try:
            for frame in video.source:
                issue = frame_issue(frame, seen)
                if issue:
                    found.setdefault(issue, []).append(frame.index)
                n += 1
                advance()
        except (OddframeError, ValueError, OSError) as exc:
            problems.append(f"{split} video {video.name}: reading stops after {n} frames: {exc}")
    promised = row["n_frames"]
    row["n_decoded"] = n
    row["frame_issues"] = {k: len(v) for k, v in found.items()}
    if n < promised and not problems:
        problems.append(f"{split} video {video.name}: {promised} frames announced but only {n} decode "
                        "(truncated or damaged file)")
    for issue in ISSUES:
        if issue in found:
            frames = found[issue]
            problems.append(f"{split} video {video.name}: {len(frames)} {ISSUES[issue]}: frames {frame_ranges(frames)}")
    return problems


def _video_row(split: str, video: Video) -> dict[str, Any]:
    src = video.source
    return {
        "split": split,
        "name": video.name,
        "scene": video.scene,
        "kind": src.kind,
        "n_frames": len(src),
        "resolution": [int(s) for s in src.frame_shape()[:2]],
        "fps": src.fps,
        "n_anomalous": None if video.labels is None else int(video.labels.sum()),
        "has_pixel_masks": video.masks is not None,
    }


def inspect_path(
    path: str | Path, *, check_masks: bool = True, decode: bool = True, progress: bool = False
) -> dict[str, Any]:
    """Describe a dataset folder (any layout) or a single frame source.

    Args:
        path: a dataset root or a source (video file, image folder, FITS, ``.npy``/``.pt``).
        check_masks: read every pixel mask to cross-check it against the frame labels (reported in
            ``problems``); off, only counts are compared.
        decode: decode every frame (streaming) to report frame problems and short videos; each video row then
            also has ``n_decoded`` and ``frame_issues`` (counts by kind of :data:`ISSUES`).
        progress: show a progress bar (on stderr) while decoding.

    Returns:
        A JSON-able dict with ``path``, ``layout`` (one of the dataset layouts, or ``"source"``),
        ``source_kind`` (``video | images | fits | array`` for a single source, else None),
        ``n_train_videos``, ``n_train_frames``, ``n_test_videos``, ``n_test_frames``,
        ``n_labelled_videos`` (test videos with frame labels), ``n_anomalous_frames``, ``has_pixel_masks``,
        ``resolution`` (``[H, W]`` of the first frame, None without videos), ``channels``, ``fps`` (of the
        first video that has one), ``videos`` (one dict per video: ``split``, ``name``, ``kind``,
        ``n_frames``, ``resolution``, ``fps``, ``n_anomalous`` (None when unlabelled), ``has_pixel_masks``,
        ``scene``), ``scenes`` (ShanghaiTech, UBnormal; empty otherwise), ``notes`` (what the layout decided, e.g.
        UBnormal's one-class protocol) and ``problems`` (human-readable warnings).

    Raises:
        SourceError: if ``path`` does not exist.
        LayoutError: if it is neither a dataset nor a frame source.
    """
    ds = open_input(path, check_masks=check_masks)
    rows = [_video_row("train", v) for v in ds.train] + [_video_row("test", v) for v in ds.test]
    train, test = rows[: len(ds.train)], rows[len(ds.train) :]
    first = (ds.train + ds.test)[0].source if rows else None
    problems = list(ds.problems)
    if decode and rows:
        with progress_bar(progress, stderr=True) as bar:
            task = bar.add_task("decoding every frame", total=sum(r["n_frames"] for r in rows))
            for split, videos, part in (("train", ds.train, train), ("test", ds.test, test)):
                for video, row in zip(videos, part):
                    problems += _decode_check(split, video, row, lambda: bar.advance(task))
    sizes = sorted({tuple(r["resolution"]) for r in rows})
    if len(sizes) > 1:
        problems.append(f"videos have {len(sizes)} different resolutions: {[list(s) for s in sizes[:4]]}")
    return {
        "path": str(ds.root),
        "layout": ds.layout,
        "source_kind": first.kind if ds.layout == "source" and first is not None else None,
        "n_train_videos": len(train),
        "n_train_frames": sum(r["n_frames"] for r in train),
        "n_test_videos": len(test),
        "n_test_frames": sum(r["n_frames"] for r in test),
        "n_labelled_videos": sum(r["n_anomalous"] is not None for r in test),
        "n_anomalous_frames": sum(r["n_anomalous"] or 0 for r in test),
        "has_pixel_masks": any(r["has_pixel_masks"] for r in test),
        "resolution": list(first.frame_shape()[:2]) if first is not None else None,
        "channels": (first.frame_shape()[2] if len(first.frame_shape()) == 3 else 1) if first is not None else None,
        "fps": next((r["fps"] for r in rows if r["fps"]), None),
        "scenes": ds.scenes,
        "videos": rows,
        "notes": list(ds.notes),
        "problems": problems,
    }


def format_inspect(d: dict[str, Any], *, max_videos: int = 40, width: int = 100) -> str:
    """Human-readable tables of an :func:`inspect_path` result: a summary, the videos (the first
    ``max_videos`` of them) and the problems found."""
    summary = Table(title=f"{d['path']}", show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    layout = d["layout"] + (f" ({d['source_kind']})" if d.get("source_kind") else "")
    res = d["resolution"]
    labelled = f"{d['n_anomalous_frames']} anomalous frames in {d['n_labelled_videos']} labelled test videos"
    for key, value in (
        ("layout", layout),
        ("training", f"{d['n_train_videos']} videos, {d['n_train_frames']} frames"),
        ("testing", f"{d['n_test_videos']} videos, {d['n_test_frames']} frames"),
        ("labels", labelled if d["n_labelled_videos"] else "none"),
        ("pixel masks", "yes" if d["has_pixel_masks"] else "no"),
        ("resolution", f"{res[0]} x {res[1]} x {d['channels']}" if res else "-"),
        ("fps", f"{d['fps']:g}" if d["fps"] else "-"),
        *((("scenes", f"{len(d['scenes'])}: {', '.join(d['scenes'])}"),) if d.get("scenes") else ()),
    ):
        summary.add_row(key, value)
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(summary)
    if d["videos"]:
        videos = Table(title="videos", title_justify="left")
        scenes = bool(d.get("scenes"))
        for col in ("split", "name") + (("scene",) if scenes else ()) + ("kind", "frames", "H x W", "anomalous", "masks"):
            videos.add_column(col, justify="right" if col in ("frames", "anomalous") else "left")
        for r in d["videos"][:max_videos]:
            anomalous = "-" if r["n_anomalous"] is None else str(r["n_anomalous"])
            hw = f"{r['resolution'][0]} x {r['resolution'][1]}"
            masks = "yes" if r["has_pixel_masks"] else "-"
            scene = (r.get("scene") or "-",) if scenes else ()
            n = str(r["n_frames"])
            if r.get("n_decoded", r["n_frames"]) != r["n_frames"]:
                n += f" ({r['n_decoded']} decode)"
            videos.add_row(r["split"], r["name"], *scene, r["kind"], n, hw, anomalous, masks)
        console.print(videos)
        if len(d["videos"]) > max_videos:
            console.print(f"... and {len(d['videos']) - max_videos} more videos (--json lists all)")
    for note in d.get("notes", []):
        console.print(f"note: {note}", markup=False, highlight=False)
    if d["problems"]:
        console.print(f"{len(d['problems'])} problem(s):")
        for p in d["problems"]:
            console.print(f"  - {p}", markup=False, highlight=False)
    else:
        console.print("no problems found")
    return console.file.getvalue()
