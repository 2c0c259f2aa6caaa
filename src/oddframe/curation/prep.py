"""``oddframe prep``: raw inputs -> clips ready for training, a movie of the input, and a summary.

The first mode of the solar 3D-AE pipeline (seed 001: prep, review, train, eval). Any input oddframe reads
(video, image folder, FITS file/folder/tar archive, ``.npy``/``.pt`` array, or a dataset folder, whose
training videos are used) is streamed once: every readable frame goes into ``movie.mp4``; frames kept by the
sampling (every n-th frame, or frames at least ``sample_interval_sec`` apart) and not too invalid are
transformed exactly as training and detection transform them (:class:`~oddframe.data.transforms.FrameTransform`)
and cut into windows as :func:`~oddframe.data.clips.window_starts` cuts them. Each clip is written to its own
file (:mod:`oddframe.data.prepared` owns the format), so an interrupted run resumes: clips already on disk are
reused, not rewritten.

FITS specifics: images are divided by ``EXPTIME`` (on by default) so the raw statistics the review compares are
in DN/s whatever the exposure, the stretch defaults to ``asinh`` (EUV intensities span orders of magnitude),
unreadable files are skipped and listed, and gaps in the cadence are reported.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import oddframe
from oddframe.config import DataConfig
from oddframe.data import prepared as fmt
from oddframe.data.fits import FitsSource, cadence_gaps, exposure_seconds
from oddframe.data.sources import Frame, FrameSource
from oddframe.data.transforms import FrameTransform, frame_transform
from oddframe.curation.inputs import fingerprint, iter_frames_skipping, open_prep_inputs, video_ids
from oddframe.errors import ConfigError, OddframeError
from oddframe.files import write_json
from oddframe.progress import progress_bar
from oddframe.render.overlay import frame_to_rgb
from oddframe.render.video import AnomalyVideoWriter

#: Colormap of FITS frames in the movie: close to the SDO/AIA 171 colour table.
FITS_CMAP = "afmhot"
PARTIAL_MOVIE = ".movie.partial.mp4"  # renamed to movie.mp4 once complete


@dataclass(frozen=True, kw_only=True)
class PrepOptions:
    """How inputs become clips (the fields of the config's data section prep uses, plus prep's own).

    Attributes:
        size, channels, scaling, percentiles, stretch: the frame transform (as in ``DataConfig``).
        clip_length: frames per clip; stride: kept frames between clip starts (``data.train_stride``).
        sample_interval: keep every n-th frame; sample_interval_sec: or frames at least this many seconds apart.
        normalise_exposure: divide FITS images by ``EXPTIME``.
        max_invalid_fraction: frames with a larger share of invalid pixels are skipped (and listed).
        movie_fps: frame rate of ``movie.mp4``; movie_max_side: its longest side, pixels (smaller inputs keep
            their size).
    """

    size: tuple[int, int] = (112, 112)
    channels: int = 1
    clip_length: int = 16
    stride: int = 4
    sample_interval: int = 1
    sample_interval_sec: float | None = None
    scaling: str = "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)
    stretch: str = "linear"
    normalise_exposure: bool = True
    max_invalid_fraction: float = 0.5
    movie_fps: float = 10.0
    movie_max_side: int = 512

    def __post_init__(self) -> None:
        self.transform()  # validates size, channels, scaling, percentiles, stretch (ValueError listing allowed values)
        for name in ("clip_length", "stride", "sample_interval", "movie_max_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sample_interval_sec is not None and not self.sample_interval_sec > 0:
            raise ValueError(f"sample_interval_sec must be > 0 or None, got {self.sample_interval_sec}")
        if not 0.0 <= self.max_invalid_fraction <= 1.0:
            raise ValueError(f"max_invalid_fraction must be in [0, 1], got {self.max_invalid_fraction}")
        if not self.movie_fps > 0:
            raise ValueError(f"movie_fps must be > 0, got {self.movie_fps}")

    def transform(self) -> FrameTransform:
        """The frame transform of the clips: the same one training and detection build from the same settings."""
        return frame_transform(self)

    def settings(self) -> dict[str, Any]:
        """JSON-able settings that determine the clips (movie settings left out): a resumed run must match them."""
        d = asdict(self)
        d.pop("movie_fps"), d.pop("movie_max_side")
        return json.loads(json.dumps(d))  # tuples -> lists, as read back from prep.json


def options_from_config(data: DataConfig, *, fits: bool, **overrides: Any) -> PrepOptions:
    """Prep options from the config's data section.

    For FITS input the stretch is ``asinh`` unless the config sets one explicitly: solar EUV intensities span
    orders of magnitude, and a linear map would leave all but the brightest active regions black.

    Args:
        data: the data section (size, channels, clip_length, train_stride, sample_interval(_sec), scaling, ...).
        fits: whether the input is FITS.
        **overrides: :class:`PrepOptions` fields that win over the config (e.g. ``normalise_exposure=False``).
    """
    stretch = "asinh" if fits and "stretch" not in data.model_fields_set else data.stretch
    values = dict(size=tuple(data.size), channels=data.channels, clip_length=data.clip_length, stride=data.train_stride,
                  sample_interval=data.sample_interval, sample_interval_sec=data.sample_interval_sec,
                  scaling=data.scaling, percentiles=tuple(data.percentiles), stretch=stretch)
    return PrepOptions(**{**values, **overrides})


@dataclass
class PrepResult:
    """What :func:`prepare` did; ``summary`` is also stored in ``prep.json``."""

    out: Path
    summary: dict[str, Any]
    movie: Path | None


@dataclass
class _Kept:
    """A frame kept for clips: its number, time, transformed data ``(C, H, W)``, valid ``(H, W)``, raw moments."""

    index: int
    time: float | None
    data: np.ndarray
    valid: np.ndarray
    moments: tuple[int, float, float, float]  # n valid, sum, sum of squares, max


@dataclass
class _Tally:
    """Counters for the summary."""

    frames_read: int = 0
    frames_kept: int = 0
    sampled_out: int = 0
    too_invalid: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    videos: list[dict[str, Any]] = field(default_factory=list)
    written: int = 0
    reused: int = 0


def prepare(
    input_path: str | Path,
    out: str | Path,
    *,
    options: PrepOptions,
    movie_only: bool = False,
    config: dict[str, Any] | None = None,
    progress: bool = True,
) -> PrepResult:
    """Turn raw input into clips in ``out`` (resuming a previous run there), write the movie and the summary.

    Args:
        input_path: video, image folder, FITS file/folder/tar, array, or dataset folder (its training videos).
        out: the prepared folder (created). A folder prepared before with the same input and settings is resumed.
        options: see :class:`PrepOptions` (:func:`options_from_config` builds them from a config).
        movie_only: write only ``movie.mp4``.
        config: the config (or its data section) to record in ``prep.json``.
        progress: show a Rich progress bar.

    Returns:
        The result; ``summary`` counts frames read, kept, sampled out, too invalid (listed), unreadable files,
        cadence gaps, clips written and reused.

    Raises:
        OddframeError: ``out`` holds other files, or was prepared from another input or with other settings.
        ConfigError: ``sample_interval_sec`` on a source without timestamps.
    """
    t0 = time.perf_counter()
    out = Path(out)
    inputs, problems = open_prep_inputs(input_path, normalise_exposure=options.normalise_exposure)
    identity = fingerprint(inputs)
    prep: dict[str, Any] | None = None
    if not movie_only:
        prep = _start(out, input_path, inputs, identity, options, config)
    tally, records = _Tally(), []
    movie_path = out / fmt.MOVIE_FILE
    movie = _Movie(out / PARTIAL_MOVIE, fps=options.movie_fps, max_side=options.movie_max_side)
    ids = video_ids([name for name, _ in inputs])
    try:
        with progress_bar(progress) as bar:
            for (name, source), vid in zip(inputs, ids):
                task = bar.add_task(name, total=len(source))
                records += _prepare_video(name, vid, source, out, options, tally, movie,
                                          movie_only=movie_only, advance=lambda: bar.advance(task))
    except BaseException:
        movie.close()
        movie.path.unlink(missing_ok=True)  # clips written so far stay: the next run reuses them
        raise
    movie.close()
    if movie.n_frames:
        os.replace(movie.path, movie_path)
    summary = _summary(input_path, inputs, tally, records, problems, options, movie.n_frames, movie_only)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    if prep is not None:
        fmt.write_index(out, records)
        prep.update(status="complete", updated=_now(), summary=summary)
        write_json(prep, out / fmt.PREP_FILE)
    return PrepResult(out, summary, movie_path if movie.n_frames else None)


def _start(out: Path, input_path: str | Path, inputs: list[tuple[str, FrameSource]], identity: str,
           options: PrepOptions, config: dict[str, Any] | None) -> dict[str, Any]:
    """Check that ``out`` is empty or a resumable prep of the same input and settings; write ``prep.json``."""
    settings = options.settings()
    if (out / fmt.PREP_FILE).is_file():
        before = fmt.read_prep(out)
        changed = {k: (before["settings"].get(k), v) for k, v in settings.items() if before["settings"].get(k) != v}
        if changed:
            what = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items())
            raise OddframeError(f"{out} was prepared with other settings ({what}); use another --out, or delete it "
                                "to prepare again")
        if before["input"]["fingerprint"] != identity:
            raise OddframeError(f"{out} was prepared from another input ({before['input']['path']}, or its files "
                                "changed since); use another --out, or delete it to prepare again")
    elif out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in (fmt.MOVIE_FILE, fmt.CLIPS_DIR, PARTIAL_MOVIE))
        if others:
            raise OddframeError(f"{out}: not empty and not a prepared folder (holds {', '.join(others[:3])}); "
                                "choose an empty or new --out")
    (out / fmt.CLIPS_DIR).mkdir(parents=True, exist_ok=True)
    prep = {
        "format": fmt.FORMAT, "format_version": fmt.FORMAT_VERSION, "oddframe_version": oddframe.__version__,
        "status": "incomplete", "created": _now(), "updated": _now(),
        "input": {"path": str(Path(input_path).expanduser().resolve()), "videos": [n for n, _ in inputs],
                  "kinds": sorted({s.kind for _, s in inputs}), "fingerprint": identity},
        "settings": settings, "config": config, "summary": None,
    }
    write_json(prep, out / fmt.PREP_FILE)
    return prep


def _prepare_video(name: str, vid: str, source: FrameSource, out: Path, options: PrepOptions, tally: _Tally,
                   movie: "_Movie", *, movie_only: bool, advance: Any) -> list[fmt.ClipRecord]:
    """Stream one source: movie frames for all, clips of the kept frames; returns the clips' index rows."""
    transform = options.transform()
    names = [h["NAME"] for h in source.headers()] if isinstance(source, FitsSource) else None
    length, stride = options.clip_length, options.stride
    kept: deque[_Kept] = deque(maxlen=length)
    records: list[fmt.ClipRecord] = []
    indices, times = [], []
    n_kept, last_time = 0, None
    for i, frame in enumerate(iter_frames_skipping(source, tally.unreadable)):
        advance()
        tally.frames_read += 1
        indices.append(frame.index)
        times.append(frame.time)
        movie.write(frame, fits=source.kind == "fits", label=f"{name} #{frame.index} {_iso(frame.time, source)}")
        if movie_only:
            continue
        # Sampling first, as loading.iter_frames does; a skipped (too invalid) frame does not reset the clock, so
        # the next good frame takes its place in a sampling in seconds.
        if options.sample_interval_sec is not None:
            if frame.time is None:
                raise ConfigError(f"{source.path}: frame {frame.index} has no timestamp; use data.sample_interval "
                                  "(frames) instead of data.sample_interval_sec")
            if last_time is not None and frame.time - last_time < options.sample_interval_sec * (1 - 1e-3):
                tally.sampled_out += 1
                continue
        elif i % options.sample_interval:
            tally.sampled_out += 1
            continue
        invalid = 0.0 if frame.valid is None else 1.0 - float(frame.valid.mean())
        if invalid > options.max_invalid_fraction:
            tally.too_invalid.append({"video": name, "frame": frame.index, "invalid_fraction": round(invalid, 4),
                                      **({"name": names[frame.index]} if names else {})})
            continue
        last_time = frame.time
        data, valid = transform(frame)
        kept.append(_Kept(frame.index, frame.time, data, valid, _moments(frame)))
        n_kept += 1
        # The windows of clips.window_starts, cut while streaming: one every `stride` kept frames...
        if n_kept >= length and (n_kept - length) % stride == 0:
            records.append(_emit(out, vid, name, source, list(kept), len(records), tally))
    # ... plus one aligned to the end so every frame is covered, or one short clip for a short sequence.
    if 0 < n_kept < length or (n_kept > length and (n_kept - length) % stride):
        records.append(_emit(out, vid, name, source, list(kept), len(records), tally))
    tally.frames_kept += n_kept
    for g in cadence_gaps(times):
        tally.gaps.append({"video": name, "after_frame": indices[g.before], "before_frame": indices[g.after],
                           "start": _iso(g.start, source) or g.start, "end": _iso(g.end, source) or g.end,
                           "seconds": round(g.seconds, 3),
                           "missing_frames": max(1, round(g.seconds / g.median_cadence) - 1)})
    info: dict[str, Any] = {"name": name, "kind": source.kind, "path": str(source.path), "frames_read": len(indices),
                            "frames_kept": n_kept, "clips": len(records)}
    if isinstance(source, FitsSource):
        tally.unreadable += source.skipped
        exposures = [exposure_seconds(h) for h in source.headers()]
        info["exposure_normalised"] = source.normalise_exposure
        info["frames_with_exptime"] = sum(e is not None for e in exposures)
    tally.videos.append(info)
    return records


