"""The camera loop's counters in Prometheus' text format, served at the preview's /metrics for people who
watch devices with Prometheus (frames, failures, drops, reconnects, and a latency histogram)."""

from __future__ import annotations

import bisect
import threading

# Upper bounds of the latency histogram's buckets, in seconds (Prometheus' unit).
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class LoopMetrics:
    """Updated by the loop once per frame (a few additions under a lock), read by the server."""

    def __init__(self):
        self._lock = threading.Lock()
        self.frames = self.failed = self.bad = self.dropped = self.reconnects = 0
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0

    def observe(self, latency_ms: float) -> None:
        seconds = latency_ms / 1000.0
        with self._lock:
            self.frames += 1
            self._buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._latency_sum += seconds

    def set_counts(self, *, failed: int, bad: int, dropped: int, reconnects: int) -> None:
        with self._lock:
            self.failed, self.bad, self.dropped, self.reconnects = failed, bad, dropped, reconnects

    def render(self) -> str:
        with self._lock:
            counters = (("frames", "frames classified", self.frames),
                        ("failed_frames", "frames the engine or preprocessing failed on", self.failed),
                        ("bad_frames", "frames that were not pictures", self.bad),
                        ("dropped_frames", "frames delivered that the model had no time for", self.dropped),
                        ("reconnects", "times the source was reopened", self.reconnects))
            buckets, total, count = list(self._buckets), self._latency_sum, self.frames
        lines = []
        for name, help_text, value in counters:
            lines += [f"# HELP edgevision_{name}_total {help_text}", f"# TYPE edgevision_{name}_total counter",
                      f"edgevision_{name}_total {value}"]
        lines += ["# HELP edgevision_latency_seconds preprocessing + inference per frame",
                  "# TYPE edgevision_latency_seconds histogram"]
        cumulative = 0
        for bound, in_bucket in zip((*map(repr, LATENCY_BUCKETS), "+Inf"), buckets):
            cumulative += in_bucket
            lines.append(f'edgevision_latency_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines += [f"edgevision_latency_seconds_sum {total!r}", f"edgevision_latency_seconds_count {count}"]
        return "\n".join(lines) + "\n"
