"""Writing files safely: names derived from user data, atomic writes, JSON for people and machines.

The bottom of the package: everything that writes a file (runs, the pipeline's outputs, prepared folders,
reports) goes through :func:`atomic_write`, so a killed process never leaves a half-written file at a final path.
Output folders and files are held with :func:`output_lock` while a task writes them, so two processes never write
one output at the same time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from oddframe.errors import OutputError

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt
else:
    import fcntl


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process's umask (the only portable way is to set it and put it back)


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
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; a final file gets the usual permissions
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


def lock_file_for(path: Path, *, folder: bool = True) -> Path:
    """The lock file of an output: ``FOLDER/.oddframe.lock`` for a folder, ``.NAME.lock`` beside a file."""
    path = Path(path)
    return path / ".oddframe.lock" if folder else path.parent / f".{path.name}.lock"


def _try_lock(fd: int) -> bool:
    try:
        if sys.platform == "win32":  # pragma: no cover
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def output_lock(path: Path, task: str, *, folder: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on an output folder (or file) while ``task`` writes it.

    The lock is an OS advisory lock (``flock``) on a small file that records who holds it, so it is released
    when the holder exits for any reason, ``kill -9`` included: there are no stale locks to clean up.

    Args:
        path: the output folder (``--out``) or file (``--video``); the folder that holds the lock is created.
        task: what writes it, for the message another process gets (e.g. ``"oddframe detect"``).
        folder: ``path`` is a folder (else a file).

    Raises:
        OutputError: another process holds the lock; the message names the output and the holder.
    """
    lock = lock_file_for(path, folder=folder)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            try:
                holder = json.loads(Path(lock).read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            who = ", ".join(f"{k} {holder[k]}" for k in ("task", "pid", "host", "since") if holder.get(k)) or "unknown"
            raise OutputError(
                f"{path} is being written by another process ({who}); wait for it to finish or choose another "
                "output (two writers would mix or lose their results)"
            )
        info = {"task": task, "pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield lock
    finally:
        os.close(fd)  # closing the descriptor releases the lock
