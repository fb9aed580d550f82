"""Training batches from in-memory images: a seeded order per epoch, optional per-image weights.

The batch order is a pure function of (seed, epoch), not of a random generator that runs along with
training, so a run resumed at epoch k sees exactly the batches an uninterrupted run would have seen.
The dataset is endless and `fit` gets `steps_per_epoch`: Keras then keeps one iterator for the whole
fit and the global batch index says which epoch a batch belongs to (a finite dataset is re-iterated
before Keras' epoch callbacks run, so an epoch counter set by a callback would race with prefetching).

This module imports Keras at the top; `trainer.train` imports it only when training starts.
"""

from __future__ import annotations

import numpy as np

import keras


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of `count` training images for `epoch`, the same in every process."""
    return np.random.default_rng([seed, epoch]).permutation(count)


class ShuffledBatches(keras.utils.PyDataset):
    """Endless (images uint8, labels[, sample weights]) batches; batch i belongs to epoch
    `first_epoch + i // steps_per_epoch`. The last batch of an epoch may be smaller.

    The pictures stay uint8 until the model's float32 input casts them on the accelerator: a quarter of
    the bytes to gather here and to copy to the device, which is what keeps a GPU fed."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                 first_epoch: int = 0, weights: np.ndarray | None = None):
        super().__init__(workers=1, use_multiprocessing=False)
        if len(images) == 0:
            raise ValueError("There are no training images")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.batch_size, self.seed, self.first_epoch = batch_size, seed, first_epoch
        self.sample_weights = None if weights is None else weights[self.labels]
        self.steps_per_epoch = -(-len(images) // batch_size)
        self._order: tuple[int | None, np.ndarray | None] = (None, None)

    @property
    def num_batches(self):
        return None  # endless: fit(steps_per_epoch=...) cuts it into epochs

    def __len__(self) -> int:
        return self.steps_per_epoch

    def indices(self, index: int) -> np.ndarray:
        epoch, step = divmod(index, self.steps_per_epoch)
        epoch += self.first_epoch
        if self._order[0] != epoch:  # one permutation per epoch, not per batch
            self._order = (epoch, epoch_order(len(self.images), self.seed, epoch))
        return self._order[1][step * self.batch_size : (step + 1) * self.batch_size]

    def __getitem__(self, index: int):
        chosen = self.indices(index)
        batch = (self.images[chosen], self.labels[chosen])
        if self.sample_weights is not None:
            batch += (self.sample_weights[chosen],)
        return batch
