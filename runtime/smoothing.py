"""Temporal smoothing of class scores: an exponential moving average, so one odd frame does not flip the
label, plus a confidence threshold below which no label is reported."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SmoothingConfig:
    """alpha: weight of the newest frame in the moving average (1.0: no smoothing; 0.3: about the last
    five frames count). threshold: a best score below it is reported as no label (null)."""

    alpha: float = 1.0
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 1:
            raise ValueError(f"Smoothing alpha {self.alpha!r} is invalid; use a number in (0, 1] (1 = no smoothing)")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not 0 <= self.threshold <= 1:
            raise ValueError(f"Confidence threshold {self.threshold!r} is invalid; use a number in [0, 1]")


class ScoreSmoother:
    """Exponential moving average of score vectors: s = alpha * p + (1 - alpha) * s, started at the first."""

    def __init__(self, config: SmoothingConfig = SmoothingConfig()):
        self.config = config
        self._state: np.ndarray | None = None

    def update(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float32)
        if self._state is None or self.config.alpha == 1.0 or self._state.shape != scores.shape:
            self._state = scores.copy()
        else:
            alpha = np.float32(self.config.alpha)
            self._state *= 1 - alpha
            self._state += alpha * scores
        return self._state

    def reset(self) -> None:
        self._state = None

    def confident(self, score: float) -> bool:
        return score >= self.config.threshold
