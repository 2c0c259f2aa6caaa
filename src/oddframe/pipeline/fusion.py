"""The engine's fused detector: several members over one decoded frame stream, their verdicts combined.

Each video is decoded once; every member gets its own transform (size, channels), derived inputs and
:class:`~oddframe.pipeline.engine.Detector` (its own clip length, stride, aggregation and scoring rule), so each
member scores each frame once, however its windows overlap. Members that transform frames alike share them, and
the derived inputs they both ask for (optical flow) are computed once. The members' results are zipped frame by
frame and combined by :class:`~oddframe.models.fusion.FusionModel` (calibrated scores and maps, then the rule). The
engine's ``detector_for`` and ``stream_video`` hand fused runs here, so calibrate, detect and evaluate treat a fused
run like any other.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator

import cv2
import numpy as np
import torch

from oddframe.config import Config
from oddframe.data.layouts import Video
from oddframe.data.loading import iter_frames
from oddframe.data.transforms import frame_transform
from oddframe.errors import ConfigError
from oddframe.features import with_features
from oddframe.models.fusion import MAP_QUANTILE, FusionModel
from oddframe.pipeline.engine import Detector, FrameResult, Timing

#: Map pixels sampled per frame and member to estimate the normal map scale.
PIXELS_PER_FRAME = 256


class _Branch:
    """One member's view of a shared decoded stream (what :func:`iter_frames` needs of a source)."""

    def __init__(self, frames: Iterator, path: object) -> None:
        self._frames, self.path = frames, path

    def __iter__(self) -> Iterator:
        return self._frames


def share_streams(
    transforms: list[object], specs: list[dict[str, dict]]
) -> list[tuple[list[int], dict[str, dict]]]:
    """Which members can share one transformed frame stream: ``[(member indices, derived inputs to compute), ...]``.

    Members with equal frame transforms share the frames, and a derived input they both ask for with the same
    parameters (optical flow, say, for ``motion_density`` and a flow ``graph_oneclass``) is computed once per
    frame; a member asking for the same input with other parameters gets a stream of its own.

    Args:
        transforms: each member's :class:`~oddframe.data.transforms.FrameTransform` (compared by equality).
        specs: each member's ``derived_inputs()``.
    """
    groups: list[tuple[object, list[int], dict[str, dict]]] = []
    for i, (transform, spec) in enumerate(zip(transforms, specs)):
        for t, members, union in groups:
            if t == transform and all(union.get(name, params) == params for name, params in spec.items()):
                members.append(i)
                union.update(spec)
                break
        else:
            groups.append((transform, [i], dict(spec)))
    return [(members, union) for _, members, union in groups]


