"""The HTML run report: built from a small eval folder, parses, shows the metrics, links only to real files."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest

from oddframe.errors import CheckpointError
from oddframe.render.report import write_report

CHROMIUM = Path("/usr/bin/chromium")

METRICS = {
    "frame_auroc_micro": 0.91234, "frame_auroc_macro": 0.88, "n_videos_macro": 2, "frame_ap": 0.7512,
    "eer": 0.1499, "pixel_auroc": None, "n_test_frames": 60, "n_anomalous_frames": 14, "detect_fps": 123.456,
    "model": "conv3d_ae", "checkpoint": "runs/x", "data": "/data/ped2", "threshold": 0.6,
    "timing": {"model": 0.5, "io": 0.1},
}


class Page(HTMLParser):
    """Collects tags, link targets, the metrics table's cells and the text of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.links: list[str] = []
        self.cells: list[str] = []
        self.text: list[str] = []
        self._in_metrics = False
        self._open: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        self.links += [a[k] for k in ("src", "href") if a.get(k)]
        if tag == "table" and a.get("id") == "metrics":
            self._in_metrics = True
        if tag not in ("br", "img", "meta"):
            self._open.append(tag)

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_metrics = False
        assert self._open and self._open[-1] == tag, f"</{tag}> closes <{self._open[-1] if self._open else None}>"
        self._open.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self._in_metrics:
            self.cells.append(data.strip())


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page._open == [], f"unclosed tags {page._open}"
    return page


