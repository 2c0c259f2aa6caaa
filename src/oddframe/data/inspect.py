"""``oddframe inspect PATH``: what a dataset folder or a single source holds, and what is wrong with it.

:func:`inspect_path` returns a JSON-able dict (``--json`` prints it as is); :func:`format_inspect` renders
it as a table for people. Frame counts come from ``len(source)`` (the container's count for videos, the
number of files for image folders), so inspecting a dataset never decodes whole videos.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from oddframe.data.layouts import Video, open_input


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


def inspect_path(path: str | Path, *, check_masks: bool = True) -> dict[str, Any]:
    """Describe a dataset folder (any layout) or a single frame source.

    Args:
        path: a dataset root or a source (video file, image folder, FITS, ``.npy``/``.pt``).
        check_masks: read every pixel mask to cross-check it against the frame labels (reported in
            ``problems``); off, only counts are compared.

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
            videos.add_row(r["split"], r["name"], *scene, r["kind"], str(r["n_frames"]), hw, anomalous, masks)
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
