"""Anomaly videos: the MP4 decodes with the right frame count and size, and memory stays flat while streaming."""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
import pytest

from oddframe.render.panel import compose_panel
from oddframe.render.video import AnomalyVideoWriter, pick_codec, write_side_by_side


def decode(path: Path) -> tuple[str, list[np.ndarray]]:
    """Codec name and all frames (RGB) of a video."""
    with av.open(str(path)) as c:
        name = c.streams.video[0].codec_context.name
        return name, [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def clip(t: int, h: int = 24, w: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Noise frames and maps with a bright blob moving right: ``(T, H, W)`` each."""
    rng = np.random.default_rng(0)
    frames = rng.uniform(-1, 1, (t, h, w)).astype(np.float32)
    maps = np.zeros((t, h, w), np.float32)
    for i in range(t):
        maps[i, 8:14, i % (w - 6) : i % (w - 6) + 6] = 1.0  # 0-1 loss 0.25: a high-level box
    return frames, maps


def test_side_by_side_decodes_with_expected_frames_and_size(tmp_path):
    frames, maps = clip(12)
    path = write_side_by_side(tmp_path / "sub" / "a.mp4", frames, maps, fps=5, style="diagnostic",
                              titles=[f"frame {i}" for i in range(12)])
    panel = compose_panel(frames[0], maps[0], style="diagnostic", title="frame 0")
    codec, decoded = decode(path)
    assert codec == ("h264" if pick_codec() == "libx264" else "mpeg4")
    assert len(decoded) == 12
    h, w = decoded[0].shape[:2]
    assert (h, w) == (panel.shape[0] + panel.shape[0] % 2, panel.shape[1] + panel.shape[1] % 2)
    # H.264 is lossy but close: the decoded first frame resembles the panel (mean abs error of a few levels).
    err = np.abs(decoded[0][: panel.shape[0], : panel.shape[1]].astype(int) - panel.astype(int)).mean()
    assert err < 12
    with av.open(str(path)) as c:
        assert c.streams.video[0].average_rate == 5


def test_odd_panel_sizes_are_padded_to_even(tmp_path):
    with AnomalyVideoWriter(tmp_path / "odd.mp4", fps=10, min_height=0) as video:
        for _ in range(3):
            video.write_rgb(np.full((33, 51, 3), 200, np.uint8))
    assert video.n_frames == 3 and video.closed
    _, decoded = decode(tmp_path / "odd.mp4")
    assert len(decoded) == 3 and decoded[0].shape == (34, 52, 3)


def test_writer_rejects_bad_use(tmp_path):
    with pytest.raises(ValueError, match="fps must be > 0"):
        AnomalyVideoWriter(tmp_path / "x.mp4", fps=0)
    with pytest.raises(ValueError, match="pass it to write"):
        AnomalyVideoWriter(tmp_path / "x.mp4", title="no")
    video = AnomalyVideoWriter(tmp_path / "x.mp4")
    video.write_rgb(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="but the video is"):
        video.write_rgb(np.zeros((40, 40, 3), np.uint8))
    video.close()
    with pytest.raises(ValueError, match="closed"):
        video.write_rgb(np.zeros((20, 20, 3), np.uint8))
    video.close()  # closing twice is harmless
    empty = AnomalyVideoWriter(tmp_path / "empty.mp4")
    empty.close()
    assert not (tmp_path / "empty.mp4").exists()
    with pytest.raises(ValueError, match="2 anomaly maps"):
        write_side_by_side(tmp_path / "y.mp4", np.zeros((3, 8, 8)), np.zeros((2, 8, 8)))


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc/self/status (Linux only)")
def test_streaming_300_frames_keeps_memory_flat(tmp_path):
    frames, maps = clip(1, 32, 32)
    # Each panel is about 588 x 290 x 3 = 0.5 MB: holding 300 of them would add ~150 MiB.
    with AnomalyVideoWriter(tmp_path / "long.mp4", fps=25, preset="ultrafast") as video:
        for i in range(300):
            video.write(frames[0], np.roll(maps[0], i, axis=1), title=str(i))
            if i == 60:  # after x264's lookahead buffers are allocated
                base = rss_mib()
        grown = rss_mib() - base
        held = [v for v in vars(video).values() if isinstance(v, (list, tuple)) and len(v) >= 60]
    assert held == [], "the writer must not keep frames"
    assert grown < 25, f"RSS grew {grown:.1f} MiB over 240 frames"
    _, decoded = decode(tmp_path / "long.mp4")
    assert len(decoded) == 300
