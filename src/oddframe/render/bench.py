"""What ``oddframe bench`` shows: the comparison table (Markdown and CSV), the ROC of all models, the score curves
of each video side by side, and one offline HTML page that links every model's own report.

Rows are plain dicts (one per model, keys of :data:`COLUMNS`) written by :mod:`oddframe.pipeline.bench`; each row's
``eval_dir`` (relative to the bench folder) holds that model's ``scores.csv`` and ``report.html``.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import oddframe
from oddframe.render.plots import plot_roc_models, plot_scores_grid
from oddframe.render.report import CSS, esc, figure_html, href, read_scores

TABLE_MD = "bench.md"
TABLE_CSV = "bench.csv"
PAGE = "bench.html"
ROC_PNG = "roc.png"
SCORES_PNG = "scores.png"
MAX_VIDEOS = 8  # score-curve rows; beyond this the videos with most anomalous frames are shown

# (row key, column header): every metric, the cost and the protocol. The Markdown table has them all.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "run"),
    ("model", "model"),
    ("frame_auroc_micro", "AUROC micro"),
    ("frame_auroc_macro", "AUROC macro (2-class videos)"),
    ("n_videos_macro", "videos in macro"),
    ("frame_auroc_macro_padded", "AUROC macro padded (literature)"),
    ("pixel_auroc", "pixel AUROC"),
    ("rbdc", "RBDC"),
    ("tbdc", "TBDC"),
    ("frame_ap", "AP"),
    ("eer", "EER"),
    ("train_seconds", "train s"),
    ("epochs", "epochs"),
    ("detect_fps", "detect frames/s"),
    ("score_rule", "score rule"),
    ("normalisation", "normalisation"),
    ("uses_test_statistics", "uses test statistics"),
    ("smoothing_sigma", "smoothing sigma"),
    ("status", "training"),
    ("config", "config"),
)


def fmt(value: Any) -> str:
    """A table cell: 4 decimals for rates, 1 for seconds and speeds, ``-`` for missing values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.4f}"
    return str(value)


def write_tables(rows: Sequence[dict[str, Any]], folder: Path, *, header: str = "") -> tuple[Path, Path]:
    """Write ``bench.md`` (a Markdown table, below ``header``) and ``bench.csv`` (raw values) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = [k for k, _ in COLUMNS]
    lines = [header.rstrip(), ""] if header else []
    lines.append("| " + " | ".join(h for _, h in COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    lines += ["| " + " | ".join(fmt(r.get(k)).replace("|", "\\|") for k in keys) + " |" for r in rows]
    scenes = per_scene_rows(rows)
    if scenes:
        names = [r["name"] for r in rows]
        lines += ["", "Frame AUROC (micro) per scene:", "", "| scene | " + " | ".join(names) + " |",
                  "|" + "---|" * (len(names) + 1)]
        lines += ["| " + " | ".join([scene] + [fmt(v) for v in values]) + " |" for scene, values in scenes]
    md = folder / TABLE_MD
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows([{k: r.get(k) for k in keys} for r in rows])
    (folder / TABLE_CSV).write_text(buf.getvalue(), encoding="utf-8")
    return md, folder / TABLE_CSV


def per_scene_rows(rows: Sequence[dict[str, Any]]) -> list[tuple[str, list[float | None]]]:
    """``(scene, [micro AUROC of each row])`` for the scenes any row reports (empty for single-scene data)."""
    scenes: list[str] = []
    for r in rows:
        scenes += [s for s in (r.get("per_scene") or {}) if s not in scenes]
    return [(s, [((r.get("per_scene") or {}).get(s) or {}).get("frame_auroc_micro") for r in rows]) for s in scenes]


def _plots(rows: Sequence[dict[str, Any]], folder: Path, notes: list[str]) -> list[tuple[str, str]]:
    """ROC of all models and the score curves side by side, from each row's ``scores.csv``."""
    curves, per_model, weight = {}, {}, {}
    for r in rows:
        scores = read_scores(folder / r["eval_dir"] / "scores.csv")
        if scores is None:
            notes.append(f"{r['name']}: no scores.csv in {r['eval_dir']}")
            continue
        known = [(lab, s) for lab, s in zip(scores.labels, scores.scores) if lab in (0.0, 1.0)]
        curves[r["name"]] = ([lab for lab, _ in known], [s for _, s in known])
        videos: dict[str, tuple[list, list, list]] = {}
        for v, f, s, lab in zip(scores.videos, scores.frames, scores.scores, scores.labels):
            item = videos.setdefault(v, ([], [], []))
            item[0].append(f), item[1].append(s), item[2].append(lab)
            weight[v] = weight.get(v, 0) + (lab == 1.0)
        per_model[r["name"]] = videos
    figures = []
    if curves:
        plot_roc_models(curves, folder / ROC_PNG)
        figures.append((ROC_PNG, "Frame-level ROC of every model over all labelled test frames (micro AUROC in the "
                                 "legend)."))
    order = list(dict.fromkeys(v for videos in per_model.values() for v in videos))
    if order:
        shown = order if len(order) <= MAX_VIDEOS else sorted(order, key=lambda v: -weight[v])[:MAX_VIDEOS]
        shown = [v for v in order if v in shown]
        plot_scores_grid(shown, per_model, folder / SCORES_PNG)
        more = "" if len(shown) == len(order) else (
            f" ({len(shown)} of {len(order)} videos: those with most anomalous frames)")
        figures.append((SCORES_PNG, "Frame scores of each video (rows) by each model (columns, each on its own "
                                    f"scale); shaded = ground-truth anomalous frames{more}."))
    return figures


