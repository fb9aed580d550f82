"""train/trainer.py and its helpers: class weights, batch order, early stopping, the report, TensorBoard
logs, the CLI options; and (slow) real runs on MNIST digits: a fine-tuning run with augmentation, and the
same run killed with SIGKILL after its first epoch and resumed, which must end bit-identical."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgevision.cli import main
from edgevision.runtime.preprocess import load_and_prepare
from edgevision.train import ModelConfig, TrainConfig
from edgevision.train.augment import AugmentConfig
from edgevision.train.callbacks import Monitor
from edgevision.train.checkpoint import STATE_FILE, RunState, save_best, work_dir
from edgevision.train.optim import SparseSmoothedCrossentropy, classification_loss, learning_rate
from edgevision.train.pipeline import ShuffledBatches, epoch_order
from edgevision.train.report import classification_report, write_report
from edgevision.train.run_dir import RunInfo
from edgevision.train.sample_data import SampleDataUnavailable, mnist_sample, write_image_folder
from edgevision.train.tensorboard import ScalarWriter, crc32c
from edgevision.train.trainer import class_weights, keep_weights

keras = pytest.importorskip("keras")


def _events(folder) -> list:
    """Every Event in the event files of `folder`, read by TensorFlow's own reader (checks the CRCs)."""
    tf = pytest.importorskip("tensorflow")
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        events.extend(tf.compat.v1.train.summary_iterator(str(path)))
    return events


def _scalars(folder) -> dict[str, dict[int, float]]:
    found: dict[str, dict[int, float]] = {}
    for event in _events(folder):
        for value in event.summary.value:
            found.setdefault(value.tag, {})[event.step] = value.simple_value
    return found


# --- fast: the pieces ---


def test_balanced_class_weights_equalise_classes_and_average_one():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 4)
    weights = class_weights(labels, 3, "balanced")
    np.testing.assert_allclose(weights, [12 / 18, 12 / 6, 12 / 12], rtol=1e-6)
    np.testing.assert_allclose(weights[labels].mean(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.bincount(labels, weights[labels]), [4, 4, 4], rtol=1e-6)
    assert class_weights(labels, 3, "none") is None
    with pytest.raises(ValueError, match="'balance'.*none, balanced"):
        class_weights(labels, 3, "balance")


def test_a_class_missing_from_training_gets_weight_zero_not_a_division_error():
    np.testing.assert_allclose(class_weights(np.array([0, 0, 2]), 3, "balanced"), [0.75, 0.0, 1.5])


def test_train_config_errors_name_the_value_and_the_choices(tmp_path):
    with pytest.raises(ValueError, match="fine_tune_epochs=3 applies only to mode 'finetune', not 'scratch'"):
        TrainConfig(model=ModelConfig(weights="none", mode="scratch"), fine_tune_epochs=3)
    with pytest.raises(ValueError, match="patience must be at least 1.*got 0"):
        TrainConfig(patience=0)
    with pytest.raises(ValueError, match="Unknown learning-rate schedule 'step'; choose one of constant, cosine"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match=r"label smoothing must be in \[0, 1\), got 1.0"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="Unknown class weighting 'yes'; choose one of none, balanced"):
        TrainConfig(class_weights="yes")
    with pytest.raises(ValueError, match="fine-tuning learning rate must be in \\(0, 1\\), got 2"):
        TrainConfig(model=ModelConfig(mode="finetune"), fine_tune_lr=2)
    with pytest.raises(ValueError, match="Unknown decoder 'fork'; choose one of auto, threads, processes"):
        TrainConfig(decoder="fork")


def test_finetune_has_two_phases_with_a_tenth_of_the_learning_rate_by_default():
    config = TrainConfig(model=ModelConfig(mode="finetune"), epochs=4, learning_rate=0.01)
    assert [(p.name, p.epochs, p.learning_rate) for p in config.phases()] == [("head", 4, 0.01), ("finetune", 4, 0.001)]
    config = TrainConfig(model=ModelConfig(mode="finetune"), epochs=4, fine_tune_epochs=2, fine_tune_lr=1e-5)
    assert [(p.epochs, p.learning_rate) for p in config.phases()][1] == (2, 1e-5)
    assert [p.name for p in TrainConfig(model=ModelConfig(weights="none", mode="scratch")).phases()] == ["scratch"]
    record = TrainConfig(augment=AugmentConfig.light()).to_dict()
    assert record["augment"]["rotation"] == 10.0 and json.loads(json.dumps(record)) == record


def test_label_smoothing_loss_matches_the_formula_and_is_plain_cross_entropy_at_zero():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=6).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 1, 0])
    plain = keras.losses.sparse_categorical_crossentropy(labels, probs)
    np.testing.assert_allclose(classification_loss(0.0)(labels, probs), np.mean(plain), rtol=1e-6)
    np.testing.assert_allclose(SparseSmoothedCrossentropy(0.0).call(labels, probs), plain, rtol=1e-5)
    targets = np.full((6, 4), 0.2 / 4) + 0.8 * np.eye(4)[labels]
    expected = -(targets * np.log(probs)).sum(axis=1)
    np.testing.assert_allclose(classification_loss(0.2).call(labels, probs), expected, rtol=1e-5)
    np.testing.assert_allclose(classification_loss(0.2)(labels, probs), expected.mean(), rtol=1e-5)


