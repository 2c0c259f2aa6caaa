"""The one progress bar of every long task (training, detection, calibration, evaluation, prep, review)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(enabled: bool = True, *, stderr: bool = False) -> Progress:
    """A Rich progress bar: description, bar, done/total, elapsed and remaining time; a no-op when disabled.

    Use it as a context manager: ``with progress_bar(show) as bar: task = bar.add_task("scoring", total=n)``.
    ``stderr=True`` draws it on stderr, for commands whose stdout is data (``--json``).
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True) if stderr else None,
        disable=not enabled,
    )
