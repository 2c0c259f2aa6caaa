"""What a person sees: anomaly panels with heatmaps and boxes, anomaly videos, plots and the HTML run report.

Image maths lives in pure functions (:mod:`~oddframe.render.overlay`, :mod:`~oddframe.render.regions`,
:mod:`~oddframe.render.panel`); :mod:`~oddframe.render.video`,
:mod:`~oddframe.render.plots` and :mod:`~oddframe.render.report` write files.
"""

from oddframe.render.overlay import (
    BOX_COLOURS,
    Box,
    colorize,
    draw_boxes,
    draw_outline,
    find_boxes,
    frame_to_rgb,
    unit_loss,
)
from oddframe.render.panel import compose_panel
from oddframe.render.plots import plot_loss, plot_roc, plot_scores
from oddframe.render.report import write_report
from oddframe.render.video import AnomalyVideoWriter, pick_codec, write_side_by_side

__all__ = [
    "BOX_COLOURS",
    "AnomalyVideoWriter",
    "Box",
    "colorize",
    "compose_panel",
    "draw_boxes",
    "draw_outline",
    "find_boxes",
    "frame_to_rgb",
    "pick_codec",
    "plot_loss",
    "plot_roc",
    "plot_scores",
    "unit_loss",
    "write_report",
    "write_side_by_side",
]
