"""Batches decoded from disk while training runs, for image folders too large to hold in memory.

`StreamingBatches` is a `keras.utils.PyDataset` that prepares the next batches in threads of its own
while Keras consumes the current one (`pipeline.PrefetchedBatches`), so it works under every Keras
backend with no tf.data. The pictures are decoded either in those threads (`decoder="threads"`:
OpenCV's decode and resize release the GIL, threads share the batch arrays, and on a few cores they
scale about linearly) or in a pool of decoder processes the threads wait on (`decoder="processes"`, see
decode_pool.py: on many cores the Python part of each picture, serialised by the GIL the fit loop needs
too, caps what threads reach). Both give the same batches. Every picture goes through
`runtime.preprocess.load_and_prepare`, the same function as the in-memory loader, and training batches
follow `pipeline.epoch_order`, so a streamed run sees the batches an in-memory run sees.

A corrupt picture is only found when it is decoded: it is replaced in its batch by the next usable
picture of the same split (with that picture's label), remembered so it is not decoded again, and
recorded in a `StreamReport` (a decoder process remembers the ones it found, and reports them to the
training process's `StreamReport`); `ReportCorruptFiles` logs the new ones at the end of each epoch.

This module imports Keras at the top; `trainer.train` imports it only when training starts.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

import keras

from edgevision.runtime.preprocess import PreprocessPolicy

from .dataset import DatasetError, DatasetIndex, IndexedSplit, SkippedFile, default_workers
from .decode_pool import DecodePool, chunk_rows, decode_replacing, default_stream_decoders, resolve_decoder
from .pipeline import PrefetchedBatches, epoch_batch

__all__ = ["StreamReport", "StreamingBatches", "StreamedDataset", "ReportCorruptFiles", "decode_split",
           "predict_split", "benchmark_streaming", "IMAGE_DTYPES"]

log = logging.getLogger("edgevision.train")

IMAGE_DTYPES = ("float32", "uint8")
# With decoder processes, the prefetching threads only hand batches to the pool and wait: a few keep
# every process busy (each batch is spread over all of them).
PROCESS_FEEDERS = 4


@dataclass
class StreamReport:
    """Corrupt files met while streaming (path -> reason), in the order found; shared by the train and
    validation streams of one run and safe to update from the decode threads."""

    corrupt: dict[str, str] = field(default_factory=dict)
    replaced: int = 0  # batch slots filled with another picture because theirs was corrupt
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _logged: int = field(default=0, repr=False, compare=False)

    def add(self, path: str, reason: str) -> None:
        with self._lock:
            self.corrupt.setdefault(path, reason)

    def count_replacements(self, count: int) -> None:
        with self._lock:
            self.replaced += count

    def is_corrupt(self, path: str) -> bool:
        return path in self.corrupt

    def skipped(self) -> list[SkippedFile]:
        with self._lock:
            return [SkippedFile(path, reason) for path, reason in self.corrupt.items()]

    def take_new(self) -> list[SkippedFile]:
        """The corrupt files found since the previous call (what an epoch-end log names)."""
        with self._lock:
            items = list(self.corrupt.items())[self._logged :]
            self._logged += len(items)
        return [SkippedFile(path, reason) for path, reason in items]


class StreamingBatches(PrefetchedBatches):
    """(images, labels[, sample weights]) batches decoded from `split`'s files.

    shuffle=True: endless, batch i belongs to epoch `first_epoch + i // steps_per_epoch` and follows
    `epoch_order(len(split), seed, epoch)`, exactly as `pipeline.ShuffledBatches` (fit gets
    `steps_per_epoch`). shuffle=False: one pass in file order (validation, evaluation). Images are
    (B, H, W, 3) float32 0-255 or uint8 (`dtype`); the last batch of an epoch may be smaller.

    `workers` decoders are threads, or processes (`decoder`; "auto": processes from PROCESSES_FROM_CORES
    usable cores); by default as many as measured best (`decode_pool.default_stream_decoders`). Decoder processes start on first use and stop
    with `close()` or at the end of a `with` block.
    """

    def __init__(self, split: IndexedSplit, policy: PreprocessPolicy, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, first_epoch: int = 0, weights: np.ndarray | None = None,
                 workers: int | None = None, dtype: str = "float32", report: StreamReport | None = None,
                 ahead: int | None = None, pad_multiple: int = 1, decoder: str = "auto"):
        cores = default_workers()
        workers = default_stream_decoders(decoder, cores) if workers is None else workers
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
        if dtype not in IMAGE_DTYPES:
            raise ValueError(f"Unknown image dtype {dtype!r}; choose one of {', '.join(IMAGE_DTYPES)}")
        if len(split) == 0:
            raise ValueError("There are no images to stream")
        if pad_multiple < 1 or (pad_multiple > 1 and shuffle):
            raise ValueError(f"pad_multiple must be at least 1, and 1 for a shuffled stream; got {pad_multiple!r}")
        self.decoder = resolve_decoder(decoder, cores)
        self.decoders = int(workers)
        threads = self.decoders if self.decoder == "threads" else PROCESS_FEEDERS
        # Batches prepared ahead: at least one per thread, or some threads idle while the step waits for
        # data. Twice that absorbs uneven decode times.
        super().__init__(threads=threads, depth=2 * threads if ahead is None else ahead)
        self.paths, self.labels = list(split.paths), np.asarray(split.labels, dtype=np.int64)
        self.policy, self.batch_size, self.seed = policy, int(batch_size), seed
        self.shuffle, self.first_epoch, self.dtype = shuffle, first_epoch, dtype
        self.sample_weights = None if weights is None else np.asarray(weights, dtype=np.float32)[self.labels]
        self.report = report if report is not None else StreamReport()
        self.steps_per_epoch = -(-len(self.paths) // self.batch_size)
        self.pad_multiple = int(pad_multiple)
        # What Keras' val_loss is multiplied by to be the mean over the real images (as
        # distribute.padded_validation): only the last batch is padded when batch_size divides evenly.
        self.padding_factor = (len(self.paths) + (-len(self.paths) % self.pad_multiple)) / len(self.paths)
        self._orders: dict[int, np.ndarray] = {}
        self._orders_lock = threading.Lock()
        self._pool = (DecodePool(self.paths, policy, self.decoders, chunk_rows(self.batch_size, self.decoders))
                      if self.decoder == "processes" else None)

    def close(self) -> None:
        """Stop the prefetching threads, then the decoder processes; a closed stream of decoder processes
        decodes no more (one of threads starts its threads again)."""
        super().close()
        if self._pool is not None:
            self._pool.close()

    @property
    def num_batches(self):
        return None if self.shuffle else self.steps_per_epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def indices(self, index: int) -> np.ndarray:
        """Which files (positions in the split) batch `index` holds."""
        if not self.shuffle:
            if not 0 <= index < self.steps_per_epoch:
                raise IndexError(f"batch {index} out of range 0..{self.steps_per_epoch - 1}")
            return np.arange(index * self.batch_size, min((index + 1) * self.batch_size, len(self.paths)))
        epoch, step = divmod(index, self.steps_per_epoch)
        return epoch_batch(self._orders, self._orders_lock, len(self.paths), self.seed, epoch + self.first_epoch,
                           step, self.batch_size)

    def load(self, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decode files `chosen` into (images uint8, positions actually used): a corrupt file's slot
        holds the next usable file of the split, so `used != chosen` marks replaced slots."""
        chosen = np.asarray(chosen, dtype=np.int64)
        images = np.empty((len(chosen), self.policy.height, self.policy.width, 3), dtype=np.uint8)
        if self._pool is not None:
            used, found = self._pool.decode(chosen, images)
            for position, reason in found:
                self.report.add(self.paths[position], reason)
        else:
            used = np.array([self._decode_into(images, slot, int(position)) for slot, position in enumerate(chosen)],
                            dtype=np.int64).reshape(-1)
        if (used < 0).any():
            raise DatasetError(f"None of the {len(self.paths)} files of this split can be decoded (e.g. "
                               f"{self.paths[0]}: {self.report.corrupt.get(self.paths[0], 'unreadable')})")
        self.report.count_replacements(int(np.count_nonzero(used != chosen)))
        return images, used

    def _decode_into(self, images: np.ndarray, slot: int, position: int) -> int:
        """The position decoded into `images[slot]`, -1 when nothing of the split decodes."""
        decoded = decode_replacing(self.paths, position, self.policy, images[slot],
                                   lambda i: self.report.is_corrupt(self.paths[i]),
                                   lambda i, reason: self.report.add(self.paths[i], reason))
        return -1 if decoded is None else decoded

    def prepare(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.load(self.indices(index))

    def assemble(self, index: int, prepared: tuple[np.ndarray, np.ndarray]):
        images, used = prepared
        batch = (images.astype(np.float32) if self.dtype == "float32" else images, self.labels[used])
        if self.pad_multiple > 1:  # several devices: every batch splits evenly; the copies weigh nothing
            count = len(used)
            chosen = np.arange(count + (-count % self.pad_multiple)) % count
            real = np.ones(count, np.float32) if self.sample_weights is None else self.sample_weights[used]
            weights = np.where(np.arange(len(chosen)) < count, real[chosen], 0.0).astype(np.float32)
            return batch[0][chosen], batch[1][chosen], weights
        if self.sample_weights is not None:
            batch += (self.sample_weights[used],)
        return batch


def _loaded_batches(stream: StreamingBatches, count: int):
    """(batch index, uint8 images, positions used) for batches 0..count-1 of a shuffle=False stream, decoded
    by the stream's threads (or by its decoder processes, fed by those threads) at most its look-ahead
    depth ahead (bounded memory, file order)."""
    try:
        for index in range(count):
            images, used = stream.prepared(index)
            yield index, images, used
    finally:
        stream.drop_ahead()  # nothing decoded past `count` is kept


def decode_split(stream: StreamingBatches, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over a shuffle=False stream in file order with its worker threads: (uint8 images, labels,
    positions) of the first `limit` files (all when None), corrupt ones left out (not replaced)."""
    if stream.shuffle:
        raise ValueError("decode_split reads a stream in file order; build it with shuffle=False")
    total = len(stream.paths) if limit is None else min(limit, len(stream.paths))
    images, labels, positions = [], [], []
    for index, batch, used in _loaded_batches(stream, -(-total // stream.batch_size)):
        chosen = stream.indices(index)
        keep = (used == chosen) & (chosen < total)
        images.append(batch[keep])
        labels.append(stream.labels[used[keep]])
        positions.append(used[keep])
    if not images:
        shape = (0, stream.policy.height, stream.policy.width, 3)
        return np.zeros(shape, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(images), np.concatenate(labels), np.concatenate(positions)


def predict_split(model, stream: StreamingBatches) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class per file of a shuffle=False stream, batch by batch: (predicted, positions), corrupt
    files left out, so `stream.labels[positions]` are the matching true labels."""
    if stream.shuffle:
        raise ValueError("predict_split reads a stream in file order; build it with shuffle=False")
    predicted, positions = [], []
    for index, batch, used in _loaded_batches(stream, len(stream)):
        keep = used == stream.indices(index)
        if keep.any():
            scores = keras.ops.convert_to_numpy(model.predict_on_batch(batch[keep].astype(np.float32)))
            predicted.append(np.argmax(scores, axis=1))
            positions.append(used[keep])
    if not predicted:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(predicted), np.concatenate(positions)


@dataclass
class StreamedDataset(DatasetIndex):
    """An indexed image folder that training reads batch by batch (`TrainConfig.data_in_memory`).

    `report` collects the corrupt files all its streams meet; `skipped` gets them once training has read
    the folder (`record_corrupt`)."""

    policy: PreprocessPolicy | None = None
    workers: int | None = None
    report: StreamReport = field(default_factory=StreamReport)
    decoder: str = "auto"

    @classmethod
    def from_index(cls, index: DatasetIndex, policy: PreprocessPolicy, workers: int | None = None,
                   decoder: str = "auto") -> StreamedDataset:
        return cls(root=index.root, labels=index.labels, train=index.train, val=index.val, test=index.test,
                   skipped=list(index.skipped), explicit_splits=index.explicit_splits, file_sizes=index.file_sizes,
                   policy=policy, workers=workers, decoder=decoder)

    def stream(self, split: IndexedSplit, batch_size: int, **options) -> StreamingBatches:
        """A stream of `split` (close it when done: with decoder processes it holds a pool of them)."""
        return StreamingBatches(split, self.policy, batch_size, workers=self.workers, report=self.report,
                                decoder=self.decoder, **options)

    def record_corrupt(self) -> None:
        """Add the corrupt files found so far to `skipped` (once each)."""
        known = {s.path for s in self.skipped}
        self.skipped.extend(s for s in self.report.skipped() if s.path not in known)

    # The training data interface of dataset.Dataset, decoding from disk while training runs.

    def training_batches(self, batch_size: int, seed: int, first_epoch: int, weights) -> StreamingBatches:
        return self.stream(self.train, batch_size, seed=seed, first_epoch=first_epoch, weights=weights, dtype="uint8")

    def validation_data(self, batch_size: int, pad_multiple: int = 1) -> StreamingBatches | None:
        """The validation split in file order, or None without validation images."""
        if not len(self.val):
            return None
        return self.stream(self.val, batch_size, shuffle=False, pad_multiple=pad_multiple, dtype="uint8")

    def training_callbacks(self) -> list:
        return [ReportCorruptFiles(self.report)]

    def calibration_images(self, batch_size: int, max_batches: int) -> np.ndarray:
        """The training images BatchNorm is re-estimated on: only the ones used are decoded."""
        with self.stream(self.train, batch_size, shuffle=False, dtype="uint8") as stream:
            images, _, _ = decode_split(stream, limit=batch_size * max_batches)
        return images

    def predict_heldout(self, classifier, heldout: IndexedSplit) -> tuple[np.ndarray, IndexedSplit]:
        """(predicted classes, the held-out split they belong to): the corrupt files found are left out of
        the split and recorded in `skipped`."""
        with self.stream(heldout, 64, shuffle=False, dtype="uint8") as stream:
            predicted, positions = predict_split(classifier, stream)
        self.record_corrupt()
        return predicted, IndexedSplit([heldout.paths[i] for i in positions], heldout.labels[positions])


class ReportCorruptFiles(keras.callbacks.Callback):
    """Logs, at the end of each epoch, the corrupt files the streams found during it."""

    def __init__(self, report: StreamReport):
        super().__init__()
        self.report = report

    def on_epoch_end(self, epoch, logs=None):
        new = self.report.take_new()
        if new:
            listed = "; ".join(f"{s.path} ({s.reason})" for s in new[:5])
            more = f"; and {len(new) - 5} more" if len(new) > 5 else ""
            log.warning("Epoch %d: skipped %d corrupt file(s), each replaced by another picture of its split "
                        "(%d replacements so far): %s%s", epoch + 1, len(new), self.report.replaced, listed, more)


def benchmark_streaming(split: IndexedSplit, policy: PreprocessPolicy, *, workers: tuple[int, ...] = (1, 2, 4),
                        batch_size: int = 32, batches: int | None = None, seed: int = 0, decoder: str = "threads",
                        say=print) -> dict[int, float]:
    """Images/s of the streaming loader for each worker count with `decoder` threads or processes, read
    in order as `fit` reads it (Keras iterates a PyDataset in its own thread; the stream's threads prepare
    the next batches), timed after the first batch (the decoders' start). `batches` defaults to about
    1,000 images per worker, so every count is timed for a while. Says one line per worker count."""
    results: dict[int, float] = {}
    for count in workers:
        with StreamingBatches(split, policy, batch_size, seed=seed, workers=count, dtype="uint8",
                              decoder=decoder) as stream:
            stream[0]  # start the decoders outside the timing
            started, images = time.perf_counter(), 0
            for index in range(1, 1 + (batches or max(8, -(-1000 * count // batch_size)))):
                images += len(stream[index][0])
            results[count] = images / (time.perf_counter() - started)
        say(f"streaming loader, {policy.width}x{policy.height}, batch {batch_size}, {count} decoder {decoder}: "
            f"{results[count]:,.0f} images/s")
    return results
