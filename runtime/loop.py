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

from edgevision.devices.source_base import Source, SourceError
from .capture import CaptureConfig, open_feed
from .classifier import Classifier
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
    config = config or LoopConfig()
    if max_frames is not None:
        config = LoopConfig(max_frames, config.capture, config.smoothing, config.display, config.preview,
                            config.handle_sigterm)
    if out is STDOUT:
        out = sys.stdout
    limit = config.max_frames
    smoother = ScoreSmoother(config.smoothing)
    latencies, ages = RecentSamples(), RecentSamples()
    counts: Counter[str] = Counter()
    frames = failed = consecutive = 0
    stopped_by = "end"
    fps_now, last = 0.0, None
    with ExitStack() as stack:
        window = DisplayWindow() if config.display else None  # fails before the camera opens
        if window is not None:
            stack.callback(window.close)
        preview = PreviewServer(config.preview) if config.preview else None
        if preview is not None:
            stack.callback(preview.close)
            logger.warning("preview at %s", preview.url)
        feed = stack.enter_context(open_feed(source, config.capture))  # a source that cannot open raises
        sigterm = stack.enter_context(_SigtermAsInterrupt(config.handle_sigterm))
        started = time.perf_counter()
        try:
            while limit is None or frames < limit:
                frame = feed.next()
                if frame is None:
                    break
                t0 = time.perf_counter()
                try:
                    scores = classifier.scores(frame.image, channel_order="bgr")
                except Exception as error:  # the engine or preprocessing failed on this frame: skip it
                    failed += 1
                    consecutive += 1
                    if preview is not None:
                        preview.metrics.set_counts(failed=failed, bad=getattr(source, "bad_frames", 0),
                                                   dropped=feed.dropped, reconnects=feed.reconnects)
                    if failed == 1 or failed % 1000 == 0:
                        logger.warning("frame %d failed (%d so far): %s", frame.index, failed, error)
                    if consecutive >= MAX_CONSECUTIVE_FAILURES:  # not one frame, the engine: let a supervisor act
                        stopped_by = f"inference failed: {error}"
                        break
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
                    if classifier.top_k > 1:
                        line["top_k"] = [[name, round(score, 4)] for name, score in prediction.top_k]
                    out.write(json.dumps(line) + "\n")
                    out.flush()  # a consumer reading the pipe sees each prediction as it happens
                if preview is not None:
                    preview.metrics.observe(latency_ms)
                    preview.metrics.set_counts(failed=failed, bad=getattr(source, "bad_frames", 0),
                                               dropped=feed.dropped, reconnects=feed.reconnects)
                if window is not None or preview is not None:
                    if last is not None:
                        rate = 1.0 / max(t1 - last, 1e-6)
                        fps_now = 0.9 * fps_now + 0.1 * rate if fps_now else rate
                    last = t1
                    if preview is not None:  # references only: the server's threads format and encode
                        preview.publish(frame.image, FrameInfo(frame.index, frame.timestamp, label, prediction.score,
                                                               prediction.top_k, latency_ms, fps_now))
                    if window is not None and not window.show(
                            frame.image, overlay_lines(label, prediction.score, fps_now, prediction.top_k)):
                        stopped_by = "window closed"
                        break
            else:
                stopped_by = "max_frames"
        except KeyboardInterrupt:
            stopped_by = "SIGTERM" if sigterm.received else "interrupt"
        except BrokenPipeError:
            stopped_by = "output closed"
        except SourceError as error:  # a live source that failed with reconnection turned off
            logger.error("%s", error)
            stopped_by = f"source failed: {error}"
        finally:
            dropped, reconnects = feed.dropped, feed.reconnects
            seconds = time.perf_counter() - started
    p50, p95 = latencies.percentiles([50, 95])
    a50, a95 = ages.percentiles([50, 95])
    return LoopSummary(
        frames=frames,
        seconds=seconds,
        fps=frames / seconds if frames and seconds > 0 else 0.0,
        latency_ms_p50=p50,
        latency_ms_p95=p95,
        labels=dict(counts),
        age_ms_p50=a50,
        age_ms_p95=a95,
        dropped=dropped,
        reconnects=reconnects,
        bad_frames=getattr(source, "bad_frames", 0),
        failed_frames=failed,
        stopped_by=stopped_by,
    )
