"""Fusion: trained runs combined by a rule over their calibrated scores and maps, a run like any other."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from oddframe import api
from oddframe.data.synthetic import write_synthetic_dataset
from oddframe.errors import CheckpointError, ConfigError
from oddframe.models.fusion import combine


def test_rules_on_hand_values():
    values = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -0.5]])
    assert torch.equal(combine(values, "sum"), torch.tensor([4.0, -1.0, 0.0]))
    assert torch.equal(combine(values, "max"), torch.tensor([3.0, 1.0, 0.5]))
    assert torch.equal(combine(values, "weighted", torch.tensor([2.0, 0.5])), torch.tensor([3.5, -3.5, 0.75]))
    with pytest.raises(ValueError, match="sum, max, weighted"):
        combine(values, "median")


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Two trained members with different clip lengths, sizes and scoring rules, on one synthetic dataset."""
    root = tmp_path_factory.mktemp("fusion")
    data = root / "data"
    write_synthetic_dataset(data, n_train=8, n_test=3, length=12, size=32, anomaly="object", seed=2)
    common = [f"data.path={data}", "model.name=conv3d_ae", "model.params.width=0.125", "train.epochs=1",
              "train.batch_size=4"]
    a = api.load_config(None, common + ["data.size=[32,32]", "data.clip_length=4", "score.stride=2"])
    b = api.load_config(None, common + ["data.size=[16,16]", "data.clip_length=6", "data.train_stride=3",
                                        "score.rule=max", "score.stride=3"])
    api.train(a, root / "a", progress=False)
    api.train(b, root / "b", progress=False)
    return root, data


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("rule,weights", [("sum", None), ("max", None), ("weighted", [2.0, 0.5])])
def test_fused_score_is_the_rule_over_the_members_calibrated_scores(members, rule, weights, tmp_path):
    root, data = members
    api.fuse([str(root / "a"), str(root / "b")], tmp_path / "fused", rule=rule, weights=weights,
             overrides=["score.normalise=none"], progress=False)
    fused, config = api.load_run(tmp_path / "fused")
    assert config.model.params["members"][1]["data"]["clip_length"] == 6, "member configs are embedded"
    assert fused.fitted and (fused.map_scale > 0).all()
    api.evaluate(tmp_path / "fused", data, tmp_path / "eval", progress=False, report=False)
    rows = _rows(tmp_path / "eval" / "scores.csv")
    assert len(rows) == 3 * 12

    # Each member's own run, scored alone: its raw scores, calibrated with the statistics the fusion fitted.
    z = []
    for i, name in enumerate(("a", "b")):
        api.evaluate(root / name, data, tmp_path / f"eval_{name}", progress=False, report=False,
                     overrides=["score.normalise=none", "score.smoothing_sigma=0"])
        raw = np.array([float(r["score"]) for r in _rows(tmp_path / f"eval_{name}" / "scores.csv")])
        z.append((raw - fused.score_mean[i].item()) / fused.score_std[i].item())
        column = np.array([float(r[f"member:{fused.member_names[i]}"]) for r in rows])
        assert np.allclose(column, z[-1], rtol=1e-4, atol=1e-4)
    expected = {"sum": z[0] + z[1], "max": np.maximum(z[0], z[1]), "weighted": 2.0 * z[0] + 0.5 * z[1]}[rule]
    assert np.allclose([float(r["score"]) for r in rows], expected, rtol=1e-4, atol=1e-4)


def test_a_fused_run_calibrates_detects_and_evaluates_like_any_run(members, tmp_path):
    root, data = members
    api.fuse([str(root / "a"), str(root / "b")], tmp_path / "fused", progress=False)
    cal = api.calibrate(tmp_path / "fused", progress=False)
    assert np.isfinite(cal["threshold"]) and cal["reference"]["std"] > 0
    summary = api.detect(tmp_path / "fused", data, tmp_path / "det", maps=True, progress=False)
    assert summary.n_frames == 3 * 12 and summary.threshold == cal["threshold"]
    flagged = [r["flagged"] for r in _rows(tmp_path / "det" / "scores.csv")]
    assert set(flagged) <= {"0", "1"} and len(flagged) == 36, "detect flags frames with the calibrated threshold"
    maps = np.load(tmp_path / "det" / "maps" / "01.npy")
    assert maps.shape == (12, 32, 32) and (maps >= 0).all(), "fused maps at the first member's size"
    metrics = api.evaluate(tmp_path / "fused", data, tmp_path / "eval", progress=False)
    assert metrics["model"] == "fusion" and metrics["pixel_auroc"] is not None
    assert (tmp_path / "eval" / "report.html").is_file() and (tmp_path / "eval" / "scores.png").is_file()
    header = _rows(tmp_path / "eval" / "scores.csv")[0]
    assert {"member:0_conv3d_ae", "member:1_conv3d_ae"} <= set(header), "the report shows each member's curve"


