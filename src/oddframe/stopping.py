"""Stopping a long task cleanly on Ctrl-C (SIGINT) or SIGTERM: finish the current step, save, say what was saved.

Inside ``with StopRequest() as stop:`` the first SIGINT or SIGTERM only sets ``stop.signum``; the task checks
``stop.requested`` between steps (a frame, a training step), closes its outputs and raises
:class:`~oddframe.errors.Interrupted`. A second signal stops at once, as Python normally does (``KeyboardInterrupt``).
Handlers are installed only in the main thread (Python allows no other), and the previous ones come back on exit.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step.

    Args:
        what: what stops, for the one line printed when the signal arrives (e.g. ``"detection"``).
        enabled: False leaves the signals alone (e.g. in a multi-process run, where ranks must stop together).
    """

    def __init__(self, what: str = "the task", *, enabled: bool = True) -> None:
        self.what, self.enabled = what, enabled
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived."""
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: stop now
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        sys.stderr.write(
            f"\n{signal.Signals(signum).name}: stopping {self.what} after the current step and saving what is done "
            "(send it again to stop at once)\n"
        )
        sys.stderr.flush()

    def __enter__(self) -> "StopRequest":
        if self.enabled and threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _restore(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)  # type: ignore[arg-type]
        self._previous = {}

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._restore()
