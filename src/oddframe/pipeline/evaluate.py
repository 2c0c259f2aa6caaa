"""``oddframe eval``: metrics of a trained run against ground truth, with plots and a report.

The test split is scored by the same streaming engine as detection; metrics come from the pure functions of
:mod:`oddframe.metrics` on exactly the frames the layout labels. Nothing is tuned on them: the alarm threshold
comes from normal frames (:mod:`oddframe.pipeline.calibrate`).
"""

from __future__ import annotations

import heapq
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from oddframe.config import save_config
from oddframe.data.layouts import load_dataset
from oddframe.errors import ConfigError
from oddframe.files import atomic_write, write_json
from oddframe.metrics import PixelAUROC, summarise
from oddframe.pipeline.engine import detector_for, postprocess, stream_video
from oddframe.pipeline.outputs import (Panel, display_frame, exclusive_output, render_kwargs, resize_map, shown_size,
                                      write_panels, write_scores_csv)
from oddframe.progress import progress_bar
from oddframe.runs import HISTORY, load_run, read_calibration
from oddframe.thresholds import false_positive_rate


@exclusive_output("oddframe eval", marker="metrics.json")
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
    from oddframe.render.panel import compose_panel
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
    rkw = render_kwargs(config, model, run_dir)
    writer = AnomalyVideoWriter(out / "anomaly.mp4", fps=config.render.fps or 10.0, **rkw) if video else None
    top: list[tuple[float, int, Panel]] = []
    labelled: list[Panel] = []
    labels_all, scores_all, rows = [], [], []
    counter = n_invalid = 0
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
                if pixel is not None and r.index < len(v.masks) and not r.invalid:
                    gt = np.asarray(v.masks[r.index], dtype=bool)
                    pixel.update(resize_map(r.amap, gt.shape)[None], gt[None])
                shown = display_frame(r)
                if writer is not None or config.render.top_frames or labelled_panels:
                    big_map = resize_map(r.amap, shown_size(shown))
                    gt_shown = None if gt is None else cv2.resize(gt.astype(np.uint8), shown_size(shown)[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
                if writer is not None:
                    writer.write(shown, big_map, gt_mask=gt_shown, title=f"{v.name} #{r.index}")
                if labelled_panels and len(labelled) < labelled_panels and v.labels[r.index]:
                    labelled.append(Panel(r.score, v.name, r.index, compose_panel(
                        shown, big_map, gt_mask=gt_shown, title=f"{v.name} #{r.index}", **rkw)))
                if config.render.top_frames and not r.invalid:
                    counter += 1
                    if len(top) < config.render.top_frames or r.score > top[0][0]:
                        panel = compose_panel(shown, big_map, gt_mask=gt_shown, title=f"{v.name} #{r.index}", **rkw)
                        item = (r.score, counter, Panel(r.score, v.name, r.index, panel))
                        (heapq.heappush if len(top) < config.render.top_frames else heapq.heapreplace)(top, item)
                bar.advance(task)
            scores = postprocess(np.asarray(raw), config, reference)
            labels = np.asarray(v.labels)[np.asarray(idx)]
            scored = np.isfinite(scores)  # frames with too few valid pixels have no score: left out, counted
            n_invalid += int((~scored).sum())
            labels_all.append(labels[scored])
            scores_all.append(scores[scored])
            for i, s, lab, ok in zip(idx, scores, labels, scored):
                rows.append({"video": v.name, "frame": i, "score": float(s), "label": int(lab), "invalid": int(not ok),
                             "flagged": "" if threshold is None or not ok else int(s > threshold)})
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
        "n_invalid_frames": n_invalid,
    })
    if n_invalid:
        warnings.warn(f"{n_invalid} test frame(s) have too few valid pixels to be scored (score.min_valid_fraction="
                      f"{config.score.min_valid_fraction}); they are left out of every metric", stacklevel=2)
    if threshold is not None:
        normal = np.concatenate([s[lab == 0] for s, lab in zip(scores_all, labels_all)])
        anomalous = np.concatenate([s[lab == 1] for s, lab in zip(scores_all, labels_all)])
        metrics["test_fpr_at_threshold"] = float(false_positive_rate(normal, threshold)) if normal.size else None
        metrics["test_tpr_at_threshold"] = float((anomalous > threshold).mean()) if anomalous.size else None
    write_json(metrics, out / "metrics.json")
    write_scores_csv(rows, out / "scores.csv", ["video", "frame", "score", "label", "flagged", "invalid"])
    save_config(config, out / "config.yaml")
    if (run_dir / HISTORY).is_file():
        atomic_write(out / HISTORY, lambda tmp: shutil.copyfile(run_dir / HISTORY, tmp))
    if (run_dir / "loss.png").is_file():
        atomic_write(out / "loss.png", lambda tmp: shutil.copyfile(run_dir / "loss.png", tmp))

    write_panels([t for _, _, t in sorted(top, key=lambda x: (-x[0], x[1]))], out / "top")
    if labelled:
        write_panels(labelled, out / "labelled")
    if report:
        from oddframe.render.report import write_report

        write_report(out, title=f"oddframe: {config.model.name} on {Path(data).name}")
    return metrics