def test_cosine_schedule_warms_up_over_the_first_epoch_then_decays_to_zero():
    assert learning_rate(0.01, "constant", 5, 10) == 0.01
    schedule = learning_rate(0.01, "cosine", 5, 10)  # 50 steps: 10 of warm-up, 40 of decay
    at = {step: float(schedule(step)) for step in (0, 5, 10, 30, 50)}
    assert at[0] == 0.0 and at[5] == pytest.approx(0.005) and at[10] == pytest.approx(0.01)
    assert at[30] == pytest.approx(0.005) and at[50] == pytest.approx(0.0, abs=1e-9)
    single = learning_rate(0.01, "cosine", 1, 10)  # one epoch: no warm-up
    assert float(single(0)) == pytest.approx(0.01) and float(single(5)) == pytest.approx(0.005)


def test_batches_visit_every_image_once_per_epoch_in_a_seeded_order():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    labels = np.array([0] * 7 + [1] * 3)
    batches = ShuffledBatches(images, labels, batch_size=4, seed=5, weights=np.array([0.5, 2.0], np.float32))
    assert len(batches) == batches.steps_per_epoch == 3 and batches.num_batches is None
    for epoch in range(2):
        seen = np.concatenate([batches[epoch * 3 + step][0][:, 0, 0, 0] for step in range(3)]).astype(int)
        assert sorted(seen) == list(range(10))
        np.testing.assert_array_equal(seen, epoch_order(10, 5, epoch))
    assert not np.array_equal(epoch_order(10, 5, 0), epoch_order(10, 5, 1))
    x, y, w = batches[0]
    assert x.dtype == np.uint8 and x.shape == (4, 2, 2, 3)  # cast to float32 by the model, on the device
    np.testing.assert_array_equal(w, np.where(y == 0, 0.5, 2.0))
    resumed = ShuffledBatches(images, labels, batch_size=4, seed=5, first_epoch=1)
    np.testing.assert_array_equal(resumed[0][0], batches[3][0])  # a resumed run sees the same batches
    assert len(resumed[0]) == 2  # no weights: (images, labels)


def test_keep_loads_the_best_epochs_weights_or_leaves_the_last(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    best = [np.full(v.shape, 1.0, "float32") for v in model.weights]
    last = [np.full(v.shape, 2.0, "float32") for v in model.weights]
    model.set_weights(best)
    save_best(tmp_path, model.variables)
    state = RunState(config={}, fingerprint="", epoch=5, monitor={"best_epoch": 2, "best": 0.9})
    for keep, has_validation, epoch, expected in [("last", True, 4, last), ("best", False, 4, last),
                                                  ("best", True, 2, best)]:
        model.set_weights(last)
        assert keep_weights(keep, model, tmp_path, state, has_validation) == epoch, (keep, has_validation)
        for got, want in zip(model.get_weights(), expected):
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="Unknown keep 'first'; choose one of best, last"):
        TrainConfig(keep="first")


def test_monitor_keeps_the_first_best_and_stops_after_patience():
    monitor = Monitor("val_accuracy", patience=2)
    improved = [monitor.update(e, {"val_accuracy": v}) for e, v in enumerate([0.5, 0.6, 0.6, 0.55])]
    assert improved == [True, True, False, False]
    assert (monitor.best, monitor.best_epoch, monitor.should_stop) == (0.6, 1, True)
    monitor.start_phase()  # a new phase: fresh patience, same best
    assert not monitor.should_stop and monitor.best_epoch == 1
    assert Monitor(**monitor.to_dict()) == monitor
    assert not Monitor("val_accuracy").should_stop
    with pytest.raises(ValueError, match="'val_accuracy' is missing.*\\['accuracy', 'loss'\\]"):
        Monitor("val_accuracy").update(0, {"loss": 1.0, "accuracy": 0.5})


