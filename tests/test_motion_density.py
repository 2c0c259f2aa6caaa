"""motion_density: regions, densities and calibration on synthetic scenes with known anomalies."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import torch

from oddframe import api, runs
from oddframe.data.clips import Batch
from oddframe.data.loading import TransformedFrame
from oddframe.features import with_features
from oddframe.models import density as D
from oddframe.models.motion_density import MotionDensity

H, W = 120, 128
PARAMS = {"image_size": (H, W), "min_area": 30, "components": 2, "bank_size": 500}


def column(obj: tuple[int, float, int, int, float], t: int) -> int:
    """Left column of an object in frame ``t``: it slides at ``vx`` px/frame and bounces off the frame's sides."""
    _, x0, _, w, vx = obj
    span = W - w
    x = np.mod(x0 + vx * t, 2 * span)
    return int(round(x if x <= span else 2 * span - x))


def scene(objects: list[tuple[int, float, int, int, float]], n: int = 20, seed: int = 0) -> np.ndarray:
    """``(n, H, W)`` uint8: textured boxes ``(y, x0, h, w, vx)`` sliding over a textured still background."""
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.uniform(40, 110, (H, W)).astype(np.float32), (0, 0), 1.5)
    textures = [rng.uniform(130, 255, (h, w)).astype(np.float32) for _, _, h, w, _ in objects]  # textured objects
    frames = np.empty((n, H, W), np.uint8)
    for t in range(n):
        img = background.copy()
        for obj, tex in zip(objects, textures):
            y, _, h, w, _ = obj
            x = column(obj, t)
            img[y:y + h, x:x + w] = tex
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def walkers(seed: int, n: int = 20) -> list[tuple[int, float, int, int, float]]:
    """Three normal objects in their own lanes (rows 2, 26, 50): 12-16 px tall, 8-10 px wide, 1-2 px per frame
    left or right. Anomalies below use the free rows from 72 on."""
    rng = np.random.default_rng(seed)
    return [(lane, float(rng.uniform(0, W)), int(rng.integers(12, 17)), int(rng.integers(8, 11)),
             float(rng.uniform(1.0, 2.0) * rng.choice([-1, 1]))) for lane in (2, 26, 50)]


def batch_of(model: MotionDensity, frames: np.ndarray, video: str = "v") -> Batch:
    """One-frame clips of a video, with the derived inputs the model asks for computed as the stream does."""
    items = [TransformedFrame(i, None, (f.astype(np.float32) / 127.5 - 1.0)[None], np.ones((H, W), bool))
             for i, f in enumerate(frames)]
    items = list(with_features(items, model.derived_inputs()))
    x = torch.from_numpy(np.stack([f.data for f in items]))[:, :, None]
    extras = {k: torch.from_numpy(np.stack([f.features[k] for f in items]))[:, :, None] for k in items[0].features}
    return Batch(x, torch.ones(len(items), 1, 1, H, W, dtype=torch.bool), [video] * len(items),
                 torch.arange(len(items))[:, None], extras)


@pytest.fixture(scope="module")
def fitted() -> MotionDensity:
    model = MotionDensity(**PARAMS)
    model.fit([batch_of(model, scene(walkers(s), seed=s), f"train{s}") for s in range(4)])
    return model


