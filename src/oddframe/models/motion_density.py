"""``motion_density``: object-level attributes scored by density, detector-free (after AI-VAD).

Reiss & Hoshen, "Attribute-based Representations for Accurate and Interpretable Video Anomaly Detection"
(AI-VAD, TMLR 2023, arXiv 2212.00789) describe every object of a frame by its velocity, pose and deep
appearance features, fit one density per attribute on the objects of normal footage, calibrate each
attribute's score on normal training data and sum them (their Sec. 3, Eq. 1-4). Velocity alone, a Gaussian
mixture over a histogram of flow orientations holding the mean flow magnitude, already reaches 98.8 frame AUROC
on Ped2 (their Table 3). This model keeps that recipe without a pretrained detector or flow network:

- **objects**: moving regions of OpenCV DIS flow and the frame difference (:mod:`oddframe.features.regions`);
- **attributes** (each switchable): ``velocity`` (orientation histogram of mean L1 flow magnitude, ``B`` bins;
  optionally rescaled for perspective by the typical object height at the region's image row, a line fitted to
  the normal regions' boxes: AI-VAD divides ShanghaiTech speeds by the detected person's height, which a
  fragment of a person would make noisy), ``size`` (box height and width), ``position`` (box centre) and
  ``appearance`` (HOG of the crop, in place of CLIP features);
- **densities**: a Gaussian mixture per attribute, or over several attributes jointly (``"velocity+size"``, the
  default: without a detector, fragments of people are small and fast and merged groups big and slow, which
  only a joint density of speed and size tells apart from a fast bicycle), fitted by scikit-learn from several
  EM starts whose densities are averaged (``starts``; one start's local optimum moved Avenue's AUROC by 0.08) and
  kept as parameters; the distance to the nearest normal descriptor for appearance (AI-VAD Eq. 3);
- **calibration**: each attribute's score is mapped by the minimum and 99.9th percentile of the scores of
  normal training regions, computed leave-one-video-out (AI-VAD's ``score_calibration.py``), then summed. The
  leave-one-out mixtures and the video of each appearance bank row are kept, so ``oddframe calibrate`` scores the
  training frames held out too (:meth:`MotionDensity.held_out_training`), never in-sample.

The map paints each region's score on its box (``paint="box"``, the default: the extent of the object, whose still
parts the motion mask leaves out) or on its moving pixels (``"region"``); elsewhere it holds the score of the least
anomalous normal training frame, so a frame without moving regions scores as that frame, and with ``score.rule:
max`` the frame score is the maximum over regions. Every fitted quantity is a buffer saved in ``model.safetensors``.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from oddframe.data.clips import Batch
from oddframe.features import regions as R
from oddframe.features.flow import to_grey_uint8
from oddframe.models import density as D
from oddframe.models.base import AnomalyModel
from oddframe.registry import register_model

ATTRIBUTES = ("velocity", "size", "position", "appearance")
CHANGES = ("none", "diff", "background")


def _parse_densities(attributes: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """``["velocity+size", "appearance"]`` -> ``(("velocity", "size"), ("appearance",))``, checked."""
    out = []
    for entry in attributes:
        parts = tuple(p.strip() for p in str(entry).split("+"))
        bad = [p for p in parts if p not in ATTRIBUTES]
        if bad or not parts or len(set(parts)) < len(parts):
            raise ValueError(f"attribute {entry!r}: use names from {', '.join(ATTRIBUTES)}, joined by '+' for a joint "
                             f"density, each once")
        if "appearance" in parts and len(parts) > 1:
            raise ValueError(f"attribute {entry!r}: appearance has its own kNN density and cannot be joined")
        out.append(parts)
    if not out or len({a for parts in out for a in parts}) < sum(len(parts) for parts in out):
        raise ValueError(f"attributes must be a non-empty list naming each attribute at most once; got {list(attributes)}")
    return tuple(out)


@register_model("motion_density")
class MotionDensity(AnomalyModel):
    """Detector-free object velocity, size, position and appearance densities (after AI-VAD), fitted not trained.

    Args:
        in_channels, clip_length, image_size: the input (every frame is scored on its own; windows of any length).
        flow_method, flow_preset, flow_scale, flow_step, flow_refine: the optical flow
            (:class:`oddframe.features.flow.OpticalFlow`).
        flow_threshold: pixels moving faster than this (pixels per frame) may belong to a region.
        change: second cue of the motion mask: ``"diff"`` (frame difference), ``"background"`` (MOG2) or ``"none"``.
        change_threshold: a pixel changed when its frame difference exceeds this many grey levels (0-255);
            for ``"background"`` the model's foreground mask is used as is.
        combine: ``"and"`` (moving and changed), ``"or"`` or ``"flow"`` (flow alone); see
            :func:`oddframe.features.regions.motion_mask`.
        close_size, open_size: morphological closing, then opening (pixel disks) of the mask.
        min_area: smallest region in pixels; smaller components are dropped and counted.
        camera_motion: subtract each frame's median flow first (a panning or shaking camera).
        attributes: the densities scored and summed: names from ``velocity``, ``size``, ``position``,
            ``appearance``, joined by ``+`` for one joint Gaussian mixture (``["velocity", "appearance"]`` is
            AI-VAD's velocity and deep-feature pair).
        velocity_bins: orientation bins of the velocity histogram (AI-VAD: 1 on Ped2, 8 on Avenue).
        perspective: rescale velocities by ``h_ref / h(y)``, ``h(y)`` the typical box height at the region's
            centre row (a line fitted to the normal regions) and ``h_ref`` their median height: objects far away
            move fewer pixels per frame.
        components: Gaussian mixture components of every mixture (AI-VAD: 2 on Ped2, 5 on Avenue).
        starts: mixtures fitted per density from different EM starts, their densities averaged
            (:func:`oddframe.models.density.fit_gmm_average`): the result no longer hangs on one start.
        appearance_size: side of the HOG crop (a multiple of 8).
        knn_k: neighbours averaged by the appearance score (AI-VAD: 1).
        bank_size: most normal appearance descriptors kept (a random subset beyond that).
        calibration_percentile: the high end of each attribute's calibration (AI-VAD: 99.9).
        folds: contiguous blocks used as groups for leave-one-out calibration when there is one training video.
        seed: randomness of the mixtures and of the bank subset.
        paint: where the map holds a region's score: ``"region"`` (its moving pixels) or ``"box"`` (its box).
    """

    map_power = 1

    def __init__(
        self,
        *,
        in_channels: int = 1,
        clip_length: int = 1,
        image_size: tuple[int, int] = (240, 360),
        flow_method: str = "dis",
        flow_preset: str = "medium",
        flow_scale: float = 1.0,
        flow_step: int = 1,
        flow_refine: int | None = None,
        flow_threshold: float = 0.1,
        change: str = "diff",
        change_threshold: float = 18.0,
        combine: str = "and",
        close_size: int = 5,
        open_size: int = 3,
        min_area: int = 50,
        camera_motion: bool = False,
        attributes: tuple[str, ...] | list[str] = ("velocity+size", "appearance"),
        velocity_bins: int = 1,
        perspective: bool = True,
        components: int = 8,
        starts: int = 5,
        appearance_size: int = 32,
        knn_k: int = 1,
        bank_size: int = 20000,
        calibration_percentile: float = 99.9,
        folds: int = 5,
        seed: int = 0,
        paint: str = "box",
    ) -> None:
        super().__init__()
        self.in_channels, self.clip_length, self.image_size = in_channels, clip_length, tuple(image_size)
        self.densities = _parse_densities(attributes)
        if paint not in ("region", "box"):
            raise ValueError(f"paint must be 'region' or 'box'; got {paint!r}")
        self.paint = paint
        if change not in CHANGES:
            raise ValueError(f"change must be one of {', '.join(CHANGES)}; got {change!r}")
        if combine not in R.COMBINE:
            raise ValueError(f"combine must be one of {', '.join(R.COMBINE)}; got {combine!r}")
        if min(min_area, knn_k, components, velocity_bins, starts) < 1 or bank_size < knn_k or folds < 2:
            raise ValueError("min_area, knn_k, components, starts, velocity_bins must be >= 1, bank_size >= knn_k, "
                             "folds >= 2")
        if not 50 < calibration_percentile <= 100:
            raise ValueError(f"calibration_percentile must be in (50, 100], got {calibration_percentile}")
        if appearance_size < 16 or appearance_size % 8:
            raise ValueError(f"appearance_size must be a multiple of 8, >= 16; got {appearance_size}")
        self.flow = {"method": flow_method, "preset": flow_preset, "scale": flow_scale, "step": flow_step,
                     "refine": flow_refine}
        self.flow_threshold, self.change, self.change_threshold, self.combine = flow_threshold, change, change_threshold, combine
        self.close_size, self.open_size, self.min_area, self.camera_motion = close_size, open_size, min_area, camera_motion
        self.attributes = tuple(a for a in ATTRIBUTES if any(a in d for d in self.densities))
        self.velocity_bins, self.perspective = velocity_bins, perspective
        self.components, self.starts = components, starts
        self.appearance_size, self.knn_k, self.bank_size = appearance_size, knn_k, bank_size
        self.calibration_percentile, self.folds, self.seed = calibration_percentile, folds, seed
        for parts in self.densities:
            if parts == ("appearance",):
                self.register_fitted("appearance_bank", torch.zeros(0))
                #: (M,) leave-one-out group of each bank row (its training video, or block of one video).
                self.register_fitted("appearance_bank_groups", torch.zeros(0, dtype=torch.int64))
            else:
                for p in ("weights", "means", "covariances"):
                    self.register_fitted(f"{'_'.join(parts)}_{p}", torch.zeros(0, dtype=torch.float64))
                    #: (G, ...) the mixture fitted without group g's regions, for held-out scores of training frames
                    self.register_fitted(f"{'_'.join(parts)}_loo_{p}", torch.zeros(0, dtype=torch.float64))
        #: UTF-8 JSON of the leave-one-out groups ``[[video, first frame, last frame, group], ...]``.
        self.register_fitted("group_table", torch.zeros(0, dtype=torch.uint8))
        self._held_out = False
        #: (A, 2): each density's (low, high) calibration from normal training regions.
        self.register_fitted("calibration", torch.zeros(0, dtype=torch.float64))
        #: () score of the least anomalous normal training frame: the map's value off the regions.
        self.register_fitted("floor", torch.zeros((), dtype=torch.float64))
        #: (3,) perspective: slope and intercept of the typical box height against the box centre row, and the
        #: median height (velocities are rescaled by median / line(row)); (0,) = no rescaling yet.
        self.register_fitted("perspective_line", torch.zeros(0, dtype=torch.float64))
        #: (3,) frames, regions and dropped (too small) components seen when fitting.
        self.register_fitted("fit_counts", torch.zeros(3, dtype=torch.int64))
        self.fit_before_epoch = 0
        self.dropped = 0  #: components too small to be regions, counted over every frame scored since construction

    # --- the contract --------------------------------------------------------------------------------------

    def derived_inputs(self) -> dict[str, dict[str, Any]]:
        """Optical flow always; the frame difference or a background model when ``change`` asks for them."""
        out: dict[str, dict[str, Any]] = {"flow": dict(self.flow)}
        if self.change == "diff":
            out["diff"] = {"blur": 3, "step": self.flow["step"]}
        elif self.change == "background":
            out["background"] = {"method": "mog2"}
        return out

    def training_loss(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError("motion_density is fitted (oddframe train calls fit), not trained by gradient")

    @property
    def is_fitted(self) -> bool:
        return self.calibration.numel() > 0

    def anomaly_map(self, batch: Batch) -> torch.Tensor:
        """Each region's summed calibrated score on its pixels, the floor elsewhere: ``(B, T, H, W)``, >= 0."""
        if not self.is_fitted:
            raise RuntimeError("motion_density is not fitted: train it with `oddframe train` (one pass, no gradient)")
        b, _, t, h, w = batch.frames.shape
        floor = float(self.floor)
        out = np.full((b, t, h, w), floor, np.float32)
        found = [(i, j, regions, feats, key) for i, j, regions, feats, key in self._frames(batch) if regions]
        if found:  # every region of the batch scored at once (one kNN search)
            names = found[0][3].keys()
            groups = None
            if self._held_out:  # each training frame scored by the densities fitted without its group
                frame_group = D.lookup_groups([f[4] for f in found], self._group_table())
                groups = np.repeat(frame_group, [len(f[2]) for f in found])
            scores = self._score({k: np.concatenate([f[3][k] for f in found]) for k in names}, groups).sum(axis=1)
            ends = np.cumsum([len(f[2]) for f in found])
            for (i, j, regions, _, _), part in zip(found, np.split(scores, ends[:-1])):
                out[i, j] = R.paint(regions, np.maximum(part, floor), background=floor, boxes=self.paint == "box")
        return torch.from_numpy(out).to(batch.frames.device)

    @contextlib.contextmanager
    def held_out_training(self) -> Iterator[bool]:
        """Inside, a frame the model was fitted on is scored by the densities fitted without its group (its
        training video, or its block of a single video), as :meth:`fit` calibrated them: the normal scores
        ``oddframe calibrate`` needs are then those of unseen normal footage, not in-sample ones (an appearance
        descriptor's nearest normal neighbour would be itself). Frames the fit never saw score as usual."""
        saved, self._held_out = self._held_out, self.group_table.numel() > 0
        try:
            yield self._held_out
        finally:
            self._held_out = saved

    def _group_table(self) -> list[list]:
        return json.loads(bytes(self.group_table.cpu().numpy().tobytes()).decode("utf-8"))

    # --- regions and attributes ----------------------------------------------------------------------------

    def _frames(
        self, batch: Batch, *, dedupe: set | None = None
    ) -> list[tuple[int, int, R.Regions | None, dict, tuple[str, int]]]:
        """``(clip, time, regions, attributes, (video, frame index))`` for every frame of the batch (None regions
        for padded frames)."""
        frames = batch.frames.float().cpu().numpy()
        valid = batch.valid.cpu().numpy()
        flow_all = batch.extras["flow"].float().cpu().numpy() if "flow" in batch.extras else None
        change_key = {"diff": "diff", "background": "background"}.get(self.change)
        change_all = batch.extras[change_key].float().cpu().numpy() if change_key in batch.extras else None
        index = batch.frame_index.cpu().numpy() if batch.frame_index is not None else None
        out = []
        for i in range(frames.shape[0]):
            for j in range(frames.shape[2]):
                key = (batch.video[i] if batch.video else "", int(index[i, j]) if index is not None else j)
                if index is not None and index[i, j] < 0 or not valid[i, 0, j].any():
                    out.append((i, j, None, {}, key))
                    continue
                if dedupe is not None:
                    if key in dedupe:
                        continue
                    dedupe.add(key)
                flow = flow_all[i, :, j] if flow_all is not None else np.zeros((2, *frames.shape[3:]), np.float32)
                change = change_all[i, 0, j] if change_all is not None else None
                regions, feats = self.regions_and_attributes(frames[i, :, j], flow, change)
                out.append((i, j, regions, feats, key))
        found = [f for _, _, r, f, _ in out if r is not None]
        if "appearance" in self.attributes and found:  # one HOG call for every region of the batch
            descriptors = R.hog(np.concatenate([f.pop("crops") for f in found]))
            for f, part in zip(found, np.split(descriptors, np.cumsum([len(f["geometry"]) for f in found])[:-1])):
                f["appearance"] = part
        return out

    def regions_and_attributes(
        self, frame: np.ndarray, flow: np.ndarray, change: np.ndarray | None
    ) -> tuple[R.Regions, dict[str, np.ndarray]]:
        """The moving regions of one frame and their attributes.

        Args:
            frame: ``(C, H, W)`` in ``[-1, 1]``.
            flow: ``(2, H, W)`` pixels per frame.
            change: ``(H, W)`` frame difference (grey levels) or foreground (0/1), or None.

        Returns:
            The regions and ``{attribute: (N, D_a)}``, with ``"geometry"`` ``(N, 4)`` (box height, width,
            centre x, centre y) besides the attributes; for ``appearance``, the region crops ``(N, S, S)`` under
            ``"crops"`` (:meth:`_frames` turns a whole batch of them into HOG descriptors at once).
        """
        if self.camera_motion:
            flow = flow - np.median(flow.reshape(2, -1), axis=1)[:, None, None]
        threshold = 0.5 if self.change == "background" else self.change_threshold
        mask = R.motion_mask(R.flow_magnitude(flow), flow_threshold=self.flow_threshold, change=change,
                             change_threshold=threshold, combine=self.combine if change is not None else "flow")
        regions = R.find_regions(R.clean_mask(mask, close=self.close_size, open_=self.open_size), min_area=self.min_area)
        self.dropped += regions.dropped
        geometry = R.box_geometry(regions)  # (N, 4): h, w, cx, cy
        feats: dict[str, np.ndarray] = {"geometry": geometry}
        if "velocity" in self.attributes:
            v = R.velocity_histograms(flow, regions, bins=self.velocity_bins)
            feats["velocity"] = v * self._depth_scale(geometry[:, 3])[:, None] if self.perspective else v
        if "size" in self.attributes:
            feats["size"] = geometry[:, :2]
        if "position" in self.attributes:
            feats["position"] = geometry[:, 2:]
        if "appearance" in self.attributes:
            feats["crops"] = R.crops(to_grey_uint8(frame), regions.boxes, size=self.appearance_size)
        return regions, feats

    def _depth_scale(self, rows: np.ndarray) -> np.ndarray:
        """``(N,)`` factor making velocities at image rows ``rows`` comparable to those at the median depth."""
        if self.perspective_line.numel() == 0:
            return np.ones(len(rows))
        slope, intercept, ref = self.perspective_line.tolist()
        # Floor the expected height at a fifth of the median: beyond the fitted range a line can reach zero.
        return ref / np.maximum(slope * rows + intercept, 0.2 * ref)

    # --- densities -----------------------------------------------------------------------------------------

    @staticmethod
    def _name(parts: tuple[str, ...]) -> str:
        return "+".join(parts)

    def _features(self, parts: tuple[str, ...], feats: dict[str, np.ndarray]) -> np.ndarray:
        """The features of one density ``(N, D)``: its attributes side by side."""
        if parts == ("appearance",):
            return feats["appearance"]
        return np.concatenate([feats[a] for a in parts], axis=1).astype(np.float64)

    def _raw(self, parts: tuple[str, ...], x: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """Raw score under one density (negative log-likelihood, or kNN distance for appearance), ``(N,)``;
        ``groups`` ``(N,)``: score each sample without its leave-one-out group (-1: with everything)."""
        if parts == ("appearance",):
            bank = self.appearance_bank.numpy()
            key = (self.appearance_bank.data_ptr(), bank.shape)
            if getattr(self, "_bank_key", None) != key:  # squared norms of the bank, once per fitted/loaded bank
                self._bank_key, self._bank_sq = key, (bank * bank).sum(axis=1)
            if groups is None:
                return D.knn_distance(x, bank, k=self.knn_k, bank_sq=self._bank_sq)
            return D.knn_distance(x, bank, k=self.knn_k, bank_sq=self._bank_sq, exclude=groups,
                                  bank_groups=self.appearance_bank_groups.numpy())
        key = "_".join(parts)
        names = ("weights", "means", "covariances")
        params = D.GaussianMixtureParams(*(getattr(self, f"{key}_{p}").numpy() for p in names))
        if groups is None:
            return D.gmm_nll(x, params)
        held_out = D.GaussianMixtureParams(*(getattr(self, f"{key}_loo_{p}").numpy() for p in names))
        return D.gmm_nll_by_group(x, groups, params, held_out)

    def _score(self, feats: dict[str, np.ndarray], groups: np.ndarray | None = None) -> np.ndarray:
        """Calibrated scores ``(N, A)`` of N regions under the A densities: ``(raw - low) / (high - low)``, clipped
        at 0 (as normal as the most normal training region). Their sum is a region's score (AI-VAD Eq. 4).
        ``groups`` ``(N,)``: each region's leave-one-out group (held-out scores of training regions)."""
        cal = self.calibration.numpy()
        cols = [(self._raw(d, self._features(d, feats), groups) - cal[k, 0]) / (cal[k, 1] - cal[k, 0])
                for k, d in enumerate(self.densities)]
        return np.maximum(np.stack(cols, axis=1), 0.0)

    def explain(self, batch: Batch) -> list[list[dict[str, Any]]]:
        """Per frame of the batch (clip-major), every region's box and calibrated score under each density: why a
        frame scored as it did (AI-VAD's interpretability)."""
        out = []
        names = [self._name(d) for d in self.densities]
        for _, _, regions, feats, _ in self._frames(batch):
            if regions is None or len(regions) == 0:
                out.append([])
                continue
            scores = self._score(feats)
            out.append([{"box": regions.boxes[n].tolist(), **dict(zip(names, map(float, scores[n])))}
                        for n in range(len(regions))])
        return out

    def fit(self, batches: Iterable[Batch]) -> None:
        """Fit every density on the regions of normal clips, calibrate it leave-one-video-out, and set the floor
        (one pass; each frame once even when windows overlap)."""
        feats: dict[str, list[np.ndarray]] = defaultdict(list)
        keys: list[tuple[str, int]] = []  # (video, frame index) of each fitted frame
        frame_of: list[int] = []  # which fitted frame each region belongs to
        n_frames, seen = 0, set()
        self.dropped = 0
        self.perspective_line = torch.zeros(0, dtype=torch.float64)  # velocities are gathered unscaled
        for batch in batches:
            for _, _, regions, f, key in self._frames(batch, dedupe=seen):
                if regions is None:
                    continue
                for a in ("geometry", *self.attributes):
                    feats[a].append(f[a])
                keys.append(key)
                frame_of += [n_frames] * len(regions)
                n_frames += 1
        n = len(frame_of)
        if n < 2 * self.components:
            raise ValueError(f"motion_density found {n} moving regions in {n_frames} normal frames: too few to fit "
                             f"densities (lower flow_threshold/change_threshold/min_area, or give more footage)")
        stacked = {a: np.concatenate(feats[a]) for a in ("geometry", *self.attributes)}
        if self.perspective and "velocity" in self.attributes:
            height, row = stacked["geometry"][:, 0], stacked["geometry"][:, 3]
            slope, intercept = np.polyfit(row, height, 1) if np.ptp(row) > 0 else (0.0, float(np.median(height)))
            self.perspective_line = torch.tensor([slope, intercept, float(np.median(height))], dtype=torch.float64)
            stacked["velocity"] = stacked["velocity"] * self._depth_scale(row)[:, None]
        # Groups: each training video; one video is cut into contiguous blocks, so a region never meets its
        # own neighbouring frames.
        frame_group, table = D.frame_groups(keys, self.folds)
        g = frame_group[np.asarray(frame_of)]
        self.group_table = torch.frombuffer(bytearray(json.dumps(table).encode("utf-8")), dtype=torch.uint8).clone()
        rng = np.random.default_rng(self.seed)
        calibration, total = [], np.zeros(n)
        for parts in self.densities:
            x = self._features(parts, stacked)
            if parts == ("appearance",):
                keep = np.sort(rng.choice(n, self.bank_size, replace=False)) if n > self.bank_size else np.arange(n)
                scores = D.knn_distance(x, x[keep], k=self.knn_k, exclude=g, bank_groups=g[keep])
                scores = np.where(np.isfinite(scores), scores, np.nan)  # a group holding the whole bank
                self.appearance_bank = torch.from_numpy(np.ascontiguousarray(x[keep], dtype=np.float32))
                self.appearance_bank_groups = torch.from_numpy(np.ascontiguousarray(g[keep], dtype=np.int64))
            else:
                def fit(v: np.ndarray) -> D.GaussianMixtureParams:
                    return D.fit_gmm_average(v, components=self.components, starts=self.starts, seed=self.seed)

                held_out: list[D.GaussianMixtureParams] = []
                scores = D.leave_one_group_out(x, g, fit, D.gmm_nll, fits=held_out)
                params = fit(x)
                loo = D.stack_mixtures(held_out or [params], max(len(p.weights) for p in held_out or [params]))
                for p in ("weights", "means", "covariances"):
                    name = "_".join(parts)
                    setattr(self, f"{name}_{p}", torch.from_numpy(np.ascontiguousarray(getattr(params, p))))
                    setattr(self, f"{name}_loo_{p}", torch.from_numpy(np.ascontiguousarray(getattr(loo, p))))
            lo, hi = D.calibration_range(scores, q=self.calibration_percentile)
            calibration.append((lo, hi))
            total += np.nan_to_num(np.maximum((scores - lo) / (hi - lo), 0.0))
        self.calibration = torch.tensor(calibration, dtype=torch.float64)
        per_frame = np.full(n_frames, -np.inf)
        np.maximum.at(per_frame, np.asarray(frame_of), total)
        self.floor = torch.tensor(float(per_frame[np.isfinite(per_frame)].min()), dtype=torch.float64)
        self.fit_counts = torch.tensor([n_frames, n, self.dropped], dtype=torch.int64)
