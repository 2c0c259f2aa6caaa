"""``oddframe review``: set unusual clips aside before training, automatically and by hand.

The second mode of the solar 3D-AE pipeline (seed 001), between prep and train: normal-only training data is
the premise of every model here, and a flare or a corrupted frame left in the training clips teaches the model
that flares are normal.

Automatic review: intensity statistics per clip (mean, standard deviation, maximum, the fractions of saturated
and invalid pixels of the scaled clip, and the mean, standard deviation and maximum of the raw, exposure-
normalised intensities recorded by prep), each turned into a robust z-score across clips, the modified z-score
of Iglewicz & Hoaglin (1993), ``M = 0.6745 (x - median) / MAD``; clips with ``|M| > 3.5`` (their recommended
limit) on any statistic are set aside. Median and MAD are not dragged by the outliers being looked for, as a
mean and a standard deviation would be.

Manual review: contact sheets (one row per clip, a few frames each, its id and decision written beside it) and
``--exclude`` / ``--include`` decisions, stored in ``decisions.json``. Manual decisions win over automatic ones
and survive every later automatic review; training reads them through
:func:`oddframe.data.prepared.prepared_dataset`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from oddframe.data import prepared as fmt
from oddframe.errors import OddframeError, SourceError
from oddframe.render.overlay import frame_to_rgb
from oddframe.files import atomic_write
from oddframe.progress import progress_bar

#: Statistics of the scaled clip (in [-1, 1]) and of its raw intensities (from index.csv), in review.csv order.
CLIP_STATISTICS = ("mean", "std", "max", "saturated_fraction", "invalid_fraction")
RAW_STATISTICS = ("raw_mean", "raw_std", "raw_max")
STATISTICS = CLIP_STATISTICS + RAW_STATISTICS
#: A scaled pixel at or above this value sits at the top of the scale (an 8-bit grey level is 2/255 = 0.008 on [-1, 1]).
SATURATED = 0.995
DEFAULT_LIMIT = 3.5  # Iglewicz & Hoaglin (1993): |modified z| > 3.5 marks a potential outlier
#: Smallest robust scale of each statistic. The MAD of a few dozen clips can be arbitrarily small (a handful of
#: clips that happen to agree, or a fraction most clips share), which would flag differences nobody would look at;
#: the floor sets the smallest difference worth a look: ``limit * floor``. Scaled statistics are absolute (on
#: [-1, 1], or shares of pixels), raw ones relative to their median (physical units differ between instruments).
SCALE_FLOORS: dict[str, float] = {"mean": 0.01, "std": 0.01, "max": 0.01, "saturated_fraction": 0.005,
                                  "invalid_fraction": 0.005}
RELATIVE_FLOORS: dict[str, float] = {"raw_mean": 0.01, "raw_std": 0.01, "raw_max": 0.01}
_MAD_TO_SIGMA = 0.6745  # Phi^-1(0.75): MAD / 0.6745 estimates sigma for normal data
_MEANAD_TO_SIGMA = 0.7979  # sqrt(2 / pi): mean absolute deviation = 0.7979 sigma for normal data


def clip_statistics(frames: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Intensity statistics of one scaled clip.

    Args:
        frames: ``(C, T, H, W)`` floats in ``[-1, 1]``.
        valid: ``(1, T, H, W)`` bool.

    Returns:
        ``mean``, ``std``, ``max`` of the valid pixels (NaN if none), ``saturated_fraction`` (share of valid
        pixel values >= :data:`SATURATED`) and ``invalid_fraction`` (share of invalid pixels).
    """
    values = frames[:, valid[0]].astype(np.float64).ravel()
    invalid = 1.0 - float(valid.mean()) if valid.size else 1.0
    if values.size == 0:
        return {"mean": math.nan, "std": math.nan, "max": math.nan, "saturated_fraction": math.nan,
                "invalid_fraction": invalid}
    return {"mean": float(values.mean()), "std": float(values.std()), "max": float(values.max()),
            "saturated_fraction": float((values >= SATURATED).mean()), "invalid_fraction": invalid}