def _moments(frame: Frame) -> tuple[int, float, float, float]:
    """Count, sum, sum of squares and maximum of the valid raw pixels (float64: sums of millions of pixels)."""
    values = frame.data if frame.valid is None else frame.data[frame.valid]
    values = values.astype(np.float64).ravel()
    if values.size == 0:
        return 0, 0.0, 0.0, float("-inf")
    return int(values.size), float(values.sum()), float(np.dot(values, values)), float(values.max())


def _emit(out: Path, vid: str, name: str, source: FrameSource, frames: list[_Kept], number: int,
          tally: _Tally) -> fmt.ClipRecord:
    """Write one clip (or reuse it when a previous run wrote it) and return its index row."""
    clip_id = f"{vid}_{number:05d}"
    rel = f"{fmt.CLIPS_DIR}/{clip_id}.npy"
    data = np.stack([k.data for k in frames], axis=1)  # T x (C, H, W) -> (C, T, H, W)
    valid = np.stack([k.valid for k in frames])[None]  # (1, T, H, W)
    if fmt.clip_file_ok(out / rel, data.shape):
        tally.reused += 1
    else:
        fmt.save_clip(out / rel, data, valid)
        tally.written += 1
    n = sum(k.moments[0] for k in frames)
    mean = sum(k.moments[1] for k in frames) / n if n else None
    var = max(sum(k.moments[2] for k in frames) / n - mean * mean, 0.0) if n and mean is not None else None
    t0, t1 = frames[0].time, frames[-1].time
    return fmt.ClipRecord(
        clip=clip_id, file=rel, video=name, source=str(source.path), frames=tuple(k.index for k in frames),
        start_sec=t0, end_sec=t1, start_iso=_iso(t0, source), end_iso=_iso(t1, source),
        raw_mean=mean, raw_std=None if var is None else float(np.sqrt(var)),
        raw_max=max(k.moments[3] for k in frames) if n else None,
    )


