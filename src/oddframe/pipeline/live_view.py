"""A small live view of ``oddframe watch`` for a person: the annotated stream and the event list, on localhost.

``http://127.0.0.1:PORT/`` is one page: the latest scored frame beside its heatmap with boxes (an MJPEG stream,
``/stream.mjpg``) and the events so far (``/events.json``, polled). Panels are drawn only while someone watches, at
most ``fps`` a second, from the latest frame the watch hands over, in the server's threads: the watch never waits
for the view. It listens on the loopback interface only (no authentication: the footage stays on this machine).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import deque
from typing import Any

import cv2

from oddframe.files import json_safe
from oddframe.pipeline.engine import FrameResult
from oddframe.pipeline.outputs import panel_maker
from oddframe.render.panel import compose_panel

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>oddframe watch</title>
<style>body{font:14px sans-serif;margin:1em;background:#111;color:#ddd}img{max-width:100%;border:1px solid #333}
table{border-collapse:collapse;margin-top:1em}td,th{padding:2px 10px;border-bottom:1px solid #333;text-align:right}
.open{color:#f66}</style></head><body><h3>oddframe watch: SOURCE</h3><img src="/stream.mjpg" alt="live">
<table><thead><tr><th>event</th><th>start frame</th><th>start s</th><th>end frame</th><th>end s</th>
<th>peak score</th><th>ended by</th></tr></thead><tbody id="ev"></tbody></table>
<script>
async function poll(){try{const r=await fetch('/events.json');const ev=await r.json();
document.getElementById('ev').innerHTML=ev.slice().reverse().map(e=>`<tr class="${e.end_frame===null?'open':''}">
<td>${e.id}</td><td>${e.start_frame}</td><td>${e.start_time}</td><td>${e.end_frame??'open'}</td>
<td>${e.end_time??''}</td><td>${e.peak_score.toFixed(3)}</td><td>${e.ended_by??''}</td></tr>`).join('');}catch(e){}}
setInterval(poll,1000);poll();
</script></body></html>"""


class LiveView:
    """Serve the live view on ``127.0.0.1:port`` (0: any free port; :attr:`url` says which).

    Args:
        port: TCP port on the loopback interface.
        source: shown in the page's title.
        compose_kwargs: options of :func:`~oddframe.render.panel.compose_panel` (``render_kwargs`` of the run).
        fps: most panels drawn per second per viewer.
        keep: events listed.
    """

    def __init__(self, *, port: int = 0, source: str = "", compose_kwargs: dict[str, Any] | None = None,
                 fps: float = 5.0, keep: int = 50) -> None:
        self.compose_kwargs, self.fps = dict(compose_kwargs or {}), fps
        self._latest: tuple[FrameResult, float, bool | None] | None = None
        self._seq = 0
        self._events: dict[int, dict[str, Any]] = {}
        self._order: deque[int] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        page = _PAGE.replace("SOURCE", source.replace("<", "&lt;")).encode()
        view = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path == "/":
                    self._send(200, "text/html; charset=utf-8", page)
                elif self.path == "/events.json":
                    self._send(200, "application/json", json.dumps(json_safe(view.events())).encode())
                elif self.path == "/frame.jpg":
                    jpeg = view.jpeg()
                    self._send(200 if jpeg else 503, "image/jpeg", jpeg or b"")
                elif self.path == "/stream.mjpg":
                    self._stream()
                else:
                    self._send(404, "text/plain", b"not found")

            def _send(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                seen = -1
                try:
                    while not view._closed.is_set():
                        t0 = time.monotonic()
                        if view._seq != seen:
                            seen = view._seq
                            jpeg = view.jpeg()
                            if jpeg:
                                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                                 + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                        view._closed.wait(max(0.0, 1.0 / view.fps - (time.monotonic() - t0)))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the viewer left

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, name="oddframe-live-view", daemon=True)
        self._thread.start()

    def frame(self, r: FrameResult, score: float, flagged: bool | None) -> None:
        """The latest scored frame (kept, not drawn: drawing happens when a viewer asks)."""
        with self._lock:
            self._latest, self._seq = (r, score, flagged), self._seq + 1

    def event(self, record: dict[str, Any]) -> None:
        """An event record (start or end: the later replaces the earlier of the same id)."""
        if record.get("type") not in ("start", "end"):
            return
        with self._lock:
            if record["id"] not in self._events:
                if len(self._order) == self._order.maxlen:
                    self._events.pop(self._order[0], None)
                self._order.append(record["id"])
            self._events[record["id"]] = record

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._events[i] for i in self._order if i in self._events]

    def jpeg(self) -> bytes | None:
        """The latest frame's panel as JPEG (None before the first frame)."""
        with self._lock:
            latest = self._latest
        if latest is None:
            return None
        calibrated = self.compose_kwargs.get("box_rule") is not None
        frame, amap, kwargs = panel_maker(*latest, title=f"#{latest[0].index}  t={latest[0].time:.1f}s")(calibrated)
        rgb = compose_panel(frame, amap, **{**self.compose_kwargs, **kwargs})
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        return data.tobytes() if ok else None

    def close(self) -> None:
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()
