"""Mixed precision and data-parallel training, both through Keras' own APIs.

Mixed precision: layers are built under Keras' "mixed_bfloat16" policy (bf16 compute, float32
variables) with the softmax layer kept in float32; the global policy is restored when training ends,
and the model that is saved is a float32 copy with the same weights, so export and the runtime see
the float32 model they always see.

Data parallel: `keras.distribution.DataParallel` under the JAX backend replicates the variables on
every device and splits each batch along its first axis, so every batch must divide evenly by the
device count. The batch size must (checked before training); the short last batch of an epoch is
topped up with copies of its own first images, and the validation images are padded with copies
whose share is taken out of val_loss and val_accuracy again (ValidationPadding).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("edgevision.train")

DISTRIBUTE_MODES = ("auto", "none", "data_parallel")
MIXED_POLICY = "mixed_bfloat16"
OUTPUT_LAYER = "probs"  # the classifier's softmax layer (model.build_classifier)


@dataclass(frozen=True)
class Devices:
    """What training runs on: `distribution` is None for a single device."""

    distribution: object | None
    names: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.names) if self.distribution is not None else 1

    def scope(self):
        return self.distribution.scope() if self.distribution is not None else contextlib.nullcontext()


def resolve_devices(mode: str, batch_size: int) -> Devices:
    """"auto": data parallel when the backend is JAX and more than one device is visible, else one
    device; "none": one device; "data_parallel": required, an error when it cannot be had."""
    import keras

    if mode not in DISTRIBUTE_MODES:
        raise ValueError(f"Unknown distribution {mode!r}; choose one of {', '.join(DISTRIBUTE_MODES)}")
    if mode == "none":
        return Devices(None, ())
    backend = keras.backend.backend()
    # Keras' DataParallel is implemented for JAX only.
    names = tuple(keras.distribution.list_devices()) if backend == "jax" else ()
    if mode == "data_parallel":
        if backend != "jax":
            raise ValueError(f"distribute 'data_parallel' needs the JAX backend (KERAS_BACKEND=jax); "
                             f"this process runs Keras on {backend!r}")
        if len(names) < 2:
            raise ValueError(f"distribute 'data_parallel' needs more than one device; JAX sees {len(names)}: "
                             f"{', '.join(names)}")
    elif len(names) < 2:
        return Devices(None, names)
    if batch_size % len(names):
        raise ValueError(f"Batch size {batch_size} is not divisible by the {len(names)} devices of data-parallel "
                         f"training ({', '.join(names)}); choose a multiple of {len(names)}")
    log.info("data-parallel training on %d devices: %s", len(names), ", ".join(names))
    return Devices(keras.distribution.DataParallel(devices=list(names)), names)


@contextlib.contextmanager
def precision(mixed: bool):
    """Keras' global dtype policy "mixed_bfloat16" inside (when `mixed`), the previous one after."""
    import keras

    previous = keras.config.dtype_policy()
    if mixed:
        keras.config.set_dtype_policy(MIXED_POLICY)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def float32_output(model) -> None:
    """Keep the softmax in float32 under a mixed policy: bf16 probabilities (3 significant digits)
    would feed the loss. Its variables are float32 under every policy, so only the compute changes."""
    model.get_layer(OUTPUT_LAYER).dtype_policy = "float32"


def float32_copy(model):
    """The same model with every layer's dtype policy float32 and the same weights (which are float32
    under a mixed policy already): what precise BN, evaluation and the saved file use."""
    import keras

    def to_float32(item):
        if isinstance(item, dict):
            if item.get("class_name") == "DTypePolicy":
                return "float32"
            return {key: to_float32(value) for key, value in item.items()}
        if isinstance(item, list):
            return [to_float32(value) for value in item]
        return item

    copy = keras.saving.deserialize_keras_object(to_float32(keras.saving.serialize_keras_object(model)))
    copy.set_weights(model.get_weights())
    return copy


def padded_validation(images: np.ndarray, labels: np.ndarray, multiple: int):
    """(images, labels) padded to a multiple of `multiple` with copies of the first images, and the
    callback that takes the copies out of the epoch's val_loss and val_accuracy again."""
    count = len(images)
    extra = -count % multiple
    chosen = np.arange(count + extra) % count
    return (images[chosen], labels[chosen]), ValidationPadding(images[chosen[count:]], labels[chosen[count:]], count)


def pad_batches(batches, multiple: int):
    """A PyDataset yielding `batches`' batches with the short ones topped up to a multiple of
    `multiple` with copies of their own first images (weights too)."""
    import keras

    class PaddedBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=batches.workers, use_multiprocessing=batches.use_multiprocessing,
                             max_queue_size=batches.max_queue_size)

        @property
        def num_batches(self):
            return batches.num_batches

        def __len__(self) -> int:
            return len(batches)

        def __getitem__(self, index: int):
            batch = batches[index]
            count = len(batch[0])
            chosen = np.arange(count + (-count % multiple)) % count
            return tuple(np.asarray(part)[chosen] for part in batch)

        def on_epoch_end(self) -> None:
            batches.on_epoch_end()

    return PaddedBatches()


class ValidationPadding:
    """Keras averages val_loss and val_accuracy over every validation image it was given, the padding
    copies included (plain `metrics` ignore sample weights). The copies' own loss and hits, recomputed
    with the weights validation used (nothing changes them before the epoch's callbacks run), are
    subtracted so the logs hold the mean over the real images. Use `callback()` first in fit's list,
    before the history, the checkpoint and the progress bar read the logs."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, count: int, copies_in_loss: bool = True):
        # copies_in_loss False: the copies had sample weight 0, so Keras left them out of the loss sum
        # (but not out of the divisor, nor out of the unweighted accuracy).
        self.images, self.labels, self.count, self.copies_in_loss = images, labels, count, copies_in_loss

    @classmethod
    def of_stream(cls, stream, count: int) -> "ValidationPadding":
        """The padding of a validation PyDataset of `count` images whose copies, all in its last batch,
        carry sample weight 0."""
        images, labels, weights = stream[len(stream) - 1]
        copies = np.asarray(weights) == 0
        return cls(np.asarray(images)[copies], np.asarray(labels)[copies], count, copies_in_loss=False)

    def callback(self):
        import keras

        padding = self

        class RemovePadding(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None) -> None:
                if logs is None or "val_loss" not in logs or not len(padding.images):
                    return
                probs = self.model(padding.images, training=False)
                # Per-image losses of the loss the model was compiled with (label smoothing included).
                loss = self.model.loss
                per_image = loss.call if isinstance(loss, keras.losses.Loss) else keras.losses.get(loss)
                losses = keras.ops.convert_to_numpy(per_image(padding.labels, probs))
                hits = np.argmax(keras.ops.convert_to_numpy(probs), axis=1) == padding.labels
                total = padding.count + len(padding.images)
                copies_loss = float(losses.sum()) if padding.copies_in_loss else 0.0
                logs["val_loss"] = (float(logs["val_loss"]) * total - copies_loss) / padding.count
                if "val_accuracy" in logs:
                    # Whole hits: float noise here would break the exact ties the best-epoch choice keeps.
                    real_hits = round(float(logs["val_accuracy"]) * total) - int(hits.sum())
                    logs["val_accuracy"] = real_hits / padding.count

        return RemovePadding()
