"""Which held-out images become the bundle's golden set (runtime/golden.py reads and replays them)."""

from __future__ import annotations

import zlib

import numpy as np

MAX_IMAGES, MIN_IMAGES = 32, 8
# Compressed bytes the golden images may take; at 224x224 a photo takes ~100 KB, so fewer are kept.
BUDGET_BYTES = 512 << 10


def choose_golden(images: np.ndarray, labels: np.ndarray, *, max_images: int = MAX_IMAGES,
                  min_images: int = MIN_IMAGES, budget_bytes: int = BUDGET_BYTES) -> np.ndarray:
    """Indices of held-out images: every class in turn (in held-out order), up to `max_images`, while the
    compressed images fit in `budget_bytes`, but at least `min_images` (or all there are)."""
    queues = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chosen: list[int] = []
    used = 0
    while len(chosen) < min(max_images, len(images)):
        for queue in queues:
            if queue and len(chosen) < max_images:
                index = queue.pop(0)
                cost = len(zlib.compress(images[index].tobytes(), 6))
                if len(chosen) >= min_images and used + cost > budget_bytes:
                    return np.asarray(sorted(chosen), dtype=np.int64)
                chosen.append(index)
                used += cost
    return np.asarray(sorted(chosen), dtype=np.int64)
