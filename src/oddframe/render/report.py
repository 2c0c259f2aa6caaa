"""The HTML run report: one self-contained page beside an evaluation's outputs.

``write_report(folder)`` reads what the evaluator wrote into ``folder`` (``metrics.json``, ``scores.csv``,
``config.yaml``, ``history.csv``, ``top/top.json`` with its PNGs, ``anomaly.mp4``), draws the plots that are
missing (``loss.png``, ``roc.png``, ``scores.png``: a panel per video, or all videos end to end when there are many) and writes
``report.html``. The page works offline and when the folder is moved: inline CSS, no scripts, no fonts,
images and video linked by relative paths. Every piece is optional; a run without labels simply has no ROC.
"""

from __future__ import annotations

import csv
import html
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import oddframe
from oddframe.errors import CheckpointError
from oddframe.files import atomic_write
from oddframe.render.plots import plot_loss, plot_region_curve, plot_roc, plot_scores

REPORT = "report.html"
LOSS_PNG = "loss.png"
ROC_PNG = "roc.png"
VIDEO = "anomaly.mp4"

# Human names of the evaluator's metrics, in the order the table shows them; other keys follow as they come.
METRIC_LABELS = {
    "frame_auroc_micro": "Frame AUROC, micro (all test frames pooled)",
    "frame_auroc_macro": "Frame AUROC, macro (mean over videos with both classes)",
    "n_videos_macro": "Videos in the macro average",
    "n_videos_macro_left_out": "Videos left out of it (one class only)",
    "frame_auroc_macro_padded": "Frame AUROC, macro padded (literature: each video + a normal and an anomalous dummy frame)",
    "n_videos_macro_padded": "Videos in the padded macro average",
    "frame_ap": "Frame average precision",
    "eer": "Equal error rate",
    "pixel_auroc": "Pixel AUROC",
    "rbdc": "RBDC (region-based detection criterion)",
    "tbdc": "TBDC (track-based detection criterion)",
    "n_gt_regions": "Ground-truth regions",
    "n_gt_tracks": "Ground-truth tracks",
    "n_test_frames": "Test frames",
    "n_anomalous_frames": "Anomalous test frames",
    "threshold": "Decision threshold",
    "detect_fps": "Detection speed (frames/s)",
    "model": "Model",
    "checkpoint": "Checkpoint",
    "data": "Data",
}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1rem 2rem;
color:#1d2228;background:#fbfbfc;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;border-bottom:1px solid #d8dce1;padding-bottom:.2rem;
margin-top:2rem}.sub{color:#5b6570;margin-top:0}nav a{margin-right:1rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #d8dce1;padding:.3rem .7rem;text-align:left;
vertical-align:top}th{background:#eef1f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:.85em;color:#5b6570}figure{margin:1rem 0}figcaption{color:#5b6570;font-size:.9rem}
img,video{max-width:100%;height:auto;border:1px solid #d8dce1;background:#000}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:1rem}
pre{background:#f1f3f5;padding:.8rem;overflow:auto;font-size:.85rem}.note{color:#8a5a00}
"""


@dataclass
class Scores:
    """Columns of scores.csv; ``labels`` holds NaN where unknown."""

    videos: list[str] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    flagged: list[int | None] = field(default_factory=list)
    members: dict[str, list[float]] = field(default_factory=dict)  #: a fused run's ``member:<name>`` columns


def _read_metrics(path: Path) -> dict[str, Any] | None:
    """metrics.json as a dict, ``None`` when absent."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object of metric names to values, got {type(data).__name__}")
    return data


def read_scores(path: Path) -> Scores | None:
    """scores.csv (columns video, frame, score, and optional label, flagged), ``None`` when absent."""
    if not path.is_file():
        return None
    out = Scores()
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"video", "frame", "score"} - set(reader.fieldnames or [])
        if missing:
            raise CheckpointError(f"{path}: missing column(s) {sorted(missing)}; it has {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                label, flag = (row.get("label") or "").strip(), (row.get("flagged") or "").strip()
                out.frames.append(int(row["frame"]))
                out.scores.append(float(row["score"]))
                out.labels.append(float(label) if label else math.nan)
                out.flagged.append(int(flag) if flag else None)
                for key in reader.fieldnames or []:
                    if key.startswith("member:"):
                        out.members.setdefault(key.removeprefix("member:"), []).append(float(row[key] or "nan"))
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{path}, line {line}: bad value ({e}) in {row}") from e
            out.videos.append(row["video"])
    return out


def _read_history(path: Path) -> list[dict[str, str]] | None:
    """history.csv rows, ``None`` when absent or empty."""
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return rows or None


def _read_top(folder: Path) -> list[dict[str, Any]]:
    """Entries of top/top.json whose image exists; a plain file name is required (no paths out of ``top/``)."""
    path = folder / "top" / "top.json"
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CheckpointError(f"{path}: expected a list of {{video, frame, score, image}} objects")
    keep = []
    for e in entries:
        image = str(e.get("image", ""))
        if image and Path(image).name == image and (folder / "top" / image).is_file():
            keep.append(e)
    return keep


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def href(relative: str) -> str:
    """An escaped, percent-encoded relative link (video names may hold spaces, '#' or '&')."""
    return esc(quote(relative))


def _fmt(v: Any) -> str:
    """Escaped display text of a metric value."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return esc(v)
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4f}"
    if isinstance(v, dict):
        return "<br>".join(f"<code>{esc(k)}</code> {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return esc(v)


SECTIONS = ("protocol", "per_scene")  # shown as their own tables, not as rows of the metrics table


def _protocol_html(metrics: dict[str, Any]) -> str:
    """The protocol table and the per-scene table of metrics.json (empty when absent)."""
    parts = []
    if isinstance(metrics.get("protocol"), dict):
        rows = "\n".join(f"<tr><th><code>{esc(k)}</code></th><td>{_fmt(v)}</td></tr>"
                         for k, v in metrics["protocol"].items())
        parts.append(f'<h3>Protocol</h3>\n<table id="protocol">\n{rows}\n</table>')
    scenes = metrics.get("per_scene")
    if isinstance(scenes, dict) and scenes:
        cols = ["n_videos", "n_test_frames", "frame_auroc_micro", "frame_auroc_macro", "frame_auroc_macro_padded",
                "frame_ap", "eer"]
        head = "".join(f"<th>{esc(c)}</th>" for c in ["scene"] + cols)
        body = "\n".join("<tr><th>" + esc(name) + "</th>" + "".join(
            f'<td class="num">{_fmt(vals.get(c))}</td>' for c in cols) + "</tr>" for name, vals in scenes.items())
        parts.append(f'<h3>Per scene</h3>\n<table id="per-scene">\n<tr>{head}</tr>\n{body}\n</table>')
    return "\n".join(parts)


def _metrics_html(metrics: dict[str, Any]) -> str:
    shown = [k for k in metrics if k not in SECTIONS]
    keys = [k for k in METRIC_LABELS if k in shown] + [k for k in shown if k not in METRIC_LABELS]
    rows = []
    for k in keys:
        v = metrics[k]
        cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
        rows.append(f"<tr><th>{esc(METRIC_LABELS.get(k, k))} <code>{esc(k)}</code></th><td{cls}>{_fmt(v)}</td></tr>")
    return '<table id="metrics">\n<tr><th>Metric</th><th>Value</th></tr>\n' + "\n".join(rows) + "\n</table>"


def figure_html(src: str, caption: str) -> str:
    return (f'<figure><a href="{href(src)}"><img src="{href(src)}" alt="{esc(caption)}" loading="lazy"></a>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


SCORES_PNG = "scores.png"
MAX_SCORE_PANELS = 12  # beyond this many videos the score plot shows them end to end in one panel


REGIONS_CSV, REGIONS_PNG = "regions.csv", "regions.png"


def _region_plot(folder: Path, metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The RBDC/TBDC curves from ``regions.csv`` (drawn when missing); empty without the file."""
    if not (folder / REGIONS_PNG).is_file() and (folder / REGIONS_CSV).is_file():
        with (folder / REGIONS_CSV).open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return []
        cols = {k: [float(r[k]) for r in rows] for k in ("fpr", "rbdr", "tbdr")}
        area = {k: v if isinstance(v := metrics.get(k), (int, float)) else None for k in ("rbdc", "tbdc")}
        plot_region_curve(cols["fpr"], cols["rbdr"], cols["tbdr"], folder / REGIONS_PNG, **area)
    if not (folder / REGIONS_PNG).is_file():
        return []
    return [(REGIONS_PNG, "Region- and track-based detection rates against false-positive regions per frame, one "
                          "point per map level; RBDC and TBDC are the areas for FPR from 0 to 1.")]


def _make_plots(folder: Path, scores: Scores | None, history: list[dict] | None, metrics: dict[str, Any],
                notes: list[str]) -> list[tuple[str, str]]:
    """Draw the missing plots; return ``(file name, caption)`` of every plot present, in page order."""
    figures: list[tuple[str, str]] = []
    if not (folder / LOSS_PNG).is_file() and history:
        try:
            plot_loss(history, folder / LOSS_PNG)
        except ValueError as e:
            notes.append(f"history.csv: no loss plot ({e})")
    if (folder / LOSS_PNG).is_file():
        figures.append((LOSS_PNG, "Training loss (and learning rate) during training."))
    figures += _region_plot(folder, metrics)
    if scores is None:
        return figures
    known = [(lab, s) for lab, s in zip(scores.labels, scores.scores) if lab in (0.0, 1.0)]
    if not (folder / ROC_PNG).is_file() and len({lab for lab, _ in known}) == 2:
        auroc = metrics.get("frame_auroc_micro")
        try:
            plot_roc([lab for lab, _ in known], [s for _, s in known], folder / ROC_PNG,
                     auroc=auroc if isinstance(auroc, (int, float)) else None)
        except ValueError as e:  # e.g. non-finite scores: say so on the page rather than lose the whole report
            notes.append(f"scores.csv: no ROC plot ({e})")
    if (folder / ROC_PNG).is_file():
        figures.append((ROC_PNG, "Frame-level ROC over all labelled test frames."))
    threshold = metrics.get("threshold")
    threshold = float(threshold) if isinstance(threshold, (int, float)) else None
    names = list(dict.fromkeys(scores.videos))
    if not (folder / SCORES_PNG).is_file():
        labels = scores.labels if any(lab in (0.0, 1.0) for lab in scores.labels) else None
        if len(names) <= MAX_SCORE_PANELS:  # one panel per video
            plot_scores(scores.frames, scores.scores, folder / SCORES_PNG, labels=labels, threshold=threshold,
                        videos=scores.videos, title="Frame scores per video (higher = more unusual)",
                        members=scores.members or None)
        else:  # many short videos: one curve of all scored frames end to end, in file order
            plot_scores(list(range(len(scores.scores))), scores.scores, folder / SCORES_PNG, labels=labels,
                        threshold=threshold, title=f"Frame scores of all {len(names)} videos end to end")
    caption = "Frame scores; shaded = ground-truth anomalous frames; dashed = threshold."
    if scores.members:
        caption += " Thin lines: each fused member's score, calibrated on normal training frames (z-score)."
    if len(names) > MAX_SCORE_PANELS:
        caption = f"Frame scores of the {len(names)} videos end to end (x = running frame number); " + caption
    figures.append((SCORES_PNG, caption))
    return figures


def _summary_html(scores: Scores | None) -> str:
    if scores is None:
        return '<p class="note">No scores.csv in this folder.</p>'
    n = len(scores.scores)
    n_labelled = sum(lab in (0.0, 1.0) for lab in scores.labels)
    n_anom = sum(lab == 1.0 for lab in scores.labels)
    parts = [f"{n:,} scored frames in {len(set(scores.videos)):,} video(s)"]
    parts.append(f"{n_anom:,} of {n_labelled:,} labelled frames anomalous" if n_labelled else "no frame labels")
    flags = [f for f in scores.flagged if f is not None]
    if flags:
        parts.append(f"{sum(flags):,} frames flagged by the threshold")
    return f'<p>{esc("; ".join(parts))}. Frame scores: <a href="scores.csv">scores.csv</a>.</p>'


def write_report(folder: str | Path, *, title: str | None = None) -> Path:
    """Write ``report.html`` into an evaluation folder, drawing any plot that is missing.

    Args:
        folder: the evaluation output folder (see the module docstring for what it may hold).
        title: page title; defaults to the model and data in metrics.json, or the folder name.

    Returns:
        The path of ``report.html``.

    Raises:
        CheckpointError: ``folder`` is not a folder, holds no evaluation (no metrics.json), or metrics.json, scores.csv or top/top.json is malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; pass the output folder of an evaluation")
    if not (folder / "metrics.json").is_file():
        raise CheckpointError(
            f"{folder}: no evaluation here (metrics.json is missing); write one with "
            "`oddframe eval --checkpoint RUN --data DATA --out FOLDER`, which also writes the report"
        )
    metrics = _read_metrics(folder / "metrics.json")
    scores = read_scores(folder / "scores.csv")
    history = _read_history(folder / "history.csv")
    top = _read_top(folder)
    notes: list[str] = []
    figures = _make_plots(folder, scores, history, metrics or {}, notes)
    if title is None:
        m = metrics or {}
        title = f"oddframe: {m['model']} on {Path(str(m['data'])).name}" if m.get("model") and m.get("data") else (
            f"oddframe report: {folder.resolve().name}")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    body = [f"<header><h1>{esc(title)}</h1><p class=\"sub\">{esc(folder.resolve().name)} &middot; "
            f"oddframe {esc(oddframe.__version__)} &middot; {esc(stamp)}</p></header>",
            '<nav><a href="#results">Results</a><a href="#plots">Plots</a><a href="#top">Most anomalous frames</a>'
            '<a href="#video">Video</a><a href="#config">Config</a></nav>',
            '<section id="results"><h2>Results</h2>', _summary_html(scores)]
    body += [_metrics_html(metrics or {}), '<p><a href="metrics.json">metrics.json</a></p>', _protocol_html(metrics or {})]
    body += [f'<p class="note">{esc(n)}</p>' for n in notes]
    body.append("</section>")

    body.append('<section id="plots"><h2>Plots</h2>')
    body.append("\n".join(figure_html(src, cap) for src, cap in figures) or '<p class="note">No plots.</p>')
    body.append("</section>")

    body.append('<section id="top"><h2>Most anomalous frames</h2>')
    if top:
        cards = []
        for rank, e in enumerate(top, start=1):
            score = e.get("score")
            score_txt = f"{score:.4g}" if isinstance(score, (int, float)) else str(score)
            caption = f"#{rank}: video {e.get('video', '?')}, frame {e.get('frame', '?')}, score {score_txt}"
            cards.append(figure_html(f"top/{e['image']}", caption))
        body.append('<p>Left: the frame; right: its anomaly map (red boxes low-level, light blue high-level, '
                    "green the true anomalous region where known).</p>")
        body.append('<div class="grid">' + "\n".join(cards) + "</div>")
    else:
        body.append('<p class="note">No top/top.json with images in this folder.</p>')
    body.append("</section>")

    body.append('<section id="video"><h2>Video</h2>')
    if (folder / VIDEO).is_file():
        body.append(f'<video controls preload="metadata" src="{href(VIDEO)}">Your browser cannot play this video; '
                    f'<a href="{href(VIDEO)}">download it</a>.</video>')
    else:
        body.append('<p class="note">No anomaly video (evaluate with the video option to render one).</p>')
    body.append("</section>")

    body.append('<section id="config"><h2>Config</h2>')
    if (folder / "config.yaml").is_file():
        text = (folder / "config.yaml").read_text(encoding="utf-8", errors="replace")
        body.append(f'<details><summary>config.yaml (the resolved configuration of this run)</summary>'
                    f"<pre>{esc(text)}</pre></details>")
    else:
        body.append('<p class="note">No config.yaml in this folder.</p>')
    body.append("</section>")

    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
    out = folder / REPORT
    atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out
