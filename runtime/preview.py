"""A live MJPEG-over-HTTP preview for headless devices: open http://device:PORT/ in a browser.

The loop only hands over a reference to the newest frame and its prediction (no copy, no encoding);
drawing and JPEG encoding happen in the server's threads, at most `fps` times a second, and only while
someone is watching. Binds 127.0.0.1 unless told otherwise: exposing a camera on the network is a choice.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from .overlay import draw_overlay

logger = logging.getLogger(__name__)

BOUNDARY = "edgevisionframe"
PAGE = (
    "<!doctype html><title>edgevision preview</title>"
    "<body style='margin:0;background:#111'><img src='/stream.mjpg' style='width:100%'></body>"
)


@dataclass(frozen=True)
class PreviewConfig:
    port: int = 8080
    host: str = "127.0.0.1"
    fps: float = 10.0
    quality: int = 80

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"Preview port {self.port!r} is invalid; use 0 (any free port) to 65535")
        if not 0 < self.fps <= 60:
            raise ValueError(f"Preview fps {self.fps!r} is invalid; use a number in (0, 60]")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality {self.quality!r} is invalid; use 1 to 100")


class PreviewServer:
    """Serves / (a page), /stream.mjpg (multipart/x-mixed-replace JPEGs), /snapshot.jpg and /metrics
    (the loop's counters in Prometheus' text format)."""

    def __init__(self, config: PreviewConfig = PreviewConfig()):
        from .metrics import LoopMetrics

        self.config = config
        self.metrics = LoopMetrics()
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._lines: list[str] = []
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

    def publish(self, image: np.ndarray, lines: list[str]) -> None:
        """Offer the newest frame (not copied: sources hand out a new array per frame) and its text."""
        with self._cond:
            self._frame, self._lines = image, lines
            self._seq += 1
            self._cond.notify_all()

    def _wait_jpeg(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The JPEG of the newest frame newer than `after` (encoded once, shared by all viewers)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._seq <= after or self._seq == 0) and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self._closing or self._frame is None:
                return None
            seq, frame, lines = self._seq, self._frame, self._lines
            if self._jpeg[0] == seq:
                return self._jpeg
        ok, data = cv2.imencode(".jpg", draw_overlay(frame, lines), [cv2.IMWRITE_JPEG_QUALITY, self.config.quality])
        if not ok:
            return None
        with self._cond:
            self._jpeg = (seq, data.tobytes())
            return self._jpeg

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/":
                    self._send(200, "text/html; charset=utf-8", PAGE.encode())
                elif path == "/snapshot.jpg":
                    found = server._wait_jpeg(-1, 5.0)
                    if found is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "image/jpeg", found[1])
                elif path == "/stream.mjpg":
                    self._stream()
                elif path == "/metrics":
                    self._send(200, "text/plain; version=0.0.4; charset=utf-8", server.metrics.render().encode())
                else:
                    self._send(404, "text/plain", b"not found: try /, /stream.mjpg, /snapshot.jpg or /metrics\n")

            def _send(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
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
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the viewer went away

            def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
                logger.debug("preview %s: " + format, self.client_address[0], *args)

        return Handler

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
