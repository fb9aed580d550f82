"""train/checkpoint.py: what a kill leaves behind and what --resume reads back. The end-to-end proof (a
real `edgevision train` SIGKILLed after its first epoch, resumed, bit-identical to an uninterrupted run)
is in tests/test_trainer.py, which shares its training run with the other slow trainer tests."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from edgevision.train import ModelConfig, TrainConfig
from edgevision.train.checkpoint import (
    STATE_FILE,
    RunState,
    assign_arrays,
    load_checkpoint,
    restore_best,
    save_best,
    save_checkpoint,
    work_dir,
)
from edgevision.train.trainer import _check_resumable, train

keras = pytest.importorskip("keras")


def _variables(seed: int, names=("dense/kernel", "dense/bias")):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=(3, 2) if "kernel" in n else (2,)).astype("float32"), name=n.split("/")[1])
            for n in names]


def test_the_work_folder_is_a_hidden_sibling_of_the_run_folder(tmp_path):
    assert work_dir(tmp_path / "runs" / "cats") == tmp_path / "runs" / ".cats.train"


def test_checkpoint_round_trip_restores_variables_optimizer_state_and_rng(tmp_path):
    model, optimizer = _variables(0), _variables(1)
    state = RunState(config={"epochs": 3}, fingerprint="abc", epoch=1, history={"loss": [0.5]},
                     monitor={"metric": "val_accuracy", "best": 0.5})
    np.random.seed(11)
    random.seed(12)
    save_checkpoint(tmp_path, state, model, optimizer)
    expected_numpy, expected_python = np.random.random(3), random.random()
    for v in model + optimizer:
        v.assign(np.zeros(v.shape, "float32"))
    np.random.seed(0)
    random.seed(0)

    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.state == state
    assign_arrays(model, checkpoint.model_paths, checkpoint.model_arrays, "model")
    assign_arrays(optimizer, checkpoint.optimizer_paths, checkpoint.optimizer_arrays, "optimizer")
    for v, w in zip(model + optimizer, _variables(0) + _variables(1)):
        np.testing.assert_array_equal(np.asarray(v), np.asarray(w))
    checkpoint.restore_rng()
    np.testing.assert_array_equal(np.random.random(3), expected_numpy)
    assert random.random() == expected_python


def test_each_epoch_replaces_the_last_and_a_half_written_file_is_never_read(tmp_path):
    model = _variables(0)
    for epoch in (1, 2):
        save_checkpoint(tmp_path, RunState(config={}, fingerprint="f", epoch=epoch), model, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE, "weights-0002.npz"]
    # A kill while epoch 3's arrays were being written: state.json still names epoch 2's file.
    (tmp_path / "weights-0003.npz").write_bytes(b"PK\x03\x04 truncated")
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.state.epoch == 2
    np.testing.assert_array_equal(checkpoint.model_arrays[0], np.asarray(model[0]))
    assert load_checkpoint(tmp_path / "nothing-here") is None


def test_a_damaged_state_file_names_the_folder_to_delete(tmp_path):
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=f"delete '{tmp_path}' to start over"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_of_another_model_is_refused_by_name_and_shape():
    saved = _variables(0)
    paths, arrays = [v.path for v in saved], [np.asarray(v) for v in saved]
    with pytest.raises(ValueError, match="2 saved variables, 1 in the model"):
        assign_arrays(saved[:1], paths, arrays, "model")
    other = [keras.Variable(np.zeros((4, 2), "float32"), name="kernel"), keras.Variable(np.zeros(2, "float32"), name="bias")]
    with pytest.raises(ValueError, match=r"shape \(3, 2\) for .*kernel, the model \(4, 2\)"):
        assign_arrays(other, paths, arrays, "model")
    # Keras numbers auto-named objects per process; the numbers alone do not make another model.
    assign_arrays(_variables(5), [p.replace("kernel", "kernel_3") for p in paths], arrays, "model")


def test_best_weights_round_trip(tmp_path):
    best = _variables(0)
    save_best(tmp_path, best)
    current = _variables(9)
    assert restore_best(tmp_path, current)
    np.testing.assert_array_equal(np.asarray(current[0]), np.asarray(best[0]))
    assert not restore_best(tmp_path / "none", current)


def test_resume_without_a_checkpoint_names_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"Nothing to resume.*{work_dir(tmp_path / 'run')}"):
        train(tmp_path / "data", tmp_path / "run", TrainConfig(model=ModelConfig(weights="none", mode="scratch")),
              resume=True)


def test_resume_refuses_other_options_or_other_images(tmp_path):
    config = TrainConfig(model=ModelConfig(weights="none", mode="scratch"), epochs=3).to_dict()
    state = RunState(config=config, fingerprint="abc")
    _check_resumable(state, json.loads(json.dumps(config)), "abc", tmp_path)  # the same: fine
    _check_resumable(state, {**config, "workers": 3, "decoder": "processes"}, "abc", tmp_path)  # how it decodes: fine
    changed = {**config, "epochs": 5, "seed": 1}
    with pytest.raises(ValueError, match="epochs: checkpoint 3, now 5; seed: checkpoint 0, now 1"):
        _check_resumable(state, changed, "abc", tmp_path)
    with pytest.raises(ValueError, match="the image folder changed"):
        _check_resumable(state, config, "def", tmp_path)


def test_resume_accepts_another_decode_thread_count_and_a_checkpoint_from_before_the_option(tmp_path):
    config = TrainConfig(model=ModelConfig(weights="none", mode="scratch"), epochs=3, workers=2).to_dict()
    state = RunState(config=config, fingerprint="abc")
    _check_resumable(state, {**config, "workers": 16}, "abc", tmp_path)
    older = RunState(config={k: v for k, v in config.items() if k != "workers"}, fingerprint="abc")
    _check_resumable(older, config, "abc", tmp_path)
    with pytest.raises(ValueError, match="epochs: checkpoint 3, now 4"):  # the other options still count
        _check_resumable(state, {**config, "workers": 16, "epochs": 4}, "abc", tmp_path)
