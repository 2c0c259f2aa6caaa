"""``oddframe bench``: train (or reuse) several configs on one dataset, evaluate each, and compare them.

Each config becomes ``OUT/runs/<name>`` (trained with the public task functions: :func:`~oddframe.pipeline.train.
train`, :func:`~oddframe.pipeline.calibrate.calibrate`, :func:`~oddframe.pipeline.evaluate.evaluate`) and
``OUT/evals/<name>`` (its metrics, scores and report). Resumable: a run that finished its epochs is reused, an
interrupted one resumes, and an evaluation newer than its run (with the same evaluation settings) is reused; a run
whose data, model or training settings differ from its config is refused rather than silently reused. Score and
render settings are not part of the weights: a change there rewrites the run's config and recalibrates it. The
comparison (``bench.md``, ``bench.csv``, ``bench.json``, ``roc.png``, ``scores.png``, ``bench.html``) is written
by :mod:`oddframe.render.bench`. Any list of configs works, so new models slot in as they are registered.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from oddframe import runs
from oddframe.config import Config, load_config
from oddframe.data.layouts import load_dataset
from oddframe.errors import ConfigError
from oddframe.files import safe_name, write_json
from oddframe.metrics import summarise
from oddframe.pipeline.outputs import write_scores_csv
from oddframe.pipeline.calibrate import calibrate
from oddframe.pipeline.evaluate import evaluate
from oddframe.pipeline.train import train

RECORD = "bench_entry.json"  # beside an evaluation: what bench evaluated it with, to know when to reuse it
RETRAIN_SECTIONS = ("data", "model", "train")  # a difference here means other weights


@dataclass
class BenchResult:
    """What :func:`bench` wrote."""

    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    page: Path | None = None
    table: Path | None = None


def run_names(configs: Sequence[str | Path]) -> list[str]:
    """A file-safe, unique run name per config: its file stem, ``_2``, ``_3``... for repeated stems."""
    names: list[str] = []
    for c in configs:
        base = safe_name(Path(c).stem) or "config"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


def _prepare_run(config: Config, run_dir: Path, *, progress: bool, log: Callable[[str], None]) -> str:
    """Train, resume or reuse the run of ``config`` in ``run_dir``; returns what happened."""
    if not (run_dir / runs.WEIGHTS).is_file():  # new, or killed before its first checkpoint: start afresh
        log(f"training {run_dir.name} ({config.model.name}, {config.train.epochs} epochs)")
        train(config, run_dir, progress=progress)
        return "trained"
    saved = load_config(run_dir / runs.CONFIG).to_dict()
    wanted = config.to_dict()
    for d in (saved, wanted):  # which split to evaluate is not part of the weights
        d["data"].pop("eval_split", None)
    history = runs.read_history(run_dir)
    done = int(history[-1]["epoch"]) if history else 0
    stale = [k for k in _differences({s: saved[s] for s in RETRAIN_SECTIONS}, {s: wanted[s] for s in RETRAIN_SECTIONS})
             if k != "train.epochs" or done > config.train.epochs]
    if stale:
        raise ConfigError(f"{run_dir} was trained with other settings ({', '.join(stale[:6])}); delete it or bench "
                          "into another --out")
    status = "reused"
    if done < config.train.epochs:
        log(f"resuming {run_dir.name} at epoch {done + 1} of {config.train.epochs}")
        train(config, run_dir, resume=True, progress=progress)
        status = "resumed"
    elif _differences(saved, wanted):  # score or render settings changed: same weights, new config and threshold
        runs.write_config(config, run_dir)
        (run_dir / runs.CALIBRATION).unlink(missing_ok=True)
    return status


def _train_seconds(run_dir: Path) -> tuple[float | None, int | None]:
    history = runs.read_history(run_dir)
    if not history:
        return None, None
    return float(sum(h.get("seconds", 0.0) for h in history)), int(history[-1]["epoch"])


def _fresh(eval_dir: Path, run_dir: Path, record: dict[str, Any]) -> bool:
    """Whether ``eval_dir`` holds an evaluation of the current run, made with the same settings."""
    metrics, saved = eval_dir / "metrics.json", eval_dir / RECORD
    if not metrics.is_file() or not saved.is_file():
        return False
    newest = max((run_dir / n).stat().st_mtime for n in (runs.WEIGHTS, runs.CONFIG, runs.CALIBRATION)
                 if (run_dir / n).is_file())
    return metrics.stat().st_mtime >= newest and runs.read_json(saved) == record


def _row(name: str, config_path: str | Path, status: str, run_dir: Path, eval_rel: str,
         metrics: dict[str, Any]) -> dict[str, Any]:
    seconds, epochs = _train_seconds(run_dir)
    protocol = metrics.get("protocol", {})
    keep = ("frame_auroc_micro", "frame_auroc_macro", "n_videos_macro", "n_videos_macro_left_out",
            "frame_auroc_macro_padded", "n_videos_macro_padded", "pixel_auroc", "rbdc", "tbdc", "frame_ap", "eer",
            "detect_fps", "n_test_frames", "n_anomalous_frames")
    return {
        "name": name, "model": metrics.get("model"), "config": str(config_path), "status": status,
        **{k: metrics.get(k) for k in keep},
        "train_seconds": seconds, "epochs": epochs,
        "score_rule": protocol.get("score_rule"),
        "normalisation": str(protocol.get("normalisation", "")).split(":")[0] or None,
        "uses_test_statistics": protocol.get("normalisation_uses_test_statistics"),
        "smoothing_sigma": protocol.get("smoothing_sigma"),
        "eval_dir": eval_rel, "per_scene": metrics.get("per_scene"), "protocol": protocol,
    }


def _bench_one(name: str, path: str | Path, config: Config, data: str | Path, out: Path,
               eval_overrides: Sequence[str], regions: bool, progress: bool, device: str | None,
               log: Callable[[str], None], calibrate_runs: bool = True) -> dict[str, Any]:
    """Train or reuse, calibrate and evaluate one config; its table row."""
    run_dir, eval_dir = out / "runs" / name, out / "evals" / name
    t0 = time.perf_counter()
    status = _prepare_run(config, run_dir, progress=progress, log=log)
    needs = calibrate_runs or config.score.normalise == "calibrated"
    if needs and not (run_dir / runs.CALIBRATION).is_file():
        log(f"calibrating {name} on normal training frames")
        calibrate(run_dir, progress=progress, device=device)
    record = {"data": str(data), "eval_overrides": list(eval_overrides), "regions": regions}
    if _fresh(eval_dir, run_dir, record):
        metrics = runs.read_json(eval_dir / "metrics.json")
        log(f"{name}: evaluation reused ({eval_dir})")
    else:
        log(f"evaluating {name} on {data}")
        metrics = evaluate(run_dir, data, eval_dir, overrides=list(eval_overrides), progress=progress,
                           device=device, regions=regions, report=True, overwrite=True)  # stale: replaced
        write_json(record, eval_dir / RECORD)
    log(f"{name}: {status}, micro AUROC {metrics.get('frame_auroc_micro')}, {time.perf_counter() - t0:.0f} s")
    return _row(name, path, status, run_dir, f"evals/{name}", metrics)


def _pooled_row(name: str, path: str | Path, parts: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """One row for one model per scene: frame metrics of the scenes' test scores pooled (written to
    ``evals/<name>@per-scene/scores.csv``), training time summed, per-scene numbers kept."""
    from oddframe.render.report import read_scores

    rows, labels, scores = [], [], []
    for part in parts:
        table = read_scores(out / part["eval_dir"] / "scores.csv")
        if table is None:
            continue
        for video in dict.fromkeys(table.videos):
            keep = [i for i, v in enumerate(table.videos) if v == video]
            labels.append([int(table.labels[i]) for i in keep])
            scores.append([table.scores[i] for i in keep])
            rows += [{"video": video, "frame": table.frames[i], "score": table.scores[i],
                      "label": int(table.labels[i])} for i in keep]
    eval_rel = f"evals/{name}@per-scene"
    (out / eval_rel).mkdir(parents=True, exist_ok=True)
    write_scores_csv(rows, out / eval_rel / "scores.csv", ["video", "frame", "score", "label"])
    pooled = summarise(labels, scores)
    frames = [p.get("n_test_frames") or 0 for p in parts]
    speeds = [p.get("detect_fps") for p in parts]
    first = parts[0]
    return {
        **{k: first.get(k) for k in ("model", "score_rule", "normalisation", "uses_test_statistics",
                                     "smoothing_sigma", "epochs")},
        **pooled, "name": f"{name}@per-scene", "config": str(path), "status": ", ".join(sorted({p["status"] for p in parts})),
        "pixel_auroc": None, "rbdc": None, "tbdc": None,
        "train_seconds": sum(p.get("train_seconds") or 0.0 for p in parts),
        "detect_fps": sum(frames) / sum(f / s for f, s in zip(frames, speeds) if s) if all(speeds) else None,
        "eval_dir": eval_rel, "protocol": {**first.get("protocol", {}), "scenes": "one model per scene, pooled"},
        "per_scene": {p["name"].rsplit("@", 1)[1]: {k: p.get(k) for k in ("frame_auroc_micro", "frame_auroc_macro",
                      "frame_auroc_macro_padded", "rbdc", "tbdc")} for p in parts},
    }


def bench(
    configs: Sequence[str | Path],
    data: str | Path,
    out: str | Path,
    *,
    overrides: Sequence[str] = (),
    eval_overrides: Sequence[str] = (),
    regions: bool = True,
    per_scene: bool = False,
    calibrate_runs: bool = True,
    progress: bool = True,
    device: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> BenchResult:
    """Train (or reuse) every config on ``data``, evaluate each on its test split, and write the comparison.

    Args:
        configs: YAML configs, one model each (any registered model).
        data: the dataset folder; it becomes every config's ``data.path``.
        out: the bench folder (``runs/``, ``evals/``, the tables, plots and ``bench.html``); resumed if it exists.
        overrides: ``--set`` overrides applied to every config before training (e.g. ``train.epochs=2``).
        eval_overrides: overrides for evaluation only (``score.*``, ``data.eval_split``, ``data.scenes``).
        regions: compute RBDC/TBDC (costly on long test sets).
        calibrate_runs: set each run's alarm threshold on its normal training frames (scores every training
            frame once); False skips it where the scores do not need it (AUROC, AP, EER and RBDC/TBDC need no
            threshold; runs normalised with ``calibrated`` are calibrated anyway).
        per_scene: one model per scene (datasets with scenes): each config is trained and evaluated once per
            scene (``<name>@<scene>``), and its row pools the scenes' test scores (frame metrics; RBDC/TBDC are
            per scene only).
        progress: progress bars.
        device: where models run (default: the best present).
        log: called with one line per step (the CLI prints them).

    Returns:
        The rows of the table (one per config, in order) and the paths of the page and the Markdown table.

    Raises:
        ConfigError: no config, a config that does not load, or a run trained with other settings.
    """
    from oddframe.render.bench import write_page, write_tables

    if not configs:
        raise ConfigError("bench needs at least one config")
    out = Path(out)
    loaded = [load_config(c, [f"data.path={data}", *overrides]) for c in configs]  # fail early, before training
    scenes = load_dataset(data).scenes if per_scene else []
    if per_scene and not scenes:
        raise ConfigError(f"--per-scene: {data} has no scenes (only ShanghaiTech and UBnormal do)")
    result = BenchResult(out)
    for name, path, config in zip(run_names(configs), configs, loaded):
        if not per_scene:
            result.rows.append(_bench_one(name, path, config, data, out, eval_overrides, regions, progress, device, log,
                                          calibrate_runs))
            continue
        parts = []
        for scene in scenes:
            one = load_config(path, [f"data.path={data}", *overrides, f"data.scenes=['{scene}']"])
            parts.append(_bench_one(f"{name}@{scene}", path, one, data, out, eval_overrides, regions, progress,
                                    device, log, calibrate_runs))
        result.rows.append(_pooled_row(name, path, parts, out))
    machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
               f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")
    intro = [f"Dataset: {data} ({len(result.rows)} models). Machine: {machine}.",
             "Frame AUROC needs no threshold; nothing was tuned on the test labels here. 'AUROC macro (2-class "
             "videos)' leaves videos with one class out; 'macro padded' is the literature's (every video padded "
             "with a normal and an anomalous dummy frame). 'uses test statistics' = the scores were normalised "
             "per test video with that video's own scores."]
    write_json({"data": str(data), "machine": machine, "configs": [str(c) for c in configs],
                "overrides": list(overrides), "eval_overrides": list(eval_overrides), "rows": result.rows},
               out / "bench.json")
    result.table, _ = write_tables(result.rows, out, header=f"Benchmark on {data} ({machine})")
    result.page = write_page(result.rows, out, title=f"oddframe bench: {Path(str(data)).name}", intro=intro)
    return result