def test_epoch_end_stops_the_phase_keeps_the_best_and_checkpoints_every_epoch(tmp_path):
    """A real (tiny) fit whose validation accuracy cannot change: learning rate 0."""
    from edgevision.train.callbacks import EpochEnd
    from edgevision.train.checkpoint import BEST_FILE, RunState, load_checkpoint

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.0), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = np.random.default_rng(0).normal(size=(8, 4)).astype("float32"), np.array([0, 1] * 4)
    state, monitor = RunState(config={}, fingerprint="f"), Monitor("val_accuracy", patience=2)
    writers = {name: ScalarWriter(tmp_path / "logs" / name) for name in ("train", "validation")}
    callback = EpochEnd(state, monitor, model, tmp_path, phase=0, phase_start=0, phase_end=10, writers=writers)
    history = model.fit(x, y, epochs=10, validation_data=(x, y), callbacks=[callback], verbose=0)
    assert len(history.history["loss"]) == 3  # best at epoch 0, then 2 epochs without improvement
    assert (state.epoch, state.phase_done, monitor.best_epoch) == (3, True, 0)
    assert state.history["learning_rate"] == [0.0] * 3 and state.history["phase"] == [0.0] * 3
    assert load_checkpoint(tmp_path).state == state and (tmp_path / BEST_FILE).is_file()
    assert sorted(_scalars(tmp_path / "logs" / "validation")["epoch_accuracy"]) == [0, 1, 2]


def test_classification_report_counts_and_ratios():
    report = classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 0, 0], ["a", "b", "c"], "test")
    assert report["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert report["accuracy"] == pytest.approx(3 / 6)
    assert report["per_class"]["a"] == pytest.approx({"precision": 2 / 4, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_report_files_are_real_pictures_and_json(tmp_path):
    history = {"loss": [1.0, 0.7, 0.5], "val_loss": [1.1, 0.9, 0.8], "accuracy": [0.4, 0.6, 0.8],
               "val_accuracy": [0.3, 0.5, 0.6], "phase": [0.0, 0.0, 1.0]}
    report = write_report(tmp_path, history, [0, 1, 1], [0, 1, 0], ["cat", "dog"], "test")
    assert json.loads((tmp_path / "classification.json").read_text()) == report
    for name in ("curves.png", "confusion_matrix.png"):
        picture = cv2.imread(str(tmp_path / name))
        assert picture is not None and picture.shape[0] > 200 and picture.std() > 10, name


def test_crc32c_known_answer():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_scalar_logs_read_back_with_tensorflows_reader(tmp_path):
    writer = ScalarWriter(tmp_path)
    writer.add_scalars(0, {"epoch_loss": 1.5, "epoch_accuracy": 0.25})
    writer.add_scalars(1, {"epoch_loss": 0.75})
    assert _events(tmp_path)[0].file_version == "brain.Event:2"
    assert _scalars(tmp_path) == {"epoch_loss": {0: 1.5, 1: 0.75}, "epoch_accuracy": {0: 0.25}}


def test_cli_augmentation_options_override_the_preset(monkeypatch, tmp_path):
    seen = {}

    def fake_train(data_dir, out_dir, config, **kwargs):
        seen.update(config=config, kwargs=kwargs)
        raise KeyboardInterrupt  # stop before the summary line: only the config matters here

    monkeypatch.setattr("edgevision.train.train", fake_train)
    code = main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--augment", "light", "--rotation", "30",
                 "--vflip", "--fill-mode", "constant", "--fill-value", "128", "--noise", "4", "--crop", "0.1",
                 "--class-weights", "balanced", "--patience", "3", "--resume", "--no-tensorboard",
                 "--weights", "none", "--mode", "scratch", "--head-units", "24", "--dropout", "0.3", "--workers", "3",
                 "--decoder", "processes"])
    assert code == 130
    config = seen["config"]
    assert (config.model.head_units, config.model.dropout, config.workers) == (24, 0.3, 3)
    assert config.augment == AugmentConfig(
        rotation=30.0, width_shift=0.1, height_shift=0.1, zoom=0.1, horizontal_flip=True, vertical_flip=True,
        fill_mode="constant", fill_value=128.0, brightness=0.1, contrast=0.1, noise_std=4.0, crop=0.1)
    assert (config.class_weights, config.patience, config.tensorboard, config.decoder) == ("balanced", 3, False,
                                                                                           "processes")
    assert seen["kwargs"]["resume"] is True


def test_cli_rejects_an_unknown_decoder_naming_the_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--decoder", "fork"])
    assert exit_info.value.code == 2
    assert "argument --decoder: invalid choice: 'fork' (choose from 'auto', 'threads', 'processes')" in \
        capsys.readouterr().err


def test_cli_needs_out_unless_previewing_and_a_preview_needs_augmentation(tmp_path, capsys):
    assert main(["train", str(tmp_path)]) == 2
    assert "--out RUN_DIR is required" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--preview", str(tmp_path / "p.png")]) == 2
    assert "Nothing to preview" in capsys.readouterr().err


def test_cli_rejects_an_out_of_range_augmentation_value(tmp_path, capsys):
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--rotation", "400"]) == 2
    assert "rotation 400.0 is out of range" in capsys.readouterr().err


# --- slow: real training runs ---

EPOCHS, FINE_TUNE_EPOCHS, LR = 2, 1, 0.003


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    try:
        images, labels, names = mnist_sample()
    except SampleDataUnavailable as missing:
        pytest.skip(str(missing))
    # Imbalanced on purpose (class weights on): 24, 12 and 12 digits of 0, 1 and 7.
    idx = np.concatenate([np.flatnonzero(labels == digit)[:count] for digit, count in ((0, 24), (1, 12), (7, 12))])
    root = write_image_folder(images[idx], labels[idx], names, tmp_path_factory.mktemp("trainer") / "data")
    # Files a run skips and lists in skipped_files.txt: a note, and a link to a picture since deleted.
    (root / "0" / "notes.txt").write_text("labelled by hand\n")
    (root / "1" / "moved.png").symlink_to(root / "nowhere.png")
    return root


def test_preview_writes_a_grid_of_augmented_training_images_and_trains_nothing(data, tmp_path, capsys):
    png = tmp_path / "preview.png"
    assert main(["train", str(data), "--preview", str(png), "--augment", "light", "--rotation", "30",
                 "--input-size", "32", "--quiet"]) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    grid = cv2.imread(str(png))
    assert grid is not None and grid.shape[0] >= 2 * 32 and grid.shape[1] >= 4 * 32 and grid.std() > 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview.png"]


@pytest.fixture(scope="module")
def options(tmp_path_factory):
    """Mode finetune from a backbone weights file (stands in for ImageNet), with every training option on."""
    keras.utils.set_random_seed(7)
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None,
                                              pooling="avg")
    path = tmp_path_factory.mktemp("weights") / "backbone.weights.h5"
    backbone.save_weights(path)
    return ["--weights", str(path), "--mode", "finetune", "--fine-tune-blocks", "2", "--input-size", "32",
            "--epochs", str(EPOCHS), "--fine-tune-epochs", str(FINE_TUNE_EPOCHS), "--batch-size", "16",
            "--lr", str(LR), "--seed", "3", "--augment", "light", "--class-weights", "balanced", "--patience", "4",
            "--lr-schedule", "cosine", "--label-smoothing", "0.1", "--head-units", "24", "--quiet"]


