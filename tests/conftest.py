"""Shared pytest fixtures, one marked section per part of the package.

Heavy packages (TensorFlow, Keras) are imported inside the fixtures that need them, never at the top of
this file: tests that do not use those fixtures must not pay for them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

# --- runtime fixtures ---
# Owned by the runtime: a tiny but real exported bundle (Keras model -> TFLite fp32 / int8 and a
# hand-written ONNX graph of the same weights) and "real-ish" test pictures.

TINY_LABELS = ["a", "b", "c"]
TINY_SIZE = 32


@dataclass
class TinyBundle:
    folder: Path
    keras_model: object  # the Keras model every artifact was made from
    labels: list
    artifacts: dict  # artifact name -> file name, as in bundle.json

    def reference(self, batch: np.ndarray) -> np.ndarray:
        """The Keras model's probabilities for a prepared (N, 32, 32, 3) uint8 batch."""
        return np.asarray(self.keras_model(batch.astype(np.float32), training=False), dtype=np.float32)


def realish_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A BGR uint8 picture with structure (gradients, shapes, noise), not flat noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
        image[..., c] = 127 + 90 * np.sin(2 * np.pi * (fx * xx / width + fy * yy / height) + phase)
    for _ in range(4):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(2, max(3, min(height, width) // 3)))
        cv2.circle(image, center, radius, [float(v) for v in rng.integers(0, 256, 3)], -1)
    image += rng.normal(0, 8, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _build_tiny_keras_model():
    import keras

    keras.utils.set_random_seed(1234)
    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(TINY_LABELS), activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    rng = np.random.default_rng(1234)
    # Non-trivial BatchNorm statistics (so folding is really exercised) and a head confident enough
    # that the argmax is not decided by rounding.
    model.get_layer("bn").set_weights(
        [
            rng.uniform(0.5, 1.5, 8).astype(np.float32),  # gamma
            rng.normal(0, 0.3, 8).astype(np.float32),  # beta
            rng.normal(0, 0.2, 8).astype(np.float32),  # moving mean
            rng.uniform(0.2, 2.0, 8).astype(np.float32),  # moving variance
        ]
    )
    # Centre and scale the head on the pooled features of real-ish pictures, so that random weights still
    # spread the predictions over all classes instead of answering "a" for everything.
    pictures = np.stack([realish_image(rng, TINY_SIZE, TINY_SIZE) for _ in range(64)]).astype(np.float32)
    features = np.asarray(keras.Model(inputs, model.get_layer("head").input)(pictures))
    kernel, _ = model.get_layer("head").get_weights()
    mean = features.mean(0)
    kernel = kernel * (2.0 / ((features - mean) @ kernel).std())  # logits with a spread of about 2
    model.get_layer("head").set_weights([kernel.astype(np.float32), (-mean @ kernel).astype(np.float32)])
    return model


def write_tiny_onnx(model, path: Path) -> None:
    """The tiny Keras model as an ONNX graph (opset 13) taking NHWC float32 0-255 pixels, like the TFLite one."""
    from onnx import TensorProto, helper, numpy_helper

    rescale = model.layers[1]
    conv_kernel, conv_bias = model.get_layer("conv").get_weights()
    gamma, beta, mean, variance = model.get_layer("bn").get_weights()
    head_kernel, head_bias = model.get_layer("head").get_weights()
    weights = {
        "scale": np.array(rescale.scale, np.float32), "offset": np.array(rescale.offset, np.float32),
        "conv_w": conv_kernel.transpose(3, 2, 0, 1),  # (kh, kw, in, out) -> (out, in, kh, kw)
        "conv_b": conv_bias, "bn_gamma": gamma, "bn_beta": beta, "bn_mean": mean, "bn_var": variance,
        "head_w": head_kernel, "head_b": head_bias,
    }
    epsilon = float(model.get_layer("bn").epsilon)
    node = helper.make_node
    nodes = [
        node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        node("Mul", ["nchw", "scale"], ["scaled"]),
        node("Add", ["scaled", "offset"], ["normalized"]),
        node("Conv", ["normalized", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("BatchNormalization", ["conv", "bn_gamma", "bn_beta", "bn_mean", "bn_var"], ["bn"], epsilon=epsilon),
        node("Relu", ["bn"], ["relu"]),
        node("GlobalAveragePool", ["relu"], ["pooled"]),
        node("Flatten", ["pooled"], ["flat"]),
        node("Gemm", ["flat", "head_w", "head_b"], ["logits"]),
        node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", TINY_SIZE, TINY_SIZE, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(TINY_LABELS)])],
        [numpy_helper.from_array(np.ascontiguousarray(w, np.float32), name) for name, w in weights.items()],
    )
    proto = helper.make_model(graph, producer_name="edgevision-tests", opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    path.write_bytes(proto.SerializeToString())


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> TinyBundle:
    """A real bundle of a tiny Keras classifier: fp32 TFLite (default), full-int8 TFLite with uint8 I/O
    (scale 1 / zero-point 0 input) and with int8 I/O, and ONNX fp32. Built once per session (~10 s,
    most of it importing TensorFlow)."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from edgevision.runtime.bundle import Artifact, Bundle
    from edgevision.runtime.preprocess import PreprocessPolicy

    folder = tmp_path_factory.mktemp("tiny_bundle")
    model = _build_tiny_keras_model()
    calibration_rng = np.random.default_rng(99)

    def representative():
        for _ in range(32):
            yield [realish_image(calibration_rng, TINY_SIZE, TINY_SIZE)[None].astype(np.float32)]

    files: dict[str, tuple[str, str, str]] = {}  # kind name -> (file, format, precision)
    (folder / "model_fp32.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    files["tflite_fp32"] = ("model_fp32.tflite", "tflite", "fp32")
    int8_variants = (
        ("tflite_int8", "model_int8.tflite", tf.uint8),  # uint8 I/O: scale 1 / zero-point 0 input
        ("model_int8_signed.tflite", "model_int8_signed.tflite", tf.int8),  # int8 I/O: zero-point -128 input
    )
    for name, file, io_type in int8_variants:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
        with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": not for uint8 pixels
            warnings.simplefilter("ignore", UserWarning)
            (folder / file).write_bytes(converter.convert())
        files[name] = (file, "tflite", "int8")
    write_tiny_onnx(model, folder / "model.onnx")
    files["onnx_fp32"] = ("model.onnx", "onnx", "fp32")

    # Keyed by file name, as export keys them; commands also accept the kind names (tflite_int8, ...).
    artifacts = {file: Artifact.from_file(folder / file, fmt, precision) for file, fmt, precision in files.values()}
    Bundle(
        labels=list(TINY_LABELS),
        preprocess=PreprocessPolicy(TINY_SIZE, TINY_SIZE),
        artifacts=artifacts,
        default_artifact="model_fp32.tflite",
        provenance={"made_by": "tests/conftest.py tiny_bundle"},
    ).write(folder)
    return TinyBundle(
        folder=folder, keras_model=model, labels=list(TINY_LABELS), artifacts={n: f[0] for n, f in files.items()}
    )


def add_golden(folder: Path, count: int = 32, seed: int = 7) -> Path:
    """Give the bundle in `folder` a golden set computed here, as export does: `count` real-ish pictures
    prepared to model size and every artifact's answers on them. Returns the golden file."""
    from edgevision.runtime.bundle import Bundle
    from edgevision.runtime.classifier import Classifier
    from edgevision.runtime.golden import golden_entry, golden_probs, write_golden
    from edgevision.runtime.preprocess import prepare

    bundle = Bundle.load(folder)
    rng = np.random.default_rng(seed)
    images = np.stack([prepare(realish_image(rng, 48, 64), bundle.preprocess, "bgr") for _ in range(count)])
    labels = np.arange(count) % len(bundle.labels)
    probs = {name: golden_probs(Classifier(bundle, artifact=name, threads=1), images) for name in bundle.artifacts}
    path = write_golden(folder, images, labels, probs)
    bundle.golden = golden_entry(folder, list(probs), {"machine": "test"})
    bundle.write(folder)
    return path


@pytest.fixture(scope="session")
def golden_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle with a golden set (session-wide: copy it before changing it)."""
    import shutil

    folder = tmp_path_factory.mktemp("golden") / "bundle"
    shutil.copytree(tiny_bundle.folder, folder)
    add_golden(folder)
    return folder


@pytest.fixture
def realish_images():
    """Ten BGR pictures of assorted sizes and aspect ratios (fixed seed)."""
    rng = np.random.default_rng(2024)
    sizes = [(32, 32), (48, 64), (64, 48), (120, 160), (240, 320), (31, 45), (100, 100), (33, 200), (200, 33)]
    sizes.append((480, 640))
    return [realish_image(rng, h, w) for h, w in sizes]


# --- end runtime fixtures ---
