"""Shared fixtures. Tests that need the real data in ``../shared/data`` skip with a reason where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (CI has it; a user's clone usually does not)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (only present on the project's machines)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test on one intra-op thread: the models here are tiny, results do not depend on the core count, and
    two OpenMP threads slow down by an order of magnitude when another process holds one of the 2 cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
