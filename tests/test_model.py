"""train/model.py: the config's errors, the classifier's graph, transfer modes and BatchNorm handling.

Tiny models (32x32, alpha 0.35, random init) keep this file fast; no network is needed (head mode
loads a backbone weights file written here instead of Keras' ImageNet download).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgevision.runtime.preprocess import PreprocessPolicy, prepare
from edgevision.train.model import (
    BACKBONES,
    TRANSFER_MODES,
    ModelConfig,
    build_classifier,
    momentum_for,
    recalibrate_batchnorm,
    trainable_batchnorms,
)

SIZE = 32
keras = pytest.importorskip("keras")


def _all_layers(layer):
    yield layer
    for child in getattr(layer, "layers", []):
        yield from _all_layers(child)


def _batchnorms(model) -> list:
    return [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def _backbone(model):
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert len(nested) == 1, nested
    return nested[0]


@pytest.fixture(scope="module")
def mnist_rgb32() -> np.ndarray:
    """64 real MNIST digits, grey -> RGB, through the runtime's one preprocessing function at 32x32."""
    from edgevision.train.sample_data import SampleDataUnavailable, mnist_sample

    try:
        images, labels, _ = mnist_sample()
    except SampleDataUnavailable as missing:
        pytest.skip(str(missing))
    rng = np.random.default_rng(0)
    idx = rng.choice(len(images), 64, replace=False)
    policy = PreprocessPolicy(SIZE, SIZE)
    return np.stack([prepare(cv2.cvtColor(images[i], cv2.COLOR_GRAY2RGB), policy) for i in idx]).astype(np.float32)


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory) -> str:
    """A Keras weights file for the 32x32 alpha-0.35 MobileNetV2 backbone (stands in for ImageNet)."""
    keras.utils.set_random_seed(7)
    backbone = keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    path = tmp_path_factory.mktemp("weights") / "backbone.weights.h5"
    backbone.save_weights(path)
    return str(path)


@pytest.fixture(scope="module")
def head_model(backbone_weights):
    keras.utils.set_random_seed(1)
    return build_classifier(ModelConfig(input_size=SIZE, weights=backbone_weights, mode="head"), 4)


@pytest.fixture(scope="module")
def scratch_model():
    keras.utils.set_random_seed(2)
    return build_classifier(ModelConfig(input_size=SIZE, weights="none", mode="scratch", dropout=0.3), 3)


# --- ModelConfig: errors name the bad value and the valid set ---


def test_default_config_is_valid_and_serialisable():
    config = ModelConfig()
    assert config.backbone == "mobilenet_v2" and config.mode in TRANSFER_MODES
    assert config.alpha in BACKBONES["mobilenet_v2"].alphas
    data = config.to_dict()
    assert {"backbone", "alpha", "input_size", "weights", "mode", "dropout"} <= set(data)
    assert ModelConfig(**data) == config  # what run.json records rebuilds the same config


def test_unknown_backbone_names_it_lists_choices_and_suggests_the_closest():
    with pytest.raises(ValueError) as info:
        ModelConfig(backbone="mobilnet_v2")
    message = str(info.value)
    assert "'mobilnet_v2'" in message
    for name in BACKBONES:
        assert name in message
    assert "did you mean 'mobilenet_v2'" in message


def test_unknown_backbone_without_close_match_has_no_suggestion():
    with pytest.raises(ValueError) as info:
        ModelConfig(backbone="resnet152")
    assert "'resnet152'" in str(info.value) and "did you mean" not in str(info.value)


@pytest.mark.parametrize("alpha", [0.3, 2.0, 0.0])
def test_bad_alpha_names_value_and_valid_alphas(alpha):
    with pytest.raises(ValueError) as info:
        ModelConfig(alpha=alpha)
    message = str(info.value)
    assert f"alpha {alpha}" in message and "mobilenet_v2" in message
    assert ", ".join(map(str, BACKBONES["mobilenet_v2"].alphas)) in message


@pytest.mark.parametrize("alpha", BACKBONES["mobilenet_v2"].alphas)
def test_every_listed_alpha_is_accepted(alpha):
    assert ModelConfig(alpha=alpha).alpha == alpha


@pytest.mark.parametrize("size", [31, 0, -5, 225, 1000])
def test_input_size_out_of_range(size):
    with pytest.raises(ValueError) as info:
        ModelConfig(input_size=size)
    assert f"Input size {size}" in str(info.value) and "32-224" in str(info.value)


@pytest.mark.parametrize("size", [32, 224])
def test_input_size_bounds_are_inclusive(size):
    assert ModelConfig(input_size=size).input_size == size


def test_unknown_mode_names_it_and_the_modes():
    with pytest.raises(ValueError) as info:
        ModelConfig(mode="frozen")
    message = str(info.value)
    assert "'frozen'" in message and "scratch" in message and "head" in message
    for mode in TRANSFER_MODES:
        assert mode in message


