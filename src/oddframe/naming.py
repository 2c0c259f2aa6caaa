"""File names derived from user data (video names become file names of maps, plots and panels)."""

from __future__ import annotations

import re


def safe_name(name: str) -> str:
    """A file-name-safe version of a video name: runs of other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "video"
