"""train/backbones.py and the backbone side of train/model.py: the closed registry, each backbone's
graph (normalization exactly once), the ImageNet code paths, and `unfreeze` for fine-tuning.

Small inputs (32-64 px) and random or saved weights keep it fast; nothing is downloaded (Keras'
ImageNet path is checked for what it asks Keras, with the download replaced).
"""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest

from edgevision.train.backbones import BACKBONES, WeightsDownloadError, get_backbone
from edgevision.train.model import (
    TRANSFER_MODES,
    ModelConfig,
    backbone_of,
    build_classifier,
    trainable_batchnorms,
    unfreeze,
)

keras = pytest.importorskip("keras")

NAMES = [
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_small_minimalistic", "mobilenet_v3_large",
    "mobilenet_v3_large_minimalistic", "efficientnet_lite0",
]


def _photo_batch(size: int) -> np.ndarray:
    """Real photos (scikit-image) through the runtime's one preprocessing function, raw 0-255."""
    import skimage.data

    from edgevision.runtime.preprocess import PreprocessPolicy, prepare

    policy = PreprocessPolicy(size, size)
    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut(), skimage.data.rocket()]
    return np.stack([prepare(p, policy) for p in photos]).astype(np.float32)


# --- the registry and its errors ---


def test_registry_is_closed_and_cli_choices_come_from_it():
    from edgevision.cli import build_parser

    assert list(BACKBONES) == NAMES
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    backbone = next(a for a in train._actions if "--backbone" in a.option_strings)
    mode = next(a for a in train._actions if "--mode" in a.option_strings)
    assert list(backbone.choices) == sorted(BACKBONES)
    assert tuple(mode.choices) == TRANSFER_MODES == ("head", "finetune", "scratch")


@pytest.mark.parametrize(
    "bad, closest",
    [("efficientnet_lite", "efficientnet_lite0"), ("mobilenet_v3_smal", "mobilenet_v3_small"),
     ("mobilenetv3_large_minimal", "mobilenet_v3_large_minimalistic")],
)
def test_unknown_backbone_names_it_lists_all_and_suggests_the_closest(bad, closest):
    for make in (lambda: get_backbone(bad), lambda: ModelConfig(backbone=bad)):
        with pytest.raises(ValueError) as info:
            make()
        message = str(info.value)
        assert f"Unknown backbone {bad!r}" in message
        assert all(name in message for name in NAMES)
        assert f"did you mean {closest!r}" in message


def test_alpha_defaults_per_backbone_and_bad_alphas_name_the_choices():
    assert ModelConfig().alpha == 0.35
    assert ModelConfig(backbone="mobilenet_v3_small").alpha == 1.0
    assert ModelConfig(backbone="efficientnet_lite0").alpha == 1.0
    assert ModelConfig(backbone="mobilenet_v3_large", alpha=0.75).alpha == 0.75
    with pytest.raises(ValueError) as info:
        ModelConfig(backbone="mobilenet_v3_small", alpha=0.35)
    assert "alpha 0.35 is not available for mobilenet_v3_small; choose one of 0.75, 1.0 (did you mean 0.75?)" in str(info.value)
    with pytest.raises(ValueError, match="choose one of 1.0"):
        ModelConfig(backbone="mobilenet_v3_small_minimalistic", alpha=0.75)
    with pytest.raises(ValueError, match="choose one of 1.0"):
        ModelConfig(backbone="efficientnet_lite0", alpha=0.5)


def test_input_size_error_names_the_range_and_the_pretrained_sizes():
    with pytest.raises(ValueError) as info:
        ModelConfig(backbone="efficientnet_lite0", input_size=256)
    message = str(info.value)
    assert "Input size 256 is outside 32-224 for efficientnet_lite0" in message and "trained at 224" in message
    with pytest.raises(ValueError, match="trained at 96, 128, 160, 192, 224"):
        ModelConfig(input_size=16)


