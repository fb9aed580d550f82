"""The inference loop: frames from a source, one JSON line per prediction, a summary at the end.

Each line: {"frame": 12, "timestamp": 1718000000.123456, "label": "cat", "score": 0.9731, "latency_ms": 6.812}
where timestamp is the capture time and latency_ms covers preprocessing plus inference.
"""

from __future__ import annotations

import json
import sys
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TextIO

import numpy as np

from edgevision.devices.sources import Source
from .classifier import Classifier


class _Stdout:
    """Default for `out`: whatever sys.stdout is when the loop runs (so redirection and capture work)."""

    def __repr__(self) -> str:
        return "sys.stdout"


STDOUT = _Stdout()


@dataclass
class LoopSummary:
    frames: int
    seconds: float
    fps: float
    latency_ms_p50: float
    latency_ms_p95: float
    labels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        for key, digits in (("seconds", 3), ("fps", 2), ("latency_ms_p50", 3), ("latency_ms_p95", 3)):
            data[key] = round(data[key], digits)
        return data


def run_loop(
    classifier: Classifier,
    source: Source,
    *,
    max_frames: int | None = None,
    out: TextIO | None = STDOUT,
) -> LoopSummary:
    """Classify frames from `source` until it ends, max_frames were classified, or Ctrl-C.

    Writes one JSON line per frame to `out` (default: sys.stdout at call time; None: write nothing) and
    returns the summary. The source is opened if needed and always closed.
    """
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames must be a positive integer or None, got {max_frames!r}")
    if out is STDOUT:
        out = sys.stdout
    latencies = array("d")  # compact: 8 bytes a frame, even for a camera left running for days
    counts: Counter[str] = Counter()
    frames = 0
    started = time.perf_counter()
    try:
        with source:
            started = time.perf_counter()
            while max_frames is None or frames < max_frames:
                frame = source.read()
                if frame is None:
                    break
                t0 = time.perf_counter()
                prediction = classifier.classify(frame.image, channel_order="bgr")
                latency_ms = (time.perf_counter() - t0) * 1000.0
                frames += 1
                latencies.append(latency_ms)
                counts[prediction.label] += 1
                if out is not None:
                    line = {
                        "frame": frame.index,
                        "timestamp": round(frame.timestamp, 6),
                        "label": prediction.label,
                        "score": round(prediction.score, 4),
                        "latency_ms": round(latency_ms, 3),
                    }
                    out.write(json.dumps(line) + "\n")
                    out.flush()  # a consumer reading the pipe sees each prediction as it happens
    except KeyboardInterrupt:
        pass  # Ctrl-C ends the run; the summary still comes
    seconds = time.perf_counter() - started
    if latencies:
        p50, p95 = np.percentile(np.frombuffer(latencies, dtype=np.float64), [50, 95])
    else:
        p50 = p95 = 0.0
    return LoopSummary(
        frames=frames,
        seconds=seconds,
        fps=frames / seconds if frames and seconds > 0 else 0.0,
        latency_ms_p50=float(p50),
        latency_ms_p95=float(p95),
        labels=dict(counts),
    )
