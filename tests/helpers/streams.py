"""Local live streams for the watch tests: MPEG-TS written by PyAV, served on a loopback TCP port, bounded in time.

:func:`mpegts_bytes` encodes frames the way a camera or an encoder sends them (MPEG-TS, a key frame every few
frames); :class:`TcpStreamServer` serves such streams to each connection in turn, paced at a frame rate, and can
drop a connection part-way (a stream that drops and comes back).
"""

from __future__ import annotations

import io
import socket
import threading
import time

import av
import numpy as np


def mpegts_bytes(frames: np.ndarray, *, fps: int = 25, gop: int = 5) -> tuple[bytes, list[int]]:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames as MPEG-TS (MPEG-2 video, a key frame every ``gop`` frames).

    Returns:
        The stream's bytes and, per frame, the byte offset at which its packet ends (to pace or cut the stream).
    """
    buf = io.BytesIO()
    ends: list[int] = []
    with av.open(buf, "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 2_000_000
        stream.gop_size = gop
        stream.max_b_frames = 0  # no reordering: each frame leaves the encoder at once (as a low-latency camera)
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
            ends.append(buf.tell())
        for packet in stream.encode():
            container.mux(packet)
    data = buf.getvalue()
    ends = [min(e, len(data)) for e in ends]
    ends[-1] = len(data)
    return data, ends


class TcpStreamServer:
    """Serve MPEG-TS streams on ``127.0.0.1:port``: connection k gets ``streams[k]``, paced at ``fps``.

    Args:
        streams: ``(bytes, frame_ends)`` per connection (from :func:`mpegts_bytes`); after the last, the server
            stops accepting (a source that is gone for good).
        fps: frames per second of the pacing.
        pause: seconds the server waits before accepting the next connection (the length of an outage).
    """

    def __init__(self, streams: list[tuple[bytes, list[int]]], *, fps: float = 25.0, pause: float = 0.0) -> None:
        self.streams, self.fps, self.pause = streams, fps, pause
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.served: list[float] = []  # when each connection was accepted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TcpStreamServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        for k, (data, ends) in enumerate(self.streams):
            if k and self.pause:
                time.sleep(self.pause)
            conn = None
            while conn is None and not self._stop.is_set():
                try:
                    conn, _ = self.sock.accept()
                except socket.timeout:
                    continue
            if conn is None:
                return
            self.served.append(time.monotonic())
            with conn:
                t0, sent = time.monotonic(), 0
                try:
                    for i, end in enumerate(ends):
                        time.sleep(max(0.0, t0 + i / self.fps - time.monotonic()))
                        conn.sendall(data[sent:end])
                        sent = end
                        if self._stop.is_set():
                            return
                except OSError:  # the reader went away
                    pass
        self.sock.close()  # no more streams: connections are refused from now on
