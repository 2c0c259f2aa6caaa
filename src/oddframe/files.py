"""Writing files safely: names derived from user data, atomic writes, JSON for people and machines.

The bottom of the package: everything that writes a file (runs, the pipeline's outputs, prepared folders,
reports) goes through :func:`atomic_write`, so a killed process never leaves a half-written file at a final path.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable


def safe_name(name: str) -> str:
    """A file-name-safe version of a video name: runs of other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "video"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def json_safe(x: Any) -> Any:
    """``x`` with NaN and infinities as None, numpy/torch scalars as plain numbers, paths as strings."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:  # numpy / torch scalars
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write indented JSON atomically; NaN and infinities become null, other objects their ``str``."""
    text = json.dumps(json_safe(data), indent=2, default=str) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))