def robust_z(values: Sequence[float] | np.ndarray, *, floor: float = 0.0, relative_floor: float = 0.0) -> np.ndarray:
    """Modified z-scores ``0.6745 (x - median) / MAD`` (Iglewicz & Hoaglin 1993).

    When more than half the values are equal the MAD is 0; the scale then falls back to the mean absolute
    deviation (``(x - median) / (1.2533 MeanAD)``, the usual companion rule), so a single clip that differs
    from identical others still stands out. Values all equal give 0. NaN values get 0 (not judged) and are
    left out of the median.

    Args:
        values: ``(N,)`` one statistic over N clips.
        floor: smallest scale (``MAD / 0.6745``) used, in the statistic's units.
        relative_floor: smallest scale as a share of ``|median|``.

    Returns:
        ``(N,)`` float64 z-scores.
    """
    x = np.asarray(values, dtype=np.float64)
    z = np.zeros_like(x)
    finite = np.isfinite(x)
    if finite.sum() < 2:
        return z
    median = float(np.median(x[finite]))
    dev = np.abs(x[finite] - median)
    scale = float(np.median(dev)) / _MAD_TO_SIGMA
    if scale == 0.0:
        scale = float(dev.mean()) / _MEANAD_TO_SIGMA
    # Rounding noise (float16 clips) must not pass for variation: a scale below 1e-6 of the level is no scale.
    if scale <= 1e-6 * abs(median) and floor == relative_floor == 0.0:
        return z
    scale = max(scale, floor, relative_floor * abs(median))
    if scale == 0.0:
        return z
    z[finite] = (x[finite] - median) / scale
    return z


def flag_outliers(stats: dict[str, np.ndarray], limit: float) -> tuple[dict[str, np.ndarray], list[str]]:
    """Robust z-scores of every statistic and, per clip, the reason it is set aside ("" to keep it).

    Args:
        stats: statistic name -> ``(N,)`` values over the N clips; the scales of the names in
            :data:`SCALE_FLOORS` and :data:`RELATIVE_FLOORS` are floored there.
        limit: a clip with ``|z| > limit`` on any statistic is set aside.

    Returns:
        ``(z, reasons)``: statistic name -> ``(N,)`` z-scores, and N reasons such as ``"max z=+9.1; std z=-4.0"``
        (largest first).

    Raises:
        ValueError: ``limit <= 0``.
    """
    if not limit > 0:
        raise ValueError(f"limit must be > 0 (a |robust z| beyond it sets a clip aside), got {limit}")
    z = {name: robust_z(v, floor=SCALE_FLOORS.get(name, 0.0), relative_floor=RELATIVE_FLOORS.get(name, 0.0))
         for name, v in stats.items()}
    n = len(next(iter(stats.values()))) if stats else 0
    reasons = []
    for i in range(n):
        beyond = sorted(((abs(z[s][i]), s) for s in z if abs(z[s][i]) > limit), reverse=True)
        reasons.append("; ".join(f"{s} z={z[s][i]:+.1f}" for _, s in beyond))
    return z, reasons


@dataclass
class ReviewResult:
    """What :func:`review` decided.

    Attributes:
        folder: the prepared folder.
        n_clips: clips in the index.
        set_aside: ``(clip, reason)`` of the clips training will leave out.
        rows: one dict per clip, as written to ``review.csv``.
        sheets: contact sheet files written.
    """

    folder: Path
    n_clips: int
    set_aside: list[tuple[str, str]]
    rows: list[dict[str, Any]]
    sheets: list[Path]


