"""``oddframe watch`` on local live streams with a known anomaly: events, gaps, webhooks, drops, signals, stdin.

A tiny conv3d_ae learns a dim bar sweeping over dark noise (MPEG-TS, as the streams are); the test footage shows a
bright square in frames 60-79. Streams are served by PyAV on loopback TCP, a named pipe or standard input, paced
and bounded in time; webhooks go to an HTTP server on loopback.
"""

from __future__ import annotations

import csv
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from oddframe import api
from oddframe.data.live import LiveSource, source_kind
from oddframe.errors import CheckpointError, SourceError
from oddframe.pipeline import watch as watch_module
from oddframe.pipeline.watch import watch
from oddframe.render.video import count_frames

from helpers.streams import TcpStreamServer, mpegts_bytes

ANOMALY = (60, 80)  # frames with the bright square
N = 140
ROOT = Path(__file__).resolve().parents[1]


def footage(n: int, anomaly: tuple[int, int] | None = None, seed: int = 0) -> np.ndarray:
    """``(n, 64, 64, 3)`` uint8: faint noise with a dim bar sweeping down (normal), a bright square (anomaly)."""
    rng = np.random.default_rng(seed)
    f = rng.integers(28, 36, (n, 64, 64), dtype=np.uint8)
    for i in range(n):
        r = (i * 3) % 56
        f[i, r:r + 8, :] = 90
    if anomaly:
        f[anomaly[0]:anomaly[1], 20:44, 20:44] = 250
    return np.repeat(f[..., None], 3, axis=3)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("watch")
    (root / "normal.ts").write_bytes(mpegts_bytes(footage(240, seed=1), fps=10)[0])
    cfg = api.load_config(None, ["model.name=conv3d_ae", "model.params.width=0.125", "data.size=[32,32]",
                                 "data.clip_length=4", "data.train_stride=2", "train.epochs=2", "train.batch_size=8",
                                 "score.stride=2", f"data.path={root / 'normal.ts'}"])
    api.train(cfg, root / "run", progress=False)
    api.calibrate(root / "run", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def test_stream() -> tuple[bytes, list[int]]:
    return mpegts_bytes(footage(N, ANOMALY, seed=2), fps=10)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _one_event_covering_the_anomaly(records: list[dict], *, offset: int = 0, tol: int = 3) -> dict:
    events = [r for r in records if r["type"] == "end"]
    assert len(events) == 1, records
    e = events[0]
    assert abs(e["start_frame"] - (ANOMALY[0] + offset)) <= tol, e
    assert abs(e["end_frame"] - (ANOMALY[1] - 1 + offset)) <= tol, e
    assert [r["type"] for r in records if r["type"] != "gap"] == ["start", "end"]
    return e


def test_a_file_gives_exactly_one_event_with_its_boxes_clip_and_scores(run, test_stream, tmp_path):
    video = tmp_path / "test.ts"
    video.write_bytes(test_stream[0])
    lines: list[str] = []
    s = watch(run, str(video), events=tmp_path / "events.jsonl", clips=tmp_path / "clips",
              scores=tmp_path / "scores.csv", quiet=0.5, clip_before=1.0, clip_after=1.0, log=lines.append)
    e = _one_event_covering_the_anomaly(_records(tmp_path / "events.jsonl"))
    assert e["ended_by"] == "quiet" and ANOMALY[0] <= e["peak_frame"] < ANOMALY[1]
    assert e["peak_score"] > e["threshold"]
    box = e["boxes"][0]  # the strongest: the square (20..44) in source pixels, within the smoothing of the map
    assert all(abs(box[k] - v) <= 6 for k, v in {"x0": 20, "x1": 44, "y0": 20, "y1": 44}.items())
    assert box["level"] == "high" and all(b["peak_ratio"] < box["peak_ratio"] for b in e["boxes"][1:])
    assert e["frame_size"] == [64, 64]
    assert s.received == s.scored == N and s.dropped_late == 0 and s.events == 1 and s.stopped_by == "end of file"
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert [int(r["frame"]) for r in rows] == list(range(N))
    flagged = [int(r["frame"]) for r in rows if r["flagged"] == "1"]
    assert set(range(ANOMALY[0] + 2, ANOMALY[1] - 2)) <= set(flagged)
    clip = Path(e["clip"])
    assert clip.is_file() and clip.parent == tmp_path / "clips"
    assert abs(count_frames(clip) - (e["end_frame"] - e["start_frame"] + 1 + 20)) <= 2  # 1 s before and after at 10 fps
    assert any("event 1 started at frame" in line for line in lines)


def test_a_tcp_stream_gives_one_event_and_bounded_latency(run, test_stream, tmp_path):
    with TcpStreamServer([test_stream], fps=50) as server:
        # A generous max_latency: nothing is dropped even on a machine busy with other jobs (drops: tested below).
        s = watch(run, server.url, events=tmp_path / "events.jsonl", quiet=0.3, retry_for=1.0, max_latency=30,
                  log=lambda _: None)
    records = _records(tmp_path / "events.jsonl")
    e = _one_event_covering_the_anomaly(records)
    assert e["start_wall"] and e["end_wall"]  # live: wall-clock times of the start and end
    assert s.scored == s.received == N
    # One window (4 frames at 50 fps) plus the forward pass, far below a second on a tiny model.
    assert s.latency["model_p95"] < 1.0


def test_an_http_stream(run, test_stream, tmp_path):
    """MPEG-TS over HTTP, as many IP cameras and encoders serve it, paced at 50 frames/s."""
    data, ends = test_stream

    class Camera(http.server.BaseHTTPRequestHandler):
        served = 0

        def do_GET(self):  # noqa: N802 - the http.server API
            if type(self).served:  # one stream, then the camera is gone
                self.send_error(404)
                return
            type(self).served += 1
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            t0, sent = time.monotonic(), 0
            for i, end in enumerate(ends):
                time.sleep(max(0.0, t0 + i / 50 - time.monotonic()))
                self.wfile.write(data[sent:end])
                sent = end

        def log_message(self, *args):
            pass

    server, url = _serve(Camera)
    try:
        s = watch(run, url.replace("/hook", "/live.ts"), events=tmp_path / "events.jsonl", quiet=0.3, retry_for=0.5,
                  max_latency=30, log=lambda _: None)
    finally:
        server.shutdown()
    _one_event_covering_the_anomaly(_records(tmp_path / "events.jsonl"))
    # (the last frame may be lost when the server drops the connection mid-way through its decoding)
    assert s.received >= N - 1 and not s.gaps and s.stopped_by.startswith("gave up")  # the camera went away


def test_a_udp_stream(run, test_stream, tmp_path):
    """MPEG-TS over UDP (7 TS packets a datagram, as encoders send it) to a port the watch listens on."""
    import socket

    data, ends = test_stream
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    listening = threading.Event()

    def send():
        listening.wait(30)
        time.sleep(0.5)  # the reader thread opens the port
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t0, sent = time.monotonic(), 0
        for i, end in enumerate(ends):
            time.sleep(max(0.0, t0 + i / 50 - time.monotonic()))
            for k in range(sent, end, 1316):
                out.sendto(data[k:min(k + 1316, end)], ("127.0.0.1", port))
            sent = end
        out.close()

    threading.Thread(target=send, daemon=True).start()
    s = watch(run, f"udp://127.0.0.1:{port}", events=tmp_path / "events.jsonl", quiet=0.3, max_latency=30,
              duration=5.0, log=lambda line: listening.set())
    _one_event_covering_the_anomaly(_records(tmp_path / "events.jsonl"))
    assert s.received >= N - 5 and s.stopped_by == "duration"  # UDP has no end: the last frames stay in the decoder


def test_a_stream_that_drops_is_reopened_and_the_gap_reported(run, tmp_path):
    first = mpegts_bytes(footage(50, seed=3), fps=10)
    second = mpegts_bytes(footage(N, ANOMALY, seed=4), fps=10)
    with TcpStreamServer([first, second], fps=50, pause=0.6) as server:
        s = watch(run, server.url, events=tmp_path / "events.jsonl", quiet=0.3, retry_for=1.0, max_latency=30,
                  log=lambda _: None)
    records = _records(tmp_path / "events.jsonl")
    (gap,) = [r for r in records if r["type"] == "gap"]
    assert gap["seconds"] >= 0.4 and gap["attempts"] >= 1 and gap["reason"] == "end of stream"
    _one_event_covering_the_anomaly(records, offset=50, tol=5)  # frames are numbered across reconnections
    assert len(s.gaps) == 1 and s.received == s.scored == 50 + N
    assert s.stopped_by.startswith("gave up after")


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []
    status = 200

    def do_POST(self):  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/hook"


def test_a_webhook_gets_the_event_and_a_failing_one_never_stops_the_watch(run, test_stream, tmp_path):
    video = tmp_path / "test.ts"
    video.write_bytes(test_stream[0])
    good = type("Good", (_Hook,), {"received": [], "status": 200})
    bad = type("Bad", (_Hook,), {"received": [], "status": 500})
    (server, url), (bad_server, bad_url) = _serve(good), _serve(bad)
    try:
        s = watch(run, str(video), events=tmp_path / "e1.jsonl", webhook=url, quiet=0.3, log=lambda _: None)
        assert [r["type"] for r in good.received] == ["start", "end"] and good.received[1]["id"] == 1
        assert s.webhook == {"sent": 2, "failed": 0, "dropped": 0}
        lines: list[str] = []
        s = watch(run, str(video), events=tmp_path / "e2.jsonl", webhook=bad_url, quiet=0.3, log=lines.append,
                  webhook_retries=1, webhook_timeout=1.0)
        assert s.scored == N and s.events == 1  # the watch went on
        assert len(bad.received) >= 2  # the first record was tried again
        assert s.webhook["sent"] == 0 and s.webhook["failed"] >= 1
        assert any("webhook" in line and "gave up" in line for line in lines)
    finally:
        server.shutdown()
        bad_server.shutdown()
    # Nobody listening at all: the same.
    s = watch(run, str(video), events=tmp_path / "e3.jsonl", webhook="http://127.0.0.1:9/none", quiet=0.3,
              webhook_retries=1, log=lambda _: None)
    assert s.scored == N and s.webhook["failed"] >= 1


def test_a_slow_model_drops_frames_instead_of_falling_behind(run, tmp_path, monkeypatch):
    frames = footage(40, seed=5)
    np.save(tmp_path / "clip.npy", frames[..., 0])
    load = watch_module.load_run

    def slow_run(*args, **kwargs):
        model, config = load(*args, **kwargs)
        forward = model.anomaly_map

        def slow(batch):
            time.sleep(0.5)  # a window of 2 new frames every 0.5 s: 4 frames/s for a 10 frames/s source
            return forward(batch)

        model.anomaly_map = slow
        return model, config

    monkeypatch.setattr(watch_module, "load_run", slow_run)
    s = watch(run, str(tmp_path / "clip.npy"), realtime=True, max_latency=0.2, threshold=1e9,
              events=tmp_path / "e.jsonl", log=lambda _: None, input_format=None,
              overrides=[], duration=None)
    assert s.dropped_late + s.dropped_queue >= 10
    assert s.received == 40 and s.scored == 40 - s.dropped_late - s.dropped_queue
    # Waiting for the model is bounded: max latency <= the window (4 frames) + max_latency + two forward passes.
    assert s.latency["model_max"] < 4 / 10 + 0.2 + 2 * 0.5 + 0.5


def test_a_named_pipe_and_its_end(run, test_stream, tmp_path):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    assert source_kind(str(fifo)) == "pipe"

    def write():
        with open(fifo, "wb") as f:
            f.write(test_stream[0])

    threading.Thread(target=write, daemon=True).start()
    # The whole stream arrives at once: a generous --max-latency keeps a loaded machine from dropping its frames.
    s = watch(run, str(fifo), events=tmp_path / "events.jsonl", quiet=0.3, max_latency=30, log=lambda _: None)
    _one_event_covering_the_anomaly(_records(tmp_path / "events.jsonl"))
    assert s.stopped_by == "end of stream" and not s.gaps


def _cli(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "oddframe.cli", "watch", *map(str, args)], env=env, cwd=ROOT,
                            text=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_standard_input_with_events_on_standard_output(run, test_stream):
    """Standard input is a live source (e.g. ``ffmpeg ... -f mpegts - | oddframe watch -``): fed here at 50 frames/s."""
    proc = _cli("-", "--checkpoint", run, "--quiet", "0.3", "--max-latency", "30", stdin=subprocess.PIPE)
    assert proc.stderr.readline().startswith(b"watching -")  # ready: what a camera sends from now on is watched
    data, ends = test_stream
    t0, sent = time.monotonic(), 0
    for i, end in enumerate(ends):
        time.sleep(max(0.0, t0 + i / 50 - time.monotonic()))
        proc.stdin.write(data[sent:end])
        proc.stdin.flush()
        sent = end
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    _one_event_covering_the_anomaly([json.loads(line) for line in out.decode().splitlines()])
    summary = err.decode().splitlines()[-1]
    assert f"{N} frames arrived" in summary and "(end of stream)" in summary, summary


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_event_closes_it_and_leaves_valid_files(run, tmp_path, sig):
    frames = footage(400, (10, 400), seed=6)  # the anomaly starts at frame 10 and lasts to the end
    np.save(tmp_path / "long.npy", frames[..., 0])
    events = tmp_path / "events.jsonl"
    proc = _cli(tmp_path / "long.npy", "--checkpoint", run, "--realtime", "--max-latency", "30", "--events", events,
                "--clips", tmp_path / "clips", "--scores", tmp_path / "scores.csv", start_new_session=True)
    deadline = time.monotonic() + 120
    while not (events.is_file() and '"start"' in events.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    records = _records(events)
    assert [r["type"] for r in records] == ["start", "end"]
    end = records[1]
    assert end["ended_by"] == "stopped" and abs(end["start_frame"] - 10) <= 3 and end["end_frame"] > end["start_frame"]
    assert ("SIGTERM" if sig == signal.SIGTERM else "SIGINT") in err.decode()
    assert count_frames(Path(end["clip"])) > 0 and not list((tmp_path / "clips").glob("*.partial.mp4"))
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert rows and int(rows[-1]["frame"]) >= end["end_frame"]


def test_what_is_refused(run, tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        LiveSource(str(tmp_path / "missing.mp4"))
    uncalibrated = tmp_path / "uncalibrated"
    uncalibrated.mkdir()
    for name in ("config.yaml", "model.safetensors"):
        (uncalibrated / name).write_bytes((run / name).read_bytes())
    with pytest.raises(CheckpointError, match="oddframe calibrate"):
        watch(uncalibrated, str(tmp_path / "missing.mp4"))
    with pytest.raises(SourceError, match="cannot open"):  # a network source never reached, given up on
        watch(run, "tcp://127.0.0.1:9", retry_for=0.2, events=tmp_path / "e.jsonl", log=lambda _: None)
    with pytest.raises(ValueError, match="http"):
        watch(run, str(tmp_path / "e.jsonl"), webhook="ftp://example")


def test_an_exported_backend_watches_with_the_same_scores(run, test_stream, tmp_path):
    pytest.importorskip("onnxruntime")
    exported = tmp_path / "run"
    exported.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (exported / f.name).write_bytes(f.read_bytes())
    video = tmp_path / "test.ts"
    video.write_bytes(test_stream[0])
    with pytest.raises(CheckpointError, match="oddframe export"):
        watch(exported, str(video), backend="onnxruntime", log=lambda _: None)
    api.export(exported)
    rows = {}
    for backend in ("torch", "onnxruntime"):
        s = watch(exported, str(video), backend=backend, events=tmp_path / f"{backend}.jsonl",
                  scores=tmp_path / f"{backend}.csv", quiet=0.5, log=lambda _: None)
        assert s.scored == N and s.events == 1
        rows[backend] = [float(r["score"]) for r in csv.DictReader((tmp_path / f"{backend}.csv").open())]
    np.testing.assert_allclose(rows["onnxruntime"], rows["torch"], atol=1e-4)


def test_live_scores_keep_only_what_smoothing_still_reads_on_an_endless_stream():
    from oddframe.config import load_config
    from oddframe.pipeline.engine import postprocess
    from oddframe.pipeline.outputs import LiveScores

    config = load_config(None, ["score.smoothing_sigma=2", "score.normalise=calibrated"])
    raw = np.random.default_rng(0).random(3000)
    reference = {"mean": 0.5, "std": 0.2}
    live = LiveScores(config, reference, threshold=1.0)
    out, held = [], []
    for i, x in enumerate(raw):
        out += live.push(x, i)
        held.append(len(live.raw))
    out += live.finish()
    np.testing.assert_allclose([s for _, s, _ in out], postprocess(raw, config, reference), rtol=1e-12)
    assert max(held) <= 2 * live.radius + 66  # flat: a window and a trimming step, not the whole stream


def test_the_live_view_shows_the_annotated_stream_and_the_events(run, tmp_path):
    import urllib.request

    import cv2

    np.save(tmp_path / "clip.npy", footage(50, (15, 35), seed=7)[..., 0])  # 5 s at 10 frames/s
    lines: list[str] = []
    result = {}
    thread = threading.Thread(target=lambda: result.update(s=watch(
        run, str(tmp_path / "clip.npy"), realtime=True, view=0, quiet=0.3, max_latency=30,
        events=tmp_path / "events.jsonl", log=lines.append)))
    thread.start()
    deadline = time.monotonic() + 60
    while not any(line.startswith("live view: ") for line in lines):
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    url = next(line for line in lines if line.startswith("live view: ")).split(": ", 1)[1]
    assert url.startswith("http://127.0.0.1:")
    page = urllib.request.urlopen(url, timeout=10).read().decode()
    assert "/stream.mjpg" in page and "/events.json" in page
    while not any("event 1 started" in line for line in lines):  # frame 15 at 10 frames/s
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    events = json.loads(urllib.request.urlopen(url + "events.json", timeout=10).read())
    assert [e["id"] for e in events] == [1] and abs(events[0]["start_frame"] - 15) <= 3
    jpeg = urllib.request.urlopen(url + "frame.jpg", timeout=10).read()
    panel = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert panel.shape[1] > 2 * 64  # frame | heatmap side by side
    with urllib.request.urlopen(url + "stream.mjpg", timeout=10) as stream:
        head = stream.read(200)
    assert b"--frame" in head and b"image/jpeg" in head
    thread.join(60)
    assert result["s"].events == 1


def test_sigint_mid_event_ends_the_watch_in_process(run, tmp_path):
    """Ctrl-C while an event is open: the watch finishes the frames in hand, closes the event and returns."""
    np.save(tmp_path / "long.npy", footage(300, (10, 300), seed=8)[..., 0])

    def log(line):
        if "event 1 started" in line:
            os.kill(os.getpid(), signal.SIGINT)  # as a person pressing Ctrl-C (the handler is the watch's)

    s = watch(run, str(tmp_path / "long.npy"), realtime=True, events=tmp_path / "events.jsonl",
              scores=tmp_path / "scores.csv", max_latency=30, log=log)
    records = _records(tmp_path / "events.jsonl")
    assert [r["type"] for r in records] == ["start", "end"] and records[1]["ended_by"] == "stopped"
    assert s.stopped_by == "SIGINT" and s.received < 100  # stopped at once, not at the end of the file
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert len(rows) == s.scored and int(rows[-1]["frame"]) >= records[1]["end_frame"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler was given back