def test_finetune_mode_and_its_block_count():
    config = ModelConfig(backbone="efficientnet_lite0", mode="finetune", fine_tune_blocks=3)
    assert config.to_dict()["fine_tune_blocks"] == 3 and config.mode == "finetune"
    assert ModelConfig(mode="finetune").fine_tune_blocks is None  # None: every block
    with pytest.raises(ValueError, match="Mode 'finetune' starts from a frozen backbone.*--mode scratch"):
        ModelConfig(mode="finetune", weights="none")
    for bad in (0, 18, True, 2.5):
        with pytest.raises(ValueError, match=f"fine_tune_blocks {bad!r} is outside 1-17 for mobilenet_v2"):
            ModelConfig(mode="finetune", fine_tune_blocks=bad)
    with pytest.raises(ValueError, match="applies only to mode 'finetune', not 'head'"):
        ModelConfig(fine_tune_blocks=2)
    with pytest.raises(ValueError) as info:
        ModelConfig(mode="fine-tune")
    assert "did you mean 'finetune'" in str(info.value)


def test_pytorch_weights_only_for_efficientnet_lite0(tmp_path):
    path = tmp_path / "mine.pth"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="only efficientnet_lite0 reads; mobilenet_v2 takes a Keras weights file"):
        ModelConfig(weights=str(path))
    assert ModelConfig(backbone="efficientnet_lite0", weights=str(path)).weights == str(path)


# --- graphs ---


@pytest.mark.parametrize("name", NAMES)
def test_every_backbone_builds_a_classifier_with_one_normalization(name):
    spec = BACKBONES[name]
    keras.utils.set_random_seed(0)
    model = build_classifier(ModelConfig(backbone=name, input_size=32, weights="none", mode="scratch"), 3)
    assert tuple(model.input_shape) == (None, 32, 32, 3) and tuple(model.output_shape) == (None, 3)
    rescalings = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.Rescaling)]
    assert [layer.name for layer in rescalings] == ["normalize"]
    np.testing.assert_allclose(
        np.asarray(rescalings[0](np.array([[0.0, 127.0, 255.0]], np.float32))),
        [[spec.offset, 127 * spec.scale + spec.offset, 255 * spec.scale + spec.offset]], atol=1e-6,
    )
    # Every weighted layer of the backbone is the stem, a numbered block, or after the last block.
    backbone = backbone_of(model)
    blocks = sorted({spec.block_of(layer.name) for layer in backbone.layers if layer.weights} - {None})
    assert blocks == list(range(spec.num_blocks))


def _all_layers(layer):
    yield layer
    for child in getattr(layer, "layers", []):
        yield from _all_layers(child)


def test_efficientnet_lite0_scaling_is_x_minus_127_over_128():
    spec = BACKBONES["efficientnet_lite0"]
    x = np.array([0.0, 127.0, 255.0])
    np.testing.assert_allclose(x * spec.scale + spec.offset, (x - 127) / 128)


def test_mobilenet_v3_features_equal_keras_own_preprocessing_model(tmp_path):
    """Our normalize layer + V3 without preprocessing == Keras' V3 with its built-in Rescaling, on raw
    pixels: the [-1, 1] scaling happens exactly once."""
    keras.utils.set_random_seed(3)
    reference = keras.applications.MobileNetV3Small(
        input_shape=(64, 64, 3), include_top=False, weights=None, pooling="avg", include_preprocessing=True
    )
    assert any(isinstance(layer, keras.layers.Rescaling) for layer in reference.layers)
    path = tmp_path / "v3small.weights.h5"
    reference.save_weights(path)
    model = build_classifier(ModelConfig(backbone="mobilenet_v3_small", input_size=64, weights=str(path)), 2)
    features = keras.Model(model.input, model.get_layer("head_dense").input)
    batch = _photo_batch(64)
    np.testing.assert_allclose(np.asarray(features(batch)), np.asarray(reference(batch)), atol=1e-4)


@pytest.fixture(scope="module")
def lite0_path_or_skip() -> str:
    from edgevision.train.weights import WeightsFileError, lite0_imagenet_path

    try:
        return lite0_imagenet_path()
    except WeightsFileError as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def lite0_head_model(lite0_path_or_skip):
    keras.utils.set_random_seed(4)
    return build_classifier(ModelConfig(backbone="efficientnet_lite0", input_size=96, mode="finetune"), 5)