def review(
    folder: str | Path,
    *,
    limit: float = DEFAULT_LIMIT,
    exclude: Iterable[str] = (),
    include: Iterable[str] = (),
    forget: Iterable[str] = (),
    sheets: bool = False,
    sheet_rows: int = 12,
    sheet_frames: int = 4,
    progress: bool = True,
) -> ReviewResult:
    """Review the clips of a prepared folder: automatic statistics, manual decisions, contact sheets.

    Writes ``review.csv`` and ``decisions.json`` (and ``sheets/sheet_NNN.png`` with ``sheets``). The automatic
    part runs again every time (its set-aside list is replaced); manual decisions are kept and updated.

    Args:
        folder: a folder written by ``oddframe prep``.
        limit: ``|robust z|`` beyond which a clip is set aside.
        exclude: clip ids a person marks anomalous (left out of training).
        include: clip ids a person marks normal (trained on even if the automatic review sets them aside).
        forget: clip ids whose manual decision is dropped (back to the automatic one).
        sheets: write contact sheets.
        sheet_rows: clips per sheet; sheet_frames: frames shown per clip.
        progress: show a Rich progress bar.

    Raises:
        SourceError: not a complete prepared folder, or an unreadable clip file.
        OddframeError: an unknown clip id.
        ValueError: a clip id both excluded and included, or a bad limit / sheet size.
    """
    folder = Path(folder)
    prep = fmt.read_prep(folder)
    if prep.get("status") != "complete":
        raise SourceError(f"{folder}: prep did not finish; run `oddframe prep` again with the same arguments first")
    exclude, include, forget = set(exclude), set(include), set(forget)
    both = exclude & include
    if both:
        raise ValueError(f"clip(s) {', '.join(sorted(both))} are both excluded and included; choose one")
    if sheet_rows < 1 or sheet_frames < 1:
        raise ValueError(f"sheet_rows and sheet_frames must be >= 1, got {sheet_rows} and {sheet_frames}")
    records = fmt.read_index(folder)
    _check_ids(folder, exclude | include | forget, [r.clip for r in records])

    stats: dict[str, list[float]] = {s: [] for s in STATISTICS}
    with progress_bar(progress) as bar:
        task = bar.add_task("reviewing clips", total=len(records))
        for r in records:
            frames, valid = _load(folder, r)
            for key, value in clip_statistics(frames, valid).items():
                stats[key].append(value)
            for key in RAW_STATISTICS:
                value = getattr(r, key)
                stats[key].append(math.nan if value is None else value)
            bar.advance(task)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}
    z, reasons = flag_outliers(arrays, limit)

    decisions = fmt.read_decisions(folder)
    decisions.automatic = {r.clip: why for r, why in zip(records, reasons) if why}
    decisions.limit = limit
    for clip in forget:
        decisions.manual.pop(clip, None)
    decisions.manual.update({c: "exclude" for c in exclude} | {c: "include" for c in include})
    now = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    fmt.write_decisions(folder, decisions, when=now)

    rows = []
    for i, r in enumerate(records):
        decision, why = decisions.decision(r.clip)
        row: dict[str, Any] = {"clip": r.clip, "video": r.video, "first_frame": r.frames[0],
                               "last_frame": r.frames[-1], "start_iso": r.start_iso}
        row |= {s: arrays[s][i] for s in STATISTICS} | {f"z_{s}": round(float(z[s][i]), 3) for s in STATISTICS}
        row |= {"automatic": "set_aside" if reasons[i] else "keep", "manual": decisions.manual.get(r.clip, ""),
                "decision": decision, "reason": why}
        rows.append(row)
    _write_csv(folder / fmt.REVIEW_FILE, rows)
    written = write_sheets(folder, records, rows, rows_per_sheet=sheet_rows, frames_per_clip=sheet_frames,
                           cmap="afmhot" if "fits" in prep["input"].get("kinds", []) else None) if sheets else []
    set_aside = [(row["clip"], row["reason"]) for row in rows if row["decision"] == "set_aside"]
    return ReviewResult(folder, len(records), set_aside, rows, written)


def _check_ids(folder: Path, ids: set[str], known: list[str]) -> None:
    """Raise OddframeError naming unknown clip ids (and what ids look like)."""
    unknown = sorted(ids - set(known))
    if unknown:
        raise OddframeError(f"{folder}: unknown clip id(s) {', '.join(unknown)}; ids look like "
                            f"{', '.join(known[:3])} (see {fmt.INDEX_FILE} or {fmt.REVIEW_FILE})")


def _load(folder: Path, record: fmt.ClipRecord) -> tuple[np.ndarray, np.ndarray]:
    return fmt.decode_clip(fmt.load_clip_array(folder / record.file))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["clip"])
            writer.writeheader()
            writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)

    atomic_write(path, write)


