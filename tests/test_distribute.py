"""train/distribute.py: mixed precision and data-parallel training.

Fast: option checks, device resolution under this process's backend, the padding that makes every batch
split evenly over the devices, and the dtype policy restored after training. Slow: a real bf16 run on
MNIST digits whose saved model is float32; and, in a subprocess under KERAS_BACKEND=jax with two XLA
virtual CPU devices, the same tiny run trained data-parallel and on one device, which must agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgevision.cli import main
from edgevision.train import ModelConfig, TrainConfig, train
from edgevision.train.distribute import pad_batches, padded_validation, precision, resolve_devices
from edgevision.train.optim import classification_loss
from edgevision.train.sample_data import SampleDataUnavailable, mnist_sample, write_image_folder

keras = pytest.importorskip("keras")


# --- fast ---


def test_config_and_cli_errors_name_the_value_and_the_choices(tmp_path, capsys):
    with pytest.raises(ValueError, match="Unknown distribution 'mirrored'; choose one of auto, none, data_parallel"):
        TrainConfig(distribute="mirrored")
    with pytest.raises(SystemExit):
        main(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--distribute", "mirrored"])
    assert "invalid choice: 'mirrored'" in capsys.readouterr().err


def test_cli_passes_both_options(monkeypatch, tmp_path):
    seen = {}

    def fake_train(data_dir, out_dir, config, **kwargs):
        seen.update(config=config)
        raise KeyboardInterrupt  # only the config matters

    monkeypatch.setattr("edgevision.train.train", fake_train)
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--mixed-precision",
                 "--distribute", "none"]) == 130
    assert (seen["config"].mixed_precision, seen["config"].distribute) == (True, "none")
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "r")]) == 130
    assert (seen["config"].mixed_precision, seen["config"].distribute) == (False, "auto")
    assert seen["config"].data_in_memory == "auto"
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--data-in-memory", "never"]) == 130
    assert seen["config"].data_in_memory == "never"


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="checks the single-device path of another backend")
def test_data_parallel_needs_jax_and_auto_falls_back_to_one_device():
    assert resolve_devices("auto", 7).distribution is None
    assert resolve_devices("none", 7).count == 1
    with pytest.raises(ValueError, match=f"needs the JAX backend.*on '{keras.backend.backend()}'"):
        resolve_devices("data_parallel", 8)


def test_padding_makes_every_batch_divisible_and_keeps_validation_exact():
    images, labels = np.arange(7, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32), np.arange(7)
    (x, y), padding = padded_validation(images, labels, 4)
    np.testing.assert_array_equal(y, [0, 1, 2, 3, 4, 5, 6, 0])
    assert x.shape == (8, 3) and padding.count == 7 and padding.labels.tolist() == [0]

    # Keras averages over all 8; the callback takes the copy's loss and hit out again. A model that
    # answers class 0 for everything: 1 hit of 7 real images (Keras saw 2 of 8).
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(7, activation="softmax", kernel_initializer="zeros",
                                                   bias_initializer=keras.initializers.Constant([5.0] + [0.0] * 6))(inputs))
    model.compile(loss=classification_loss(0.1))  # the copy's loss is the compiled one, smoothing included
    probs = keras.ops.convert_to_numpy(model(x))
    targets = 0.9 * np.eye(7)[y] + 0.1 / 7
    per_image = -(targets * np.log(probs)).sum(axis=1)
    logs = {"val_loss": float(per_image.mean()), "val_accuracy": 2 / 8}
    callback = padding.callback()
    callback.set_model(model)
    callback.on_epoch_end(0, logs)
    np.testing.assert_allclose(logs["val_loss"], per_image[:7].mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["val_accuracy"], 1 / 7, rtol=1e-6)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            chosen = slice(0, 4) if index == 0 else slice(4, 5)  # a full batch and a short one of 1
            return images[chosen], labels[chosen], np.ones(7, np.float32)[chosen]

    padded = pad_batches(Batches(), 2)
    assert len(padded) == 2
    x, y, w = padded[1]
    np.testing.assert_array_equal(y, [4, 4])
    assert x.shape == (2, 3) and w.shape == (2,)
    np.testing.assert_array_equal(padded[0][1], [0, 1, 2, 3])


def test_the_dtype_policy_is_restored_even_after_an_error():
    before = keras.config.dtype_policy().name
    with pytest.raises(RuntimeError):
        with precision(True):
            assert keras.config.dtype_policy().name == "mixed_bfloat16"
            raise RuntimeError("training failed")
    assert keras.config.dtype_policy().name == before


# --- slow: real training runs ---


def _write_splits(root, per_class: dict[str, int]):
    """train/, val/ and test/ folders of MNIST 0, 1 and 7 with exact counts per class (no random split)."""
    try:
        images, labels, names = mnist_sample()
    except SampleDataUnavailable as missing:
        pytest.skip(str(missing))
    start = 0
    for split, count in per_class.items():
        idx = np.concatenate([np.flatnonzero(labels == digit)[start:start + count] for digit in (0, 1, 7)])
        write_image_folder(images[idx], labels[idx], names, root / split)
        start += count
    return root


@pytest.mark.slow
def test_mixed_precision_trains_and_saves_a_float32_model(tmp_path):
    data = _write_splits(tmp_path / "data", {"train": 10, "val": 3, "test": 4})
    config = TrainConfig(model=ModelConfig(weights="none", mode="scratch", alpha=0.35, input_size=32), epochs=2,
                         batch_size=10, learning_rate=0.003, seed=1, mixed_precision=True, tensorboard=False)
    before = keras.config.dtype_policy().name
    result = train(data, tmp_path / "run", config, progress=False)
    assert keras.config.dtype_policy().name == before  # a later export in this process is unaffected
    history = json.loads((tmp_path / "run" / "run.json").read_text())["history"]
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))

    model = keras.saving.load_model(tmp_path / "run" / "model.keras")

    def layers(layer):
        yield layer
        for child in getattr(layer, "layers", []):
            yield from layers(child)

    assert {layer.dtype_policy.name for layer in layers(model)} == {"float32"}
    assert all(v.dtype == "float32" for v in model.weights)
    probs = model(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32), training=False)
    assert keras.backend.standardize_dtype(probs.dtype) == "float32"
    probs = keras.ops.convert_to_numpy(probs)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert 0.0 <= result.heldout_accuracy <= 1.0 and result.heldout_count == 12


_JAX_SCRIPT = r"""
import json, os, sys
import keras
import numpy as np
from edgevision.train import ModelConfig, TrainConfig, train

data, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
seen = []
fit = keras.Model.fit


def recording_fit(self, *args, **kwargs):
    distribution = keras.distribution.distribution()
    kernel = self.trainable_variables[0]
    seen.append({"distribution": type(distribution).__name__ if distribution else None,
                 "kernel_devices": len(kernel.value.sharding.device_set)})
    return fit(self, *args, **kwargs)


keras.Model.fit = recording_fit
result = {"backend": keras.backend.backend(), "devices": keras.distribution.list_devices()}
try:
    # The batch size must divide over the devices: refused before any image is read.
    train(data, out + "/odd", TrainConfig(model=ModelConfig(weights="none", mode="scratch"), batch_size=9,
                                          distribute="data_parallel"), progress=False)
except ValueError as error:
    result["odd_batch_error"] = str(error)
# A random backbone file stands in for ImageNet. Mode head (frozen backbone in inference mode) and no
# dropout: a well-conditioned problem, so differences measure the distribution, not chaos or masks.
keras.utils.set_random_seed(7)
weights = out + "/backbone.weights.h5"
keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None,
                               pooling="avg").save_weights(weights)
for mode in ("data_parallel", "none"):
    seen.clear()
    model = ModelConfig(weights=weights, mode="head", alpha=0.35, input_size=32, dropout=0.0)
    config = TrainConfig(model=model, epochs=2, batch_size=10, learning_rate=0.01, seed=1, distribute=mode,
                         tensorboard=False)
    run = train(data, f"{out}/{mode}", config, progress=False)
    model = keras.saving.load_model(f"{out}/{mode}/model.keras")
    images = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    result[mode] = {"fits": list(seen), "heldout_accuracy": run.heldout_accuracy, "best_epoch": run.best_epoch,
                    "history": json.loads(open(f"{out}/{mode}/run.json").read())["history"],
                    "probs": keras.ops.convert_to_numpy(model(images, training=False)).tolist(),
                    "weights": [float(np.abs(w).sum()) for w in model.get_weights()]}
print("RESULT " + json.dumps(result))
"""


@pytest.mark.slow
def test_data_parallel_on_two_virtual_devices_matches_one_device(tmp_path):
    pytest.importorskip("jax")
    # 30 training images in batches of 10 split evenly; 9 validation images are padded to 10.
    data = _write_splits(tmp_path / "data", {"train": 10, "val": 3, "test": 3})
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", _JAX_SCRIPT, str(data), str(tmp_path / "runs")], env=env,
                          capture_output=True, text=True, timeout=600)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(line[len("RESULT "):])
    assert result["backend"] == "jax" and len(result["devices"]) == 2
    assert "Batch size 9 is not divisible by the 2 devices" in result["odd_batch_error"]
    parallel, single = result["data_parallel"], result["none"]
    # The distributed run really ran on both devices: DataParallel active, variables on 2 devices.
    assert parallel["fits"] == [{"distribution": "DataParallel", "kernel_devices": 2}]
    assert single["fits"] == [{"distribution": None, "kernel_devices": 1}]
    # Same seed, same global batches: the same training up to float summation order. Measured on the
    # CPU: per-epoch loss and val_loss agree to ~2e-7 relative; val_accuracy (9 images padded to 10) is
    # the same 3/9 after the padding correction; saved probabilities to 6e-8, weight sums to 5e-7 except
    # one head BatchNorm beta (0.3%): the head's ReLU leaves some units with a gradient that is only
    # summation noise, and Adam's normalised step turns its sign into a full-size step.
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(parallel["history"][key], single["history"][key], rtol=1e-5)
    np.testing.assert_allclose(parallel["history"]["val_accuracy"], single["history"]["val_accuracy"], rtol=1e-6)
    assert parallel["best_epoch"] == single["best_epoch"]
    assert parallel["heldout_accuracy"] == single["heldout_accuracy"]
    np.testing.assert_allclose(parallel["probs"], single["probs"], atol=1e-5)
    np.testing.assert_allclose(parallel["weights"], single["weights"], rtol=1e-2)
    assert np.mean(np.isclose(parallel["weights"], single["weights"], rtol=1e-5)) > 0.98
