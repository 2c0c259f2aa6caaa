"""``oddframe calibrate``: the alarm threshold of a run, from scores of normal frames only.

The same streaming engine as detection scores the run's normal footage (its held-out training videos when it
has some, else its training videos or prepared clips); :func:`oddframe.thresholds.calibrate` turns those scores into
a threshold and measures its false-positive rate on normal frames that did not set it, and
:class:`oddframe.thresholds.PixelThresholdFit` turns their maps into per-pixel thresholds (where a map is unusual,
for the boxes of the anomaly video). Frames with too few valid pixels are left out and counted. No test frame is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from oddframe.config import Config
from oddframe.data.layouts import Video
from oddframe.data.loading import TransformedFrame, normal_videos
from oddframe.data.prepared import is_prepared, prepared_dataset
from oddframe.data.transforms import frame_transform
from oddframe.errors import ConfigError
from oddframe.features import with_features
from oddframe.files import output_lock, write_json
from oddframe.pipeline.engine import Detector, detector_for, postprocess, stream_video, warn_conversions
from oddframe.progress import progress_bar
from oddframe.runs import CALIBRATION, load_run, write_pixel_thresholds
from oddframe.thresholds import PixelThresholdFit
from oddframe.thresholds import calibrate as calibrate_split


def _raw_scores(
    detector: Detector, videos: list[Video], config: Config, progress: bool, pixels: PixelThresholdFit
) -> list[np.ndarray]:
    out = []
    with progress_bar(progress) as bar:
        task = bar.add_task("scoring normal frames", total=sum(len(v.source) // config.data.sample_interval for v in videos))
        for v in videos:
            scores = []
            for r in stream_video(detector, v, config):
                scores.append(r.score)
                if not r.invalid:
                    pixels.add(r.amap)
                bar.advance(task)
            out.append(np.asarray(scores, dtype=np.float64))
    return out


def _prepared_scores(
    detector: Detector, path: str | Path, config: Config, progress: bool, pixels: PixelThresholdFit
) -> list[np.ndarray]:
    """Raw frame scores of every clip a prepared folder lets training use (each clip scored on its own)."""
    dataset = prepared_dataset(path, clip_length=config.data.clip_length, transform=frame_transform(config.data))
    out = []
    with progress_bar(progress) as bar:
        task = bar.add_task("scoring prepared clips", total=len(dataset))
        for i in range(len(dataset)):
            clip = dataset[i]
            frames = [
                TransformedFrame(int(idx), None, clip.frames[:, t].numpy(), clip.valid[0, t].numpy())
                for t, idx in enumerate(clip.frame_index.tolist())
            ]
            stream = with_features(frames, detector.model.derived_inputs())
            scores = []
            for r in detector.run(stream, clip.video):
                scores.append(r.score)
                if not r.invalid:
                    pixels.add(r.amap)
            out.append(np.asarray(scores, dtype=np.float64))
            bar.advance(task)
    return out


def calibrate(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    progress: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Set the alarm threshold of a run from scores of normal frames and store it in ``calibration.json``.

    Normal frames are the run's held-out training videos (``data.holdout_videos``) when it has some, else all its
    training videos (whose scores are optimistic: the model has seen them). A part of them (``holdout_fraction``, in
    contiguous blocks since neighbouring frames are correlated) is kept aside to report the false-positive rate of
    the threshold on normal frames that did not set it.
    """
    run_dir = Path(run_dir)
    with output_lock(run_dir, "oddframe calibrate"):
        return _calibrate(run_dir, data=data, overrides=overrides, progress=progress, device=device)


def _calibrate(
    run_dir: Path, *, data: str | Path | None, overrides: tuple[str, ...] | list[str], progress: bool, device: str | None
) -> dict[str, Any]:
    model, config = load_run(run_dir, overrides=overrides)
    path = data or config.data.path
    if not path:
        raise ConfigError("no normal data to calibrate on: pass --data or set data.path in the run's config")
    detector = detector_for(model, config, device=device)
    r = config.render
    pixels = PixelThresholdFit(quantile=r.box_quantile, floor_quantile=r.box_floor_quantile, smoothing=r.box_smoothing,
                               normal_rate=r.box_normal_rate, min_area=r.box_min_area, seed=config.train.seed)
    if is_prepared(path):
        raw = _prepared_scores(detector, path, config, progress, pixels)
        source = "prepared training clips kept by the review (seen in training: the threshold is optimistic)"
    else:
        _, train = normal_videos(path, start_frame=config.data.start_frame, stop_frame=config.data.stop_frame,
                                 scenes=config.data.scenes)
        k = config.data.holdout_videos
        normal = train[len(train) - k:] if k else train
        source = "held-out training videos" if k else "training videos (seen in training: the threshold is optimistic)"
        if not normal:
            raise ConfigError(f"{path}: no training videos to calibrate on")
        warn_conversions(normal, config)
        raw = _raw_scores(detector, normal, config, progress, pixels)
    pooled = np.concatenate(raw)
    n_invalid = int(np.isnan(pooled).sum())
    if n_invalid == pooled.size:
        raise ConfigError(f"{path}: every normal frame has too few valid pixels to be scored "
                          f"(score.min_valid_fraction={config.score.min_valid_fraction}); nothing to calibrate on")
    pooled = pooled[np.isfinite(pooled)]
    reference = {"mean": float(pooled.mean()), "std": float(pooled.std() or 1.0)}
    final = [postprocess(s, config, reference) for s in raw]
    th = config.score.threshold
    n = sum(len(s) for s in final)
    # Blocks of up to 50 consecutive frames (neighbours are near-copies), at least ~10 blocks on small sets.
    block = max(1, min(50, n // 10))
    result = calibrate_split(
        final, method=th.method, q=th.q, k=th.k, holdout_fraction=th.holdout_fraction, seed=config.train.seed,
        block=block,
    ).to_dict()
    result.update({"reference": reference, "normal_frames": source, "data": str(path), "n_invalid_frames": n_invalid})
    result["pixel_thresholds"] = write_pixel_thresholds(run_dir, pixels, config)
    write_json(result, run_dir / CALIBRATION)
    return result
