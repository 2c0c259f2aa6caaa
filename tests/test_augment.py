"""Clip augmentations: identity, exact flips, rotation against torch.rot90, brightness range, valid mask."""

from __future__ import annotations

import pytest
import torch

from oddframe.data.augment import ClipAugment, flip, rotate, shift_brightness
from oddframe.data.clips import Clip


def _clip(c: int = 2, t: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(c, t, h, w, generator=g) * 2 - 1
    valid = torch.ones(1, t, h, w, dtype=torch.bool)
    valid[:, :, 1, 2:5] = False  # an asymmetric hole so that a wrong transform of the mask shows
    frames = torch.where(valid, frames, torch.full_like(frames, -1.0))
    return frames, valid


def test_all_zero_is_identity() -> None:
    frames, valid = _clip()
    aug = ClipAugment(seed=3)
    for _ in range(5):
        out, v = aug.apply(frames, valid)
        assert torch.equal(out, frames) and torch.equal(v, valid)


def test_horizontal_and_vertical_flips_are_exact() -> None:
    frames, valid = _clip(h=6, w=9)
    out, v = ClipAugment(hflip=1.0, seed=0).apply(frames, valid)
    assert torch.equal(out, torch.flip(frames, [-1])) and torch.equal(v, torch.flip(valid, [-1]))
    out, v = ClipAugment(vflip=1.0, seed=0).apply(frames, valid)
    assert torch.equal(out, torch.flip(frames, [-2])) and torch.equal(v, torch.flip(valid, [-2]))
    out, v = flip(frames, valid, horizontal=True, vertical=True)
    assert torch.equal(out, torch.flip(frames, [-2, -1]))


def test_flip_probability_is_respected() -> None:
    frames, valid = _clip()
    aug = ClipAugment(hflip=0.5, seed=1)
    flipped = sum(torch.equal(aug.apply(frames, valid)[0], torch.flip(frames, [-1])) for _ in range(400))
    assert 150 < flipped < 250


@pytest.mark.parametrize("k", [1, -1, 2])
def test_rotation_by_right_angles_matches_rot90(k: int) -> None:
    frames, valid = _clip()
    out, v = rotate(frames, valid, 90.0 * k)
    assert torch.allclose(out, torch.rot90(frames, k, dims=(-2, -1)), atol=1e-5)
    assert torch.equal(v, torch.rot90(valid, k, dims=(-2, -1)))


def test_rotation_is_rigid_on_non_square_frames() -> None:
    frames = -torch.ones(1, 1, 6, 10)
    frames[0, 0, 1, 4] = 1.0  # 1.5 rows above and 0.5 columns left of the centre (2.5, 4.5)
    out, _ = rotate(frames, torch.ones(1, 1, 6, 10, dtype=torch.bool), 90.0)
    # Counter-clockwise by 90 degrees: (dy, dx) = (-1.5, -0.5) -> (0.5, -1.5), i.e. pixel (3, 3).
    assert (out[0, 0] > 0.5).nonzero().tolist() == [[3, 3]]


def test_rotated_in_corners_become_invalid_and_black() -> None:
    frames, _ = _clip(h=16, w=16)
    valid = torch.ones(1, 3, 16, 16, dtype=torch.bool)
    out, v = rotate(frames, valid, 45.0)
    assert not v[:, :, 0, 0].any() and not v[:, :, -1, -1].any()
    assert v[:, :, 6:10, 6:10].all()
    assert torch.all(out[v.expand_as(out).logical_not()] == -1.0)


def test_random_rotation_uses_one_angle_per_clip_within_range() -> None:
    aug = ClipAugment(rotation_deg=30.0, seed=0)
    angles = [aug.sample_params()["angle_deg"] for _ in range(500)]
    assert all(-30.0 <= a <= 30.0 for a in angles)
    assert min(angles) < -25.0 and max(angles) > 25.0
    # Identical frames stay identical after augmentation: every frame got the same transform.
    frame = torch.rand(1, 1, 12, 12) * 2 - 1
    frames = frame.expand(1, 4, 12, 12).clone()
    out, v = ClipAugment(rotation_deg=40.0, hflip=0.5, brightness=0.3, seed=5).apply(
        frames, torch.ones(1, 4, 12, 12, dtype=torch.bool)
    )
    assert all(torch.equal(out[:, 0], out[:, t]) and torch.equal(v[:, 0], v[:, t]) for t in range(4))
    assert not torch.equal(out, frames)


def test_brightness_offset_range_and_clamping() -> None:
    aug = ClipAugment(brightness=0.2, seed=0)
    offsets = [aug.sample_params()["offset"] for _ in range(500)]
    assert all(-0.2 <= o <= 0.2 for o in offsets) and min(offsets) < -0.15 and max(offsets) > 0.15
    frames, valid = _clip()
    out = shift_brightness(frames, valid, 0.5)
    assert out.min() >= -1.0 and out.max() <= 1.0
    inside = valid.expand_as(frames) & (frames < 0.5)
    assert torch.allclose(out[inside], frames[inside] + 0.5)
    assert torch.all(out[~valid.expand_as(frames)] == -1.0)  # invalid pixels are not brightened
    shifted, _ = ClipAugment(brightness=0.2, seed=2).apply(frames, valid)
    unclamped = valid.expand_as(frames) & (frames.abs() < 0.75)
    delta = (shifted - frames)[unclamped]
    assert delta.abs().max() <= 0.2 + 1e-6 and torch.allclose(delta, delta[0].expand_as(delta))


def test_valid_mask_follows_flips_and_rotation() -> None:
    frames, valid = _clip()
    aug = ClipAugment(rotation_deg=90.0, hflip=0.5, vflip=0.5, seed=4)
    for _ in range(10):
        out, v = aug.apply(frames, valid)
        # The hole of 3 invalid pixels survives (as 3 or more invalid pixels) and stays black.
        assert (~v).sum() >= 3 * frames.shape[1]
        assert torch.all(out[(~v).expand_as(out)] == -1.0)


def test_seed_reproducible_and_clip_interface() -> None:
    frames, valid = _clip()
    clip = Clip(frames, valid, "vid", torch.arange(3))
    a = ClipAugment(rotation_deg=20.0, hflip=0.5, brightness=0.1, seed=7)
    b = ClipAugment(rotation_deg=20.0, hflip=0.5, brightness=0.1, seed=7)
    out_a, out_b = a(clip), b(clip)
    assert torch.equal(out_a.frames, out_b.frames) and torch.equal(out_a.valid, out_b.valid)
    assert out_a.video == "vid" and torch.equal(out_a.frame_index, torch.arange(3))
    assert out_a.frames.shape == frames.shape
    assert not torch.equal(ClipAugment(rotation_deg=20.0, seed=8)(clip).frames, out_a.frames)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rotation_deg": -1.0}, r"rotation_deg must be in \[0, 180\]"),
        ({"hflip": 1.5}, r"hflip .* \[0, 1\]"),
        ({"vflip": -0.1}, r"vflip .* \[0, 1\]"),
        ({"brightness": 3.0}, r"brightness must be in \[0, 2\]"),
    ],
)
def test_bad_parameters_are_rejected(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClipAugment(**kwargs)


def test_bad_shapes_are_rejected() -> None:
    frames, valid = _clip()
    with pytest.raises(ValueError, match=r"\(C, T, H, W\)"):
        ClipAugment().apply(frames[None], valid)
    with pytest.raises(ValueError, match="valid must be a bool tensor"):
        ClipAugment().apply(frames, valid.float())


class _Repeat(torch.utils.data.Dataset):
    """The same clip ``n`` times, augmented."""

    def __init__(self, aug: ClipAugment, n: int) -> None:
        self.aug, self.n = aug, n
        self.frames, self.valid = _clip(t=1)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.aug.apply(self.frames, self.valid)[0]


def test_dataloader_workers_draw_different_augmentations() -> None:
    # A seeded private generator copied into each worker would give both workers the same draws.
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        _Repeat(ClipAugment(brightness=0.5, seed=0), 4), batch_size=None, num_workers=2
    )
    items = list(loader)  # items 0 and 2 come from worker 0, items 1 and 3 from worker 1
    assert not torch.equal(items[0], items[1])
    assert not torch.equal(items[0], items[2])


def test_derived_inputs_survive_brightness_and_refuse_geometric_transforms():
    frames = torch.zeros(1, 2, 8, 8)
    clip = Clip(frames, torch.ones(1, 2, 8, 8, dtype=torch.bool), "v", torch.arange(2), {"flow": torch.ones(2, 2, 8, 8)})
    out = ClipAugment(brightness=0.5, seed=0)(clip)
    assert torch.equal(out.extras["flow"], clip.extras["flow"]), "flow is unchanged by a brightness shift"
    with pytest.raises(ValueError, match="brightness augmentation only"):
        ClipAugment(hflip=1.0, seed=0)(clip)