class FusedDetector:
    """Runs one member :class:`Detector` per fusion member over one frame stream; yields fused :class:`FrameResult`s.

    Args:
        model: the fusion (members, their configs and their normal statistics).
        config: the fused run's config (its ``data.size`` is the fused map's resolution).
        device: where the members run.
    """

    def __init__(self, model: FusionModel, config: Config, *, device: torch.device | str | None = None) -> None:
        intervals = {(c.data.sample_interval, c.data.sample_interval_sec) for c in model.member_configs}
        if len(intervals) > 1:
            raise ConfigError(f"fusion members sample frames differently ({sorted(intervals, key=str)}): their "
                              "data.sample_interval and data.sample_interval_sec must agree")
        self.model = model.eval()
        self.config = config
        self.size = tuple(config.data.size)
        self.members = [
            Detector(member, clip_length=c.data.clip_length, stride=c.score.stride, batch_size=c.score.batch_size,
                     aggregate=c.score.aggregate, rule=c.score.rule, device=device)
            for member, c in zip(model.members, model.member_configs)
        ]
        self.timing = Timing()

    def run(self, frames, video: str = "") -> Iterator[FrameResult]:
        """Not available: members transform the decoded frames their own way, so a fused run scores videos
        (:meth:`stream`), not streams transformed for one model (such as prepared clips)."""
        raise ConfigError("a fused run scores videos and datasets, not prepared clips: calibrate it on the footage "
                          "(oddframe calibrate RUN --data FOLDER)")

    def member_results(self, video: Video, *, keep_raw: bool = False) -> Iterator[list[FrameResult]]:
        """Each frame's results from every member, in stream order (the source decoded once; members that transform
        frames alike share the transformed frames and each derived input, computed once: see :func:`share_streams`)."""
        configs = self.model.member_configs
        groups = share_streams([frame_transform(c.data) for c in configs],
                               [det.model.derived_inputs() for det in self.members])
        branches = itertools.tee(iter(video.source), len(groups))
        streams: list = [None] * len(self.members)
        for (members, specs), branch in zip(groups, branches):
            cfg = configs[members[0]].data
            frames = iter_frames(_Branch(branch, video.source.path), frame_transform(cfg),
                                 sample_interval=cfg.sample_interval, sample_interval_sec=cfg.sample_interval_sec,
                                 keep_raw=keep_raw and 0 in members)
            shared = itertools.tee(with_features(frames, specs), len(members))
            for i, part in zip(members, shared):
                streams[i] = self.members[i].run(part, video.name)
        for results in zip(*streams, strict=True):
            if len({r.index for r in results}) != 1:
                raise RuntimeError(f"{video.name}: fusion members got out of step ({[r.index for r in results]})")
            yield list(results)

    def _resize(self, amap: np.ndarray) -> np.ndarray:
        h, w = self.size
        if amap.shape == (h, w):
            return amap
        return cv2.resize(amap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)

    def stream(self, video: Video, *, keep_raw: bool = False) -> Iterator[FrameResult]:
        """Fused results of every frame of ``video``: score = the rule over the members' calibrated scores, map = the
        rule over their calibrated maps (at ``data.size``); the frame shown is the first member's."""
        for results in self.member_results(video, keep_raw=keep_raw):
            raw = torch.tensor([[r.score] for r in results], dtype=torch.float64)
            calibrated = self.model.calibrated_scores(raw.float())[:, 0]
            invalid = any(r.invalid for r in results)  # a member without evidence: the fusion has none either
            score = math.nan if invalid else float(self.model.fuse_scores(raw.float())[0])
            maps = torch.from_numpy(np.stack([self._resize(r.amap) for r in results]))
            fused = self.model.fuse_maps(maps).numpy().astype(np.float32)
            first = results[0]
            valid = cv2.resize(first.valid.astype(np.uint8), self.size[::-1], interpolation=cv2.INTER_NEAREST) > 0
            self._sum_timing()
            yield FrameResult(video.name, first.index, first.time, score, fused * valid, first.frame, valid,
                              first.raw, members=dict(zip(self.model.member_names, calibrated.tolist())), invalid=invalid)

    def _sum_timing(self) -> None:
        t = self.timing
        t.decode = sum(d.timing.decode for d in self.members)
        t.model = sum(d.timing.model for d in self.members)
        t.scoring = sum(d.timing.scoring for d in self.members)
        t.frames = self.members[0].timing.frames


def member_statistics(detector: FusedDetector, videos: list[Video], *, seed: int = 0,
                      progress=None) -> dict[str, list[float]]:
    """Each member's normal statistics over ``videos`` (normal frames only): mean and std of raw frame scores and
    the :data:`~oddframe.models.fusion.MAP_QUANTILE` percentile of map values (sampled pixels of valid areas).

    Returns:
        ``{"score_mean": [M], "score_std": [M], "map_scale": [M]}``.
    """
    rng = np.random.default_rng(seed)
    m = len(detector.members)
    scores: list[list[float]] = [[] for _ in range(m)]
    pixels: list[list[np.ndarray]] = [[] for _ in range(m)]
    for video in videos:
        for results in detector.member_results(video):
            for i, r in enumerate(results):
                scores[i].append(r.score)
                values = r.amap[r.valid] if r.valid.shape == r.amap.shape else r.amap.ravel()
                if values.size:
                    pixels[i].append(rng.choice(values, size=min(PIXELS_PER_FRAME, values.size), replace=False))
            if progress is not None:
                progress()
    if not scores[0]:
        raise ConfigError("no normal frames to calibrate the fusion members on")
    s = [np.asarray(x, dtype=np.float64) for x in scores]

    def scale(p: list[np.ndarray]) -> float:
        # A member whose normal maps are mostly exact zeros falls back to their maximum, then to 1.
        values = np.concatenate(p) if p else np.zeros(1)
        return float(np.percentile(values, MAP_QUANTILE)) or float(values.max()) or 1.0

    return {
        "score_mean": [float(x.mean()) for x in s],
        "score_std": [float(x.std() or 1.0) for x in s],
        "map_scale": [scale(p) for p in pixels],
    }
