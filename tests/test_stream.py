"""Live network streams: an MJPEG-over-HTTP camera served on localhost by a process the test starts, cut
mid-way or stalled and then back; and the loop's own MJPEG preview read back by OpenCV."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

from edgevision.devices.sources import StreamSource
from edgevision.runtime.capture import CaptureConfig
from edgevision.runtime.classifier import Classifier
from edgevision.runtime.loop import LoopConfig, run_loop
from edgevision.runtime.preview import PreviewConfig

# An MJPEG IP camera: multipart/x-mixed-replace JPEGs at 50 fps on 127.0.0.1. After `after` frames on a
# connection it misbehaves: "cut" drops the connection and is unreachable for `outage` seconds (the
# listening socket closed too), "stall" keeps the connection open and sends nothing. It exits by itself.
SERVER = textwrap.dedent(
    r"""
    import socket, sys, threading, time
    import cv2, numpy as np
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    mode, after, outage, lifetime = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    state = {"misbehaved": False, "count": 0}

    class Camera(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=cam")
            self.end_headers()
            sent = 0
            try:
                while True:
                    if sent == after and not state["misbehaved"]:
                        state["misbehaved"] = True
                        if mode == "cut":
                            threading.Thread(target=outage_then_back, daemon=True).start()
                            return
                        time.sleep(lifetime)  # stall: connected, silent
                    state["count"] += 1
                    image = np.full((120, 160, 3), (state["count"] * 9) % 256, np.uint8)
                    cv2.circle(image, (80, 60), 30, (0, 0, 255), -1)
                    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
                    self.wfile.write(b"--cam\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                                     + jpeg + b"\r\n")
                    sent += 1
                    time.sleep(0.02)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    def serve(port):
        global server
        server = ThreadingHTTPServer(("127.0.0.1", port), Camera)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server.server_address[1]

    def outage_then_back():
        port = server.server_address[1]
        server.shutdown()
        server.server_close()  # connection refused from now on
        time.sleep(outage)
        serve(port)

    print(serve(0), flush=True)
    time.sleep(lifetime)
    """
)


@pytest.fixture
def mjpeg_camera():
    processes = []

    def start(mode="none", after=10**9, outage=0.0, lifetime=60.0) -> str:
        process = subprocess.Popen([sys.executable, "-c", SERVER, mode, str(after), str(outage), str(lifetime)],
                                   stdout=subprocess.PIPE, text=True)
        processes.append(process)
        port = int(process.stdout.readline())
        return f"http://127.0.0.1:{port}/video.mjpg"

    yield start
    for process in processes:
        process.kill()
        process.wait()


def test_live_mjpeg_stream_is_classified(tiny_bundle, mjpeg_camera):
    url = mjpeg_camera()
    classifier = Classifier(tiny_bundle.folder, threads=1)
    source = StreamSource(url, read_timeout_ms=3000)
    summary = run_loop(classifier, source, LoopConfig(max_frames=20), out=None)
    assert summary.frames == 20 and summary.reconnects == 0 and summary.stopped_by == "max_frames"
    assert sum(summary.labels.values()) == 20 and set(summary.labels) <= set(classifier.labels)
    assert not source.is_open


def test_stream_cut_midway_is_reopened_and_classification_goes_on(tiny_bundle, mjpeg_camera, caplog):
    url = mjpeg_camera("cut", after=15, outage=1.5)
    classifier = Classifier(tiny_bundle.folder, threads=1)
    config = LoopConfig(max_frames=40, capture=CaptureConfig(backoff_s=0.2, backoff_max_s=0.5))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        summary = run_loop(classifier, StreamSource(url, read_timeout_ms=3000), config, out=None)
    assert summary.frames == 40 and summary.stopped_by == "max_frames"
    assert summary.reconnects >= 1
    assert time.monotonic() - started >= 1.5  # it really waited out the outage
    assert "reopening in" in caplog.text and "reopened" in caplog.text and "127.0.0.1" in caplog.text


def test_stalled_stream_times_out_and_is_reopened(tiny_bundle, mjpeg_camera, caplog):
    url = mjpeg_camera("stall", after=10)
    classifier = Classifier(tiny_bundle.folder, threads=1)
    config = LoopConfig(max_frames=25, capture=CaptureConfig(backoff_s=0.1))
    with caplog.at_level(logging.WARNING):
        summary = run_loop(classifier, StreamSource(url, read_timeout_ms=800), config, out=None)
    assert summary.frames == 25 and summary.reconnects >= 1
    assert "stopped delivering frames" in caplog.text


def test_without_reconnect_a_cut_stream_ends_the_loop_cleanly(tiny_bundle, mjpeg_camera):
    url = mjpeg_camera("cut", after=5, outage=30)
    config = LoopConfig(capture=CaptureConfig(reconnect=False))
    summary = run_loop(Classifier(tiny_bundle.folder, threads=1), StreamSource(url, read_timeout_ms=2000),
                       config, out=None)
    assert summary.stopped_by.startswith("source failed:") and "stopped delivering" in summary.stopped_by
    assert 1 <= summary.frames <= 5


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_mjpeg_preview_serves_annotated_frames(tiny_bundle, mjpeg_camera):
    url = mjpeg_camera()
    port = _free_port()
    classifier = Classifier(tiny_bundle.folder, threads=1)
    config = LoopConfig(max_frames=150, preview=PreviewConfig(port=port, fps=20))
    result = {}
    loop = threading.Thread(target=lambda: result.update(summary=run_loop(
        classifier, StreamSource(url, read_timeout_ms=3000), config, out=None)))
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while True:  # wait for the server to listen
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "the preview never came up"
                time.sleep(0.05)
        assert "/stream.mjpg" in page
        snapshot = urllib.request.urlopen(f"http://127.0.0.1:{port}/snapshot.jpg", timeout=5).read()
        still = cv2.imdecode(np.frombuffer(snapshot, np.uint8), cv2.IMREAD_COLOR)
        assert still.shape == (120, 160, 3)
        assert still[:10, :40].mean() < still[100:, :].mean() or still[:10, :40].std() > 20  # the text box
        preview = cv2.VideoCapture(f"http://127.0.0.1:{port}/stream.mjpg", cv2.CAP_FFMPEG)
        assert preview.isOpened()
        frames = [preview.read() for _ in range(5)]
        preview.release()
        assert all(ok and image.shape == (120, 160, 3) for ok, image in frames)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if not line.startswith("#"))
        frames_so_far = int(values["edgevision_frames_total"])
        assert 0 < frames_so_far <= 150 and values["edgevision_failed_frames_total"] == "0"
        assert int(values['edgevision_latency_seconds_bucket{le="+Inf"}']) == frames_so_far
        assert int(values["edgevision_latency_seconds_count"]) == frames_so_far
        assert "# TYPE edgevision_latency_seconds histogram" in metrics
    finally:
        loop.join(30)
    assert result["summary"].frames == 150
    with pytest.raises(OSError):  # closed with the loop
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
