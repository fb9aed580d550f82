"""The inference loop: frames from a source, one JSON line per prediction, a summary at the end.

Each line: {"frame": 12, "timestamp": 1718000000.123456, "label": "cat", "score": 0.9731,
"latency_ms": 6.812, "age_ms": 9.4} where timestamp is the capture time, latency_ms covers
preprocessing plus inference and age_ms is capture-to-result. "label" is null when the (smoothed) score
is below the confidence threshold. With top_k > 1 a "top_k" list of [label, score] pairs follows.

The loop never crashes on its source: live sources are reopened with backoff by the capture thread
(runtime/capture.py). Ctrl-C, SIGTERM (systemd's stop), a closed output pipe or the display window's
q key end it cleanly, and the summary still comes.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import TextIO

import numpy as np

from edgevision.devices.source_base import Frame, Source, SourceError
from .capture import CaptureConfig, FrameFeed, open_feed
from .classifier import Classifier, Prediction
from .overlay import DisplayWindow, overlay_lines
from .preview import FrameInfo, PreviewConfig, PreviewServer
from .smoothing import ScoreSmoother, SmoothingConfig

logger = logging.getLogger(__name__)

# Percentiles in the summary cover at most this many of the latest frames: memory stays flat for a
# camera left running for months (16 bytes a frame, 1.6 MB at most).
STATS_WINDOW = 100_000
BELOW_THRESHOLD = "(below threshold)"
# Frames failing one after another: the engine, not a frame, is broken; the loop ends so a supervisor
# (systemd's Restart=always) starts a fresh process.
MAX_CONSECUTIVE_FAILURES = 100


class _Stdout:
    """Default for `out`: whatever sys.stdout is when the loop runs (so redirection and capture work)."""

    def __repr__(self) -> str:
        return "sys.stdout"


STDOUT = _Stdout()


@dataclass(frozen=True)
class LoopConfig:
    """max_frames: stop after this many predictions. capture: pacing and reconnection (CaptureConfig).
    smoothing: EMA alpha and confidence threshold. display: show an overlay window (needs a display).
    preview: serve a live preview page over HTTP. handle_sigterm: stop cleanly on SIGTERM (main thread only)."""

    max_frames: int | None = None
    capture: CaptureConfig = CaptureConfig()
    smoothing: SmoothingConfig = SmoothingConfig()
    display: bool = False
    preview: PreviewConfig | None = None
    handle_sigterm: bool = True

    def __post_init__(self) -> None:
        m = self.max_frames
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"max_frames must be a positive integer or None, got {m!r}")


@dataclass
class LoopSummary:
    frames: int
    seconds: float
    fps: float
    latency_ms_p50: float
    latency_ms_p95: float
    labels: dict[str, int] = field(default_factory=dict)
    age_ms_p50: float = 0.0  # capture-to-result
    age_ms_p95: float = 0.0
    dropped: int = 0  # frames the source delivered that the model had no time for
    reconnects: int = 0
    bad_frames: int = 0  # frames that were not pictures (wrong type, shape or size): skipped
    failed_frames: int = 0  # frames the engine or preprocessing failed on: skipped
    stopped_by: str = "end"

    def to_dict(self) -> dict:
        data = asdict(self)
        for key, digits in (("seconds", 3), ("fps", 2), ("latency_ms_p50", 3), ("latency_ms_p95", 3),
                            ("age_ms_p50", 3), ("age_ms_p95", 3)):
            data[key] = round(data[key], digits)
        return data


class RecentSamples:
    """A fixed-size ring of the latest float samples: percentiles without unbounded growth."""

    def __init__(self, capacity: int = STATS_WINDOW):
        self._values = np.zeros(capacity, np.float64)
        self._count = 0

    def add(self, value: float) -> None:
        self._values[self._count % len(self._values)] = value
        self._count += 1

    def percentiles(self, qs: list[float]) -> list[float]:
        if not self._count:
            return [0.0] * len(qs)
        return [float(v) for v in np.percentile(self._values[: min(self._count, len(self._values))], qs)]


class _SigtermAsInterrupt:
    """While active, SIGTERM raises KeyboardInterrupt in the main thread, like Ctrl-C, and is remembered."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received = False
        self._previous = None

    def _handle(self, signum, frame):
        self.received = True
        raise KeyboardInterrupt

    def __enter__(self):
        if self.enabled:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info):
        if self.enabled:
            signal.signal(signal.SIGTERM, self._previous)


