"""Frame sources: video, image folders, FITS (files, folders, tar archives), arrays; open_source/is_source."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from oddframe.data.fits import FitsSource
from oddframe.data.sources import (
    ArraySource,
    Frame,
    ImageFolderSource,
    VideoSource,
    is_source,
    natural_key,
    open_source,
    path_suffix,
)
from oddframe.errors import SourceError
from helpers.media import (
    SQUARE,
    fits_bytes,
    h264_or_mpeg4,
    moving_square,
    square_position,
    truncated_copy,
    write_fits,
    write_image,
    write_tar,
    write_video,
)


def posix(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


# ---------------------------------------------------------------------------------------------- helpers


def test_path_suffix_and_natural_key() -> None:
    assert path_suffix("a/B.FITS.GZ") == ".fits.gz"
    assert path_suffix("x.tar.gz") == ".tar.gz"
    assert path_suffix("movie.backup.MP4") == ".mp4"
    names = ["frame10.png", "frame2.png", "frame1.png", "Frame3.png"]
    assert sorted(names, key=natural_key) == ["frame1.png", "frame2.png", "Frame3.png", "frame10.png"]


# ------------------------------------------------------------------------------------------------ video


@pytest.mark.parametrize(("suffix", "codec"), [(".mp4", h264_or_mpeg4()), (".avi", "mpeg4"), (".gif", "gif")])
def test_video_decodes_known_content(tmp_path: Path, suffix: str, codec: str) -> None:
    written = moving_square()
    path = write_video(tmp_path / f"clip{suffix}", written, codec=codec)
    source = open_source(path)
    assert isinstance(source, VideoSource) and source.kind == "video"
    assert len(source) == 12 and source.fps == pytest.approx(10.0)
    assert source.frame_shape() == (32, 48, 3)
    frames = list(source)
    assert [f.index for f in frames] == list(range(12))
    assert [f.time for f in frames] == pytest.approx([i / 10 for i in range(12)], abs=1e-3)
    for i, frame in enumerate(frames):
        assert frame.data.dtype == np.uint8 and frame.data.shape == (32, 48, 3) and frame.valid is None
        r, c = square_position(i)
        assert frame.data[r:r + SQUARE, c:c + SQUARE].mean() > 200  # the square is where it was written
        # Lossy codecs: close to what was written, not equal.
        assert np.abs(frame.data.astype(int) - written[i]).mean() < 12
    description = source.describe()
    assert json.loads(json.dumps(description)) == description
    assert description == {"kind": "video", "path": str(path), "n_frames": 12, "height": 32, "width": 48,
                           "channels": 3, "fps": 10.0, "dtype": "uint8"}


def test_video_is_reiterable_and_stops_early(tmp_path: Path) -> None:
    source = open_source(write_video(tmp_path / "a.avi", moving_square(), codec="mpeg4"))
    first = next(iter(source))  # abandoned generator: its container is closed on garbage collection
    again = list(source)
    assert len(again) == 12 and np.array_equal(first.data, again[0].data)


def test_truncated_video_warns_once_and_yields_what_decodes(tmp_path: Path) -> None:
    # Noise at a high bit rate makes the frames big, so half the file keeps the AVI header and some frames.
    full = write_video(tmp_path / "full.avi", moving_square(noise=True), codec="mpeg4", bit_rate=4_000_000)
    source = open_source(truncated_copy(full, tmp_path / "cut.avi"))
    assert len(source) == 12  # what the header promises
    with pytest.warns(UserWarning) as record:
        frames = list(source)
    assert len(record) == 1
    message = str(record[0].message)
    assert "cut.avi" in message and "12" in message and str(len(frames)) in message
    assert 0 < len(frames) < 12
    assert len(source) == len(frames)  # the count is corrected after a full pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second pass must not warn again
        assert len(list(source)) == len(frames)


@pytest.mark.parametrize("content", [b"", b"this is not a video\n" * 20])
def test_unreadable_video_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(SourceError, match="broken.mp4"):
        open_source(path)


# ----------------------------------------------------------------------------------------------- images


def test_image_folder_natural_order_and_grey(tmp_path: Path) -> None:
    for n in (10, 2, 1):
        write_image(tmp_path / f"frame{n}.png", np.full((6, 5), n, dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_source(tmp_path)
    assert isinstance(source, ImageFolderSource) and source.kind == "images"
    assert [p.name for p in source.files] == ["frame1.png", "frame2.png", "frame10.png"]
    frames = list(source)
    assert [int(f.data[0, 0]) for f in frames] == [1, 2, 10]
    assert frames[0].data.shape == (6, 5) and frames[0].data.dtype == np.uint8
    assert frames[0].time is None and source.fps is None
    assert source.describe()["channels"] == 1


def test_image_folder_colour_is_rgb_and_16_bit_kept(tmp_path: Path) -> None:
    colour = tmp_path / "colour"
    colour.mkdir()
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    write_image(colour / "a.png", rgb)
    frame = next(iter(open_source(colour)))
    assert frame.data.shape == (4, 4, 3) and frame.data[0, 0].tolist() == [10, 20, 30]

    deep = tmp_path / "deep"
    deep.mkdir()
    write_image(deep / "a.png", np.full((4, 4), 40000, dtype=np.uint16))
    frame = next(iter(open_source(deep)))
    assert frame.data.dtype == np.uint16 and int(frame.data[0, 0]) == 40000


def test_image_folder_corrupt_or_mismatched_file_is_named(tmp_path: Path) -> None:
    write_image(tmp_path / "frame1.jpg", np.zeros((8, 8), dtype=np.uint8))
    (tmp_path / "frame2.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    source = open_source(tmp_path)
    with pytest.raises(SourceError, match="frame2.jpg"):
        list(source)
    (tmp_path / "frame2.jpg").unlink()
    write_image(tmp_path / "frame3.jpg", np.zeros((9, 8), dtype=np.uint8))
    with pytest.raises(SourceError, match=r"frame3.jpg.*differs"):
        list(open_source(tmp_path))


# ------------------------------------------------------------------------------------------------- FITS


def test_fits_nan_blank_and_time_order(tmp_path: Path) -> None:
    floats = np.arange(20, dtype=np.float64).reshape(4, 5)
    floats[1, 2] = np.nan
    ints = np.arange(20, dtype=np.int16).reshape(4, 5)
    ints[3, 4] = -32768
    # Names in the opposite order to the observation times.
    write_fits(tmp_path / "a.fits", floats, header={"DATE-OBS": "2020-01-01T01:00:00", "EXPTIME": 2.5})
    write_fits(tmp_path / "b.fits", ints, blank=-32768, header={"DATE_OBS": "2020-01-01T00:00:00Z"})
    source = open_source(tmp_path)
    assert isinstance(source, FitsSource) and source.kind == "fits" and len(source) == 2
    first, second = list(source)
    assert first.time == pytest.approx(posix("2020-01-01T00:00:00"))
    assert second.time == pytest.approx(posix("2020-01-01T01:00:00"))
    for frame in (first, second):
        assert frame.data.dtype == np.float32 and frame.data.shape == (4, 5)
    assert not first.valid[3, 4] and first.data[3, 4] == 0 and first.valid.sum() == 19
    assert first.data[3, 3] == 18.0
    assert not second.valid[1, 2] and second.data[1, 2] == 0 and second.valid.sum() == 19
    assert np.isfinite(second.data).all()
    names = [Path(h["NAME"]).name for h in source.headers()]
    assert names == ["b.fits", "a.fits"]
    assert source.headers()[1]["EXPTIME"] == 2.5 and source.headers()[0]["EXPTIME"] is None


def test_fits_compressed_image_in_hdu_1(tmp_path: Path) -> None:
    data = np.arange(48, dtype=np.int32).reshape(6, 8)
    path = write_fits(tmp_path / "aia.fits", data, compressed=True,
                      header={"T_OBS": "2011-02-15T00:00:01.34Z", "WAVELNTH": 171, "INSTRUME": "AIA_3"})
    source = open_source(path)
    frame = next(iter(source))
    assert frame.data.shape == (6, 8) and np.array_equal(frame.data, data.astype(np.float32))
    assert frame.time == pytest.approx(posix("2011-02-15T00:00:01.34"))
    header = source.headers()[0]
    assert header["WAVELNTH"] == 171 and header["INSTRUME"] == "AIA_3"
    assert header["DATE-OBS"] == "2011-02-15T00:00:01.34Z"


def test_fits_without_time_sorts_by_name_and_bad_files_are_named(tmp_path: Path) -> None:
    for n in (10, 2):
        write_fits(tmp_path / f"img{n}.fits", np.full((3, 3), n, dtype=np.float32))
    frames = list(open_source(tmp_path))
    assert [f.data[0, 0] for f in frames] == [2.0, 10.0] and frames[0].time is None
    write_fits(tmp_path / "img11.fits", np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(SourceError, match=r"img11.fits.*shape"):
        open_source(tmp_path)
    write_fits(tmp_path / "cube.fits", np.zeros((2, 3, 3), dtype=np.float32))
    with pytest.raises(SourceError, match=r"cube.fits.*2-D"):
        open_source(tmp_path / "cube.fits")
    (tmp_path / "junk.fits").write_text("SIMPLE? no")
    with pytest.raises(SourceError, match="junk.fits"):
        open_source(tmp_path / "junk.fits")


def test_fits_tar_archive_streams_in_time_order(tmp_path: Path) -> None:
    members = {
        "obs/late.fits": fits_bytes(np.full((3, 4), 2.0), header={"DATE-OBS": "2021-05-01T00:10:00"}),
        "obs/readme.txt": b"not a FITS file: skipped",
        "obs/early.fits.gz": gzip.compress(fits_bytes(np.full((3, 4), 1.0),
                                                      header={"DATE-OBS": "2021-05-01T00:00:00"})),
    }
    archive = write_tar(tmp_path / "series.tar.gz", members)
    assert is_source(archive)
    source = open_source(archive)
    assert isinstance(source, FitsSource) and len(source) == 2 and source.frame_shape() == (3, 4)
    for _ in range(2):  # re-iterable
        frames = list(source)
        assert [f.data[0, 0] for f in frames] == [1.0, 2.0]
        assert frames[1].time - frames[0].time == pytest.approx(600.0)
    assert [h["NAME"].split(":")[-1] for h in source.headers()] == ["obs/early.fits.gz", "obs/late.fits"]


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_malicious_tar_is_refused_and_writes_nothing(tmp_path: Path, kind: str) -> None:
    outside = Path("/tmp") / f"oddframe-test-{uuid.uuid4().hex}.fits"
    good = fits_bytes(np.zeros((2, 2)))
    members, links = {"ok.fits": good}, {}
    bad = {"dotdot": "../evil.fits", "absolute": str(outside), "symlink": "link.fits"}[kind]
    if kind == "symlink":
        links[bad] = str(outside)
    else:
        members[bad] = good
    work = tmp_path / "work"
    work.mkdir()
    archive = write_tar(work / "bad.tar", members, links=links)
    cwd = os.getcwd()
    os.chdir(work)  # were anything extracted relative to the working folder, "../evil.fits" lands in tmp_path
    try:
        with pytest.raises(SourceError) as err:
            open_source(archive)
    finally:
        os.chdir(cwd)
    assert "bad.tar" in str(err.value) and bad in str(err.value)
    assert not outside.exists() and not (tmp_path / "evil.fits").exists()
    assert sorted(p.name for p in work.iterdir()) == ["bad.tar"]


# ------------------------------------------------------------------------------------------------ arrays


def test_npy_arrays(tmp_path: Path) -> None:
    grey = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    grey[1, 2, 3] = np.nan
    np.save(tmp_path / "grey.npy", grey)
    source = open_source(tmp_path / "grey.npy")
    assert isinstance(source, ArraySource) and source.kind == "array" and len(source) == 3
    frames = list(source)
    assert frames[0].valid is None and np.array_equal(frames[0].data, grey[0])
    assert frames[1].data.dtype == np.float32 and not frames[1].valid[2, 3] and frames[1].valid.sum() == 19
    assert frames[1].data[2, 3] == 0

    np.save(tmp_path / "rgb.npy", np.zeros((2, 4, 5, 3), dtype=np.uint8))
    np.save(tmp_path / "one.npy", np.ones((2, 4, 5, 1), dtype=np.int16))
    assert open_source(tmp_path / "rgb.npy").frame_shape() == (4, 5, 3)
    one = open_source(tmp_path / "one.npy")
    assert one.frame_shape() == (4, 5) and next(iter(one)).data.dtype == np.int16


def test_pt_tensors(tmp_path: Path) -> None:
    tensor = torch.arange(2 * 3 * 4, dtype=torch.int16).reshape(2, 3, 4)
    torch.save(tensor, tmp_path / "t.pt")
    frames = list(open_source(tmp_path / "t.pt"))
    assert len(frames) == 2 and frames[1].data.dtype == np.int16
    assert np.array_equal(frames[1].data, tensor[1].numpy())
    torch.save(torch.ones(2, 3, 4, 3, dtype=torch.bfloat16), tmp_path / "b.pt")
    assert open_source(tmp_path / "b.pt").describe()["dtype"] == "float32"


@pytest.mark.parametrize("shape", [(4, 5), (2, 4, 5, 2), (2, 4, 5, 3, 1)])
@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_array_bad_shapes_say_found_and_allowed(tmp_path: Path, shape: tuple[int, ...], suffix: str) -> None:
    path = tmp_path / f"bad{suffix}"
    if suffix == ".npy":
        np.save(path, np.zeros(shape, dtype=np.float32))
    else:
        torch.save(torch.zeros(shape), path)
    with pytest.raises(SourceError, match=r"bad\..*" + r"\(" + ", ".join(map(str, shape))) as err:
        open_source(path)
    assert "(T, H, W)" in str(err.value)


class _Trap:
    """Unpickling this would create a file: proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickles_are_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"x": _Trap(marker)}, tmp_path / "trap.pt")
    with pytest.raises(SourceError, match="trap.pt"):
        open_source(tmp_path / "trap.pt")
    assert not marker.exists()

    torch.save({"weights": torch.zeros(2, 3, 4)}, tmp_path / "dict.pt")
    with pytest.raises(SourceError, match=r"dict.pt.*single tensor, found dict"):
        open_source(tmp_path / "dict.pt")

    with open(tmp_path / "obj.npy", "wb") as f:
        np.lib.format.write_array(f, np.array([_Trap(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(SourceError, match="obj.npy"):
        open_source(tmp_path / "obj.npy")
    assert not marker.exists()
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(_Trap(armed)))  # noqa: S301 - proves the trap fires when really unpickled
    assert armed.exists()


# ------------------------------------------------------------------------------------ open_source/is_source


def test_is_source_and_open_source_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "1.png", np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "clip.mkv").write_bytes(b"")
    assert is_source(images) and is_source(tmp_path / "clip.mkv")
    assert not is_source(tmp_path / "empty") and not is_source(tmp_path / "notes.txt")
    assert not is_source(images / "1.png") and not is_source(tmp_path / "missing.mp4")
    with pytest.raises(SourceError, match=r"missing.mp4: no such file"):
        open_source(tmp_path / "missing.mp4")
    with pytest.raises(SourceError, match=r"notes.txt.*unknown suffix '.txt'.*\.mp4"):
        open_source(tmp_path / "notes.txt")
    with pytest.raises(SourceError, match=r"1.png.*pass the folder"):
        open_source(images / "1.png")
    with pytest.raises(SourceError, match=r"empty.*no image"):
        open_source(tmp_path / "empty")
    with pytest.raises(ValueError, match="video, images, fits, array"):
        open_source(images, kind="movie")
    write_fits(images / "x.fits", np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(SourceError, match="mixes"):
        open_source(images)


def test_open_source_kind_override(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", moving_square(n_frames=3), codec="mpeg4")
    odd = path.rename(tmp_path / "clip.bin")
    assert not is_source(odd)
    assert len(list(open_source(odd, kind="video"))) == 3


def test_frame_is_frozen() -> None:
    frame = Frame(index=0, time=None, data=np.zeros((2, 2)), valid=None)
    with pytest.raises(AttributeError):
        frame.index = 1  # type: ignore[misc]


# --------------------------------------------------------------------------------------------- real data


def test_real_video_decodes_all_frames(shared_data: Path) -> None:
    source = open_source(shared_data / "video" / "vtest.avi")
    assert len(source) == 795 and source.fps == pytest.approx(10.0)
    count, last = 0, None
    for frame in source:
        assert frame.data.shape == (576, 768, 3) and frame.data.dtype == np.uint8
        count, last = count + 1, frame
    assert count == 795 and last is not None and last.time == pytest.approx(79.4)


def test_real_fits_folder(shared_data: Path) -> None:
    source = open_source(shared_data / "fits")
    frames = list(source)
    assert len(frames) == 3
    for frame in frames:
        assert frame.data.shape == (128, 128) and frame.data.dtype == np.float32
        assert np.isfinite(frame.data).all() and (frame.valid is None or frame.valid.shape == (128, 128))
    times = [f.time for f in frames]
    assert times == sorted(times)
    # The two EIT frames: 00:00:10.515 and 01:00:16.178 on 2004-03-01, then AIA in 2011.
    assert times[1] - times[0] == pytest.approx(3605.663, abs=1e-3)
    assert times[0] == pytest.approx(posix("2004-03-01T00:00:10.515"))
    headers = source.headers()
    assert [h["INSTRUME"] for h in headers] == ["EIT", "EIT", "AIA_3"]
    assert [h["WAVELNTH"] for h in headers] == [195, 171, 171]


def test_real_image_folder(shared_data: Path) -> None:
    source = open_source(shared_data / "ped2" / "testing" / "frames" / "01")
    assert source.kind == "images" and len(source) == 180
    assert source.frame_shape()[:2] == (240, 360)
    assert [p.name for p in source.files[:2]] == ["000.jpg", "001.jpg"]
    assert sum(1 for _ in source) == 180
