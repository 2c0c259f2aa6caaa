"""Plots a person reads at a glance: the training loss, frame scores per video, the ROC curve.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no global backend switch, safe in
threads and on headless machines) and saved at a fixed size (``figsize * dpi`` pixels; no tight bounding box),
so reports lay out predictably.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from oddframe.files import atomic_write


def _save(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as a PNG at its own size, creating parent folders (atomically)."""
    path = Path(path)
    FigureCanvasAgg(fig)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def _history_columns(history: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
    """Column name -> float array (NaN where a value is empty) from rows or columns of a history."""
    if isinstance(history, Mapping):
        cols = {k: list(v) for k, v in history.items()}
    else:
        keys = list(dict.fromkeys(k for row in history for k in row))
        cols = {k: [row.get(k) for row in history] for k in keys}

    def num(v: Any) -> float:
        try:
            return float(v) if v not in (None, "") else math.nan
        except (TypeError, ValueError):
            return math.nan

    return {k: np.array([num(v) for v in vals], dtype=np.float64) for k, vals in cols.items()}


def plot_loss(
    history: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
    path: str | Path,
    *,
    title: str = "Training loss",
    figsize: tuple[float, float] = (8.0, 4.5),
    dpi: int = 100,
) -> Path:
    """Plot the training loss against the step (or epoch), with the learning rate on a twin axis.

    Args:
        history: rows (``[{"epoch": 0, "step": 10, "loss": 0.3, "lr": 1e-3}, ...]``, e.g. from history.csv,
            values may be strings) or columns (``{"loss": [...], "step": [...]}``). Needs ``loss``; uses
            ``step`` if present, else ``epoch``, else the row number; ``lr`` is drawn when present.
        path: PNG to write.
        title: figure title.
        figsize: inches; the PNG is ``figsize * dpi`` pixels.
        dpi: dots per inch.

    Returns:
        ``path``.

    Raises:
        ValueError: no ``loss`` column or no finite loss value.
    """
    cols = _history_columns(history)
    if "loss" not in cols:
        raise ValueError(f"history needs a 'loss' column; it has {sorted(cols) or 'no columns'}")
    loss = cols["loss"]
    for key, label in (("step", "optimizer step"), ("epoch", "epoch")):
        if key in cols and np.isfinite(cols[key]).any():
            x, xlabel = cols[key], label
            break
    else:
        x, xlabel = np.arange(len(loss), dtype=np.float64), "logged point"
    ok = np.isfinite(loss) & np.isfinite(x)
    if not ok.any():
        raise ValueError("history has no finite loss values to plot")

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x[ok], loss[ok], color="tab:blue", lw=1.0, alpha=0.6 if ok.sum() > 20 else 1.0, label="loss")
    if ok.sum() > 20:  # a centred running mean shows the trend through the minibatch noise
        k = max(3, int(ok.sum()) // 20)
        smooth = np.convolve(loss[ok], np.ones(k) / k, mode="valid")
        ax.plot(x[ok][k // 2 : k // 2 + len(smooth)], smooth, color="tab:blue", lw=2.0, label=f"running mean ({k})")
    positive = loss[ok][loss[ok] > 0]
    if len(positive) == ok.sum() and positive.max() / positive.min() > 30:  # spans decades: log shows them all
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("training loss (model units)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    lr = cols.get("lr")
    if lr is not None and np.isfinite(lr[ok]).any():
        ax2 = ax.twinx()
        good = ok & np.isfinite(lr)
        (line,) = ax2.plot(x[good], lr[good], color="tab:orange", lw=1.2, ls="--", label="learning rate")
        lpos = lr[good][lr[good] > 0]
        if len(lpos) == good.sum() and lpos.max() / lpos.min() > 30:
            ax2.set_yscale("log")
        ax2.set_ylabel("learning rate")
        handles, labels = handles + [line], labels + ["learning rate"]
    ax.legend(handles, labels, loc="upper right")
    return _save(fig, path)


def _spans(labels: np.ndarray) -> list[tuple[int, int]]:
    """``(first, last)`` index pairs of the runs of ``labels == 1``."""
    on = np.concatenate([[0], (labels == 1).astype(np.int8), [0]])
    d = np.diff(on)
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1))


def _score_axes(ax: Any, frames: np.ndarray, scores: np.ndarray, labels: np.ndarray | None, threshold: float | None,
                name: str | None, members: dict[str, np.ndarray] | None = None) -> None:
    """Draw one video's score curve, its ground-truth spans, its members' curves and the threshold on ``ax``."""
    order = np.argsort(frames, kind="stable")
    f, s = frames[order], scores[order]
    if labels is not None:
        lab = labels[order]
        for i, (a, b) in enumerate(_spans(lab)):
            ax.axvspan(f[a] - 0.5, f[b] + 0.5, color="tab:red", alpha=0.18, lw=0,
                       label="ground-truth anomaly" if i == 0 else None)
    for (member, m), colour in zip((members or {}).items(), ("tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:olive")):
        ax.plot(f, m[order], color=colour, lw=0.8, alpha=0.8, label=f"member {member}")
    ax.plot(f, s, color="tab:blue", lw=1.2, label="frame score")
    if threshold is not None:
        ax.axhline(threshold, color="black", ls="--", lw=1.0, label=f"threshold {threshold:.4g}")
        above = s >= threshold
        if above.any():
            ax.plot(f[above], s[above], ".", color="tab:red", ms=3, label="flagged")
    if name is not None:
        ax.set_title(f"video {name}", fontsize=10, loc="left")
    ax.set_ylabel("anomaly score")
    ax.grid(alpha=0.3)


def plot_scores(
    frames: Any,
    scores: Any,
    path: str | Path,
    *,
    labels: Any = None,
    threshold: float | None = None,
    videos: Sequence[str] | None = None,
    title: str = "Frame anomaly scores (higher = more unusual)",
    width: float = 10.0,
    row_height: float = 2.6,
    dpi: int = 100,
    members: dict[str, Any] | None = None,
) -> Path:
    """Plot frame scores against the frame index, one panel per video, ground-truth anomalies shaded.

    Args:
        frames: ``(N,)`` frame indices (within their video).
        scores: ``(N,)`` frame scores.
        path: PNG to write.
        labels: optional ``(N,)`` frame labels, 1 = anomalous, 0 = normal; NaN or negative = unknown.
        threshold: optional decision threshold, drawn as a dashed line; frames at or above it are marked.
        videos: optional ``(N,)`` video name of each frame; one panel per video, in order of appearance.
        title: figure title.
        width: figure width in inches.
        row_height: inches per video panel (+ 0.8 inch for the title and axis label); the PNG is
            ``width * dpi`` by ``(row_height * n_videos + 0.8) * dpi`` pixels.
        dpi: dots per inch.
        members: optional ``{name: (N,) scores}`` of a fused run's members, drawn as thin lines.

    Returns:
        ``path``.

    Raises:
        ValueError: inputs of different lengths or no frames.
    """
    f = np.asarray(frames, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    lab = None if labels is None else np.asarray(labels, dtype=np.float64).ravel()
    vid = None if videos is None else np.asarray([str(v) for v in videos])
    lengths = {"frames": len(f), "scores": len(s)}
    if lab is not None:
        lengths["labels"] = len(lab)
    if vid is not None:
        lengths["videos"] = len(vid)
    mem = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in (members or {}).items()}
    lengths.update({f"member {k}": len(v) for k, v in mem.items()})
    if len(set(lengths.values())) != 1:
        raise ValueError(f"frames, scores, labels and videos must have one length, got {lengths}")
    if len(f) == 0:
        raise ValueError("no frames to plot")
    names = [None] if vid is None else list(dict.fromkeys(vid.tolist()))

    fig = Figure(figsize=(width, row_height * len(names) + 0.8), dpi=dpi, layout="constrained")
    axes = fig.subplots(len(names), 1, squeeze=False, sharey=True)[:, 0]
    for ax, name in zip(axes, names):
        sel = np.ones(len(f), bool) if name is None else vid == name
        known = None if lab is None else np.where(np.isfinite(lab[sel]) & (lab[sel] >= 0), lab[sel], 0)
        _score_axes(ax, f[sel], s[sel], known, threshold, name, {k: v[sel] for k, v in mem.items()})
    axes[-1].set_xlabel("frame index")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_roc(
    labels: Any,
    scores: Any,
    path: str | Path,
    *,
    auroc: float | None = None,
    title: str = "Frame-level ROC",
    figsize: tuple[float, float] = (5.5, 5.0),
    dpi: int = 100,
) -> Path:
    """Plot the ROC curve of frame scores against frame labels, with the AUROC and the equal-error point.

    Args:
        labels: ``(N,)`` 0/1 frame labels (1 = anomalous); both classes must occur.
        scores: ``(N,)`` frame scores, higher = more anomalous.
        path: PNG to write.
        auroc: the value to print; ``None`` computes it from ``labels`` and ``scores``.
        title: figure title.
        figsize: inches; the PNG is ``figsize * dpi`` pixels.
        dpi: dots per inch.

    Returns:
        ``path``.

    Raises:
        ValueError: different lengths, labels other than 0/1, or only one class.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(y) != len(s):
        raise ValueError(f"labels and scores must have one length, got {len(y)} and {len(s)}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (anomalous); drop unknown frames first")
    if len(np.unique(y)) < 2:
        raise ValueError("a ROC curve needs both normal (0) and anomalous (1) frames")
    # The evaluator's own functions, so the curve, AUROC and EER match metrics.json (imported here: torch).
    from oddframe.metrics import eer, frame_auroc_micro, roc_points

    fpr, tpr, _ = roc_points(y, s)
    auc = frame_auroc_micro(y, s) if auroc is None else float(auroc)
    rate = eer(y, s)  # where the false positive rate equals the miss rate 1 - TPR, interpolated on the curve

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, color="tab:blue", lw=2.0, label=f"ROC (AUROC = {auc:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1.0, label="chance (AUROC = 0.5)")
    ax.plot(rate, 1.0 - rate, "o", color="tab:red", label=f"equal error rate = {rate:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (normal frames flagged)")
    ax.set_ylabel("true positive rate (anomalous frames found)")
    ax.set_title(f"{title} ({int((y == 1).sum())} anomalous / {len(y)} frames)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_roc_models(
    curves: Mapping[str, tuple[Any, Any]],
    path: str | Path,
    *,
    title: str = "Frame-level ROC of every model",
    figsize: tuple[float, float] = (6.5, 6.0),
    dpi: int = 100,
) -> Path:
    """Several models' ROC curves on one set of axes, each labelled with its micro AUROC.

    Args:
        curves: model name -> ``(labels (N,) 0/1, scores (N,))`` of its pooled test frames; a model whose frames
            hold one class only is listed in the legend as "no ROC".
        path: PNG to write.
        title: figure title.
        figsize: inches; the PNG is ``figsize * dpi`` pixels.
        dpi: dots per inch.

    Returns:
        ``path``.
    """
    from oddframe.metrics import frame_auroc_micro, roc_points

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    for name, (labels, scores) in curves.items():
        y, s = np.asarray(labels, dtype=np.float64).ravel(), np.asarray(scores, dtype=np.float64).ravel()
        if len(np.unique(y)) < 2 or not np.isfinite(s).all():
            ax.plot([], [], label=f"{name}: no ROC (one class or non-finite scores)")
            continue
        fpr, tpr, _ = roc_points(y, s)
        ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUROC {frame_auroc_micro(y, s):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1.0, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (normal frames flagged)")
    ax.set_ylabel("true positive rate (anomalous frames found)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_scores_grid(
    videos: Sequence[str],
    models: Mapping[str, Mapping[str, tuple[Any, Any, Any]]],
    path: str | Path,
    *,
    title: str = "Frame scores per video (rows) and model (columns); shaded = ground-truth anomaly",
    panel_size: tuple[float, float] = (4.2, 2.0),
    dpi: int = 90,
) -> Path:
    """The score curves of each video side by side, one column per model (each column on its own scale).

    Args:
        videos: the videos to show, one row each, in order.
        models: model name -> video name -> ``(frames (N,), scores (N,), labels (N,) or None)``; a video a model
            did not score is left blank.
        path: PNG to write.
        title: figure title.
        panel_size: inches per panel; the PNG is about ``n_models * w`` by ``n_videos * h + 0.8`` inches.
        dpi: dots per inch.

    Returns:
        ``path``.

    Raises:
        ValueError: no video or no model.
    """
    if not videos or not models:
        raise ValueError("need at least one video and one model to plot")
    names = list(models)
    w, h = panel_size
    fig = Figure(figsize=(w * len(names), h * len(videos) + 0.8), dpi=dpi, layout="constrained")
    axes = fig.subplots(len(videos), len(names), squeeze=False, sharex="row", sharey="col")
    for j, name in enumerate(names):
        axes[0, j].set_title(name, fontsize=10)
        for i, video in enumerate(videos):
            ax = axes[i, j]
            if video not in models[name]:
                ax.text(0.5, 0.5, "not scored", ha="center", va="center", transform=ax.transAxes)
                continue
            frames, scores, labels = models[name][video]
            lab = None if labels is None else np.asarray(labels, dtype=np.float64)
            _score_axes(ax, np.asarray(frames, np.float64), np.asarray(scores, np.float64), lab, None, None)
            ax.set_ylabel(f"video {video}" if j == 0 else "", fontsize=9)
    for j in range(len(names)):
        axes[-1, j].set_xlabel("frame index")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_region_curve(
    fpr: Any,
    rbdr: Any,
    tbdr: Any,
    path: str | Path,
    *,
    rbdc: float | None = None,
    tbdc: float | None = None,
    figsize: tuple[float, float] = (6.0, 4.5),
    dpi: int = 100,
) -> Path:
    """Region- and track-based detection rates against false-positive regions per frame (RBDC/TBDC curves).

    Args:
        fpr: ``(K,)`` false-positive regions per frame of each map level.
        rbdr: ``(K,)`` region-based detection rate at the same levels.
        tbdr: ``(K,)`` track-based detection rate.
        path: PNG to write.
        rbdc: the area to print in the legend (None: not printed).
        tbdc: likewise.
        figsize: inches; the PNG is ``figsize * dpi`` pixels.
        dpi: dots per inch.

    Returns:
        ``path``.
    """
    x = np.asarray(fpr, dtype=np.float64)
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    for rate, name, area, colour in ((rbdr, "RBDR (regions)", rbdc, "tab:blue"), (tbdr, "TBDR (tracks)", tbdc, "tab:orange")):
        y = np.asarray(rate, dtype=np.float64)
        order = np.argsort(x, kind="stable")
        label = name + (f", area {area:.3f}" if area is not None else "")
        ax.plot(x[order], y[order], ".", ms=3, alpha=0.5, color=colour)
        ax.step(x[order], np.maximum.accumulate(np.nan_to_num(y[order])), where="post", lw=1.6, color=colour,
                label=label)
    ax.axvline(1.0, color="grey", ls=":", lw=1.0)
    ax.set_xlim(0, max(1.2, min(float(np.nanmax(x)) if x.size else 1.2, 5.0)))
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive regions per frame (areas: FPR 0 to 1, dotted line)")
    ax.set_ylabel("detection rate")
    ax.set_title("Region and track detection (dots: map levels; lines: best within each FPR)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)
