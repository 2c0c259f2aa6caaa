"""Evaluation against ground truth, and threshold calibration on normal frames.

Both run the same streaming detector as :func:`oddframe.detect.detect`, so the numbers they report are those a
user of ``oddframe detect`` gets. Metrics are computed by the pure functions of :mod:`oddframe.metrics` on the test
frames the layout labels, and nothing is tuned on them: the threshold comes from normal frames only.
"""

from __future__ import annotations

import heapq
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from oddframe.config import Config, save_config
from oddframe.data.layouts import Video, load_dataset
from oddframe.detect import (
    Detector,
    progress_bar,
    detector_for,
    display_frame,
    postprocess,
    read_calibration,
    render_kwargs,
    resize_map,
    stream_video,
    write_scores_csv,
)
from oddframe.data.loading import TransformedFrame
from oddframe.data.prepared import is_prepared, prepared_dataset
from oddframe.errors import ConfigError
from oddframe.naming import safe_name
from oddframe.metrics import PixelAUROC, summarise
from oddframe.runs import CALIBRATION, HISTORY, load_run, write_json
from oddframe.train import frame_transform
from oddframe.thresholds import calibrate as calibrate_split
from oddframe.thresholds import false_positive_rate


def _raw_scores(detector: Detector, videos: list[Video], config: Config, progress: bool) -> list[np.ndarray]:
    out = []
    with progress_bar(progress) as bar:
        task = bar.add_task("scoring normal frames", total=sum(len(v.source) // config.data.sample_interval for v in videos))
        for v in videos:
            scores = []
            for r in stream_video(detector, v, config):
                scores.append(r.score)
                bar.advance(task)
            out.append(np.asarray(scores, dtype=np.float64))
    return out


def _prepared_scores(detector: Detector, path: str | Path, config: Config, progress: bool) -> list[np.ndarray]:
    """Raw frame scores of every clip a prepared folder lets training use (each clip scored on its own)."""
    dataset = prepared_dataset(path, clip_length=config.data.clip_length, transform=frame_transform(config))
    out = []
    with progress_bar(progress) as bar:
        task = bar.add_task("scoring prepared clips", total=len(dataset))
        for i in range(len(dataset)):
            clip = dataset[i]
            frames = [
                TransformedFrame(int(idx), None, clip.frames[:, t].numpy(), clip.valid[0, t].numpy())
                for t, idx in enumerate(clip.frame_index.tolist())
            ]
            out.append(np.asarray([r.score for r in detector.run(frames, clip.video)], dtype=np.float64))
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
    model, config = load_run(run_dir, overrides=overrides)
    path = data or config.data.path
    if not path:
        raise ConfigError("no normal data to calibrate on: pass --data or set data.path in the run's config")
    detector = detector_for(model, config, device=device)
    if is_prepared(path):
        raw = _prepared_scores(detector, path, config, progress)
        source = "prepared training clips kept by the review (seen in training: the threshold is optimistic)"
    else:
        train = load_dataset(path).train
        k = config.data.holdout_videos
        normal = train[len(train) - k:] if k else train
        source = "held-out training videos" if k else "training videos (seen in training: the threshold is optimistic)"
        if not normal:
            raise ConfigError(f"{path}: no training videos to calibrate on")
        raw = _raw_scores(detector, normal, config, progress)
    pooled = np.concatenate(raw)
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
    result.update({"reference": reference, "normal_frames": source, "data": str(path)})
    write_json(result, run_dir / CALIBRATION)
    return result


@dataclass
class _Top:
    """One of the most anomalous frames, kept for the report."""

    score: float
    video: str
    frame: int
    panel: np.ndarray


def evaluate(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    overrides: tuple[str, ...] | list[str] = (),
    video: bool = False,
    progress: bool = True,
    device: str | None = None,
    report: bool = True,
    labelled_panels: int = 0,
) -> dict[str, Any]:
    """Score the test split of a labelled dataset and write ``metrics.json``, ``scores.csv``, plots and a report.

    Frame AUROC is computed on exactly the frames the detector scored (all test frames at the configured sample
    interval) against the layout's labels; pixel AUROC compares maps, resized to the masks' resolution, with the
    ground-truth masks when the layout has them. ``labelled_panels`` > 0 also saves that many panels (frame |
    map) of labelled anomalous frames to ``labelled/``, to show how the model sees the known anomalies.
    """
    from oddframe.render.overlay import compose_panel
    from oddframe.render.video import AnomalyVideoWriter

    run_dir, out = Path(run_dir), Path(out)
    model, config = load_run(run_dir, overrides=overrides)
    dataset = load_dataset(data)
    tests = [v for v in dataset.test if v.labels is not None]
    if not tests:
        raise ConfigError(f"{data}: the {dataset.layout} layout has no labelled test videos to evaluate on")
    calibration = read_calibration(run_dir)
    threshold = calibration.get("threshold") if calibration else None
    reference = calibration.get("reference") if calibration else None
    out.mkdir(parents=True, exist_ok=True)
    detector = detector_for(model, config, device=device)
    has_masks = all(v.masks is not None for v in tests)
    pixel = PixelAUROC() if has_masks else None
    rkw = render_kwargs(config, model)
    writer = AnomalyVideoWriter(out / "anomaly.mp4", fps=config.render.fps or 10.0, **rkw) if video else None
    top: list[tuple[float, int, _Top]] = []
    labelled: list[_Top] = []
    labels_all, scores_all, rows = [], [], []
    counter = 0
    t0 = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("evaluating", total=sum(len(v.source) // config.data.sample_interval for v in tests))
        for v in tests:
            bar.update(task, description=f"evaluating {v.name}")
            idx, raw = [], []
            for r in stream_video(detector, v, config, keep_raw=True):
                idx.append(r.index)
                raw.append(r.score)
                gt = None
                if pixel is not None and r.index < len(v.masks):
                    gt = np.asarray(v.masks[r.index], dtype=bool)
                    pixel.update(resize_map(r.amap, gt.shape)[None], gt[None])
                shown = display_frame(r)
                if writer is not None or config.render.top_frames or labelled_panels:
                    big_map = resize_map(r.amap, shown.shape[-2:])
                    gt_shown = None if gt is None else cv2.resize(gt.astype(np.uint8), shown.shape[-1:-3:-1], interpolation=cv2.INTER_NEAREST).astype(bool)
                if writer is not None:
                    writer.write(shown, big_map, gt_mask=gt_shown, title=f"{v.name} #{r.index}")
                if labelled_panels and len(labelled) < labelled_panels and v.labels[r.index]:
                    labelled.append(_Top(r.score, v.name, r.index, compose_panel(
                        shown, big_map, gt_mask=gt_shown, title=f"{v.name} #{r.index}", **rkw)))
                if config.render.top_frames:
                    counter += 1
                    if len(top) < config.render.top_frames or r.score > top[0][0]:
                        panel = compose_panel(shown, big_map, gt_mask=gt_shown, title=f"{v.name} #{r.index}", **rkw)
                        item = (r.score, counter, _Top(r.score, v.name, r.index, panel))
                        (heapq.heappush if len(top) < config.render.top_frames else heapq.heapreplace)(top, item)
                bar.advance(task)
            scores = postprocess(np.asarray(raw), config, reference)
            labels = np.asarray(v.labels)[np.asarray(idx)]
            labels_all.append(labels)
            scores_all.append(scores)
            for i, s, lab in zip(idx, scores, labels):
                rows.append({"video": v.name, "frame": i, "score": float(s), "label": int(lab),
                             "flagged": "" if threshold is None else int(s > threshold)})
    seconds = time.perf_counter() - t0
    if writer is not None:
        writer.close()

    metrics = summarise(labels_all, scores_all)
    metrics.update({
        "pixel_auroc": pixel.compute() if pixel is not None else None,
        "detect_fps": detector.timing.fps,
        "eval_seconds": seconds,
        "timing": detector.timing.as_dict(),
        "model": config.model.name,
        "checkpoint": str(run_dir),
        "data": str(data),
        "layout": dataset.layout,
        "threshold": threshold,
    })
    if threshold is not None:
        normal = np.concatenate([s[lab == 0] for s, lab in zip(scores_all, labels_all)])
        anomalous = np.concatenate([s[lab == 1] for s, lab in zip(scores_all, labels_all)])
        metrics["test_fpr_at_threshold"] = float(false_positive_rate(normal, threshold)) if normal.size else None
        metrics["test_tpr_at_threshold"] = float((anomalous > threshold).mean()) if anomalous.size else None
    write_json(metrics, out / "metrics.json")
    write_scores_csv(rows, out / "scores.csv", ["video", "frame", "score", "label", "flagged"])
    save_config(config, out / "config.yaml")
    if (run_dir / HISTORY).is_file():
        shutil.copy(run_dir / HISTORY, out / HISTORY)
    if (run_dir / "loss.png").is_file():
        shutil.copy(run_dir / "loss.png", out / "loss.png")

    _write_panels([t for _, _, t in sorted(top, key=lambda x: (-x[0], x[1]))], out / "top")
    if labelled:
        _write_panels(labelled, out / "labelled")
    if report:
        from oddframe.render.report import write_report

        write_report(out, title=f"oddframe: {config.model.name} on {Path(data).name}")
    return metrics


def _write_panels(panels: list[_Top], folder: Path) -> None:
    """Save panels as PNG with a ``top.json`` listing (video, frame, score, image) in order."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = []
    for rank, t in enumerate(panels):
        name = f"{rank:02d}_{safe_name(t.video)}_{t.frame:06d}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(t.panel, cv2.COLOR_RGB2BGR))
        listing.append({"video": t.video, "frame": t.frame, "score": t.score, "image": name})
    (folder / "top.json").write_text(json.dumps(listing, indent=2))
