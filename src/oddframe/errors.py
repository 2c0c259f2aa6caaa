"""Errors oddframe raises for bad input: each names the file or setting and what is wrong."""

from __future__ import annotations


class OddframeError(Exception):
    """Base class of every error oddframe raises on purpose."""


class SourceError(OddframeError):
    """A frame source (video, image folder, FITS, array) cannot be read."""


class LayoutError(OddframeError):
    """A dataset folder matches no known layout, or its ground truth is inconsistent."""


class ConfigError(OddframeError):
    """A configuration file or override is invalid."""


class CheckpointError(OddframeError):
    """A run folder or checkpoint is missing, incomplete or unsafe."""


class BackendError(OddframeError):
    """An exported-inference backend is not installed, or a model cannot be exported."""


class OutputError(OddframeError):
    """An output cannot be written: another oddframe process is writing it, or it exists and would be replaced."""


class Interrupted(OddframeError):
    """A task stopped early on SIGINT or SIGTERM after saving what it had done; the message says what was written.

    Attributes:
        signum: the signal that stopped it (``signal.SIGINT`` or ``signal.SIGTERM``).
        exit_code: the conventional exit status, ``128 + signum`` (130 for Ctrl-C, 143 for SIGTERM).
    """

    def __init__(self, message: str, *, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
