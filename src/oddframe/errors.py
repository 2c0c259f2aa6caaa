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