# ------------------------------------------------------------------------------------------- contact sheets

_LABEL_W, _LINE_H, _FONT = 240, 16, cv2.FONT_HERSHEY_SIMPLEX
_GREEN, _RED, _WHITE, _GREY = (80, 220, 80), (255, 70, 70), (255, 255, 255), (170, 170, 170)


def contact_sheet(rows: Sequence[tuple[Sequence[np.ndarray], Sequence[str], bool]], *, cmap: str | None = None,
                  min_cell: int = 96) -> np.ndarray:
    """One page of clips: a row per clip, its label on the left, then a few of its frames.

    Args:
        rows: per clip ``(frames, lines, set_aside)``: frames ``(C, H, W)`` in ``[-1, 1]`` (all of one size),
            label lines (the first, the clip id, in white; the second, the decision, in green or red; the rest
            grey), and whether the clip is set aside (its row is framed in red).
        cmap: matplotlib colormap for grey frames (``"afmhot"`` for solar images); ``None`` keeps grey.
        min_cell: frames are enlarged (nearest neighbour, whole factors) to at least this many pixels high.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    if not rows:
        raise ValueError("a contact sheet needs at least one clip")
    h, w = rows[0][0][0].shape[-2:]
    k = max(1, math.ceil(min_cell / h))
    n_cols = max(len(frames) for frames, _, _ in rows)
    row_h = max(h * k, _LINE_H * max(len(lines) for _, lines, _ in rows) + 8) + 4
    sheet = np.zeros((row_h * len(rows), _LABEL_W + n_cols * (w * k + 4), 3), dtype=np.uint8)
    for r, (frames, lines, aside) in enumerate(rows):
        y = r * row_h
        for j, line in enumerate(lines):
            colour = _WHITE if j == 0 else (_RED if aside else _GREEN) if j == 1 else _GREY
            cv2.putText(sheet, line[:34], (6, y + (j + 1) * _LINE_H), _FONT, 0.42, colour, 1, cv2.LINE_AA)
        for c, frame in enumerate(frames):
            rgb = frame_to_rgb(frame, scale="linear", cmap=cmap)
            x = _LABEL_W + c * (w * k + 4)
            sheet[y + 2:y + 2 + h * k, x:x + w * k] = np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)
        if aside:
            cv2.rectangle(sheet, (0, y), (sheet.shape[1] - 1, y + row_h - 1), _RED, 2)
    return sheet


def write_sheets(folder: Path, records: Sequence[fmt.ClipRecord], rows: Sequence[dict[str, Any]], *,
                 rows_per_sheet: int, frames_per_clip: int, cmap: str | None) -> list[Path]:
    """Write ``sheets/sheet_NNN.png`` (old sheets removed first) and return their paths."""
    out = folder / fmt.SHEETS_DIR
    out.mkdir(exist_ok=True)
    for old in out.glob("sheet_*.png"):
        old.unlink()
    paths = []
    for page, start in enumerate(range(0, len(records), rows_per_sheet)):
        items = []
        for r, row in zip(records[start:start + rows_per_sheet], rows[start:start + rows_per_sheet]):
            frames, _ = _load(folder, r)
            t = frames.shape[1]
            picks = sorted(set(np.linspace(0, t - 1, min(frames_per_clip, t)).round().astype(int)))
            when = r.start_iso[:19] if r.start_iso else f"frames {r.frames[0]}-{r.frames[-1]}"
            reason = row["reason"] or ("kept" if row["decision"] == "train" else "")
            lines = [r.clip, row["decision"].replace("_", " "), when, *_wrap(reason, 34)[:3]]
            items.append(([frames[:, i] for i in picks], lines, row["decision"] == "set_aside"))
        path = out / f"sheet_{page:03d}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(contact_sheet(items, cmap=cmap), cv2.COLOR_RGB2BGR)):
            raise OddframeError(f"{path}: OpenCV could not write the contact sheet")
        paths.append(path)
    return paths


def _wrap(text: str, width: int) -> list[str]:
    """Split ``text`` into lines of at most ``width`` characters at spaces."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines
