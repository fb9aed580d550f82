"""What happens at the end of every epoch: history, best epoch, early stopping, the resumable
checkpoint and the TensorBoard scalars, in one callback so that their order is fixed: the best weights
first, the checkpoint (which records that best) next, the logs last.

This module imports Keras at the top; `trainer.train` imports it only when training starts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import keras

from .checkpoint import RunState, save_best, save_checkpoint
from .tensorboard import ScalarWriter


@dataclass
class Monitor:
    """Best-epoch tracking and early stopping on one metric (higher is better).

    `patience` epochs in a row without improvement end the current phase; None never stops.
    Ties do not count as improvement: on a small validation set accuracy plateaus in exact steps.
    """

    metric: str
    patience: int | None = None
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0

    def update(self, epoch: int, logs: dict) -> bool:
        """Record `epoch`'s logs; True when it is the new best."""
        value = logs.get(self.metric)
        if value is None or math.isnan(value):
            raise ValueError(f"Metric {self.metric!r} is missing from this epoch's logs: {sorted(logs)}")
        if self.best is None or value > self.best:
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            return True
        self.wait += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.wait >= self.patience

    def start_phase(self) -> None:
        """A new phase gets its own patience; the best epoch stays the best over the whole run."""
        self.wait = 0

    def to_dict(self) -> dict:
        return asdict(self)


class EpochEnd(keras.callbacks.Callback):
    """Records each epoch into `state`, saves the best weights of `classifier` and the checkpoint of
    the trained model (`self.model`, which may wrap the classifier in an augmentation layer) into
    `folder`, writes TensorBoard scalars, and stops the phase early when `monitor` says so."""

    def __init__(self, state: RunState, monitor: Monitor, classifier, folder: Path, phase: int,
                 phase_start: int, phase_end: int, writers: dict[str, ScalarWriter] | None = None):
        super().__init__()
        self.state, self.monitor, self.classifier, self.folder = state, monitor, classifier, folder
        self.phase, self.phase_start, self.phase_end = phase, phase_start, phase_end
        self.writers = writers or {}

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items()}
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        record = {**logs, "learning_rate": learning_rate, "phase": float(self.phase)}
        for key, value in record.items():
            self.state.history.setdefault(key, []).append(value)
        if self.monitor.update(epoch, logs):
            save_best(self.folder, self.classifier.variables)
        stop = self.monitor.should_stop
        if stop:
            self.model.stop_training = True
        self.state.epoch, self.state.phase, self.state.phase_start = epoch + 1, self.phase, self.phase_start
        self.state.phase_done = stop or epoch + 1 >= self.phase_end
        self.state.monitor = self.monitor.to_dict()
        save_checkpoint(self.folder, self.state, self.model.variables, self.model.optimizer.variables)
        self._log_scalars(epoch, logs, learning_rate)

    def _log_scalars(self, epoch: int, logs: dict, learning_rate: float) -> None:
        if not self.writers:
            return
        # Keras' own layout: train/ and validation/ runs with the same tags, so TensorBoard overlays them.
        train = {f"epoch_{k}": v for k, v in logs.items() if not k.startswith("val_")}
        train["epoch_learning_rate"] = learning_rate
        self.writers["train"].add_scalars(epoch, train)
        validation = {f"epoch_{k[4:]}": v for k, v in logs.items() if k.startswith("val_")}
        if validation:
            self.writers["validation"].add_scalars(epoch, validation)
