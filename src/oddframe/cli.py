"""The ``oddframe`` command line: one subcommand per user task.

Each command parses its arguments, loads the config and calls the library; there is no logic here. Errors
oddframe raises on purpose (:class:`~oddframe.errors.OddframeError`) are printed as one clear line and exit with
status 2, never as a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
import warnings
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from oddframe.errors import Interrupted, OddframeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find what is unusual in video and image sequences without labelled anomalies.",
)
# soft_wrap: messages are never cut into lines (a path or an --set value must stay whole); tables still fit the width.
console = Console(stderr=True, soft_wrap=True)
out_console = Console(soft_wrap=True)

SET_HELP = "Override a config value, e.g. --set train.epochs=5 (repeatable)."


def _friendly(fn: Callable) -> Callable:
    """Turn oddframe errors and bad values into one readable line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:  # stopped by a signal after saving: say what was written, exit 128 + signal
            console.print(f"stopped: {exc}", style="bold yellow", markup=False, highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            console.print("interrupted", style="bold yellow", markup=False, highlight=False)
            raise typer.Exit(130) from None
        except OddframeError as exc:
            console.print(f"error: {exc}", style="bold red", markup=False, highlight=False)
            raise typer.Exit(2) from None
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"error: {exc}", style="bold red", markup=False, highlight=False)
            raise typer.Exit(2) from None
        finally:
            warnings.showwarning = previous

    return wrapper


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one readable line ("warning: ..."), not Python's file:line and source echo."""
    console.print(f"warning: {message}", style="yellow", markup=False, highlight=False)


def _metrics_table(metrics: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, (dict, list)):
            continue
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