def write_page(rows: Sequence[dict[str, Any]], folder: Path, *, title: str, intro: Sequence[str] = ()) -> Path:
    """Write ``bench.html`` (and its plots) into the bench folder: the table, the protocol, the ROC of all models,
    the score curves side by side, per-scene numbers and a link to each model's own report.

    Args:
        rows: one dict per model (keys of :data:`COLUMNS`, plus ``eval_dir``, ``per_scene``, ``protocol``).
        folder: the bench folder.
        title: page title.
        intro: paragraphs shown under the title (dataset, machine, command).
    """
    notes: list[str] = []
    figures = _plots(rows, folder, notes)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<header><h1>{esc(title)}</h1><p class=\"sub\">oddframe {esc(oddframe.__version__)} &middot; "
            f"{esc(stamp)}</p></header>"]
    body += [f"<p>{esc(p)}</p>" for p in intro]
    head = "".join(f"<th>{esc(h)}</th>" for k, h in COLUMNS if k != "config")
    lines = []
    for r in rows:
        cells = []
        for k, _ in COLUMNS:
            if k == "config":
                continue
            v = r.get(k)
            text = esc(fmt(v))
            if k == "name" and (folder / r["eval_dir"] / "report.html").is_file():
                text = f'<a href="{href(r["eval_dir"] + "/report.html")}">{text}</a>'
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    body += ['<section id="results"><h2>Results</h2>', '<div style="overflow-x:auto;font-size:.9rem">'
             f'<table id="bench">\n<tr>{head}</tr>\n' + "\n".join(lines) + "\n</table></div>",
             f'<p>Also as <a href="{TABLE_MD}">Markdown</a> and <a href="{TABLE_CSV}">CSV</a>; '
             "each run name links to its own evaluation report.</p>"]
    body += [f'<p class="note">{esc(n)}</p>' for n in notes]
    scenes = per_scene_rows(rows)
    if scenes:
        cols = "".join(f"<th>{esc(r['name'])}</th>" for r in rows)
        trs = "\n".join("<tr><th>" + esc(s) + "</th>" + "".join(f'<td class="num">{esc(fmt(v))}</td>' for v in vals)
                        + "</tr>" for s, vals in scenes)
        body.append(f'<h3>Frame AUROC (micro) per scene</h3>\n<table id="per-scene">\n<tr><th>scene</th>{cols}</tr>\n'
                    f"{trs}\n</table>")
    body.append("</section>")
    body += ['<section id="plots"><h2>Plots</h2>', "\n".join(figure_html(src, cap) for src, cap in figures)
             or '<p class="note">No plots (no scores).</p>', "</section>"]
    body.append('<section id="protocol"><h2>Protocol</h2>')
    for r in rows:
        protocol = r.get("protocol") or {}
        items = "".join(f"<li><code>{esc(k)}</code>: {esc(v)}</li>" for k, v in protocol.items())
        body.append(f"<details><summary>{esc(r['name'])} ({esc(r.get('config', ''))})</summary><ul>{items}</ul>"
                    "</details>")
    body.append("</section>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body)
            + "\n</body>\n</html>\n")
    out = folder / PAGE
    out.write_text(page, encoding="utf-8")
    return out