class _Tally:
    """What the summary counts. The hot loop keeps its own counters in locals (cheaper than attributes) and
    stores them here however it ends, Ctrl-C included, so an interrupted run's summary is still complete."""

    __slots__ = ("frames", "failed", "latencies", "ages", "counts")

    def __init__(self) -> None:
        self.frames = self.failed = 0
        self.latencies, self.ages = RecentSamples(), RecentSamples()
        self.counts: Counter[str] = Counter()


class _Views:
    """The overlay window and/or the live preview, fed after each classified frame, with the smoothed fps
    they show (measured only when someone looks, so a headless loop pays nothing for it)."""

    __slots__ = ("window", "preview", "source", "feed", "fps", "last")

    def __init__(self, window: DisplayWindow | None, preview: PreviewServer | None, source: Source,
                 feed: FrameFeed) -> None:
        self.window, self.preview, self.source, self.feed = window, preview, source, feed
        self.fps, self.last = 0.0, None

    def count(self, failed: int) -> None:
        """The preview's /metrics counters, refreshed on every frame, failed ones included."""
        if self.preview is not None:
            feed = self.feed
            self.preview.metrics.set_counts(failed=failed, bad=getattr(self.source, "bad_frames", 0),
                                            dropped=feed.dropped, reconnects=feed.reconnects)

    def show(self, frame: Frame, label: str | None, prediction: Prediction, latency_ms: float, t1: float,
             failed: int) -> bool:
        """Hand one classified frame to the views; False when the window was closed (its q key)."""
        window, preview = self.window, self.preview
        if preview is not None:
            preview.metrics.observe(latency_ms)
            self.count(failed)
        fps_now, last = self.fps, self.last
        if last is not None:
            rate = 1.0 / max(t1 - last, 1e-6)
            fps_now = 0.9 * fps_now + 0.1 * rate if fps_now else rate
        self.fps, self.last = fps_now, t1
        if preview is not None:  # references only: the server's threads format and encode
            preview.publish(frame.image, FrameInfo(frame.index, frame.timestamp, label, prediction.score,
                                                   prediction.top_k, latency_ms, fps_now))
        return window is None or window.show(
            frame.image, overlay_lines(label, prediction.score, fps_now, prediction.top_k))


def _with_max_frames(config: LoopConfig | None, max_frames: int | None) -> LoopConfig:
    """The config run_loop uses: its max_frames argument, when given, overrides the config's."""
    config = config or LoopConfig()
    if max_frames is None:
        return config
    return LoopConfig(max_frames, config.capture, config.smoothing, config.display, config.preview,
                      config.handle_sigterm)


def _open_views(stack: ExitStack, config: LoopConfig) -> tuple[DisplayWindow | None, PreviewServer | None]:
    """The window and preview server the config asks for, closed by `stack`. Called before the source
    opens, so a missing display or a busy port fails before the camera is touched."""
    window = DisplayWindow() if config.display else None
    if window is not None:
        stack.callback(window.close)
    preview = PreviewServer(config.preview) if config.preview else None
    if preview is not None:
        stack.callback(preview.close)
        logger.warning("preview at %s", preview.url)
    return window, preview


def _frame_failed(error: Exception, index: int, failed: int, consecutive: int, views: _Views | None) -> str | None:
    """Account for a frame the engine or preprocessing failed on. One bad frame is skipped; a run of
    MAX_CONSECUTIVE_FAILURES means the engine is broken, so the loop stops and a supervisor restarts us.
    Returns why the loop stops, or None to go on."""
    if views is not None:
        views.count(failed)
    if failed == 1 or failed % 1000 == 0:  # the first, then every thousandth: a signal, not a flood
        logger.warning("frame %d failed (%d so far): %s", index, failed, error)
    if consecutive >= MAX_CONSECUTIVE_FAILURES:  # read at call time (tests lower it)
        return f"inference failed: {error}"
    return None


def _write_line(out: TextIO, frame: Frame, label: str | None, prediction: Prediction, latency_ms: float,
                age_ms: float, top_k: int) -> None:
    """One prediction as a JSON line (the format the module docstring describes)."""
    line = {
        "frame": frame.index,
        **({"source": frame.file} if frame.file is not None else {}),
        **({"position": frame.position} if frame.position is not None else {}),
        "timestamp": round(frame.timestamp, 6),
        "label": label,
        "score": round(prediction.score, 4),
        "latency_ms": round(latency_ms, 3),
        "age_ms": round(age_ms, 3),
    }
    if top_k > 1:
        line["top_k"] = [[name, round(score, 4)] for name, score in prediction.top_k]
    out.write(json.dumps(line) + "\n")
    out.flush()  # a consumer reading the pipe sees each prediction as it happens


