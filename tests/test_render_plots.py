"""Plots: non-empty PNGs of the expected pixel size, with clear errors for unusable input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from oddframe.render.plots import plot_loss, plot_roc, plot_scores


def png(path: Path) -> np.ndarray:
    """Decoded RGB image of a PNG; fails on anything that is not a readable PNG."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def not_blank(img: np.ndarray) -> bool:
    """More than a flat background: a plot draws lines and text in several colours."""
    return len(np.unique(img.reshape(-1, 3), axis=0)) > 20


def test_plot_loss_from_csv_rows_and_columns(tmp_path):
    # history.csv rows come back as strings; a loss spanning decades; lr decaying.
    rows = [{"epoch": str(i // 10), "step": str(i), "loss": str(2.0 / (1 + i)), "lr": str(1e-3 * 0.98**i),
             "seconds": "0.1"} for i in range(60)]
    img = png(plot_loss(rows, tmp_path / "loss.png"))
    assert img.shape == (450, 800, 3) and not_blank(img)
    cols = {"epoch": [1, 2, 3], "loss": [0.5, 0.4, 0.35]}
    img = png(plot_loss(cols, tmp_path / "sub" / "loss2.png", figsize=(4, 3), dpi=50))
    assert img.shape == (150, 200, 3) and not_blank(img)
    with pytest.raises(ValueError, match="needs a 'loss' column"):
        plot_loss([{"epoch": 1, "lr": 0.1}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no finite loss"):
        plot_loss({"loss": ["", "nan"]}, tmp_path / "x.png")


def test_plot_scores_single_and_per_video(tmp_path):
    frames = np.r_[np.arange(80), np.arange(50)]
    videos = ["01"] * 80 + ["02"] * 50
    labels = np.zeros(130)
    labels[30:45] = 1
    labels[100:120] = 1
    scores = np.random.default_rng(0).uniform(0, 0.3, 130) + 0.5 * labels
    one = png(plot_scores(frames[:80], scores[:80], tmp_path / "one.png", labels=labels[:80], threshold=0.5))
    assert one.shape == (int((2.6 + 0.8) * 100), 1000, 3) and not_blank(one)
    two = png(plot_scores(frames, scores, tmp_path / "two.png", labels=labels, threshold=0.5, videos=videos))
    assert two.shape == (int((2 * 2.6 + 0.8) * 100), 1000, 3)
    # Shading: the ground-truth span is drawn in a red tint that the unlabelled plot does not have.
    bare = png(plot_scores(frames[:80], scores[:80], tmp_path / "bare.png"))
    tint = lambda im: ((im[..., 2] > 230) & (im[..., 1] < 225) & (im[..., 1] > 190)).sum()  # BGR light red
    assert tint(one) > 1000 and tint(bare) < 50
    with pytest.raises(ValueError, match="one length"):
        plot_scores(frames, scores[:10], tmp_path / "x.png")


def test_plot_roc(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(100), np.ones(40)]
    scores = rng.normal(0, 1, 140) + 1.5 * labels
    img = png(plot_roc(labels, scores, tmp_path / "roc.png"))
    assert img.shape == (500, 550, 3) and not_blank(img)
    with pytest.raises(ValueError, match="both normal"):
        plot_roc(np.zeros(10), np.arange(10), tmp_path / "x.png")
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        plot_roc(np.r_[np.zeros(5), np.full(5, -1)], np.arange(10), tmp_path / "x.png")


def test_region_curve_and_bench_plots(tmp_path):
    from oddframe.render.plots import plot_region_curve, plot_roc_models, plot_scores_grid

    path = plot_region_curve([0.0, 0.2, 0.9, 3.0], [0.0, 0.5, 0.4, 0.9], [0.0, 1.0, 1.0, 1.0], tmp_path / "r.png",
                             rbdc=0.41, tbdc=0.95)
    assert path.stat().st_size > 5000
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30), np.ones(10)]
    roc = plot_roc_models({"a": (y, y + rng.normal(0, 0.5, 40)), "one class": (np.zeros(5), np.arange(5.0))},
                          tmp_path / "roc.png")
    assert roc.stat().st_size > 5000
    frames = np.arange(40)
    grid = plot_scores_grid(["01", "02"], {"a": {"01": (frames, y, y), "02": (frames, 1 - y, None)}, "b": {"01": (frames, y, y)}},
                            tmp_path / "g.png")
    assert grid.stat().st_size > 5000
    with pytest.raises(ValueError, match="at least one video"):
        plot_scores_grid([], {"a": {}}, tmp_path / "x.png")