def test_head_mode_without_pretrained_weights_is_refused():
    with pytest.raises(ValueError) as info:
        ModelConfig(weights="none", mode="head")
    message = str(info.value)
    assert "head" in message and "--mode scratch" in message and "--weights" in message
    assert ModelConfig(weights="none", mode="scratch").weights == "none"


def test_missing_weights_file_is_named(tmp_path):
    missing = str(tmp_path / "nope.weights.h5")
    with pytest.raises(ValueError) as info:
        ModelConfig(weights=missing)
    assert repr(missing) in str(info.value)
    assert "'imagenet'" in str(info.value) and "'none'" in str(info.value)


def test_weights_folder_is_not_a_weights_file(tmp_path):
    with pytest.raises(ValueError, match="existing file"):
        ModelConfig(weights=str(tmp_path))


@pytest.mark.parametrize("units", [0, -3, 2.5, True])
def test_bad_head_units(units):
    with pytest.raises(ValueError, match=f"head_units {units!r} must be a whole number of at least 1"):
        ModelConfig(head_units=units)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_bad_dropout(dropout):
    with pytest.raises(ValueError, match=f"Dropout {dropout}"):
        ModelConfig(dropout=dropout)


def test_build_refuses_fewer_than_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes, got 1"):
        build_classifier(ModelConfig(input_size=SIZE, weights="none", mode="scratch"), 1)


# --- the graph ---


def test_classifier_takes_raw_pixels_and_outputs_probabilities(scratch_model, mnist_rgb32):
    model = scratch_model
    assert tuple(model.input_shape) == (None, SIZE, SIZE, 3)
    assert model.inputs[0].dtype == "float32"
    assert tuple(model.output_shape) == (None, 3)
    first = model.layers[1]
    assert isinstance(first, keras.layers.Rescaling)
    # 0-255 -> [-1, 1], MobileNetV2's convention, inside the graph.
    np.testing.assert_allclose(np.asarray(first(np.array([[0.0, 127.5, 255.0]], np.float32))), [[-1, 0, 1]], atol=1e-6)
    probs = np.asarray(model(mnist_rgb32[:8], training=False))
    assert probs.shape == (8, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()


def test_no_random_layer_is_active_at_inference(scratch_model, mnist_rgb32):
    model = scratch_model
    names = {type(layer).__name__ for layer in _all_layers(model)}
    assert not {n for n in names if n.startswith("Random") or n.startswith("Gaussian")}, names
    batch = mnist_rgb32[:8]
    first = np.asarray(model(batch, training=False))
    second = np.asarray(model(batch, training=False))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(np.asarray(model.predict(batch, verbose=0)), first)
    # Control: the dropout layer (rate 0.3 here) does randomise in training mode, so the check above
    # would notice a random layer that stayed active.
    dropout = model.get_layer("head_dropout")
    features = np.ones((4, 64), np.float32)
    assert not np.array_equal(np.asarray(dropout(features, training=True)), np.asarray(dropout(features, training=True)))
    np.testing.assert_array_equal(np.asarray(dropout(features, training=False)), features)


def test_the_head_normalises_its_hidden_layer_not_the_backbone_features(head_model):
    """backbone -> Dense (no bias; the BN brings it) -> BatchNorm -> ReLU -> Dropout -> softmax: the
    order train/model.py explains (standardising pretrained features amplifies their dead channels)."""
    names = [layer.name for layer in head_model.layers]
    backbone = names.index(_backbone(head_model).name)
    assert names[backbone + 1:] == ["head_dense", "head_bn", "head_relu", "head_dropout", "probs"]
    dense = head_model.get_layer("head_dense")
    assert dense.units == 256 and not dense.use_bias


def test_head_mode_freezes_the_backbone(head_model):
    backbone = _backbone(head_model)
    assert backbone.trainable is False
    assert backbone.trainable_weights == []
    assert len(backbone.non_trainable_weights) > 100
    trainable_names = {w.path for w in head_model.trainable_weights}
    assert trainable_names and all(name.startswith(("head_dense", "head_bn", "probs")) for name in trainable_names), trainable_names
    listed = trainable_batchnorms(head_model)
    assert [layer.name for layer in listed] == ["head_bn"]
    backbone_bns = _batchnorms(backbone)
    assert len(backbone_bns) > 40
    assert not any(layer in listed for layer in backbone_bns)


def test_head_mode_loads_the_weights_file(head_model, backbone_weights):
    reference = keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    reference.load_weights(backbone_weights)
    for mine, theirs in zip(_backbone(head_model).weights, reference.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


def test_head_mode_backbone_batchnorm_stays_in_inference_mode(head_model, mnist_rgb32):
    """A training step on new data must not move the frozen backbone's BatchNorm statistics."""
    bns = _batchnorms(_backbone(head_model))
    before = [np.asarray(w).copy() for layer in bns for w in (layer.moving_mean, layer.moving_variance)]
    head_bn = head_model.get_layer("head_bn")
    head_before = np.asarray(head_bn.moving_mean).copy()
    head_model(mnist_rgb32[:16], training=True)
    after = [np.asarray(w) for layer in bns for w in (layer.moving_mean, layer.moving_variance)]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.asarray(head_bn.moving_mean), head_before), "the head BN should update"


def test_scratch_mode_lists_every_batchnorm(scratch_model):
    listed = trainable_batchnorms(scratch_model)
    every = _batchnorms(scratch_model)
    assert len(every) > 40
    assert set(map(id, listed)) == set(map(id, every))
    assert len(listed) == len(every)
    assert _backbone(scratch_model).trainable_weights


# --- BatchNorm momentum and recalibration ---


def test_momentum_for_is_bounded_and_monotone():
    values = [momentum_for(steps) for steps in range(0, 2001)]
    assert all(0.9 <= v <= 0.99 for v in values)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert momentum_for(0) == momentum_for(1) == momentum_for(5) == 0.9
    assert momentum_for(100) == pytest.approx(0.98)
    assert momentum_for(10_000) == 0.99


def _training_mode_output(model, batch):
    """Output with every BN on batch statistics, without letting the call move the moving statistics."""
    saved = [layer.get_weights() for layer in _batchnorms(model)]
    out = np.asarray(model(batch, training=True))
    for layer, weights in zip(_batchnorms(model), saved):
        layer.set_weights(weights)
    return out


def test_recalibrate_makes_inference_match_training_mode_on_real_images(mnist_rgb32):
    keras.utils.set_random_seed(3)
    model = build_classifier(ModelConfig(input_size=SIZE, weights="none", mode="scratch", dropout=0.0), 4)
    layers = trainable_batchnorms(model)
    # Distinct momenta per layer so restoring them is really checked.
    momenta = [0.5 + 0.4 * i / len(layers) for i in range(len(layers))]
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
        # The initial statistics (mean 0, variance 1): wrong for real images.
        np.testing.assert_array_equal(np.asarray(layer.moving_mean), 0.0)
        np.testing.assert_array_equal(np.asarray(layer.moving_variance), 1.0)

    batch = mnist_rgb32
    training = _training_mode_output(model, batch)
    before = np.max(np.abs(np.asarray(model(batch, training=False)) - training))
    assert before > 0.05, f"the stale statistics should visibly change the output, got {before}"

    used = recalibrate_batchnorm(model, batch, batch_size=len(batch))
    assert used == 1
    after = np.max(np.abs(np.asarray(model(batch, training=False)) - training))
    assert after < 1e-3, (before, after)
    assert after < before / 50
    assert [layer.momentum for layer in layers] == momenta


def test_recalibrate_is_a_plain_average_over_batches_and_drops_a_ragged_tail(scratch_model, mnist_rgb32):
    model = scratch_model  # its dropout sits after head_bn, so it cannot change the statistics
    head_bn = model.get_layer("head_bn")
    features = keras.Model(model.input, head_bn.input)
    batches = [mnist_rgb32[0:24], mnist_rgb32[24:48]]
    stats = []
    saved = [layer.get_weights() for layer in _batchnorms(model)]
    for b in batches:
        f = np.asarray(features(b, training=True), np.float64)
        stats.append((f.mean(axis=0), f.var(axis=0)))
    for layer, weights in zip(_batchnorms(model), saved):
        layer.set_weights(weights)

    # 56 images in batches of 24: two full batches, and the 8-image tail is left out.
    used = recalibrate_batchnorm(model, mnist_rgb32[:56], batch_size=24)
    assert used == 2
    expected_mean = (stats[0][0] + stats[1][0]) / 2
    expected_var = (stats[0][1] + stats[1][1]) / 2
    np.testing.assert_allclose(np.asarray(head_bn.moving_mean), expected_mean, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(head_bn.moving_variance), expected_var, rtol=1e-3, atol=1e-4)


def test_recalibrate_limits_and_empty_inputs(scratch_model, mnist_rgb32, head_model):
    model = scratch_model
    assert recalibrate_batchnorm(model, mnist_rgb32[:0]) == 0
    assert recalibrate_batchnorm(model, mnist_rgb32[:5], batch_size=64) == 1  # one (small) batch is still used
    assert recalibrate_batchnorm(model, mnist_rgb32[:32], batch_size=4, max_batches=3) == 3
    # Head mode: only the head BN is recalibrated; the frozen backbone's statistics stay.
    bns = _batchnorms(_backbone(head_model))
    before = [np.asarray(layer.moving_mean).copy() for layer in bns]
    assert recalibrate_batchnorm(head_model, mnist_rgb32[:16], batch_size=16) == 1
    for layer, b in zip(bns, before):
        np.testing.assert_array_equal(np.asarray(layer.moving_mean), b)
