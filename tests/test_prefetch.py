"""The decoding thread of detection: same items in the same order, errors raised, sources closed early."""

from __future__ import annotations

import threading

import pytest

from oddframe.data.loading import prefetched


def test_prefetched_keeps_items_and_order():
    assert list(prefetched(iter(range(1000)), depth=3)) == list(range(1000))
    assert list(prefetched([])) == []


def test_prefetched_raises_the_producers_error_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise OSError("broken frame 3")

    got = []
    with pytest.raises(OSError, match="broken frame 3"):
        for x in prefetched(source()):
            got.append(x)
    assert got == [1, 2]


def test_stopping_early_closes_the_source_and_ends_the_thread():
    closed = threading.Event()

    def source():
        try:
            for i in range(10**9):
                yield i
        finally:
            closed.set()  # what closes a video container

    it = prefetched(source(), depth=2)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    assert closed.is_set()
    assert not any(t.name == "oddframe-prefetch" for t in threading.enumerate())