def maps(model: MotionDensity, frames: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.anomaly_map(batch_of(model, frames))[:, 0].numpy()


def centre(obj: tuple[int, float, int, int, float], t: int) -> tuple[int, int]:
    """``(row, col)`` of an object's centre in frame ``t`` of its scene."""
    y, _, h, w, _ = obj
    return y + h // 2, column(obj, t) + w // 2


def test_a_fast_object_scores_highest_where_it_is(fitted):
    fast = (80, 0.0, 14, 9, 6.0)  # normal size, 3-6x the normal speed
    normal = walkers(10)
    frames = np.concatenate([scene(normal, n=10, seed=10), scene(normal + [fast], n=10, seed=10)])
    m = maps(fitted, frames)
    score = m.reshape(len(m), -1).max(axis=1)
    assert score[11:].min() > score[1:10].max(), score
    for t in range(11, 20):
        assert m[t][centre(fast, t - 10)] == m[t].max(), f"frame {t}: the fast object's pixels hold the frame's peak"
    regions = fitted.explain(batch_of(fitted, frames[14:16]))[1]  # frame 15: the fast object's 6th frame
    top = max(regions, key=lambda r: r["velocity+size"])
    x0, y0, x1, y1 = top["box"]
    y, _, h, w, _ = fast
    x = centre(fast, 5)[1] - w // 2
    assert x0 <= x and y0 <= y and x1 >= x + w and y1 >= y + h, f"the box {top['box']} holds the object"
    assert (x1 - x0) * (y1 - y0) < 4 * w * h, "and not much more (its trail from the previous frame)"


def test_an_object_of_unseen_size_scores_highest(fitted):
    big = (76, 10.0, 34, 30, 1.5)  # normal speed, 2-3x the normal size
    normal = walkers(11)
    frames = np.concatenate([scene(normal, n=10, seed=11), scene(normal + [big], n=10, seed=11)])
    m = maps(fitted, frames)
    score = m.reshape(len(m), -1).max(axis=1)
    assert score[11:].min() > score[1:10].max(), score
    assert m[15][centre(big, 5)] == m[15].max()


def test_a_static_frame_scores_as_the_least_anomalous_training_frame(fitted):
    frames = scene(walkers(12), n=6, seed=12)
    frames[4] = frames[3]  # nothing moves between frames 3 and 4
    m = maps(fitted, frames)
    floor = float(fitted.floor)
    assert np.all(m[4] == floor), "no region: the floor everywhere"
    assert (m >= floor).all()
    boxes = [[r["box"] for r in frame] for frame in fitted.explain(batch_of(fitted, frames))]
    assert boxes[4] == [] and all(len(b) >= 3 for b in boxes[1:4]), "the three walkers are regions while they move"
    # The first frame has no predecessor: it takes the first motion, so its regions are the next frame's.
    assert boxes[0] == boxes[1]
    assert fitted.fit_counts[0] == 4 * 20 and fitted.fit_counts[1] > 4 * 20, "frames and regions were counted"


def test_fitted_state_round_trips_through_a_checkpoint(fitted, tmp_path):
    runs.save_weights(fitted, tmp_path / "w.safetensors")
    fresh = MotionDensity(**PARAMS)
    assert fresh.calibration.numel() == 0
    runs.load_weights(fresh, tmp_path / "w.safetensors")
    frames = scene(walkers(13) + [(80, 0.0, 14, 9, 6.0)], n=8, seed=13)
    assert np.array_equal(maps(fitted, frames), maps(fresh, frames))
    # velocity (1) + size (2) features; 5 EM starts of 2 components, averaged
    assert fresh.appearance_bank.shape[1] == 324 and fresh.velocity_size_means.shape == (5 * 2, 3)


def test_training_frames_score_held_out_as_by_a_model_fitted_without_their_video():
    """Calibration scores training frames with the densities fitted without their video (leave-one-out): the
    same raw scores as a model fitted on the other videos only, and higher than in-sample ones (no self-match)."""
    params = {**PARAMS, "perspective": False}
    videos = [(f"train{s}", scene(walkers(s), seed=s)) for s in range(4)]
    model, others = MotionDensity(**params), MotionDensity(**params)
    model.fit([batch_of(model, frames, name) for name, frames in videos])
    others.fit([batch_of(others, frames, name) for name, frames in videos[1:]])
    found = [f for _, _, r, f, _ in model._frames(batch_of(model, videos[0][1], "train0")) if r]
    feats = {k: np.concatenate([f[k] for f in found]) for k in found[0]}
    zero = np.zeros(len(feats["geometry"]), np.int64)  # train0 is group 0
    for parts in model.densities:
        x = model._features(parts, feats)
        # float32 kNN distances (|a|^2 + |b|^2 - 2ab over banks of other shapes) agree to a few float32 ulps,
        # 1.9e-06 relative on an AMD EPYC; a self-match would give 0 instead of about 1.
        np.testing.assert_allclose(model._raw(parts, x, zero), others._raw(parts, x), rtol=1e-5, atol=1e-9)
    assert (model._raw(("appearance",), feats["appearance"]) < 1e-2).all(), "in-sample: each region finds itself"

    batch = batch_of(model, videos[0][1], "train0")
    with torch.no_grad():
        seen = model.anomaly_map(batch).amax(dim=(1, 2, 3))
        with model.held_out_training() as held_out:
            held = model.anomaly_map(batch).amax(dim=(1, 2, 3))
        assert held_out and not model._held_out
        assert held.mean() > seen.mean() and (held >= seen - 1e-6).all()
        # Frames the fit never saw (another video, or frames past the fitted ones) score as usual inside too.
        unseen = batch_of(model, videos[0][1], "elsewhere")
        with model.held_out_training():
            assert torch.equal(model.anomaly_map(unseen), model.anomaly_map(batch_of(model, videos[0][1], "x")))
    assert MotionDensity(**params).group_table.numel() == 0


def test_unfitted_model_and_bad_settings_are_refused():
    with pytest.raises(RuntimeError, match="not fitted"):
        maps(MotionDensity(**PARAMS), scene(walkers(0), n=3))
    with pytest.raises(ValueError, match="joined by"):
        MotionDensity(attributes=["speed"])
    with pytest.raises(ValueError, match="cannot be joined"):
        MotionDensity(attributes=["velocity+appearance"])
    with pytest.raises(ValueError, match="at most once"):
        MotionDensity(attributes=["velocity", "velocity+size"])
    with pytest.raises(ValueError, match="starts"):
        MotionDensity(starts=0)
    with pytest.raises(ValueError, match="too few"):
        MotionDensity(**PARAMS).fit([batch_of(MotionDensity(**PARAMS), np.zeros((4, H, W), np.uint8))])


def test_density_helpers_against_hand_values():
    x = np.array([[0.0], [1.0], [2.0]])
    one = D.GaussianMixtureParams(np.array([1.0]), np.array([[1.0]]), np.array([[[4.0]]]))
    expected = 0.5 * np.log(2 * np.pi * 4.0) + (x[:, 0] - 1.0) ** 2 / 8.0
    np.testing.assert_allclose(D.gmm_nll(x, one), expected)
    bank = np.array([[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(D.knn_distance(np.array([[0.0, 1.0]]), bank), [1.0])
    np.testing.assert_allclose(D.knn_distance(np.array([[0.0, 1.0]]), bank, k=2), [(1.0 + np.hypot(3, 3)) / 2])
    np.testing.assert_allclose(
        D.knn_distance(np.array([[0.0, 1.0]]), bank, exclude=np.array([0]), bank_groups=np.array([0, 1])),
        [np.hypot(3, 3)])
    assert D.calibration_range(np.arange(1001.0), q=99.9) == (0.0, pytest.approx(999.0))
    assert D.contiguous_groups(10, 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    seen = D.leave_one_group_out(np.arange(4.0), np.array([0, 0, 1, 1]), lambda v: v.mean(), lambda v, m: v - m)
    np.testing.assert_allclose(seen, [0 - 2.5, 1 - 2.5, 2 - 0.5, 3 - 0.5])


def test_averaged_mixtures_are_the_mean_density_of_their_starts():
    rng = np.random.default_rng(0)
    # Three clusters for two components: EM's start decides which two it merges.
    x = np.concatenate([rng.normal(c, 0.3, size=(60, 2)) for c in ([0, 0], [3, 0], [0, 3])])
    starts = [D.fit_gmm(x, components=2, seed=1000 * i) for i in range(4)]
    assert len({round(float(D.gmm_nll(x, s).mean()), 6) for s in starts}) > 1, "the starts should disagree"
    mean = D.fit_gmm_average(x, components=2, starts=4)
    assert mean.weights.shape == (8,) and mean.weights.sum() == pytest.approx(1.0)
    density = np.mean([np.exp(-D.gmm_nll(x, s)) for s in starts], axis=0)
    np.testing.assert_allclose(D.gmm_nll(x, mean), -np.log(density), rtol=1e-9)
    one = D.fit_gmm_average(x, components=2, starts=1, seed=7)
    np.testing.assert_allclose(one.means, D.fit_gmm(x, components=2, seed=7).means)
    with pytest.raises(ValueError, match="starts"):
        D.fit_gmm_average(x, components=2, starts=0)


def _write_frames(folder, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), f)


def _scores(path) -> dict[int, float]:
    with open(path) as fh:
        return {int(r["frame"]): float(r["score"]) for r in csv.DictReader(fh)}


def test_one_source_trains_on_a_frame_range_and_calibrated_scores_ignore_the_test_split(tmp_path):
    """Train on frames 0-39 of one image folder, detect on frames 40 on; the scores of a test video do not
    depend on what else is in the test input (calibrated against normal training frames only)."""
    normal = walkers(20)
    fast = (80, 0.0, 14, 9, 6.0)
    # One continuous scene; a fast object appears in it at frame 60.
    footage = np.concatenate([scene(normal, n=60, seed=20), scene(normal + [fast], n=70, seed=20)[60:]])
    _write_frames(tmp_path / "camera", footage)
    config = api.load_config(None, [
        "model.name=motion_density", f"data.path={tmp_path / 'camera'}", f"data.size=[{H},{W}]", "data.clip_length=1",
        "data.train_stride=1", "data.stop_frame=40", "score.rule=max", "score.normalise=calibrated",
        "score.smoothing_sigma=1", *(f"model.params.{k}={v}" for k, v in
                                     {"min_area": 30, "components": 2, "bank_size": 500}.items())])
    result = api.train(config, tmp_path / "run", progress=False)
    assert result.fitted_only
    model, _ = api.load_run(tmp_path / "run")
    assert int(model.fit_counts[0]) == 40, "fitted on frames 0-39 only"
    cal = api.calibrate(tmp_path / "run", progress=False)
    assert "leave-one-out" in cal["normal_frames"], cal["normal_frames"]

    api.detect(tmp_path / "run", tmp_path / "camera", tmp_path / "det", progress=False, start_frame=40)
    scores = _scores(tmp_path / "det" / "scores.csv")
    assert sorted(scores) == list(range(40, 70))
    assert min(scores[t] for t in range(62, 70)) > max(scores[t] for t in range(41, 58))

    # The same 30 frames followed by 20 more of a fast object: the first frames' scores do not move.
    longer = np.concatenate([footage[40:], scene(normal + [fast], n=20, seed=21)])
    _write_frames(tmp_path / "other" / "camera", longer)
    api.detect(tmp_path / "run", tmp_path / "other" / "camera", tmp_path / "det2", progress=False)
    again = _scores(tmp_path / "det2" / "scores.csv")
    assert all(again[t - 40] == pytest.approx(scores[t], abs=1e-9) for t in range(40, 64))
    # Per-video min-max (test statistics) would have moved them: the check above can fail.
    api.detect(tmp_path / "run", tmp_path / "camera", tmp_path / "mm1", overrides=["score.normalise=minmax"],
               progress=False, start_frame=40)
    api.detect(tmp_path / "run", tmp_path / "other" / "camera", tmp_path / "mm2", overrides=["score.normalise=minmax"],
               progress=False)
    mm1, mm2 = _scores(tmp_path / "mm1" / "scores.csv"), _scores(tmp_path / "mm2" / "scores.csv")
    assert max(abs(mm2[t - 40] - mm1[t]) for t in range(40, 64)) > 1e-3