def test_efficientnet_lite0_imagenet_classifier_uses_the_wheel_weights_and_one_normalization(lite0_head_model):
    from edgevision.train.efficientnet_lite0 import build_efficientnet_lite0

    reference = build_efficientnet_lite0(96, weights="imagenet", include_preprocessing=True)
    features = keras.Model(lite0_head_model.input, lite0_head_model.get_layer("head_dense").input)
    batch = _photo_batch(96)
    mine = np.asarray(features(batch))
    np.testing.assert_allclose(mine, np.asarray(reference(batch)), atol=1e-4)
    assert mine.std() > 0.1  # real features, not a dead network
    backbone = backbone_of(lite0_head_model)
    assert backbone.trainable is False and trainable_batchnorms(lite0_head_model) == [lite0_head_model.get_layer("head_bn")]


@pytest.mark.parametrize(
    "name, factory, expected",
    [
        ("mobilenet_v2", "MobileNetV2", {"alpha": 0.5}),
        ("mobilenet_v3_small", "MobileNetV3Small", {"alpha": 0.75, "minimalistic": False, "include_preprocessing": False}),
        ("mobilenet_v3_large_minimalistic", "MobileNetV3Large", {"alpha": 1.0, "minimalistic": True, "include_preprocessing": False}),
    ],
)
def test_imagenet_weights_ask_keras_for_its_own_download(monkeypatch, name, factory, expected):
    """The path online users take: weights="imagenet" goes to keras.applications unchanged (the
    download itself cannot run here, so the factory is wrapped and called with weights=None)."""
    real = getattr(keras.applications, factory)
    calls = []

    def recording(**kwargs):
        calls.append(dict(kwargs))
        return real(**dict(kwargs, weights=None))

    monkeypatch.setattr(keras.applications, factory, recording)
    alpha = expected["alpha"]
    build_classifier(ModelConfig(backbone=name, alpha=alpha, input_size=96, weights="imagenet"), 2)
    assert len(calls) == 1
    call = calls[0]
    assert call["weights"] == "imagenet" and call["include_top"] is False and call["pooling"] == "avg"
    assert call["input_shape"] == (96, 96, 3)
    assert {k: call[k] for k in expected} == expected


@pytest.mark.parametrize(
    "failure, shown",
    [
        (urllib.error.URLError(OSError(-2, "Name or service not known")), r"\[Errno -2\] Name or service not known"),
        (urllib.error.HTTPError("https://x", 403, "Forbidden", {}, None), "HTTP 403 Forbidden"),
        (TimeoutError("The read operation timed out"), "The read operation timed out"),
    ],
)
def test_a_failed_imagenet_download_says_what_works_offline(monkeypatch, failure, shown):
    def offline(**kwargs):
        try:
            raise failure
        except urllib.error.URLError as error:  # what keras.utils.get_file does with it
            raise Exception(f"URL fetch failure on https://x: None -- {error.reason}")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    with pytest.raises(WeightsDownloadError, match=rf"ImageNet weights of mobilenet_v2 \({shown}\); use --backbone "
                                                   r"efficientnet_lite0 .*--weights FILE .*--mode scratch --weights none"):
        build_classifier(ModelConfig(input_size=32, weights="imagenet"), 2)


def test_other_backbone_errors_are_not_called_download_failures(monkeypatch):
    def unwritable(**kwargs):
        raise PermissionError(13, "Permission denied", "/home/u/.keras/models")

    monkeypatch.setattr(keras.applications, "MobileNetV2", unwritable)
    with pytest.raises(PermissionError):
        build_classifier(ModelConfig(input_size=32, weights="imagenet"), 2)


# --- unfreeze: phase two of mode "finetune" ---


@pytest.fixture(scope="module")
def v2_weights(tmp_path_factory) -> str:
    keras.utils.set_random_seed(5)
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None, pooling="avg")
    path = tmp_path_factory.mktemp("v2") / "backbone.weights.h5"
    backbone.save_weights(path)
    return str(path)


def _bn_stats(layers) -> list[np.ndarray]:
    return [np.asarray(w).copy() for layer in layers for w in layer.weights]