@pytest.fixture(scope="module")
def run(data, options, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", str(data), "--out", str(out), *options]) == 0
    return out




@pytest.mark.slow
def test_the_saved_model_has_no_random_layer_and_predicts_deterministically(run):
    model = keras.saving.load_model(run / "model.keras")

    def layers(layer):
        yield layer
        for child in getattr(layer, "layers", []):
            yield from layers(child)

    names = [layer.name for layer in layers(model)]
    assert model.name == "edgevision_mobilenet_v2" and "augmentation" not in names
    assert model.get_layer("head_dense").units == 24
    assert not any("Random" in type(layer).__name__ for layer in layers(model))
    info = RunInfo.load(run)
    images = np.stack([load_and_prepare(p, info.preprocess) for p in info.heldout_paths]).astype(np.float32)
    first = model.predict(images, verbose=0)
    np.testing.assert_array_equal(first, model.predict(images, verbose=0))
    np.testing.assert_array_equal(first, np.asarray(model(images, training=False)))


@pytest.mark.slow
def test_finetune_runs_its_phases_with_the_lower_learning_rate(run):
    info = RunInfo.load(run)
    assert info.history["phase"] == [0.0] * EPOCHS + [1.0] * FINE_TUNE_EPOCHS
    # Cosine per phase: warm-up to the phase's rate over its first epoch (when it has more than one), then
    # down to 0 at its last step; logged at each epoch's end.
    def cosine(rate, epochs):
        return [rate * 0.5 * (1 + math.cos(math.pi * e / (epochs - 1))) for e in range(epochs)] if epochs > 1 else [0.0]
    np.testing.assert_allclose(info.history["learning_rate"], cosine(LR, EPOCHS) + cosine(LR / 10, FINE_TUNE_EPOCHS),
                               rtol=1e-6, atol=1e-12)
    assert info.training["lr_schedule"] == "cosine" and info.training["label_smoothing"] == 0.1
    assert info.training["augment"]["rotation"] == 10.0 and info.training["class_weights"] == "balanced"
    assert info.model["mode"] == "finetune" and info.model["fine_tune_blocks"] == 2 and info.model["head_units"] == 24
    best = int(np.argmax(info.history["val_accuracy"]))  # the first best epoch is the one kept
    assert info.metrics["best_epoch"] == info.metrics["kept_epoch"] == best  # --keep best, the default
    assert info.metrics["best_val_accuracy"] == pytest.approx(info.history["val_accuracy"][best])
    assert not work_dir(run).exists(), "a finished run removes its work folder"


@pytest.mark.slow
def test_the_report_describes_the_saved_model_on_the_heldout_images(run):
    info = RunInfo.load(run)
    model = keras.saving.load_model(run / "model.keras")
    images = np.stack([load_and_prepare(p, info.preprocess) for p in info.heldout_paths]).astype(np.float32)
    predicted = model.predict(images, verbose=0).argmax(axis=1)
    report = json.loads((run / "classification.json").read_text())
    assert report == classification_report(info.heldout_labels, predicted, info.labels, "test")
    assert report["accuracy"] == pytest.approx(info.metrics["test_accuracy"])
    for name in ("curves.png", "confusion_matrix.png"):
        assert cv2.imread(str(run / name)) is not None, name
    skipped = dict(line.split("\t") for line in (run / "skipped_files.txt").read_text().splitlines())
    assert {Path(p).name for p in skipped} == {"notes.txt", "moved.png"}
    assert skipped[str(Path(info.dataset["root"]) / "1" / "moved.png")] == "could not read the file: No such file or directory"


@pytest.mark.slow
def test_tensorboard_logs_hold_every_epoch(run):
    info = RunInfo.load(run)
    epochs = EPOCHS + FINE_TUNE_EPOCHS
    train = _scalars(run / "logs" / "train")
    validation = _scalars(run / "logs" / "validation")
    np.testing.assert_allclose([train["epoch_loss"][e] for e in range(epochs)], info.history["loss"], rtol=1e-6)
    np.testing.assert_allclose([validation["epoch_accuracy"][e] for e in range(epochs)], info.history["val_accuracy"],
                               rtol=1e-6)
    np.testing.assert_allclose([train["epoch_learning_rate"][e] for e in range(epochs)], info.history["learning_rate"],
                               rtol=1e-6)


def _kill_after_first_checkpoint(data, out, options) -> int:
    """Start `edgevision train` in a subprocess and SIGKILL it once its first checkpoint exists;
    returns the epoch that checkpoint recorded."""
    state = work_dir(out) / STATE_FILE
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, "-m", "edgevision.cli", "train", str(data), "--out", str(out), *options],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while not state.is_file():
            if process.poll() is not None:
                pytest.fail(f"training exited ({process.returncode}) before its first checkpoint: "
                            f"{process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint after 600 s")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    return json.loads(state.read_text())["epoch"]


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_identical_to_an_uninterrupted_one(data, options, run, tmp_path, capsys):
    killed = tmp_path / "killed"
    epoch = _kill_after_first_checkpoint(data, killed, options)
    assert 1 <= epoch < EPOCHS + FINE_TUNE_EPOCHS
    assert not killed.exists(), "a killed run must not leave a run folder that looks complete"
    saved = json.loads((work_dir(killed) / STATE_FILE).read_text())

    # Other options than the checkpoint's are refused, naming what differs; the checkpoint survives.
    assert main(["train", str(data), "--out", str(killed), *options, "--lr", "0.01", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "Cannot resume" in err and "learning_rate: checkpoint 0.003, now 0.01" in err
    assert (work_dir(killed) / STATE_FILE).is_file()

    assert main(["train", str(data), "--out", str(killed), *options, "--resume"]) == 0
    info, expected = RunInfo.load(killed), RunInfo.load(run)
    assert info.metrics["resumed_at"] == [epoch] and expected.metrics["resumed_at"] == []
    for key, values in saved["history"].items():  # the epochs before the kill come from the checkpoint
        assert info.history[key][:epoch] == values
    assert not work_dir(killed).exists()
    # Same seed, other processes, a kill in between: the same run, bit for bit.
    assert info.history == expected.history
    assert info.metrics == {**expected.metrics, "resumed_at": [epoch]}
    got = keras.saving.load_model(killed / "model.keras").get_weights()
    want = keras.saving.load_model(run / "model.keras").get_weights()
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
