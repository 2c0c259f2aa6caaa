"""The fault suite: what oddframe does when things go wrong (docs/RELIABILITY.md lists every case and its outcome).

Tiny data and a tiny model, trained once per session; command-line runs in a subprocess where a signal must reach a
real process, bounded in time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from oddframe import api
from oddframe.data.synthetic import write_synthetic_dataset

from faultkit import TINY



@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Synthetic sequences (generic layout): 6 normal training videos, 2 test videos of 8 frames, 32x32."""
    root = tmp_path_factory.mktemp("faults_data")
    write_synthetic_dataset(root, n_train=6, n_test=2, length=8, size=32, anomaly="object", seed=3)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A trained and calibrated conv3d_ae run on :func:`tiny_data` (do not modify it: copy it)."""
    run = tmp_path_factory.mktemp("faults_run") / "run"
    api.train(api.load_config(None, TINY + [f"data.path={tiny_data}"]), run, progress=False)
    api.calibrate(run, progress=False)
    return run