@app.command()
@_friendly
def synth(
    out: Path = typer.Argument(..., help="Folder to write the dataset to (generic layout)."),
    anomaly: str = typer.Option("zeroed", help="Kind of test anomaly: zeroed, object, jump, appearance, frozen."),
    n_train: int = typer.Option(64, help="Normal training sequences."),
    n_test: int = typer.Option(16, help="Test sequences."),
    length: int = typer.Option(4, help="Frames per sequence."),
    size: int = typer.Option(64, help="Frame size in pixels (square)."),
    seed: int = typer.Option(0, help="Random seed (same seed, same data)."),
    anomaly_fraction: float = typer.Option(1.0, help="Share of test sequences that contain an anomaly."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty OUT."),
) -> None:
    """Write synthetic sequences with known anomalies (frame labels and pixel masks) in the generic layout."""
    from oddframe.data.synthetic import write_synthetic_dataset

    summary = write_synthetic_dataset(
        out, n_train=n_train, n_test=n_test, length=length, size=size, anomaly=anomaly, seed=seed,
        anomaly_fraction=anomaly_fraction, overwrite=overwrite,
    )
    out_console.print(f"wrote {out}")
    out_console.print_json(json.dumps(summary, default=str))


@app.command()
@_friendly
def inspect(
    path: Path = typer.Argument(..., help="A dataset folder, a video, an image folder, FITS files or an array."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    quick: bool = typer.Option(False, "--quick", help="Do not decode every frame (no frame checks, no short videos)."),
) -> None:
    """Show what oddframe reads at PATH: layout or source type, videos, frames, labels, masks, problems.

    Every frame is decoded to find blank, constant, all-NaN and duplicated frames and videos shorter than their
    header says; --quick skips that.
    """
    from oddframe.data.inspect import format_inspect, inspect_path

    info = inspect_path(path, decode=not quick, progress=True)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
    else:
        out_console.print(format_inspect(info))


@app.command()
@_friendly
def models() -> None:
    """List the registered models with a one-line description and their parameters."""
    import inspect as _inspect

    from oddframe.registry import describe, list_models, model_params

    table = Table(title="oddframe models")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("parameters (defaults)")
    for name in list_models():
        params = ", ".join(
            f"{k}={v!r}" if v is not _inspect.Parameter.empty else k for k, v in model_params(name).items()
        )
        table.add_row(name, describe(name), params)
    out_console.print(table)


@app.command()
@_friendly
def train(
    config: Optional[Path] = typer.Argument(None, help="YAML config (data, model, train, score, render); default: built-in defaults."),
    out: Path = typer.Option(..., "--out", help="Run folder to write."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last completed epoch."),
    devices: Optional[int] = typer.Option(None, help="Devices (GPUs) to train on (Fabric DDP when > 1)."),
    num_nodes: Optional[int] = typer.Option(None, help="Nodes to train on."),
    precision: Optional[str] = typer.Option(None, help="Fabric precision, e.g. 32-true, bf16-mixed, 16-mixed."),
    calibrate_after: bool = typer.Option(True, "--calibrate/--no-calibrate", help="Set the threshold after training."),
) -> None:
    """Train a model on normal footage."""
    from oddframe import api

    overrides = list(set_ or [])
    overrides += [f"train.{k}={v}" for k, v in (("devices", devices), ("num_nodes", num_nodes), ("precision", precision)) if v]
    if resume and config is None and (out / "config.yaml").is_file():
        config = out / "config.yaml"  # resuming: the run's own config, not the built-in defaults
    cfg = api.load_config(config, overrides)
    result = api.train(cfg, out, resume=resume)
    if result.already_finished:
        out_console.print(
            f"{out} already finished all {result.epochs} epochs (final loss {result.final_loss:.5g}); nothing to "
            "resume (to train longer, start a new run with a larger train.epochs)"
        )
        if (out / "calibration.json").is_file() or not calibrate_after:
            return
    elif result.fitted_only:
        out_console.print(
            f"fitted {cfg.model.name} on the normal training footage in {result.seconds:.1f} s "
            f"({result.train_frames_per_second:.0f} frames/s); run in {out}"
        )
    else:
        resumed = (f" (epochs {result.first_epoch + 1}-{result.epochs} of {result.epochs}, resumed after epoch "
                   f"{result.first_epoch})" if result.first_epoch else "")
        out_console.print(
            f"trained {cfg.model.name} for {result.epochs_run} epoch(s){resumed} in {result.seconds:.1f} s "
            f"({result.train_frames_per_second:.0f} frames/s), final loss {result.final_loss:.5g}; run in {out}"
        )
    if calibrate_after:
        cal = api.calibrate(out)
        out_console.print(
            f"threshold {cal['threshold']:.5g} ({cal['method']}); false-positive rate on held-out normal frames "
            f"{cal['heldout_fpr']:.3f}"
        )


@app.command()
@_friendly
def fuse(
    members: List[Path] = typer.Argument(..., metavar="RUN...", help="Trained run folders to combine."),
    out: Path = typer.Option(..., "--out", help="Fused run folder to write."),
    rule: str = typer.Option("sum", help="sum, max or weighted (of the members' calibrated scores and maps)."),
    weights: Optional[str] = typer.Option(None, help="Comma-separated member weights for --rule weighted."),
    data: Optional[Path] = typer.Option(None, help="Normal footage to calibrate members on (default: the first's)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    calibrate_after: bool = typer.Option(True, "--calibrate/--no-calibrate", help="Set the threshold after fusing."),
) -> None:
    """Combine trained runs into one fused run (each member calibrated on normal training frames)."""
    from oddframe import api

    w = [float(x) for x in weights.split(",")] if weights else None
    result = api.fuse([str(m) for m in members], out, rule=rule, weights=w, data=None if data is None else str(data),
                      overrides=list(set_ or []))
    out_console.print(f"fused {len(members)} runs ({rule}) in {result.seconds:.1f} s; run in {out}")
    if calibrate_after:
        cal = api.calibrate(out)
        out_console.print(
            f"threshold {cal['threshold']:.5g} ({cal['method']}); false-positive rate on held-out normal frames "
            f"{cal['heldout_fpr']:.3f}"
        )


@app.command()
@_friendly
def calibrate(
    run: Path = typer.Argument(..., help="Run folder."),
    data: Optional[Path] = typer.Option(None, help="Normal data (default: the run's data.path)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Set the alarm threshold of a run from scores of normal frames."""
    from oddframe import api

    cal = api.calibrate(run, data=data, overrides=list(set_ or []))
    out_console.print_json(json.dumps(cal))


@app.command()
@_friendly
def detect(
    inputs: List[str] = typer.Argument(..., metavar="INPUT...", help="Any source or dataset oddframe reads; several "
                                       "(paths, a folder of videos, a quoted glob, a .txt list) score each into OUT/<name>/."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run folder of a trained model."),
    out: Path = typer.Option(..., "--out", help="Folder for scores.csv (and maps)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    maps: bool = typer.Option(False, "--maps", help="Also write the anomaly maps (maps/<video>.npy)."),
    video: Optional[Path] = typer.Option(None, "--video", help="Write an MP4: frame | anomaly heatmap with boxes."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, mps (default: the best present)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the detection already in --out (and --video)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted detection in --out (same arguments)."),
    start_frame: int = typer.Option(0, "--start-frame", min=0, help="First frame of each input video scored."),
    stop_frame: Optional[int] = typer.Option(None, "--stop-frame", min=1, help="Frame where scoring stops (exclusive)."),
    backend: str = typer.Option("torch", help="torch, or an exported model (oddframe export first): onnxruntime, "
                                "openvino, onnxruntime-int8, openvino-int8."),
    workers: int = typer.Option(1, help="Several inputs: worker processes scoring them in parallel."),
    threads: Optional[int] = typer.Option(None, help="Several inputs: torch threads per worker (default: cores / workers)."),
    cluster: Optional[str] = typer.Option(None, help="Several inputs: a Dask scheduler address (tcp://host:8786), or "
                                          "auto for a local cluster of --workers processes (pip install 'oddframe[cluster]')."),
) -> None:
    """Score every frame (and pixel) of new footage with a trained model."""
    from oddframe import api
    from oddframe.pipeline.archive import is_many

    if is_many(inputs):
        if start_frame or stop_frame is not None:
            raise ValueError("--start-frame/--stop-frame choose frames of one input: give one input")
        if video is not None:
            raise ValueError("--video writes one MP4: give one input, or detect several without --video")
        _detect_many(api.detect_many(checkpoint, inputs, out, overrides=list(set_ or []), maps=maps, backend=backend,
                                     workers=workers, threads=threads, cluster=cluster, overwrite=overwrite))
        return
    if workers > 1 or cluster:
        raise ValueError("--workers and --cluster score several inputs in parallel; give several inputs, a folder of "
                         "videos, a quoted glob or a .txt list (one input runs as one detection)")
    s = api.detect(checkpoint, inputs[0], out, overrides=list(set_ or []), maps=maps, video=video, device=device,
                   overwrite=overwrite, resume=resume, backend=backend, start_frame=start_frame,
                   stop_frame=stop_frame)
    t = s.timing
    stages = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f}" for k, v in t.items()
                       if k.endswith("_s") and k not in ("wall_s", "render_s", "encode_s"))
    resumed = f" (continuing after frame {s.resumed_after})" if s.resumed_after else ""
    flagged = f"; {s.n_flagged} flagged" if s.threshold is not None else ""
    invalid = f"; {s.n_invalid} without a score (too few valid pixels)" if s.n_invalid else ""
    out_console.print(f"scored {s.n_frames} frames of {s.n_videos} video(s){resumed} at {t['fps']:.1f} frames/s"
                      f"{flagged}{invalid}", highlight=False)
    line = f"time {t['wall_s']:.1f} s = {stages} s"
    if "render_s" in t:
        line += f"; in the video writer's thread, in parallel: render {t['render_s']:.1f} s, encode {t['encode_s']:.1f} s"
    out_console.print(line, highlight=False)
    out_console.print("written: " + ", ".join(str(p) for p in s.files), highlight=False)


@app.command()
@_friendly
def watch(
    source: str = typer.Argument(..., help="rtsp://, http(s)://, udp://, tcp:// stream, /dev/videoN, a named pipe, - (stdin) or a file."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run folder of a trained, calibrated model."),
    events: Optional[Path] = typer.Option(None, "--events", help="Append event JSON lines here (default: standard output)."),
    webhook: Optional[str] = typer.Option(None, "--webhook", help="POST each event as JSON to this URL (retried; never stops the watch)."),
    clips: Optional[Path] = typer.Option(None, "--clips", help="Folder for an annotated MP4 of each event."),
    scores: Optional[Path] = typer.Option(None, "--scores", help="Rolling CSV of every scored frame (with its latency)."),
    realtime: bool = typer.Option(False, "--realtime", help="Play a file at its own frame rate (as a live source)."),
    loop: bool = typer.Option(False, "--loop", help="Start a file again at its end."),
    max_latency: float = typer.Option(1.0, "--max-latency", help="Seconds a frame may wait for the model before it is dropped."),
    min_frames: int = typer.Option(3, "--min-frames", help="Consecutive frames above the threshold that start an event."),
    quiet: float = typer.Option(2.0, "--quiet", help="Seconds below the threshold that end an event."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Event threshold on final scores (default: the calibrated one)."),
    end_threshold: Optional[float] = typer.Option(None, "--end-threshold", help="Lower level an event must stay above (default: --threshold)."),
    clip_before: float = typer.Option(3.0, "--clip-before", help="Seconds of video before each event in its clip."),
    clip_after: float = typer.Option(3.0, "--clip-after", help="Seconds of video after each event in its clip."),
    input_format: Optional[str] = typer.Option(None, "--format", help="FFmpeg input format to force (mpegts, v4l2, ...)."),
    input_option: Optional[List[str]] = typer.Option(None, "--input-option", help="FFmpeg input option KEY=VALUE, e.g. rtsp_transport=tcp (repeatable)."),
    retry_for: Optional[float] = typer.Option(None, "--retry-for", help="Give up on a lost stream after this many seconds (default: never)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Stop after this many seconds."),
    view: Optional[int] = typer.Option(None, "--view", help="Serve a live view (stream and events) on http://127.0.0.1:PORT/ (0: any free port)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, mps (default: the best present)."),
    backend: str = typer.Option("torch", help="torch, or an exported model (oddframe export first): onnxruntime, "
                                "openvino, onnxruntime-int8, openvino-int8; a faster model scores each window sooner."),
) -> None:
    """Watch a live source: score frames as they arrive and report anomaly events (start, end, peak, boxes)."""
    from oddframe import api

    options = {}
    for item in input_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--input-option takes KEY=VALUE, got {item!r}")
        options[key] = value
    log = lambda line: console.print(line, markup=False, highlight=False)  # noqa: E731
    s = api.watch(checkpoint, source, events=events, webhook=webhook, clips=clips, scores=scores, realtime=realtime,
                  loop=loop, max_latency=max_latency, min_frames=min_frames, quiet=quiet, threshold=threshold,
                  end_threshold=end_threshold, clip_before=clip_before, clip_after=clip_after,
                  input_format=input_format, input_options=options, retry_for=retry_for, duration=duration,
                  view=view, overrides=list(set_ or []), device=device, backend=backend, log=log)
    lat = s.latency
    line = (f"watched {s.source} for {s.wall_s:.1f} s ({s.stopped_by}): {s.received} frames arrived, {s.scored} scored, "
            f"{s.dropped_late + s.dropped_queue} dropped ({s.dropped_late} late, {s.dropped_queue} queue full); "
            f"{s.events} event(s), {len(s.gaps)} gap(s)")
    if lat:
        line += (f"; latency arrival -> score p50 {lat['p50'] * 1000:.0f} ms, p95 {lat['p95'] * 1000:.0f} ms, "
                 f"max {lat['max'] * 1000:.0f} ms (model's raw score: p95 {lat['model_p95'] * 1000:.0f} ms)")
    if s.webhook:
        line += f"; webhook sent {s.webhook['sent']}, failed {s.webhook['failed']}"
    console.print(line, markup=False, highlight=False)
    if s.clips:
        console.print(f"clips: {len(s.clips)} in {s.clips[0].parent}", markup=False, highlight=False)


def _detect_many(s) -> None:
    from rich.table import Table

    table = Table(title=f"{len(s.rows)} inputs in {s.seconds:.1f} s")
    for col in ("inputs", "scored", "skipped (complete)", "errors", "not finished", "frames", "flagged"):
        table.add_column(col, justify="right")
    unfinished = s.count("interrupted") + s.count("not started")
    table.add_row(str(len(s.rows)), str(s.count("done")), str(s.count("skipped")), str(len(s.errors)),
                  str(unfinished), str(s.frames), str(s.flagged))
    out_console.print(table)
    for r in s.errors:
        out_console.print(f"error: {r['input']}: {r['error']}", style="red", markup=False, highlight=False)
    out_console.print("written: " + ", ".join(str(p) for p in s.files) + f" and one folder per input in {s.out}",
                      highlight=False)
    if s.errors:
        raise typer.Exit(1)


@app.command()
@_friendly
def export(
    run: Path = typer.Argument(..., help="Run folder of a trained model."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx: read by ONNX Runtime and OpenVINO)."),
    int8: bool = typer.Option(False, "--int8", help="Also write model.int8.onnx, quantised on normal clips."),
    data: Optional[Path] = typer.Option(None, help="Normal footage for calibration and checks (default: the run's data.path)."),
    calibration_clips: int = typer.Option(64, help="Normal clips that set the int8 activation ranges."),
) -> None:
    """Export a trained model for fast CPU inference (needs pip install 'oddframe[onnx]'); detect --backend uses it."""
    from oddframe import api

    s = api.export(run, fmt=fmt, int8=int8, data=data, calibration_clips=calibration_clips)
    out_console.print(f"wrote {', '.join(str(f) for f in s.files)} in {s.seconds:.1f} s; agreement with PyTorch:")
    for name, r in s.agreement.items():
        verdict = "ok" if r["within_tolerance"] else "BEYOND TOLERANCE: prefer another backend"
        out_console.print(f"  --backend {name}: max map difference {r['max_map_diff']:.2e}, frame scores within "
                          f"{100 * r['max_score_diff_rel']:.2f} % of their range (corr {r['score_corr']:.5f}) {verdict}",
                          highlight=False)


@app.command(name="eval")
@_friendly
def eval_(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run folder of a trained model."),
    data: Path = typer.Option(..., "--data", help="Labelled dataset; its test split is scored."),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json, scores.csv, plots and report.html."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    video: bool = typer.Option(False, "--video", help="Also write anomaly.mp4 of the test videos."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, mps (default: the best present)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the evaluation already in --out."),
) -> None:
    """Measure a trained model against ground truth (frame AUROC micro/macro, AP, EER, pixel AUROC)."""
    from oddframe import api

    metrics = api.evaluate(checkpoint, data, out, overrides=list(set_ or []), video=video, device=device,
                           overwrite=overwrite)
    if as_json:
        sys.stdout.write(json.dumps(metrics, indent=2, default=str) + "\n")
    else:
        out_console.print(_metrics_table(metrics, f"evaluation of {checkpoint}"))
        out_console.print(f"report: {out / 'report.html'}")


@app.command()
@_friendly
def bench(
    configs: List[Path] = typer.Argument(..., help="Configs to compare, one model each (e.g. configs/ped2_*.yaml)."),
    data: Path = typer.Option(..., "--data", help="Dataset: its training split trains every model, its test split evaluates."),
    out: Path = typer.Option(..., "--out", help="Bench folder (runs/, evals/, bench.md, bench.csv, bench.html); resumed."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP + " Applies to every config."),
    eval_set: Optional[List[str]] = typer.Option(None, "--eval-set", help="Override for evaluation only, e.g. score.rule=l1."),
    regions: bool = typer.Option(True, "--regions/--no-regions", help="Compute RBDC/TBDC (costly on long test sets)."),
    per_scene: bool = typer.Option(False, "--per-scene", help="One model per scene (ShanghaiTech, UBnormal), pooled."),
    calibrate_runs: bool = typer.Option(True, "--calibrate/--no-calibrate", help="Set each run's alarm threshold (scores every training frame)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, mps (default: the best present)."),
) -> None:
    """Train (or reuse) several configs on one dataset and compare them: table, ROC, score curves, HTML page."""
    from oddframe import api

    result = api.bench(configs, data, out, overrides=list(set_ or []), eval_overrides=list(eval_set or []),
                       regions=regions, per_scene=per_scene, calibrate_runs=calibrate_runs, device=device, log=lambda line: console.print(line, markup=False, highlight=False))
    table = Table(title=f"bench on {data}")
    for col in ("run", "AUROC micro", "macro", "macro padded", "pixel", "RBDC", "TBDC", "train s", "detect fps"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in result.rows:
        cells = [r.get(k) for k in ("frame_auroc_micro", "frame_auroc_macro", "frame_auroc_macro_padded",
                                    "pixel_auroc", "rbdc", "tbdc", "train_seconds", "detect_fps")]
        table.add_row(r["name"], *("-" if v is None else f"{v:.4f}" if v < 10 else f"{v:.1f}" for v in cells))
    out_console.print(table)
    out_console.print(f"table: {result.table}; page: {result.page}")


@app.command()
@_friendly
def report(folder: Path = typer.Argument(..., help="An evaluation folder (from oddframe eval or the demo).")) -> None:
    """Write (or rewrite) the offline HTML report of an evaluation folder."""
    from oddframe.render.report import write_report

    out_console.print(f"report: {write_report(folder)}")


@app.command()
@_friendly
def demo(
    out: Path = typer.Option(Path("oddframe-demo"), "--out", help="Folder for the demo's data, run and report."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (default: the demo config's)."),
    n_train: Optional[int] = typer.Option(None, help="Synthetic training sequences."),
    n_test: Optional[int] = typer.Option(None, help="Synthetic test sequences."),
) -> None:
    """Train conv3d_ae on synthetic sequences, find the corrupted frames, and write a report."""
    from oddframe.demo import run_demo

    result = run_demo(out, epochs=epochs, n_train=n_train, n_test=n_test)
    out_console.print(_metrics_table(result["metrics"], "demo: synthetic sequences, 3rd frame zeroed"))
    out_console.print(f"[bold green]report:[/] {result['report']}")


@app.command()
@_friendly
def prep(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="Video, frames, FITS, tar, array or dataset."),
    out: Path = typer.Option(..., "--out", help="Prepared folder to write (resumed if it holds an earlier prep)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config; its data section sets size, clips."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    movie_only: bool = typer.Option(False, "--movie-only", help="Write only movie.mp4 of the raw input."),
    exposure: bool = typer.Option(True, "--exposure/--no-exposure", help="Divide FITS images by EXPTIME."),
    max_invalid: float = typer.Option(0.5, help="Skip frames with a larger share of invalid (NaN) pixels."),
    movie_fps: float = typer.Option(10.0, help="Frame rate of movie.mp4."),
) -> None:
    """Turn raw input into clips ready for training (with index.csv, prep.json) and a movie of it."""
    from oddframe.config import load_config
    from oddframe.curation.inputs import is_fits_input
    from oddframe.curation.prep import format_summary, options_from_config, prepare

    cfg = load_config(config, list(set_ or []))
    options = options_from_config(cfg.data, fits=is_fits_input(input_path), normalise_exposure=exposure,
                                  max_invalid_fraction=max_invalid, movie_fps=movie_fps)
    result = prepare(input_path, out, options=options, movie_only=movie_only, config={"data": cfg.to_dict()["data"]})
    out_console.print(format_summary(result.summary), markup=False, highlight=False)
    out_console.print(f"prepared folder: {out}" if not movie_only else f"movie: {result.movie}")


@app.command()
@_friendly
def review(
    folder: Path = typer.Argument(..., metavar="DIR", help="A folder written by oddframe prep."),
    limit: float = typer.Option(3.5, help="Set aside clips whose |robust z| exceeds this on any statistic."),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Clip ids to leave out (a,b or repeat)."),
    include: Optional[List[str]] = typer.Option(None, "--include", help="Clip ids to train on anyway (a,b or repeat)."),
    forget: Optional[List[str]] = typer.Option(None, "--forget", help="Clip ids whose manual decision is dropped."),
    sheets: bool = typer.Option(False, "--sheets", help="Write contact sheets (sheets/sheet_NNN.png)."),
    sheet_rows: int = typer.Option(12, help="Clips per contact sheet."),
) -> None:
    """Set unusual clips aside (robust z-scores of intensity statistics) and record manual decisions."""
    from oddframe.curation.review import review as run_review

    def ids(values: Optional[List[str]]) -> list[str]:
        return [i.strip() for v in values or [] for i in v.split(",") if i.strip()]

    result = run_review(folder, limit=limit, exclude=ids(exclude), include=ids(include), forget=ids(forget),
                        sheets=sheets, sheet_rows=sheet_rows)
    headline = f"{len(result.set_aside)} of {result.n_clips} clips set aside"
    if result.set_aside:
        table = Table(title=headline)
        table.add_column("clip")
        table.add_column("reason")
        for clip, reason in result.set_aside:
            table.add_row(clip, reason)
        out_console.print(table)
    else:
        out_console.print(headline)
    out_console.print(f"review: {folder / 'review.csv'}; decisions: {folder / 'decisions.json'}")
    if result.sheets:
        out_console.print(f"contact sheets: {len(result.sheets)} in {result.sheets[0].parent}")


@app.command(name="fetch-sdo")
@_friendly
def fetch_sdo(
    out: Path = typer.Option(..., "--out", help="Folder to download FITS files into."),
    start: str = typer.Option(..., help="Start time, ISO 8601 UTC, e.g. 2024-05-10T00:00:00."),
    end: str = typer.Option(..., help="End time, ISO 8601 UTC."),
    instrument: str = typer.Option("aia", help="Instrument (aia)."),
    wavelength: int = typer.Option(171, help="Wavelength in Angstrom, e.g. 171."),
    cadence: float = typer.Option(60.0, help="Seconds between images."),
    max_conn: int = typer.Option(4, help="Parallel downloads."),
) -> None:
    # "\\[" keeps Rich (Typer's help renderer) from reading "[sdo]" as a markup tag and dropping it.
    """Download SDO images through SunPy's Fido (needs: pip install 'oddframe\\[sdo]')."""
    from oddframe.curation.fetch import fetch_sdo as run_fetch

    result = run_fetch(out, instrument=instrument, wavelength=wavelength, start=start, end=end, cadence=cadence,
                       max_conn=max_conn)
    out_console.print(f"found {result.found} records; {len(result.files)} files in {out}")
    for line in result.errors:
        console.print(f"failed: {line}", markup=False, highlight=False)
    if result.errors:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
