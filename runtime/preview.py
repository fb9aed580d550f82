"""A live preview for headless devices: open http://device:PORT/ in a browser.

The page (/, one self-contained file: no external assets, works offline) shows the annotated camera stream
(/stream.mjpg, MJPEG) and, pushed by Server-Sent Events (/events), the newest answer: top-k labels with
score bars, fps, latency, frame age and frame number. It recovers by itself when the stream reconnects.

The loop only hands over references to the newest frame and its prediction (no copy, no encoding, no
formatting); drawing, JPEG encoding and JSON happen in the server's threads, at most `fps` pictures and
`events_fps` events a second per viewer, and only while someone is watching. Binds 127.0.0.1 unless told
otherwise: exposing a camera on the network is a choice.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

import cv2
import numpy as np

from .overlay import draw_overlay, overlay_lines

logger = logging.getLogger(__name__)

BOUNDARY = "edgevisionframe"
# How long a browser waits before it reconnects /events (the EventSource default is about 3 s).
RETRY_MS = 1000
# A comment line this often while no frame comes: proxies keep the connection, a gone viewer is noticed.
KEEPALIVE_S = 15.0
# A viewer that went away shows up as one of these on the next write.
GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)

# The page: one self-contained file (inline CSS and JS, nothing fetched from elsewhere).
PAGE = (Path(__file__).with_name("preview_page.html")).read_text(encoding="utf-8")


class FrameInfo(NamedTuple):
    """One frame's prediction as the loop wrote it in its JSON line (label None: below the threshold).
    A tuple of references, cheap to build in the loop; the server formats it."""

    frame: int
    timestamp: float  # capture time, time.time()
    label: str | None
    score: float
    top_k: list[tuple[str, float]]
    latency_ms: float
    fps: float


def event_json(info: FrameInfo, now: float) -> str:
    """The /events payload: the JSON line's fields (same rounding), plus fps and the age at `now`."""
    return json.dumps({
        "frame": info.frame,
        "timestamp": round(info.timestamp, 6),
        "label": info.label,
        "score": round(info.score, 4),
        "top_k": [[name, round(score, 4)] for name, score in info.top_k],
        "latency_ms": round(info.latency_ms, 3),
        "fps": round(info.fps, 2),
        "age_ms": round((now - info.timestamp) * 1000.0, 1),
    }, separators=(",", ":"))


@dataclass(frozen=True)
class PreviewConfig:
    """fps: pictures a second per /stream.mjpg viewer; events_fps: answers a second per /events viewer
    (a person reads no faster; more would only cost the device); quality: JPEG quality."""

    port: int = 8080
    host: str = "127.0.0.1"
    fps: float = 10.0
    quality: int = 80
    events_fps: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"Preview port {self.port!r} is invalid; use 0 (any free port) to 65535")
        if not 0 < self.fps <= 60:
            raise ValueError(f"Preview fps {self.fps!r} is invalid; use a number in (0, 60]")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality {self.quality!r} is invalid; use 1 to 100")
        if not 0 < self.events_fps <= 15:
            raise ValueError(f"Preview events_fps {self.events_fps!r} is invalid; use a number in (0, 15]")


