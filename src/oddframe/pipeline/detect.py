"""``oddframe detect``: score every frame (and pixel) of any source or dataset with a trained run.

Writes ``scores.csv`` and, on request, the anomaly maps and an annotated video. The scoring itself is the
streaming engine's (:mod:`oddframe.pipeline.engine`); the files are :mod:`oddframe.pipeline.outputs`'s.

Nothing is lost and nothing is written twice at once. The output folder (and the video) are locked while a
detection writes them; a folder that already holds a detection is replaced only with ``overwrite``. Raw scores go
to ``scores.partial.csv`` line by line as frames are scored, maps and the video to partial files, and every final
file appears complete, by rename. On SIGINT/SIGTERM the current frame is finished, every output is closed with what
was done (the video plays to the last frame scored) and :class:`~oddframe.errors.Interrupted` says what was
written; ``resume`` continues from there, after a signal or a ``kill -9``, with the scores a run from the beginning
gives. ``detect.json`` records how the detection was asked for and how it ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from oddframe.data.inspect import frame_ranges
from oddframe.data.layouts import Video, open_input
from oddframe.data.sources import FrameRangeSource
from oddframe.errors import ConfigError, Interrupted, OutputError
from oddframe.files import output_lock, safe_name, write_json
from oddframe.pipeline.engine import detector_for, postprocess, stream_video, warn_conversions
from oddframe.pipeline.outputs import (
    LiveScores,
    NpyWriter,
    ScoreJournal,
    panel_maker,
    render_kwargs,
    video_fps,
    write_scores_csv,
)
from oddframe.progress import progress_bar
from oddframe.runs import load_run, open_run_backend, read_calibration
from oddframe.stopping import StopRequest

SCORES, JOURNAL, RECORD = "scores.csv", "scores.partial.csv", "detect.json"
FIELDS = ["video", "frame", "time", "score", "flagged", "invalid", "raw_score"]


@dataclass
class DetectSummary:
    """What :func:`detect` wrote and how fast it ran.

    ``timing`` accounts for the whole wall time (``wall_s``) of the call in the caller's thread: ``setup_s``,
    ``decode_s`` (decoding, transforms, derived inputs), ``model_s``, ``scoring_s``, ``outputs_s`` (scores and maps
    written as they come), ``video_wait_s`` (waiting for the video writer), ``finish_s`` (closing outputs) and
    ``other_s`` (what is left: loop and progress bar); ``render_s`` and ``encode_s`` ran in the writer's thread, in
    parallel.
    """

    out: Path
    n_videos: int
    n_frames: int
    timing: dict[str, float]
    threshold: float | None
    n_invalid: int = 0
    n_flagged: int = 0
    resumed_after: int = 0  #: frames an earlier, interrupted run had scored
    files: list[Path] = field(default_factory=list)
    interrupted: bool = False


def _existing(out: Path, video: Path | None) -> list[Path]:
    """Outputs of an earlier detection in ``out`` (and the video)."""
    from oddframe.render.video import partial_path

    found = [out / name for name in (SCORES, JOURNAL, RECORD) if (out / name).exists()]
    maps = out / "maps"
    if maps.is_dir():
        found += sorted(p for p in maps.iterdir() if p.name.endswith((".npy", ".npy.partial")))
    if video is not None:
        found += [p for p in (video, partial_path(video)) if p.exists()]
    return found


def _claim_outputs(out: Path, video: Path | None, args: dict[str, Any], *, overwrite: bool, resume: bool) -> None:
    """Refuse, clear or check for resuming what an earlier detection left in ``out``, as asked."""
    found = _existing(out, video)
    record = out / RECORD
    if resume:
        previous = _read_record(record)
        if not (out / JOURNAL).is_file():
            if previous.get("status") == "complete":
                raise OutputError(f"{out}: the detection there is complete ({previous.get('n_frames')} frames in "
                                  f"{SCORES}); there is nothing to resume")
            raise OutputError(f"{out}: nothing to resume (no {JOURNAL}: no detection was interrupted there)")
        asked = previous.get("args", {})
        diff = [f"{k}: {asked.get(k)!r} then, {v!r} now" for k, v in args.items() if asked.get(k) != v]
        if diff:
            raise OutputError(f"{out}: --resume continues the interrupted detection as it was asked for; these "
                              "differ:\n  " + "\n  ".join(diff))
        return
    if found and not overwrite:
        status = _read_record(record).get("status")
        what = {"running": "an interrupted detection (continue it with --resume)",
                "interrupted": "an interrupted detection (continue it with --resume)"}.get(status, "a detection")
        names = ", ".join(str(p) for p in found[:4]) + (" ..." if len(found) > 4 else "")
        raise OutputError(f"{out} already holds {what}: {names}; add --overwrite to replace it or choose another "
                          "output")
    # Replacing: the earlier detection's files, including a video it wrote inside out with another name.
    earlier = [Path(f) for f in _read_record(record).get("files", [])]
    for p in found + [f for f in earlier if f.is_file() and f.resolve().parent.is_relative_to(out.resolve())]:
        p.unlink(missing_ok=True)


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _resume_point(journal: ScoreJournal, videos: list[Video], out: Path, video: Path | None, maps: bool,
                  size: tuple[int, int]) -> int:
    """Frames every output of the interrupted run holds (the journal, the maps, the video): where to continue."""
    from oddframe.render.video import count_frames, partial_path

    n = len(journal.rows)
    if video is not None:
        held = video if video.is_file() else partial_path(video)
        n = min(n, count_frames(held))
    if maps:
        offset = 0
        for v, k in Counter(r["video"] for r in journal.rows[:n]).items():
            path = out / "maps" / f"{safe_name(v)}.npy"
            partial = path.with_name(f".{path.name}.partial")
            have = NpyWriter.frames_in(partial if partial.is_file() else path, size)
            if have < k:
                n = offset + have
                break
            offset += k
    return n


@dataclass
class LoadedRun:
    """A run ready to detect with: its model, config (with the overrides) and exported runner (None for torch).

    Load it once with :func:`load_for_detection` and pass it to :func:`detect` for each of many inputs (the
    parallel workers of :mod:`oddframe.pipeline.archive` do), instead of loading the run for each.
    """

    run_dir: Path
    overrides: tuple[str, ...]
    backend: str
    model: Any
    config: Any
    runner: Any


def load_for_detection(run_dir: str | Path, *, overrides: tuple[str, ...] | list[str] = (),
                       backend: str = "torch") -> LoadedRun:
    """Load a run (and its exported backend) for :func:`detect`; a bad config, run or backend is refused here."""
    model, config = load_run(run_dir, overrides=overrides)
    runner = open_run_backend(run_dir, config, backend)
    return LoadedRun(Path(run_dir), tuple(overrides), backend, model, config, runner)


def detect(
    run_dir: str | Path,
    input_path: str | Path,
    out: str | Path,
    *,
    overrides: tuple[str, ...] | list[str] = (),
    maps: bool = False,
    video: str | Path | None = None,
    progress: bool = True,
    device: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    start_frame: int = 0,
    stop_frame: int | None = None,
    backend: str = "torch",
    loaded: LoadedRun | None = None,
) -> DetectSummary:
    """Score every frame of ``input_path`` (any source or dataset; a dataset's test split) with a trained run.

    Writes ``scores.csv`` (video, frame, time, score, flagged, invalid, raw_score; a frame with too few valid pixels
    has score ``nan``, ``invalid`` 1 and no flag), with ``maps=True`` the anomaly maps as ``maps/<video>.npy``
    (float16, ``(T, H, W)`` at model resolution), and with ``video`` an MP4 of the frames beside their anomaly
    heatmaps, with boxes, the frame number and its verdict.

    Args:
        overwrite: replace the outputs of an earlier detection in ``out`` (refused otherwise).
        resume: continue the interrupted detection in ``out`` (same run, input and options).
        start_frame: first frame of each input video scored.
        stop_frame: frame where scoring of each input video stops (excluded; None = its end). Frame
            numbers in the outputs stay those of the whole video.
        backend: run the map with PyTorch (``torch``) or an exported runtime (:data:`oddframe.backends.BACKENDS`;
            ``oddframe export`` first).
        loaded: the run already loaded by :func:`load_for_detection` (same run, overrides and backend).

    Raises:
        OutputError: ``out`` (or ``video``) is being written by another process, holds a detection and neither
            ``overwrite`` nor ``resume`` is set, or there is nothing to resume.
        Interrupted: SIGINT/SIGTERM arrived; everything scored until then is saved (the message lists it).
    """
    t_start = time.perf_counter()
    if overwrite and resume:
        raise ValueError("choose one of overwrite (start again) and resume (continue)")
    if start_frame < 0 or (stop_frame is not None and stop_frame <= start_frame):
        raise ConfigError(f"no frames to score: --start-frame {start_frame}, --stop-frame {stop_frame} "
                          "(need 0 <= start < stop)")
    out = Path(out)
    video = Path(video) if video is not None else None
    args = {"checkpoint": str(Path(run_dir).resolve()), "input": str(Path(input_path).resolve()),
            "overrides": list(overrides), "maps": maps, "video": str(video.resolve()) if video else None,
            "start_frame": start_frame, "stop_frame": stop_frame,
            "backend": backend}
    if loaded is None:  # a bad config, run or backend is refused before out is touched
        loaded = load_for_detection(run_dir, overrides=overrides, backend=backend)
    elif (loaded.run_dir, loaded.overrides, loaded.backend) != (Path(run_dir), tuple(overrides), backend):
        raise ValueError("loaded holds another run, overrides or backend than asked for")
    model, config, runner = loaded.model, loaded.config, loaded.runner
    with contextlib.ExitStack() as stack:
        stack.enter_context(output_lock(out, "oddframe detect"))
        if video is not None:
            stack.enter_context(output_lock(video, "oddframe detect", folder=False))
        _claim_outputs(out, video, args, overwrite=overwrite, resume=resume)
        stop = stack.enter_context(StopRequest("detection"))
        return _detect(model, config, run_dir, input_path, out, video, args, maps=maps, progress=progress,
                       device=device, resume=resume, stop=stop, t_start=t_start,
                       frames=(start_frame, stop_frame), runner=runner)


def _detect(model, config, run_dir, input_path, out: Path, video: Path | None, args: dict[str, Any], *, maps: bool,
            progress: bool, device: str | None, resume: bool, stop: StopRequest, t_start: float,
            frames: tuple[int, int | None] = (0, None), runner: Any = None) -> DetectSummary:
    from oddframe.render.video import AnomalyVideoWriter, BackgroundVideoWriter, partial_path

    calibration = read_calibration(run_dir)
    reference = calibration.get("reference") if calibration else None
    threshold = calibration.get("threshold") if calibration else None
    dataset = open_input(input_path)
    videos = dataset.test or dataset.train
    if frames != (0, None):  # detect --start-frame/--stop-frame: labels and masks keep the video's numbering
        videos = [replace(v, source=FrameRangeSource(v.source, start=frames[0], stop=frames[1])) for v in videos]
    warn_conversions(videos, config)
    detector = detector_for(model, config, device=device, backend=runner)
    write_json({"status": "running", "args": args}, out / RECORD)
    journal = ScoreJournal(out / JOURNAL, resume=resume)
    resumed = 0
    if resume:
        journal.truncate(_resume_point(journal, videos, out, video, maps, config.data.size))
        resumed = len(journal.rows)
    background = None
    if video is not None:
        fps = config.render.fps or video_fps(videos) or 10.0
        writer = AnomalyVideoWriter(video, fps=fps, preset=config.render.preset,
                                    **render_kwargs(config, model, Path(run_dir)))
        if resume and resumed:
            earlier = video.with_name(f"{video.stem}.previous{video.suffix}")
            os.replace(video if video.is_file() else partial_path(video), earlier)
            writer.copy_from(earlier, resumed)
            earlier.unlink()
        background = BackgroundVideoWriter(writer)
    loop = {"outputs": 0.0, "new": 0, "start": time.perf_counter()}
    status, error = "complete", None
    try:
        _score_videos(videos, detector, config, journal, loop, out=out, maps=maps, background=background,
                      live_args=(reference, threshold), progress=progress, stop=stop, resumed=resumed)
        if stop.requested:
            status = "interrupted"
    except BaseException as exc:  # save what was scored, then raise it again
        status, error = "failed", exc
    t_finish = time.perf_counter()
    try:
        if background is not None:
            background.close()
    except Exception as exc:  # noqa: BLE001 - the writer thread's error, unless an earlier one is pending
        status, error = "failed", error or exc
    rows, n_invalid, n_flagged = _final_rows(journal.rows, config, reference, threshold)
    write_scores_csv(rows, out / SCORES, FIELDS)
    journal.close(delete=status == "complete")
    files = [out / SCORES] + ([out / JOURNAL] if status != "complete" else [])
    files += sorted((out / "maps").glob("*.npy")) if maps else []
    files += [video] if video is not None and video.is_file() else []
    timing = _timing(detector.timing, t_start, loop["start"], t_finish, loop["outputs"], background)
    write_json({"status": status, "args": args, "n_frames": len(rows), "n_invalid": n_invalid,
                "n_flagged": n_flagged, "resumed_after": resumed, "timing": timing, "files": [str(p) for p in files]},
               out / RECORD)
    if error is not None:
        raise error
    if status == "interrupted":
        raise Interrupted(
            f"detection stopped after {len(rows)} frames ({loop['new']} in this run); written: "
            + ", ".join(str(p) for p in files) + f"; continue with --resume (same arguments) into {out}",
            signum=stop.signum or 2,
        )
    return DetectSummary(out, len(videos), len(rows), timing, threshold, n_invalid, n_flagged, resumed, files)


def _score_videos(videos: list[Video], detector, config, journal: ScoreJournal, loop: dict[str, Any], *, out: Path,
                  maps: bool, background, live_args: tuple, progress: bool, stop: StopRequest, resumed: int) -> None:
    """The detection loop: every frame scored goes to the journal (and maps, and the video writer) at once."""
    done = Counter(r["video"] for r in journal.rows)
    last_started = max((i for i, v in enumerate(videos) if done[v.name]), default=-1)
    loop["start"] = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("detecting", total=sum(len(v.source) // config.data.sample_interval for v in videos),
                            completed=resumed)
        for i, v in enumerate(videos):
            if i < last_started:  # finished before the interruption: its rows are all in the journal
                continue
            bar.update(task, description=f"detecting {v.name}")
            k = done[v.name]
            map_writer = (NpyWriter(out / "maps" / f"{safe_name(v.name)}.npy", keep=k, frame_shape=config.data.size)
                          if maps else None)
            live = LiveScores(config, *live_args, [r["raw_score"] for r in journal.rows if r["video"] == v.name])
            try:
                for r in stream_video(detector, v, config, keep_raw=background is not None, start=k):
                    t0 = time.perf_counter()
                    if map_writer is not None:
                        map_writer.append(r.amap)  # maps before the journal line: a kill leaves maps >= scores
                    journal.append(r)
                    ready = live.push(r.score, r)
                    loop["outputs"] += time.perf_counter() - t0
                    if background is not None:
                        for item in ready:
                            background.submit(panel_maker(*item))
                    loop["new"] += 1
                    bar.advance(task)
                    if stop.requested:
                        break
            finally:  # the video and the maps hold exactly the frames of the journal, whatever stopped the loop
                if background is not None:
                    for item in live.finish():
                        background.submit(panel_maker(*item))
                if map_writer is not None:
                    map_writer.close()
            if stop.requested:
                return


def _final_rows(journal: list[dict[str, Any]], config, reference, threshold) -> tuple[list[dict[str, Any]], int, int]:
    """scores.csv rows from the raw scores of the journal, post-processed per video; invalid and flagged counts."""
    by_video: dict[str, list[dict[str, Any]]] = {}
    for r in journal:
        by_video.setdefault(r["video"], []).append(r)
    rows, n_invalid, n_flagged = [], 0, 0
    for name, items in by_video.items():
        scores = postprocess(np.asarray([r["raw_score"] for r in items]), config, reference)
        bad = [r["frame"] for r in items if r["invalid"]]
        if bad:
            warnings.warn(f"video {name}: {len(bad)} frame(s) have fewer than {config.score.min_valid_fraction:.0%} "
                          f"valid pixels and get no score (nan, invalid=1): frames {frame_ranges(bad)}", stacklevel=3)
        n_invalid += len(bad)
        for r, s in zip(items, scores):
            flagged = "" if threshold is None or r["invalid"] or not np.isfinite(s) else int(s > threshold)
            n_flagged += flagged == 1
            rows.append({"video": name, "frame": r["frame"], "time": "" if r["time"] is None else f"{r['time']:.6f}",
                         "score": float(s), "flagged": flagged, "invalid": int(r["invalid"]),
                         "raw_score": float(r["raw_score"])})
    return rows, n_invalid, n_flagged


def _timing(t, t_start: float, t_loop: float, t_finish: float, t_outputs: float, background) -> dict[str, float]:
    """Every second of the call, by stage (see :class:`DetectSummary`)."""
    now = time.perf_counter()
    wait = background.wait_s if background is not None else 0.0
    parts = {"setup_s": t_loop - t_start, "decode_s": t.decode, "model_s": t.model, "scoring_s": t.scoring,
             **{f"{k}_s": v for k, v in t.extra.items()}, "outputs_s": t_outputs, "video_wait_s": wait,
             "finish_s": now - t_finish}
    wall = now - t_start
    parts["other_s"] = max(0.0, wall - sum(parts.values()))
    timing = {"frames": t.frames, **parts, "wall_s": wall, "fps": t.frames / max(t_finish - t_loop, 1e-9)}
    if background is not None:
        timing.update({"render_s": background.writer.render_s, "encode_s": background.writer.encode_s})
    return timing
