"""The one progress bar of every long task (training, detection, calibration, evaluation, prep, review)."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(enabled: bool = True) -> Progress:
    """A Rich progress bar: description, bar, done/total, elapsed and remaining time; a no-op when disabled.

    Use it as a context manager: ``with progress_bar(show) as bar: task = bar.add_task("scoring", total=n)``.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