@pytest.fixture(scope="module")
def v2_finetune(v2_weights):
    keras.utils.set_random_seed(6)
    config = ModelConfig(input_size=32, weights=v2_weights, mode="finetune", fine_tune_blocks=2)
    return config, build_classifier(config, 3)


def test_unfreeze_top_blocks_then_all_keeps_every_backbone_batchnorm_frozen(v2_finetune):
    config, model = v2_finetune
    backbone = backbone_of(model)
    assert backbone.trainable_weights == []  # phase one: like mode "head"
    backbone_bns = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(backbone_bns) == 52

    opened = unfreeze(model, config)
    assert opened == [
        "block_15_expand", "block_15_depthwise", "block_15_project",
        "block_16_expand", "block_16_depthwise", "block_16_project", "Conv_1",
    ]
    assert {w.path.split("/")[0] for w in backbone.trainable_weights} == set(opened)
    assert not any(l.trainable for l in backbone_bns)
    assert trainable_batchnorms(model) == [model.get_layer("head_bn")]

    # None: every block, the stem included; BatchNorm still frozen.
    opened = unfreeze(model, None)
    convs = [l.name for l in backbone.layers if l.weights and not isinstance(l, keras.layers.BatchNormalization)]
    assert opened == convs and opened[0] == "Conv1" and opened[-1] == "Conv_1" and len(opened) == 52
    assert not any(l.trainable for l in backbone_bns)
    assert trainable_batchnorms(model) == [model.get_layer("head_bn")]


@pytest.mark.slow
def test_a_finetune_step_moves_only_the_opened_blocks_and_no_batchnorm_statistic(lite0_path_or_skip):
    """Real ImageNet weights (EfficientNet-Lite0) and real photos: after unfreeze(top 2 blocks) one
    training step changes blocks 14-15 and the top conv, and nothing below them, and no backbone
    BatchNorm statistic or scale (they stay in inference mode)."""
    keras.utils.set_random_seed(7)
    config = ModelConfig(backbone="efficientnet_lite0", input_size=64, mode="finetune", fine_tune_blocks=2)
    model = build_classifier(config, 3)
    unfreeze(model, config)
    backbone = backbone_of(model)
    backbone_bns = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    watched = {name: np.asarray(backbone.get_layer(name).kernel).copy()
               for name in ("block13_project_conv", "block14_expand_conv", "block15_dwconv", "top_conv")}
    bn_before = _bn_stats(backbone_bns)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    model.train_on_batch(_photo_batch(64), np.array([0, 1, 2, 0]))
    moved = {name: float(np.abs(np.asarray(backbone.get_layer(name).kernel) - before).max())
             for name, before in watched.items()}
    assert moved["block13_project_conv"] == 0.0, moved
    assert all(moved[name] > 1e-6 for name in ("block14_expand_conv", "block15_dwconv", "top_conv")), moved
    for after, before in zip(_bn_stats(backbone_bns), bn_before):
        np.testing.assert_array_equal(after, before)


def test_unfreeze_by_block_count_on_efficientnet_lite0(lite0_head_model):
    opened = unfreeze(lite0_head_model, 1)
    assert opened == ["block15_expand_conv", "block15_dwconv", "block15_project_conv", "top_conv"]
    assert trainable_batchnorms(lite0_head_model) == [lite0_head_model.get_layer("head_bn")]


def test_unfreeze_refuses_other_modes_and_bad_counts(v2_finetune, v2_weights):
    _config, model = v2_finetune
    with pytest.raises(ValueError, match="phase two of mode 'finetune'; this run's mode is 'head'"):
        unfreeze(model, ModelConfig(input_size=32, weights=v2_weights, mode="head"))
    for bad in (0, 18):
        with pytest.raises(ValueError, match=f"fine_tune_blocks {bad} is outside 1-17 for mobilenet_v2"):
            unfreeze(model, bad)
    with pytest.raises(ValueError, match="not built for backbone 'efficientnet_lite0'"):
        unfreeze(model, ModelConfig(backbone="efficientnet_lite0", mode="finetune"))
