"""Hysteresis of anomaly events: starts after min_frames above the threshold, ends after a quiet period."""

from __future__ import annotations

import math

import pytest

from oddframe.events import EventTracker


def _run(scores, *, fps=10.0, **kwargs):
    """Feed scores at ``fps``; return (kind, event dict) in order, then the tracker."""
    tr = EventTracker(**kwargs)
    out = []
    for i, s in enumerate(scores):
        out += [(u.kind, u.event.to_dict()) for u in tr.update(i, i / fps, s, payload=f"frame{i}")]
    return out, tr


def test_one_event_with_its_start_end_and_peak():
    scores = [0, 0, 0, 2, 3, 5, 4, 2, 0, 0, 0, 0, 0, 0]
    updates, tr = _run(scores, threshold=1.0, min_frames=3, quiet=0.3)
    assert [k for k, _ in updates] == ["start", "end"]
    start, end = updates[0][1], updates[1][1]
    assert start["start_frame"] == 3 and start["end_frame"] is None  # starts at the first frame of the run
    assert start["peak_frame"] == 5 and start["peak_score"] == 5  # the peak within the confirming run
    assert end["start_frame"] == 3 and end["end_frame"] == 7 and end["end_time"] == pytest.approx(0.7)
    assert end["peak_frame"] == 5 and end["ended_by"] == "quiet"
    assert end["duration"] == pytest.approx(0.4)
    assert end["frames"] == 5 and end["frames_above"] == 5
    assert tr.current is None


def test_the_start_is_reported_when_confirmed_and_the_end_after_the_quiet_period():
    tr = EventTracker(threshold=1.0, min_frames=3, quiet=0.3)
    when = {}
    for i, s in enumerate([2, 2, 2, 0, 0, 0, 0, 0]):
        for u in tr.update(i, i / 10, s):
            when[u.kind] = i
    assert when == {"start": 2, "end": 5}  # end: frame 5 is 0.3 s after the last frame above (frame 2)


def test_a_run_shorter_than_min_frames_starts_nothing():
    updates, _ = _run([0, 2, 2, 0, 2, 0, 2, 2, 0], threshold=1.0, min_frames=3, quiet=0.0)
    assert updates == []


def test_min_frames_one_and_quiet_zero_follow_every_frame():
    updates, _ = _run([0, 2, 0, 2, 2, 0], threshold=1.0, min_frames=1, quiet=0.0)
    assert [(k, e["start_frame"], e["end_frame"]) for k, e in updates] == [
        ("start", 1, None), ("end", 1, 1), ("start", 3, None), ("end", 3, 4)]


def test_dips_shorter_than_the_quiet_period_keep_one_event():
    scores = [2, 2, 0, 0, 2, 0, 2, 2, 0, 0, 0, 0, 0]
    updates, _ = _run(scores, threshold=1.0, min_frames=2, quiet=0.35)
    assert [k for k, _ in updates] == ["start", "end"]
    assert updates[-1][1]["start_frame"] == 0 and updates[-1][1]["end_frame"] == 7


def test_a_lower_end_threshold_holds_the_event_through_scores_between_the_two():
    scores = [2, 2, 0.8, 0.8, 0.8, 0.2, 0.2, 0.2, 0.2]
    held, _ = _run(scores, threshold=1.0, end_threshold=0.5, min_frames=2, quiet=0.2)
    plain, _ = _run(scores, threshold=1.0, min_frames=2, quiet=0.2)
    assert held[-1][1]["end_frame"] == 4  # 0.8 > 0.5 keeps it alive
    assert plain[-1][1]["end_frame"] == 1


def test_a_score_equal_to_the_threshold_is_not_above():
    updates, _ = _run([1.0, 1.0, 1.0, 1.0], threshold=1.0, min_frames=1, quiet=0.0)
    assert updates == []


def test_nan_frames_carry_no_evidence():
    nan = math.nan
    # A NaN breaks the run that would start an event...
    updates, _ = _run([2, nan, 2, 0], threshold=1.0, min_frames=2, quiet=0.0)
    assert updates == []
    # ...and the quiet period runs on through NaN frames.
    updates, _ = _run([2, 2, nan, nan, nan, 0], threshold=1.0, min_frames=2, quiet=0.25)
    assert [k for k, _ in updates] == ["start", "end"] and updates[1][1]["end_frame"] == 1


def test_close_ends_the_open_event_at_its_last_frame_above_and_forgets_a_short_run():
    tr = EventTracker(threshold=1.0, min_frames=2, quiet=5.0)
    for i, s in enumerate([2, 3, 2, 0, 0]):
        tr.update(i, i / 10, s, payload=i)
    (u,) = tr.close("stopped")
    assert u.kind == "end" and u.event.end_frame == 2 and u.event.ended_by == "stopped"
    assert u.event.payload == 1  # the peak frame's payload
    assert tr.close() == []
    tr.update(10, 1.0, 2.0)  # one frame above: not yet an event
    assert tr.close("gap") == []
    assert tr.update(11, 1.1, 2.0) == []  # the run was forgotten: a new run starts here


def test_events_are_numbered_in_order():
    scores = [2, 2, 0, 0, 0, 2, 2, 0, 0, 0]
    updates, tr = _run(scores, threshold=1.0, min_frames=2, quiet=0.15)
    assert [(k, e["id"]) for k, e in updates] == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    assert tr.n_events == 2


@pytest.mark.parametrize("kwargs,match", [
    ({"threshold": math.nan}, "finite"), ({"threshold": 1.0, "min_frames": 0}, "min_frames"),
    ({"threshold": 1.0, "quiet": -1}, "quiet"), ({"threshold": 1.0, "end_threshold": 2.0}, "end_threshold"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EventTracker(**kwargs)


def test_close_refuses_an_unknown_reason():
    with pytest.raises(ValueError, match="quiet, gap, stopped"):
        EventTracker(threshold=1.0).close("bored")