class _Movie:
    """``movie.mp4`` of every frame read, at most ``max_side`` pixels on its longest side, labelled with frame and time.

    Float data (FITS, 16-bit) is min-max scaled per frame and shown through :func:`frame_to_rgb`'s asinh
    ``"low"`` scale (afmhot for FITS, grey otherwise); 8-bit data is shown as it is.
    """

    def __init__(self, path: Path, *, fps: float, max_side: int) -> None:
        self.path, self.fps, self.max_side = path, fps, max_side
        self.size: tuple[int, int] | None = None
        self._writer: AnomalyVideoWriter | None = None
        self.n_frames = 0

    def write(self, frame: Frame, *, fits: bool, label: str) -> None:
        h0, w0 = frame.data.shape[:2]
        if self._writer is None or self.size is None:  # every video of the input shares the first one's movie size
            scale = min(1.0, self.max_side / max(h0, w0))
            self.size = (max(2, round(h0 * scale / 2) * 2), max(2, round(w0 * scale / 2) * 2))
            self._writer = AnomalyVideoWriter(self.path, fps=self.fps)
        eight_bit = frame.data.dtype == np.uint8
        colour = frame.data.ndim == 3 and frame.data.shape[2] >= 3
        transform = FrameTransform(size=self.size, channels=3 if colour else 1,
                                   scaling="uint8" if eight_bit else "minmax")
        data, _ = transform(frame)
        # Contiguous: colour frames come back in the (C, H, W) -> (H, W, C) view's layout, which OpenCV cannot draw on.
        rgb = np.ascontiguousarray(frame_to_rgb(data, scale="linear" if eight_bit else "low",
                                                cmap=FITS_CMAP if fits else None))
        if self.size[1] >= 160:  # text on tiny frames would hide them
            cv2.putText(rgb, label, (4, self.size[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                        cv2.LINE_AA)
        self._writer.write_rgb(rgb)
        self.n_frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _summary(input_path: str | Path, inputs: list[tuple[str, FrameSource]], tally: _Tally,
             records: list[fmt.ClipRecord], problems: list[str], options: PrepOptions, movie_frames: int,
             movie_only: bool) -> dict[str, Any]:
    return {
        "input": str(input_path), "videos": tally.videos, "movie_only": movie_only,
        "frames_read": tally.frames_read, "frames_kept": tally.frames_kept, "frames_sampled_out": tally.sampled_out,
        "frames_too_invalid": tally.too_invalid, "max_invalid_fraction": options.max_invalid_fraction,
        "unreadable": tally.unreadable, "cadence_gaps": tally.gaps, "problems": problems,
        "clips": len(records), "clips_written": tally.written, "clips_reused": tally.reused,
        "clip_shape": [options.channels, options.clip_length, *options.size],
        "movie": fmt.MOVIE_FILE if movie_frames else None, "movie_frames": movie_frames,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for people: what was read, kept, skipped, written and reused."""
    s = summary
    kinds = ", ".join(sorted({v["kind"] for v in s["videos"]})) or "nothing"
    lines = [f"read {s['frames_read']} frames from {len(s['videos'])} input(s) ({kinds})"]
    if not s["movie_only"]:
        lines.append(f"kept {s['frames_kept']}; sampled out {s['frames_sampled_out']}; skipped "
                     f"{len(s['frames_too_invalid'])} with > {s['max_invalid_fraction']:.0%} invalid pixels")
        c, t, h, w = s["clip_shape"]
        lines.append(f"clips: {s['clips']} of {t} frames, {c}x{h}x{w} (written {s['clips_written']}, "
                     f"reused {s['clips_reused']} from an earlier run)")
    for u in s["unreadable"]:
        lines.append(f"unreadable, skipped: {u['name']}: {u['reason']}")
    for f in s["frames_too_invalid"][:10]:
        lines.append(f"too invalid, skipped: {f['video']} frame {f['frame']} ({f['invalid_fraction']:.1%} invalid)")
    for v in s["videos"]:
        if "frames_with_exptime" in v:
            done = "divided by EXPTIME" if v["exposure_normalised"] else "not normalised (--no-exposure)"
            lines.append(f"{v['name']}: {v['frames_with_exptime']} of {v['frames_read']} frames have EXPTIME; {done}")
    for g in s["cadence_gaps"]:
        lines.append(f"cadence gap in {g['video']}: {g['start']} -> {g['end']} ({_duration(g['seconds'])}, "
                     f"~{g['missing_frames']} frame(s) missing)")
    lines += [f"problem: {p}" for p in s["problems"]]
    if s["movie"]:
        lines.append(f"movie: {s['movie']} ({s['movie_frames']} frames)")
    return "\n".join(lines)


def _iso(t: float | None, source: FrameSource) -> str:
    """ISO 8601 UTC of a FITS time (POSIX seconds); empty for relative video times and unknown times."""
    if t is None or source.kind != "fits":
        return ""
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    """``"300 s"``, ``"2.5 h"`` or ``"2542 d"``: gaps range from a missed image to years between missions."""
    if seconds < 3600:
        return f"{seconds:g} s"
    return f"{seconds / 3600:.1f} h" if seconds < 2 * 86400 else f"{seconds / 86400:.0f} d"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

