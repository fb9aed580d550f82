"""Batch-1 latency, timed one way for export's report, bench-export and evaluate."""

from __future__ import annotations

import time

import numpy as np

WARMUP = 5  # untimed first runs: they allocate and pack weights


def batch1_latency_ms(classifier, image: np.ndarray, repeats: int, percentiles=(50,), warmup: int = WARMUP) -> list[float]:
    """Percentiles (ms) of `repeats` timed `classifier.predict` calls on one prepared (H, W, 3) picture."""
    one = image[None] if image.ndim == 3 else image[:1]
    for _ in range(warmup):
        classifier.predict(one)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        classifier.predict(one)
        times.append(time.perf_counter() - start)
    return [float(np.percentile(times, q) * 1000) for q in percentiles]
