"""Helpers of the fault suite: run the command line in a subprocess, wait, signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: A tiny conv3d_ae on 32x32 clips of 4 frames: trains in seconds on one thread.
TINY = ["model.name=conv3d_ae", "model.params.width=0.125", "data.size=[32,32]", "data.clip_length=4",
        "data.train_stride=2", "train.epochs=1", "train.batch_size=4", "score.stride=2"]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "COLUMNS": "200"}


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``oddframe ARGS`` in a fresh process; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "oddframe.cli", *map(str, args)], capture_output=True, text=True,
                          env=cli_env(), timeout=timeout, cwd=ROOT)


def start_cli(*args: str) -> subprocess.Popen:
    """``oddframe ARGS`` started in the background (own session, so a signal reaches only it)."""
    return subprocess.Popen([sys.executable, "-m", "oddframe.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=ROOT, start_new_session=True)


def wait_for(predicate, *, timeout: float = 180, what: str = "condition") -> None:
    """Poll ``predicate`` every 20 ms until it is true (fails the test after ``timeout`` seconds)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def lines_in(path: Path) -> int:
    """Complete lines of a text file (0 if absent)."""
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def stop(proc: subprocess.Popen, sig: int, *, timeout: float = 180) -> tuple[int, str, str]:
    """Send ``sig`` to ``proc`` and wait for it; ``(exit code, stdout, stderr)``."""
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"process did not stop within {timeout} s of {signal.Signals(sig).name}: {err[-2000:]}")
    return proc.returncode, out, err
