"""The inference loop: newest-frame hand-over, real-time pacing of files, smoothing, display, signals, soak."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgevision.devices.sources import Source, VideoFileSource, open_source
from edgevision.runtime import overlay
from edgevision.runtime.capture import CaptureConfig, LatestFrameFeed, RealtimeFileFeed, SequentialFeed, open_feed
from edgevision.runtime.classifier import Classifier, Prediction
from edgevision.runtime.loop import LoopConfig, RecentSamples, run_loop
from edgevision.runtime.smoothing import ScoreSmoother, SmoothingConfig

ROOT = Path(__file__).resolve().parents[1]


def _index_of(image: np.ndarray) -> int:
    return int(image[0, 0, 0]) | int(image[0, 0, 1]) << 8 | int(image[0, 0, 2]) << 16


def _image_for(index: int, size=(24, 32)) -> np.ndarray:
    image = np.zeros((*size, 3), np.uint8)
    image[0, 0] = (index & 255, index >> 8 & 255, index >> 16 & 255)
    return image


class FakeCamera(Source):
    """A live source delivering a frame every `period` seconds, whoever reads; remembers the newest."""

    live = True

    def __init__(self, period: float, limit: int | None = None):
        super().__init__("fake://camera")
        self.period = period
        self.limit = limit
        self.newest = -1
        self._next_at = 0.0

    def _open(self):
        self._next_at = time.monotonic()

    def _read(self):
        if self.limit is not None and self._index >= self.limit:
            return None
        self._next_at += self.period
        time.sleep(max(0.0, self._next_at - time.monotonic()))
        self.newest = self._index
        return _image_for(self._index), time.time()


class SlowModel:
    """Stands in for a Classifier whose model takes `seconds` per frame; records what it was handed."""

    top_k = 1
    labels = ["a", "b"]

    def __init__(self, seconds: float, camera: FakeCamera | None = None):
        self.seconds = seconds
        self.camera = camera
        self.handed: list[int] = []  # the frames it was given
        self.newest_when_done: list[int] = []  # the camera's newest frame when it finished (and asks again)

    def scores(self, image, channel_order="bgr"):
        self.handed.append(_index_of(image))
        time.sleep(self.seconds)
        self.newest_when_done.append(self.camera.newest if self.camera else -1)
        return np.array([0.75, 0.25], np.float32)

    def prediction(self, probs):
        return Prediction("a", 0, float(probs[0]), [("a", float(probs[0]))])


def test_slow_model_is_always_handed_the_newest_frame():
    camera = FakeCamera(period=0.005)  # 200 fps camera
    model = SlowModel(0.04, camera)  # 25 fps model
    summary = run_loop(model, camera, LoopConfig(max_frames=25), out=None)
    assert summary.frames == 25 and summary.stopped_by == "max_frames"
    handed = model.handed
    assert handed == sorted(handed) and len(set(handed)) == len(handed)
    # Each time the model asks, it gets a frame at least as new as the newest the camera had by then:
    # never an older, queued one (however the threads were scheduled).
    for asked_after, got in zip(model.newest_when_done, handed[1:]):
        assert got >= asked_after, (asked_after, got)
    assert summary.dropped >= 50  # the frames the model had no time for were skipped, not queued
    # Model time + a camera period (about 45 ms), with room for a loaded machine; a queue would reach 800 ms.
    assert summary.age_ms_p95 < 400


def test_latest_frame_feed_waits_for_a_new_frame_and_ends_with_the_source():
    camera = FakeCamera(period=0.05, limit=5)
    feed = LatestFrameFeed(camera.open())
    got = []
    while (frame := feed.next()) is not None:  # much faster than the camera: every frame, each exactly once
        got.append(frame.index)
    feed.stop()
    assert got == [0, 1, 2, 3, 4] and feed.dropped == 0 and not camera.is_open


def _write_clip(path: Path, count: int, fps: float, size=(64, 48)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(count):
        writer.write(np.full((size[1], size[0], 3), (i * 7) % 256, np.uint8))
    writer.release()
    return path


class _CountingCapture:
    """Wraps a cv2.VideoCapture, counting retrieve() (decoding) calls."""

    def __init__(self, capture):
        self._capture = capture
        self.decoded = 0

    def retrieve(self, *args):
        self.decoded += 1
        return self._capture.retrieve(*args)

    def __getattr__(self, name):
        return getattr(self._capture, name)


def _counting_source(path: Path) -> tuple[VideoFileSource, _CountingCapture]:
    source = open_source(str(path))
    counter = _CountingCapture(source._capture)
    source._capture = counter
    return source, counter


def test_realtime_file_keeps_up_without_dropping(tiny_bundle, tmp_path):
    clip = _write_clip(tmp_path / "clip.avi", 30, fps=30)
    classifier = Classifier(tiny_bundle.folder, threads=1)
    source, counter = _counting_source(clip)
    config = LoopConfig(capture=CaptureConfig(realtime=True))
    out = io.StringIO()
    summary = run_loop(classifier, source, config, out=out)
    # A tiny model keeps up with 30 fps (a frame or two may be late on a very busy machine).
    assert summary.frames + summary.dropped == 30 and summary.dropped <= 2 and counter.decoded == summary.frames
    assert 0.9 < summary.seconds < 5.0  # played at 30 fps: about a second, never faster (as fast as possible)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["frame"] for line in lines] == sorted(line["frame"] for line in lines)
    # Capture-to-result: decode + preprocess + invoke of a tiny model, a few ms; well under a frame period.
    assert summary.age_ms_p50 < 33


def test_realtime_file_with_a_slow_model_skips_frames_without_decoding_them(tmp_path):
    clip = _write_clip(tmp_path / "clip.avi", 60, fps=100)
    source, counter = _counting_source(clip)
    model = SlowModel(0.03)  # 3 frame periods per prediction
    feed = open_feed(source, CaptureConfig(realtime=True))
    assert isinstance(feed, RealtimeFileFeed)
    handed = []
    with feed:
        asked = 0
        while (frame := feed.next()) is not None:
            assert frame.index >= asked  # at least the newest frame that had arrived when it asked
            handed.append(frame.index)
            model.scores(frame.image)
            asked = int((time.perf_counter() - feed._start) * feed.fps)
    assert 3 <= len(handed) <= 40 and handed == sorted(handed)
    assert counter.decoded == len(handed)  # skipped frames were grabbed, never decoded
    assert feed.dropped == 60 - len(handed)  # every frame was either classified or counted as dropped


def test_as_fast_as_possible_reads_every_frame(tmp_path):
    clip = _write_clip(tmp_path / "clip.avi", 40, fps=0.5)  # would take 80 s if paced
    feed = open_feed(open_source(str(clip)), CaptureConfig(realtime=False))
    assert isinstance(feed, SequentialFeed)
    started = time.perf_counter()
    with feed:
        indices = [frame.index for frame in iter(feed.next, None)]
    # Not a speed test: only far from 80 s, with room for a machine under heavy load.
    assert indices == list(range(40)) and time.perf_counter() - started < 40


def test_smoothing_is_an_exponential_moving_average_and_threshold_gives_null(tiny_bundle, tmp_path):
    clip = _write_clip(tmp_path / "clip.avi", 12, fps=30, size=(48, 40))
    classifier = Classifier(tiny_bundle.folder, threads=1)
    raw = [classifier.scores(frame.image) for frame in open_source(str(clip))]
    expected, state = [], None
    for probs in raw:
        state = probs if state is None else 0.4 * probs + 0.6 * state
        expected.append(state)
    out = io.StringIO()
    config = LoopConfig(smoothing=SmoothingConfig(alpha=0.4, threshold=0.0))
    run_loop(classifier, open_source(str(clip)), config, out=out)
    scores = [json.loads(line)["score"] for line in out.getvalue().splitlines()]
    np.testing.assert_allclose(scores, [float(e.max()) for e in expected], atol=1e-4)

    cut = float(np.median(scores))
    out = io.StringIO()
    config = LoopConfig(smoothing=SmoothingConfig(alpha=0.4, threshold=cut))
    summary = run_loop(classifier, open_source(str(clip)), config, out=out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert all((line["label"] is None) == (line["score"] < cut) for line in lines)
    assert summary.labels.get("(below threshold)", 0) == sum(line["label"] is None for line in lines) > 0


def test_smoothing_config_is_checked():
    with pytest.raises(ValueError, match=r"alpha 0.*\(0, 1\]"):
        SmoothingConfig(alpha=0)
    with pytest.raises(ValueError, match=r"threshold 1.5"):
        SmoothingConfig(threshold=1.5)
    smoother = ScoreSmoother(SmoothingConfig(alpha=1.0))
    smoother.update(np.array([1.0, 0.0]))
    np.testing.assert_array_equal(smoother.update(np.array([0.0, 1.0])), [0.0, 1.0])


def test_top_k_lines(tiny_bundle, tmp_path):
    clip = _write_clip(tmp_path / "clip.avi", 3, fps=30)
    out = io.StringIO()
    run_loop(Classifier(tiny_bundle.folder, threads=1, top_k=3), open_source(str(clip)), out=out)
    line = json.loads(out.getvalue().splitlines()[0])
    assert [name for name, _ in line["top_k"]][0] == line["label"] and len(line["top_k"]) == 3


def test_display_needs_a_display(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    clip = _write_clip(tmp_path / "clip.avi", 3, fps=30)
    source = VideoFileSource(clip)
    with pytest.raises(RuntimeError, match=r"--display cannot open a window: .*(no GUI support|no display)"):
        run_loop(Classifier(tiny_bundle.folder, threads=1), source, LoopConfig(display=True), out=None)
    assert not source.is_open  # refused before the source was opened


def test_display_window_shows_overlays_and_q_quits(tiny_bundle, tmp_path, monkeypatch):
    shown, keys = [], iter([-1, -1, ord("q")])
    monkeypatch.setattr(overlay, "display_problem", lambda: None)
    monkeypatch.setattr(overlay.cv2, "namedWindow", lambda *a: None)
    monkeypatch.setattr(overlay.cv2, "imshow", lambda title, image: shown.append(image))
    monkeypatch.setattr(overlay.cv2, "waitKey", lambda delay: next(keys))
    monkeypatch.setattr(overlay.cv2, "getWindowProperty", lambda *a: 1.0)
    monkeypatch.setattr(overlay.cv2, "destroyWindow", lambda *a: None)
    clip = _write_clip(tmp_path / "clip.avi", 10, fps=30, size=(320, 240))
    summary = run_loop(Classifier(tiny_bundle.folder, threads=1), open_source(str(clip)),
                       LoopConfig(display=True), out=None)
    assert summary.frames == 3 and summary.stopped_by == "window closed" and len(shown) == 3
    plain = open_source(str(clip)).read().image
    assert shown[0].shape == plain.shape and (shown[0][:20, :60] != plain[:20, :60]).any()  # text drawn


def test_recent_samples_window_is_bounded():
    samples = RecentSamples(capacity=100)
    for value in range(1000):
        samples.add(float(value))
    assert samples.percentiles([0, 100]) == [900.0, 999.0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_cli_cleanly_with_the_summary(tiny_bundle, tmp_path, sig):
    clip = _write_clip(tmp_path / "clip.avi", 1000, fps=10)  # 100 s if paced: signalled long before the end
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # SIGINT at its default: a shell starts background jobs (`.ci/run &`) with SIGINT ignored, which the
    # child would inherit and, rightly, keep.
    process = subprocess.Popen(
        [sys.executable, "-m", "edgevision.cli", "run", str(tiny_bundle.folder), "--source", str(clip),
         "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    first = process.stdout.readline()
    assert json.loads(first)["frame"] == 0
    process.send_signal(sig)
    rest, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    summary = json.loads(rest.strip().splitlines()[-1])["summary"]
    assert summary["stopped_by"] == ("SIGTERM" if sig == signal.SIGTERM else "interrupt")
    assert 1 <= summary["frames"] < 100 and summary["dropped"] == 0


class _CountingSink:
    def __init__(self):
        self.lines = 0

    def write(self, text):
        self.lines += text.count("\n")

    def flush(self):
        pass


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_soak_10000_frames_memory_does_not_grow(tiny_bundle):
    classifier = Classifier(tiny_bundle.folder, threads=1)
    from edgevision.runtime.soak import GeneratedSource

    source = GeneratedSource(10_000, size=(48, 64), checkpoints=(1_000, 9_999))
    sink = _CountingSink()
    config = LoopConfig(smoothing=SmoothingConfig(alpha=0.5, threshold=0.4))
    summary = run_loop(classifier, source, config, out=sink)
    assert summary.frames == 10_000 and sink.lines == 10_000 and summary.stopped_by == "end"
    growth_kb = source.samples[9_999]["rss_kb"] - source.samples[1_000]["rss_kb"]
    # Everything per frame is released; the stats ring fills 16 bytes a frame (140 KB here). A leak of a
    # frame's JSON line or a 9 KB picture per frame would show as megabytes.
    assert growth_kb < 2048, f"resident memory grew {growth_kb} kB over 9,000 frames"


# --- faults: frames that are not pictures, an engine that fails, exit statuses ---


def test_frames_that_are_not_pictures_are_skipped_and_counted(tiny_bundle):
    from edgevision.runtime.soak import GeneratedSource

    class Mixed(GeneratedSource):
        """Every 5th frame is broken in another way: float pixels, 4-D, empty, None, 5 channels."""

        broken = [lambda: np.zeros((4, 4, 3), np.float32), lambda: np.zeros((1, 4, 4, 3), np.uint8),
                  lambda: np.zeros((0, 4, 3), np.uint8), lambda: None, lambda: np.zeros((4, 4, 5), np.uint8)]

        def _read(self):
            captured = super()._read()
            if captured is not None and self._served % 5 == 0:
                return self.broken[self._served // 5 % 5](), captured[1]
            return captured

    source = Mixed(50, size=(24, 32))
    summary = run_loop(Classifier(tiny_bundle.folder, threads=1), source, LoopConfig(), out=None)
    assert (summary.frames, summary.bad_frames, summary.failed_frames, summary.stopped_by) == (40, 10, 0, "end")


class FlakyClassifier:
    """A Classifier whose engine raises on chosen calls (every one with fail_every=1)."""

    def __init__(self, classifier, fail_every: int):
        self._classifier, self._fail_every, self.calls = classifier, fail_every, 0

    def scores(self, image, channel_order="bgr"):
        self.calls += 1
        if self.calls % self._fail_every == 0:
            raise RuntimeError("tflite invoke failed: delegate lost")
        return self._classifier.scores(image, channel_order)

    def __getattr__(self, name):
        return getattr(self._classifier, name)


def test_an_engine_error_skips_the_frame_and_a_broken_engine_ends_the_loop(tiny_bundle, caplog):
    from edgevision.runtime.loop import MAX_CONSECUTIVE_FAILURES
    from edgevision.runtime.soak import GeneratedSource

    classifier = Classifier(tiny_bundle.folder, threads=1)
    summary = run_loop(FlakyClassifier(classifier, 3), GeneratedSource(30, size=(24, 32)), LoopConfig(), out=None)
    assert (summary.frames, summary.failed_frames, summary.stopped_by) == (20, 10, "end")
    assert "failed (1 so far): tflite invoke failed" in caplog.text
    broken = FlakyClassifier(classifier, 1)
    summary = run_loop(broken, GeneratedSource(10_000, size=(24, 32)), LoopConfig(), out=None)
    assert summary.frames == 0 and summary.failed_frames == MAX_CONSECUTIVE_FAILURES == broken.calls
    assert summary.stopped_by == "inference failed: tflite invoke failed: delegate lost"


def test_run_exit_status_tells_a_supervisor_what_happened(tiny_bundle, tmp_path, monkeypatch, capsys):
    from edgevision import cli
    from edgevision.runtime import loop

    assert [cli.run_exit_status(s) for s in ("end", "max_frames", "SIGTERM", "interrupt", "output closed",
                                             "window closed")] == [0] * 6
    assert cli.run_exit_status("source failed: camera gone") == 3
    assert cli.run_exit_status("inference failed: boom") == 4
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), _image_for(1))
    assert cli.main(["run", str(tiny_bundle.folder), "--source", str(folder), "--profile", "none"]) == 0

    def broken_scores(self, image, channel_order="bgr"):
        raise RuntimeError("engine gone")

    monkeypatch.setattr(Classifier, "scores", broken_scores)
    monkeypatch.setattr(loop, "MAX_CONSECUTIVE_FAILURES", 1)
    assert cli.main(["run", str(tiny_bundle.folder), "--source", str(folder), "--profile", "none"]) == 4
    assert '"stopped_by": "inference failed: engine gone"' in capsys.readouterr().out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self")
def test_the_soak_command_reports_flat_threads_and_descriptors(tiny_bundle, capsys):
    from edgevision.runtime.soak import main, soak

    figures = soak(str(tiny_bundle.folder), frames=3000, bad_every=100)
    assert figures["summary"]["frames"] == 2970 and figures["summary"]["bad_frames"] == 30
    assert figures["thread_growth"] == 0 and figures["fd_growth"] == 0
    assert figures["rss_growth_kb_after_warmup"] < 4096
    assert main([str(tiny_bundle.folder), "--frames", "200"]) == 0
    out = capsys.readouterr().out
    assert "soak: 200 generated 640x480 frames" in out and "skipped 0 bad frames" in out


def test_metrics_render_in_prometheus_text_format():
    from edgevision.runtime.metrics import LoopMetrics

    metrics = LoopMetrics()
    for latency_ms in (0.3, 0.8, 4.0, 4.5, 2000.0):
        metrics.observe(latency_ms)
    metrics.set_counts(failed=2, bad=1, dropped=7, reconnects=3)
    text = metrics.render()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert values["edgevision_frames_total"] == "5" and values["edgevision_dropped_frames_total"] == "7"
    assert values["edgevision_reconnects_total"] == "3" and values["edgevision_failed_frames_total"] == "2"
    assert values['edgevision_latency_seconds_bucket{le="0.0005"}'] == "1"  # cumulative buckets
    assert values['edgevision_latency_seconds_bucket{le="0.005"}'] == "4"
    assert values['edgevision_latency_seconds_bucket{le="1.0"}'] == "4"
    assert values['edgevision_latency_seconds_bucket{le="+Inf"}'] == "5"
    assert float(values["edgevision_latency_seconds_sum"]) == pytest.approx(2.0096)
    assert text.endswith("\n") and "# TYPE edgevision_frames_total counter" in text
