"""``oddframe eval``: metrics of a trained run against ground truth, with plots and a report.

The test split is scored by the same streaming engine as detection; metrics come from the pure functions of
:mod:`oddframe.metrics` and :mod:`oddframe.metrics_regions` on exactly the frames the layout labels. Nothing is
tuned on them: the alarm threshold comes from normal frames (:mod:`oddframe.pipeline.calibrate`). Every
``metrics.json`` states its protocol (how frame scores were made, normalised, smoothed and aggregated, and
whether that used statistics of the test videos themselves).
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

from oddframe.config import Config, save_config
from oddframe.data.dataset import Video, scene_key
from oddframe.data.layouts import load_dataset
from oddframe.errors import ConfigError
from oddframe.files import atomic_write, write_json
from oddframe.metrics import PixelAUROC, summarise
from oddframe.metrics_regions import Region, RegionDetection, TrackLinker, instance_regions
from oddframe.pipeline.engine import detector_for, postprocess, stream_video
from oddframe.pipeline.outputs import (Panel, display_frame, exclusive_output, render_kwargs, resize_map, shown_size,
                                      write_panels, write_scores_csv)
from oddframe.progress import progress_bar
from oddframe.runs import HISTORY, load_run, read_calibration
from oddframe.scoring import smooth_scores
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
    regions: bool = True,
) -> dict[str, Any]:
    """Score the test split of a labelled dataset and write ``metrics.json``, ``scores.csv``, plots and a report.

    Frame AUROC is computed on exactly the frames the detector scored (all test frames at the configured sample
    interval) against the layout's labels; pixel AUROC compares maps, resized to the masks' resolution, with the
    ground-truth masks when the layout has them, and so do RBDC and TBDC (``regions=False`` skips them: they cost
    a connected-component pass per map level; their curve goes to ``regions.csv``). Datasets with scenes
    (ShanghaiTech, UBnormal) also get per-scene frame metrics under ``per_scene``. ``labelled_panels`` > 0 also
    saves that many panels (frame | map) of labelled anomalous frames to ``labelled/``, to show how the model sees
    the known anomalies. The run's ``data.scenes`` and ``data.eval_split`` (overridable) choose the test videos.
    """
    from oddframe.render.panel import compose_panel
    from oddframe.render.video import AnomalyVideoWriter

    run_dir, out = Path(run_dir), Path(out)
    model, config = load_run(run_dir, overrides=overrides)
    dataset = load_dataset(data, scenes=config.data.scenes, split=config.data.eval_split)
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
    region_acc = RegionDetection() if has_masks and regions else None
    region_seconds = 0.0
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
            idx, raw, members = [], [], {}
            linker = TrackLinker()
            for r in stream_video(detector, v, config, keep_raw=True):
                idx.append(r.index)
                raw.append(r.score)
                for name, z in (r.members or {}).items():  # a fused run: each member's calibrated score
                    members.setdefault(name, []).append(z)
                gt = None
                if pixel is not None and r.index < len(v.masks) and not r.invalid:
                    gt = np.asarray(v.masks[r.index], dtype=bool)
                    pixel.update(resize_map(r.amap, gt.shape)[None], gt[None])
                if region_acc is not None and gt is not None:
                    t0_regions = time.perf_counter()
                    keyed = [((v.name, t), b) for t, b in _gt_regions(v, r.index, gt, linker)]
                    region_acc.update(r.amap, keyed, gt_shape=gt.shape, valid=r.valid)
                    region_seconds += time.perf_counter() - t0_regions
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
            members = {f"member:{k}": smooth_scores(np.asarray(z), config.score.smoothing_sigma) for k, z in members.items()}
            for j, (i, s, lab, ok) in enumerate(zip(idx, scores, labels, scored)):
                rows.append({"video": v.name, "frame": i, "score": float(s), "label": int(lab), "invalid": int(not ok),
                             "flagged": "" if threshold is None or not ok else int(s > threshold),
                             **{k: float(z[j]) for k, z in members.items()}})
    seconds = time.perf_counter() - t0
    if writer is not None:
        writer.close()

    metrics = summarise(labels_all, scores_all)
    region_metrics = _region_metrics(region_acc, out, region_seconds)
    metrics.update({
        "pixel_auroc": pixel.compute() if pixel is not None else None,
        **region_metrics,
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
    scenes = {v.scene for v in tests if v.scene is not None}
    if scenes:
        metrics["per_scene"] = _per_scene(tests, labels_all, scores_all)
    metrics["protocol"] = protocol(config, calibrated_reference=reference is not None,
                                   regions=None if region_acc is None else region_metrics, layout=dataset.layout,
                                   notes=dataset.notes)
    if n_invalid:
        warnings.warn(f"{n_invalid} test frame(s) have too few valid pixels to be scored (score.min_valid_fraction="
                      f"{config.score.min_valid_fraction}); they are left out of every metric", stacklevel=2)
    if threshold is not None:
        normal = np.concatenate([s[lab == 0] for s, lab in zip(scores_all, labels_all)])
        anomalous = np.concatenate([s[lab == 1] for s, lab in zip(scores_all, labels_all)])
        metrics["test_fpr_at_threshold"] = float(false_positive_rate(normal, threshold)) if normal.size else None
        metrics["test_tpr_at_threshold"] = float((anomalous > threshold).mean()) if anomalous.size else None
    write_json(metrics, out / "metrics.json")
    member_columns = [k for k in (rows[0] if rows else {}) if k.startswith("member:")]
    write_scores_csv(rows, out / "scores.csv", ["video", "frame", "score", "label", "flagged", "invalid", *member_columns])
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


def _gt_regions(video: Video, index: int, mask: np.ndarray, linker: TrackLinker) -> list[Region]:
    """Ground-truth regions of one frame: the dataset's own track ids where it has them (UBnormal), else the
    mask's components linked to the previous frame's by overlap."""
    instances = getattr(video.masks, "instances", None)
    return instance_regions(instances(index)) if callable(instances) else linker(mask)


def _region_metrics(acc: RegionDetection | None, out: Path, seconds: float) -> dict[str, Any]:
    """RBDC/TBDC and their counts (None without pixel masks); writes the operating points to ``regions.csv``."""
    if acc is None:
        return {"rbdc": None, "tbdc": None}
    result = acc.compute()
    curve = acc.curve()
    rows = [{"level": int(k), "fpr": float(f), "rbdr": float(r), "tbdr": float(t)}
            for k, f, r, t in zip(curve["level"], curve["fpr"], curve["rbdr"], curve["tbdr"])]
    write_scores_csv(rows, out / "regions.csv", ["level", "fpr", "rbdr", "tbdr"])
    nan_free = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in result.items()}
    return {"rbdc": nan_free["rbdc"], "tbdc": nan_free["tbdc"], "n_gt_regions": result["n_regions"],
            "n_gt_tracks": result["n_tracks"], "region_seconds": seconds}


def _per_scene(tests: list[Video], labels: list[np.ndarray], scores: list[np.ndarray]) -> dict[str, dict[str, Any]]:
    """Frame metrics of each scene's test videos (ShanghaiTech, UBnormal), scenes in natural order."""
    out: dict[str, dict[str, Any]] = {}
    for scene in sorted({v.scene for v in tests if v.scene is not None}, key=scene_key):
        keep = [i for i, v in enumerate(tests) if v.scene == scene]
        out[scene] = {"n_videos": len(keep), **summarise([labels[i] for i in keep], [scores[i] for i in keep])}
    return out