def _classify_frames(classifier: Classifier, feed: FrameFeed, smoother: ScoreSmoother, limit: int | None,
                     out: TextIO | None, views: _Views | None, tally: _Tally) -> str:
    """The hot loop: classify frames until the feed ends, `limit` frames or a stop; returns why it stopped.
    Ctrl-C, SIGTERM, a closed pipe and source errors propagate to run_loop, which names them."""
    latencies, ages, counts = tally.latencies, tally.ages, tally.counts  # locals: looked up every frame
    frames = failed = consecutive = 0
    try:
        while limit is None or frames < limit:
            frame = feed.next()
            if frame is None:
                return "end"
            t0 = time.perf_counter()
            try:
                scores = classifier.scores(frame.image, channel_order="bgr")
            except Exception as error:  # the engine or preprocessing failed on this frame: skip it
                failed += 1
                consecutive += 1
                stop = _frame_failed(error, frame.index, failed, consecutive, views)
                if stop is not None:
                    return stop
                continue
            consecutive = 0
            probs = smoother.update(scores)
            prediction = classifier.prediction(probs)
            t1 = time.perf_counter()
            age_ms = (time.time() - frame.timestamp) * 1000.0
            latency_ms = (t1 - t0) * 1000.0
            frames += 1
            latencies.add(latency_ms)
            ages.add(age_ms)
            label = prediction.label if smoother.confident(prediction.score) else None
            counts[label if label is not None else BELOW_THRESHOLD] += 1
            if out is not None:
                _write_line(out, frame, label, prediction, latency_ms, age_ms, classifier.top_k)
            if views is not None and not views.show(frame, label, prediction, latency_ms, t1, failed):
                return "window closed"
        return "max_frames"
    finally:  # however the loop ended, the summary counts what it did
        tally.frames, tally.failed = frames, failed


def _summary(tally: _Tally, seconds: float, dropped: int, reconnects: int, bad_frames: int,
             stopped_by: str) -> LoopSummary:
    """The run's summary: the tally's counts and percentiles, the feed's and source's counters."""
    p50, p95 = tally.latencies.percentiles([50, 95])
    a50, a95 = tally.ages.percentiles([50, 95])
    frames = tally.frames
    return LoopSummary(
        frames=frames,
        seconds=seconds,
        fps=frames / seconds if frames and seconds > 0 else 0.0,
        latency_ms_p50=p50,
        latency_ms_p95=p95,
        labels=dict(tally.counts),
        age_ms_p50=a50,
        age_ms_p95=a95,
        dropped=dropped,
        reconnects=reconnects,
        bad_frames=bad_frames,
        failed_frames=tally.failed,
        stopped_by=stopped_by,
    )


def run_loop(
    classifier: Classifier,
    source: Source,
    config: LoopConfig | None = None,
    *,
    max_frames: int | None = None,
    out: TextIO | None = STDOUT,
) -> LoopSummary:
    """Classify frames from `source` until it ends, max_frames were classified, Ctrl-C or SIGTERM.

    Writes one JSON line per frame to `out` (default: sys.stdout at call time; None: write nothing) and
    returns the summary. The source is opened if needed and always closed. max_frames overrides config's.
    """
    config = _with_max_frames(config, max_frames)
    if out is STDOUT:
        out = sys.stdout
    smoother = ScoreSmoother(config.smoothing)
    tally = _Tally()
    with ExitStack() as stack:
        window, preview = _open_views(stack, config)  # before the camera: fail early, touch nothing
        feed = stack.enter_context(open_feed(source, config.capture))  # a source that cannot open raises
        sigterm = stack.enter_context(_SigtermAsInterrupt(config.handle_sigterm))
        views = _Views(window, preview, source, feed) if window is not None or preview is not None else None
        started = time.perf_counter()
        try:
            stopped_by = _classify_frames(classifier, feed, smoother, config.max_frames, out, views, tally)
        except KeyboardInterrupt:
            stopped_by = "SIGTERM" if sigterm.received else "interrupt"
        except BrokenPipeError:
            stopped_by = "output closed"
        except SourceError as error:  # a live source that failed with reconnection turned off
            logger.error("%s", error)
            stopped_by = f"source failed: {error}"
        finally:  # read before the stack closes the feed
            dropped, reconnects = feed.dropped, feed.reconnects
            seconds = time.perf_counter() - started
    return _summary(tally, seconds, dropped, reconnects, getattr(source, "bad_frames", 0), stopped_by)
