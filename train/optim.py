"""What `fit` minimises and at what pace: the loss and the learning-rate schedule.

The loss is sparse categorical cross-entropy, with optional label smoothing: Keras'
SparseCategoricalCrossentropy has no label smoothing, and one-hot labels would change every
data path (in-memory, streamed, padded for several devices), so the smoothing happens here on integer
labels. This module imports Keras at the top; the trainer imports it only when training starts.
"""

from __future__ import annotations

import keras


class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy against (1 - s) * one_hot(label) + s / classes, from integer labels and
    probabilities. s = 0 is plain sparse categorical cross-entropy."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        classes = keras.ops.shape(y_pred)[-1]
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        one_hot = keras.ops.one_hot(labels, classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def classification_loss(label_smoothing: float = 0.0) -> keras.losses.Loss:
    """The loss `train` compiles with; `.call(labels, probs)` gives the per-image losses."""
    if label_smoothing:
        return SparseSmoothedCrossentropy(label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def learning_rate(rate: float, schedule: str, epochs: int, steps_per_epoch: int):
    """A phase's learning rate: the constant `rate`, or for "cosine" a linear warm-up from 0 over the
    phase's first epoch (when it has more than one) then a cosine decay to 0 at its last step. The
    schedule counts the optimizer's own steps, which a resumed run restores, so it continues where
    the killed run stopped."""
    if schedule == "constant":
        return rate
    total = epochs * steps_per_epoch
    warmup = steps_per_epoch if epochs > 1 else 0
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else rate, decay_steps=total - warmup, alpha=0.0,
        warmup_target=rate if warmup else None, warmup_steps=warmup,
    )