def protocol(
    config: Config,
    *,
    calibrated_reference: bool,
    regions: dict[str, Any] | None,
    layout: str,
    notes: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """How the numbers of ``metrics.json`` were made, in words and values, so that no two protocols get mixed.

    Args:
        config: the run's config after evaluation overrides.
        calibrated_reference: whether the run holds normal-frame statistics (``calibration.json``).
        regions: the region metrics (None when they were not computed).
        layout: the dataset layout.
        notes: what the layout decided (e.g. UBnormal's one-class protocol).
    """
    sc = config.score
    uses_test = sc.normalise in ("minmax", "regularity")
    normalise = {
        "none": "none: raw frame scores",
        "minmax": "minmax: per test video, (s - min) / (max - min) over that video's own scores",
        "regularity": "regularity: per test video, 1 - s_r(t) of Chong & Tay over that video's own scores",
        "calibrated": "calibrated: z-score against the mean and std of normal training frames' scores",
    }[sc.normalise]
    out: dict[str, Any] = {
        "score_rule": sc.rule,
        "windows": f"{config.data.clip_length} frames every {sc.stride or config.data.clip_length}; a frame's map "
                   f"is the {sc.aggregate} over the windows covering it",
        "normalisation": normalise,
        "normalisation_uses_test_statistics": uses_test,
        "calibrated_on_training_frames": sc.normalise == "calibrated" and calibrated_reference,
        "smoothing_sigma": sc.smoothing_sigma,
        "sample_interval": config.data.sample_interval,
        "frame_auroc_micro": "all test frames pooled",
        "frame_auroc_macro": "mean per-video AUROC over videos with both classes (n_videos_macro_left_out left out)",
        "frame_auroc_macro_padded": "the literature's: mean per-video AUROC, every video padded with one normal "
                                    "frame at its minimum score and one anomalous frame at its maximum",
        "pixel_auroc": "all test pixels pooled, maps resized to the masks",
        "layout": layout,
        "split": config.data.eval_split,
        "scenes": config.data.scenes or "all",
        "notes": list(notes),
    }
    if regions is not None:
        out["rbdc_tbdc"] = ("Ramachandra & Jones 2020: connected components of the raw map (no normalisation) "
                            "on a grid of at most 128 px a side, at a log-spaced level ladder (8 per octave) vs ground-truth regions, box IoU >= 0.1, "
                            "FPR = false-positive regions per frame over all test frames, area (step envelope) for FPR in "
                            "[0, 1]; "
                            "a track is detected "
                            "when >= 10 % of its regions are; ground-truth tracks from "
                            + ("UBnormal's track ids" if layout == "ubnormal" else "mask components linked by overlap"))
    return out
