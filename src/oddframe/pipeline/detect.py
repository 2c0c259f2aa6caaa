"""``oddframe detect``: score every frame (and pixel) of any source or dataset with a trained run.

Writes ``scores.csv`` and, on request, the anomaly maps and an annotated video. The scoring itself is the
streaming engine's (:mod:`oddframe.pipeline.engine`); the files are :mod:`oddframe.pipeline.outputs`'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oddframe.backends import open_backend
from oddframe.data.layouts import open_input
from oddframe.files import safe_name
from oddframe.pipeline.engine import detector_for, postprocess, stream_video
from oddframe.pipeline.outputs import NpyWriter, display_frame, render_kwargs, resize_map, video_fps, write_scores_csv
from oddframe.progress import progress_bar
from oddframe.runs import WEIGHTS, load_run, read_calibration


@dataclass
class DetectSummary:
    """What :func:`detect` wrote and how fast it ran."""

    out: Path
    n_videos: int
    n_frames: int
    timing: dict[str, float]
    threshold: float | None


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
    backend: str = "torch",
) -> DetectSummary:
    """Score every frame of ``input_path`` (any source or dataset; a dataset's test split) with a trained run.

    Writes ``scores.csv`` (video, frame, time, score, flagged), with ``maps=True`` the anomaly maps as
    ``maps/<video>.npy`` (float16, ``(T, H, W)`` at model resolution), and with ``video`` an MP4 of the frames
    beside their anomaly heatmaps. ``backend`` runs the map with PyTorch or an exported runtime
    (:data:`oddframe.backends.BACKENDS`; ``oddframe export`` first).
    """
    from oddframe.render.video import AnomalyVideoWriter

    model, config = load_run(run_dir, overrides=overrides)
    calibration = read_calibration(run_dir)
    dataset = open_input(input_path)
    videos = dataset.test or dataset.train
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shape = (config.data.channels, config.data.clip_length, *config.data.size)
    runner = open_backend(backend, run_dir, clip_shape=shape, weights=Path(run_dir) / WEIGHTS)
    detector = detector_for(model, config, device=device, backend=runner)
    threshold = calibration.get("threshold") if calibration else None
    writer = None
    if video is not None:
        writer = AnomalyVideoWriter(Path(video), fps=config.render.fps or video_fps(videos) or 10.0, **render_kwargs(config, model))
    rows: list[dict] = []
    n_frames = 0
    with progress_bar(progress) as bar:
        task = bar.add_task("detecting", total=sum(len(v.source) // config.data.sample_interval for v in videos))
        for v in videos:
            bar.update(task, description=f"detecting {v.name}")
            map_writer = NpyWriter(out / "maps" / f"{safe_name(v.name)}.npy") if maps else None
            idx, times, raw_scores = [], [], []
            for r in stream_video(detector, v, config, keep_raw=writer is not None):
                idx.append(r.index)
                times.append(r.time)
                raw_scores.append(r.score)
                if map_writer is not None:
                    map_writer.append(r.amap)
                if writer is not None:
                    t0 = time.perf_counter()
                    shown = display_frame(r)
                    writer.write(shown, resize_map(r.amap, shown.shape[-2:]), title=f"{v.name} #{r.index}")
                    detector.timing.extra["render"] = detector.timing.extra.get("render", 0.0) + time.perf_counter() - t0
                bar.advance(task)
            if map_writer is not None:
                map_writer.close()
            scores = postprocess(np.asarray(raw_scores), config, calibration.get("reference") if calibration else None)
            for i, t, s in zip(idx, times, scores):
                rows.append({"video": v.name, "frame": i, "time": "" if t is None else f"{t:.6f}", "score": float(s),
                             "flagged": "" if threshold is None else int(s > threshold)})
            n_frames += len(idx)
    if writer is not None:
        writer.close()
    write_scores_csv(rows, out / "scores.csv", ["video", "frame", "time", "score", "flagged"])
    return DetectSummary(out, len(videos), n_frames, detector.timing.as_dict(), threshold)