def make_eval_folder(folder: Path, *, labels: bool = True) -> Path:
    """A small eval folder as the evaluator writes it: two videos, 30 frames each, top/ with 2 PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with (folder / "scores.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "frame", "score", "label", "flagged"])
        for video in ("01", "02 <b>&"):  # a name that needs escaping and percent-encoding
            for i in range(30):
                lab = int(10 <= i < 17)
                s = float(rng.uniform(0, 0.5) + 0.5 * lab)
                w.writerow([video, i, s, lab if labels else "", int(s > 0.6) if labels else ""])
    (folder / "metrics.json").write_text(json.dumps(METRICS if labels else {"model": "conv3d_ae"}))
    (folder / "config.yaml").write_text("model:\n  name: conv3d_ae\n  params: {note: '<script>alert(1)</script>'}\n")
    with (folder / "history.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "loss", "lr", "seconds"])
        for e in range(1, 6):
            w.writerow([e, 10 * e, 1.0 / e, 1e-3, 1.5])
    (folder / "top").mkdir()
    listing = []
    for rank, (video, frame, score) in enumerate([("01", 12, 0.98), ("02 <b>&", 14, 0.95)]):
        name = f"{rank:02d}_{frame:06d}.png"
        cv2.imwrite(str(folder / "top" / name), rng.integers(0, 255, (40, 80, 3), dtype=np.uint8))
        listing.append({"video": video, "frame": frame, "score": score, "image": name})
    listing.append({"video": "01", "frame": 3, "score": 0.5, "image": "../metrics.json"})  # not in top/: skipped
    listing.append({"video": "01", "frame": 4, "score": 0.4, "image": "missing.png"})  # absent: skipped
    (folder / "top" / "top.json").write_text(json.dumps(listing))
    return folder


def test_report_from_eval_folder(tmp_path):
    folder = make_eval_folder(tmp_path / "eval")
    report = write_report(folder)
    assert report == folder / "report.html"
    page = parse(report)
    # The metrics table holds the values, formatted.
    for value in ("0.9123", "0.8800", "0.7512", "0.1499", "123.5", "n/a", "conv3d_ae", "60", "14"):
        assert value in page.cells, value
    assert any(t == "table" and a.get("id") == "metrics" for t, a in page.tags)
    # The plots were generated beside the report and linked (one score figure, a panel per video).
    for png in ("loss.png", "roc.png", "scores.png"):
        assert (folder / png).stat().st_size > 1000
        assert png in page.links
    # Every link resolves to a file in the folder; nothing points outside or online.
    assert page.links
    for link in page.links:
        if link.startswith("#"):
            continue
        assert "://" not in link and not link.startswith("/"), link
        assert (folder / unquote(link)).is_file(), link
    assert "top/00_000012.png" in page.links and "top/01_000014.png" in page.links
    assert not any("missing.png" in x or ".." in x for x in page.links)  # absent or outside top/: left out
    # No scripts at all and no external style or font references; user text is escaped, not markup.
    assert not any(t in ("script", "link", "iframe") for t, _ in page.tags)
    html_text = report.read_text()
    assert "http" not in html_text.split("<body>")[0]
    assert "<script>alert" not in html_text and "&lt;script&gt;alert(1)" in html_text
    assert "02 &lt;b&gt;&amp;" in html_text
    assert any(t == "details" for t, _ in page.tags) and not any(t == "video" for t, _ in page.tags)


def test_report_reuses_existing_plots_and_shows_video(tmp_path):
    folder = make_eval_folder(tmp_path / "eval")
    (folder / "roc.png").write_bytes(b"existing")  # the evaluator's plot is kept as it is
    (folder / "anomaly.mp4").write_bytes(b"\x00")
    page = parse(write_report(folder, title="My <run>"))
    assert (folder / "roc.png").read_bytes() == b"existing"
    videos = [a for t, a in page.tags if t == "video"]
    assert videos and videos[0]["src"] == "anomaly.mp4" and "controls" in videos[0]
    assert "My <run>" in "".join(page.text)


def test_report_without_labels_or_pieces(tmp_path):
    folder = make_eval_folder(tmp_path / "unlabelled", labels=False)
    (folder / "history.csv").unlink()
    shutil.rmtree(folder / "top")
    page = parse(write_report(folder))
    assert not (folder / "roc.png").exists() and not (folder / "loss.png").exists()
    assert (folder / "scores.png").is_file() and "roc.png" not in page.links
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no evaluation here"):
        write_report(empty)
    assert not (empty / "report.html").exists()


def test_report_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not a folder"):
        write_report(tmp_path / "nope")
    folder = make_eval_folder(tmp_path / "bad")
    (folder / "metrics.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="metrics.json"):
        write_report(folder)
    (folder / "metrics.json").write_text("{}")
    (folder / "scores.csv").write_text("video,frame,score\n01,0,high\n")
    with pytest.raises(CheckpointError, match="scores.csv, line 2"):
        write_report(folder)


@pytest.mark.browser
def test_report_loads_in_headless_chromium(tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed (Debian: apt-get install chromium)")
    report = write_report(make_eval_folder(tmp_path / "eval"))
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", report.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert '<table id="metrics">' in dom and "0.9123" in dom and "Frame AUROC" in dom
    assert dom.count("<img") >= 5  # 3 plots and 2 top frames


def test_report_notes_a_plot_it_cannot_draw(tmp_path):
    folder = make_eval_folder(tmp_path / "eval")
    text = (folder / "scores.csv").read_text().splitlines()
    text[1] = "01,0,nan,0,0"  # a frame no window covered
    (folder / "scores.csv").write_text("\n".join(text) + "\n")
    page = parse(write_report(folder))
    assert not (folder / "roc.png").exists()
    assert any("no ROC plot" in t and "non-finite" in t for t in page.text)
    assert (folder / "scores.png").is_file()


def test_report_shows_protocol_and_per_scene_tables(tmp_path):
    folder = make_eval_folder(tmp_path / "eval")
    metrics = dict(METRICS, rbdc=0.4321, tbdc=0.6543, frame_auroc_macro_padded=0.9321,
                   protocol={"normalisation": "minmax: per test video", "normalisation_uses_test_statistics": True,
                             "smoothing_sigma": 3.0},
                   per_scene={"01": {"n_videos": 2, "n_test_frames": 40, "frame_auroc_micro": 0.777},
                              "02": {"n_videos": 1, "n_test_frames": 20, "frame_auroc_micro": None}})
    (folder / "metrics.json").write_text(json.dumps(metrics))
    page = parse(write_report(folder))
    ids = {a.get("id") for t, a in page.tags if t == "table"}
    assert {"metrics", "protocol", "per-scene"} <= ids
    assert "0.4321" in page.cells and "0.6543" in page.cells and "0.9321" in page.cells
    assert not any("per_scene" in c or "minmax" in c for c in page.cells)  # not rows of the metrics table
    text = " ".join(page.text)
    assert "RBDC" in text and "macro padded" in text and "minmax: per test video" in text and "0.7770" in text
