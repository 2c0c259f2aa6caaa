"""Derived inputs computed once per frame in the stream, for the models that ask for them.

Registered: ``flow`` (:mod:`.flow`, dense optical flow), ``diff`` and ``background`` (:mod:`.background`, frame
difference and an OpenCV background model). :mod:`.regions` holds the pure functions that turn them into moving
regions and region attributes.

A model names what it needs in :meth:`~oddframe.models.base.AnomalyModel.derived_inputs` (``{"flow": {...}}``);
the engine and the trainer wrap the frame stream in :func:`with_features`, which computes each derived input once
per frame and attaches it to the frame (``TransformedFrame.features``); windows carry them to the model as
``Batch.extras`` ``(B, C_k, T, H, W)``. A new derived input is a class with ``channels``, ``reset()`` and
``__call__(frame) -> (C_k, H, W)`` registered in :data:`FEATURES`; one that compares a frame with an earlier one
says how many opening frames have none in ``lead`` (they take the first real value, see :func:`with_features`).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import numpy as np

from oddframe.data.loading import TransformedFrame
from oddframe.features.background import BackgroundModel, FrameDifference
from oddframe.features.flow import OpticalFlow


class FeatureExtractor(Protocol):
    """A per-video, possibly stateful computation of one derived input from the transformed frames."""

    channels: int
    #: Opening frames of a video without the earlier frame this input compares with (optional attribute, 0).
    lead: int

    def reset(self) -> None:
        """Forget earlier frames (a new video starts)."""

    def __call__(self, frame: TransformedFrame) -> np.ndarray:
        """The derived input of ``frame``, ``(channels, H, W)`` float32 at the frame's resolution."""


#: Registered derived inputs: name -> constructor taking the model's keyword parameters for it.
FEATURES: dict[str, Callable[..., FeatureExtractor]] = {
    "flow": OpticalFlow,
    "diff": FrameDifference,
    "background": BackgroundModel,
}


def make_extractors(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, FeatureExtractor]:
    """One extractor per requested derived input; a ``ValueError`` lists the known names for an unknown one."""
    unknown = sorted(set(specs) - set(FEATURES))
    if unknown:
        raise ValueError(f"unknown derived input(s) {', '.join(unknown)}; known: {', '.join(sorted(FEATURES))}")
    return {name: FEATURES[name](**dict(params)) for name, params in specs.items()}


def with_features(
    frames: Iterable[TransformedFrame],
    specs: Mapping[str, Mapping[str, Any]],
    *,
    timing: dict[str, float] | None = None,
) -> Iterator[TransformedFrame]:
    """Attach every requested derived input to each frame of one video's stream, computing each once per frame.

    Args:
        frames: the transformed frames of ONE video, in order (extractors such as optical flow keep the previous
            frame, so a new video needs a new call).
        specs: ``{name: params}``, e.g. ``{"flow": {"method": "dis", "preset": "medium"}}``; empty = pass through.
        timing: if given, seconds spent on each derived input are added to ``timing[name]``.
    """
    if not specs:
        yield from frames
        return
    extractors = make_extractors(specs)
    # The first ``lead`` frames of a video have no predecessor for a two-frame input (flow, difference): their
    # motion is unknown, not zero (zero would make every video open on a frame that looks perfectly calm). They
    # are held back until the first frame that has one, and take its value, the motion measured closest to them.
    leads = {name: int(getattr(extract, "lead", 0)) for name, extract in extractors.items()}
    held: list[TransformedFrame] = []
    for n, frame in enumerate(frames):
        for name, extract in extractors.items():
            t0 = time.perf_counter()
            frame.features[name] = extract(frame)
            if timing is not None:
                timing[name] = timing.get(name, 0.0) + time.perf_counter() - t0
        if any(n < lead for lead in leads.values()):
            held.append(frame)
            continue
        for k, early in enumerate(held):
            for name, lead in leads.items():
                if k < lead:
                    early.features[name] = frame.features[name]
            yield early
        held = []
        yield frame
    yield from held  # a video shorter than the lead: those frames keep their zero motion