class PreviewServer:
    """Serves / (the live page), /stream.mjpg (multipart/x-mixed-replace JPEGs), /events (Server-Sent
    Events, one JSON answer each), /snapshot.jpg and /metrics (the loop's counters in Prometheus' text
    format)."""

    def __init__(self, config: PreviewConfig = PreviewConfig()):
        from .metrics import LoopMetrics

        self.config = config
        self.metrics = LoopMetrics()
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._info: FrameInfo | None = None
        self._seq = 0
        self._jpeg: tuple[int, bytes] = (-1, b"")
        self._closing = False
        try:
            self._server = ThreadingHTTPServer((config.host, config.port), self._handler_class())
        except OSError as error:
            raise OSError(f"Preview server cannot listen on {config.host}:{config.port}: {error.strerror}") from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="preview", daemon=True)
        self._thread.start()
        logger.info("preview at http://%s:%d/", config.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}/"

    def publish(self, image: np.ndarray, info: FrameInfo) -> None:
        """Offer the newest frame (not copied: sources hand out a new array per frame) and its prediction."""
        with self._cond:
            self._frame, self._info = image, info
            self._seq += 1
            self._cond.notify_all()

    def _wait_newer(self, after: int, timeout: float) -> tuple[int, np.ndarray, FrameInfo] | None:
        """The newest (seq, frame, info) newer than `after`; None on timeout or when closing."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._seq <= after or self._seq == 0) and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self._closing or self._frame is None:
                return None
            return self._seq, self._frame, self._info

    def _wait_jpeg(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The JPEG of the newest frame newer than `after` (encoded once, shared by all viewers)."""
        found = self._wait_newer(after, timeout)
        if found is None:
            return None
        seq, frame, info = found
        with self._cond:
            if self._jpeg[0] == seq:
                return self._jpeg
        lines = overlay_lines(info.label, info.score, info.fps, info.top_k)
        ok, data = cv2.imencode(".jpg", draw_overlay(frame, lines), [cv2.IMWRITE_JPEG_QUALITY, self.config.quality])
        if not ok:
            return None
        with self._cond:
            self._jpeg = (seq, data.tobytes())
            return self._jpeg

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        """_Handler bound to this server: http.server builds one handler per request from a class."""
        return type("Handler", (_Handler,), {"preview": self})

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "PreviewServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    """One viewer's request: a method per endpoint, looked up in ROUTES. `preview` (the PreviewServer) is
    set by PreviewServer._handler_class; http.server's own `self.server` is the HTTP server."""

    preview: PreviewServer

    def do_GET(self):  # noqa: N802 (http.server's naming)
        endpoint = self.ROUTES.get(self.path.split("?", 1)[0])
        if endpoint is None:
            self._send(404, "text/plain", b"not found: try /, /stream.mjpg, /events, /snapshot.jpg or /metrics\n")
        else:
            endpoint(self)

    def _page(self) -> None:
        self._send(200, "text/html; charset=utf-8", PAGE.encode())

    def _snapshot(self) -> None:
        found = self.preview._wait_jpeg(-1, 5.0)
        if found is None:
            self._send(503, "text/plain", b"no frame yet\n")
        else:
            self._send(200, "image/jpeg", found[1])

    def _metrics(self) -> None:
        self._send(200, "text/plain; version=0.0.4; charset=utf-8", self.preview.metrics.render().encode())

    def _stream(self) -> None:
        """MJPEG at most config.fps pictures a second, each JPEG encoded once for all viewers."""
        server = self.preview
        self._start_stream(f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        seq, interval = -1, 1.0 / server.config.fps
        try:
            while not server._closing:
                started = time.monotonic()
                found = server._wait_jpeg(seq, 1.0)
                if found is None:
                    continue
                seq, jpeg = found
                self.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                    + jpeg + b"\r\n"
                )
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
        except GONE:
            pass

    def _events(self) -> None:
        """Server-Sent Events: the newest answer at most config.events_fps a second, keepalives between."""
        server = self.preview
        self._start_stream("text/event-stream")
        seq, interval = -1, 1.0 / server.config.events_fps
        try:
            self.wfile.write(f"retry: {RETRY_MS}\n\n".encode())
            while not server._closing:
                started = time.monotonic()
                found = server._wait_newer(seq, KEEPALIVE_S)
                if found is None:
                    self.wfile.write(b": keepalive\n\n")
                    continue
                seq, _, info = found
                self.wfile.write(f"data: {event_json(info, time.time())}\n\n".encode())
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
        except GONE:
            pass

    ROUTES = {"/": _page, "/snapshot.jpg": _snapshot, "/stream.mjpg": _stream, "/events": _events,
              "/metrics": _metrics}

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(body)

    def _start_stream(self, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        logger.debug("preview %s: " + format, self.client_address[0], *args)