def test_each_frame_is_decoded_once_and_each_member_runs_its_own_windows(members, monkeypatch, tmp_path):
    root, data = members
    from oddframe.data.layouts import load_dataset
    from oddframe.pipeline.engine import detector_for, stream_video

    api.fuse([str(root / "a"), str(root / "b")], tmp_path / "fused", progress=False)
    model, cfg = api.load_run(tmp_path / "fused")
    detector = detector_for(model, cfg, device="cpu")
    video = load_dataset(data).test[0]
    decoded, windows = [], []
    source_cls, member_cls = type(video.source), type(model.members[0])
    source_iter, member_map = source_cls.__iter__, member_cls.anomaly_map

    def counting_iter(self):
        for frame in source_iter(self):
            decoded.append(frame.index)
            yield frame

    def recording_map(self, batch):
        windows.extend((self.clip_length, tuple(w)) for w in batch.frame_index.tolist())
        return member_map(self, batch)

    monkeypatch.setattr(source_cls, "__iter__", counting_iter)
    monkeypatch.setattr(member_cls, "anomaly_map", recording_map)
    results = list(stream_video(detector, video, cfg))
    assert [r.index for r in results] == list(range(12)) and decoded == list(range(12))
    # Member a: windows of 4 frames every 2; member b: windows of 6 every 3; each window once.
    assert sorted(w for n, w in windows if n == 4) == [tuple(range(s, s + 4)) for s in (0, 2, 4, 6, 8)]
    assert sorted(w for n, w in windows if n == 6) == [tuple(range(s, s + 6)) for s in (0, 3, 6)]
    assert all(set(r.members) == set(model.member_names) for r in results)


def test_fusion_errors_name_the_problem(members, tmp_path):
    root, _ = members
    with pytest.raises(ConfigError, match="run folders"):
        api.build_model("fusion", members=[str(root / "a")])
    with pytest.raises(ConfigError, match="one weight per member"):
        api.fuse([str(root / "a"), str(root / "b")], tmp_path / "w", rule="weighted", weights=[1.0], progress=False)
    fused = tmp_path / "ok"
    api.fuse([str(root / "a")], fused, progress=False)
    with pytest.raises(CheckpointError, match="already holds a run"):
        api.fuse([str(root / "a")], fused, progress=False)


def test_fused_maps_and_valid_masks_share_the_fused_size(members, tmp_path):
    """A fused size other than every member's: maps, valid masks and region metrics all at ``data.size``."""
    root, data = members
    api.fuse([str(root / "a"), str(root / "b")], tmp_path / "fused", overrides=["data.size=[24,24]"], progress=False)
    api.calibrate(tmp_path / "fused", progress=False)
    metrics = api.evaluate(tmp_path / "fused", data, tmp_path / "eval", progress=False, regions=True)
    assert metrics["pixel_auroc"] is not None and metrics["rbdc"] is not None


def test_members_that_transform_alike_share_frames_and_derived_inputs():
    from oddframe.pipeline.fusion import share_streams

    flow, fast = {"flow": {"preset": "medium"}}, {"flow": {"preset": "fast"}}
    both = {"flow": {"preset": "medium"}, "diff": {"blur": 3}}
    assert share_streams(["t", "t", "t"], [flow, {}, both]) == [([0, 1, 2], both)]
    assert share_streams(["t", "t"], [flow, fast]) == [([0], flow), ([1], fast)], "other parameters: own stream"
    assert share_streams(["t", "u"], [flow, flow]) == [([0], flow), ([1], flow)], "other transform: own stream"


def test_a_derived_input_two_members_ask_for_is_computed_once_per_frame(members, monkeypatch, tmp_path):
    root, data = members
    from oddframe.data.layouts import load_dataset
    from oddframe.features.flow import OpticalFlow
    from oddframe.pipeline.engine import detector_for, stream_video

    api.fuse([str(root / "a"), str(root / "a")], tmp_path / "fused", progress=False)
    model, cfg = api.load_run(tmp_path / "fused")
    video = load_dataset(data).test[0]
    calls, flow_call = [], OpticalFlow.__call__

    def counting_flow(self, frame):
        calls.append(frame.index)
        return flow_call(self, frame)

    monkeypatch.setattr(OpticalFlow, "__call__", counting_flow)
    # Both members ask for optical flow (conv3d_ae ignores it; what is counted is how often it is computed).
    monkeypatch.setattr(type(model.members[0]), "derived_inputs", lambda self: {"flow": {"method": "dis"}})
    results = list(stream_video(detector_for(model, cfg, device="cpu"), video, cfg))
    assert calls == list(range(12)), "one flow per frame for the two members"
    first, second = (np.array([r.members[n] for r in results]) for n in model.member_names)
    np.testing.assert_allclose(first, second, err_msg="the same member twice scores the same over a shared stream")
