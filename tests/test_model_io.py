"""The model interface's conversions: table lookups equal the arithmetic they replace, in every layout,
channel order, normalization and tensor type; logits become probabilities; what cannot be fed is refused."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgevision.runtime.engines import EngineError
from edgevision.runtime.model_io import InputCodec, ModelInterface, Normalization, OutputCodec

IMAGENET = Normalization((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


def _reference(batch, interface, dtype, scale, zero_point):
    """The conversion written as plain arithmetic, in float64."""
    x = batch[..., ::-1] if interface.channel_order == "BGR" else batch
    x = x.astype(np.float64)
    if interface.normalization is not None:
        x = (x - np.array(interface.normalization.mean)) / np.array(interface.normalization.std)
    if scale:
        info = np.iinfo(dtype)
        x = np.clip(np.rint(x / scale + zero_point), info.min, info.max)
    return x.transpose(0, 3, 1, 2) if interface.layout == "NCHW" else x


@pytest.mark.parametrize("layout, order, norm, tensor", list(itertools.product(
    ("NHWC", "NCHW"), ("RGB", "BGR"), (None, IMAGENET, Normalization(127.5, 127.5)),
    (("float32", None, None), ("float16", None, None), ("int8", 0.0078125, -1), ("uint8", 0.5, 3)))))
def test_conversions_equal_the_arithmetic(layout, order, norm, tensor):
    dtype, scale, zero_point = tensor
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    batch[0, 0, 0] = (0, 128, 255)  # the ends of the range
    interface = ModelInterface(layout, order, norm)
    codec = InputCodec(np.dtype(dtype), scale, zero_point, interface, "model")
    out = codec(batch)
    expected = _reference(batch, interface, np.dtype(dtype), scale, zero_point)
    assert out.dtype == np.dtype(dtype) and out.shape == expected.shape and out.flags["C_CONTIGUOUS"]
    tolerance = 2e-3 if dtype == "float16" else 1e-6
    np.testing.assert_allclose(out.astype(np.float64), expected, atol=tolerance, rtol=tolerance)


def test_in_graph_models_keep_the_fast_paths():
    batch = np.zeros((1, 4, 4, 3), np.uint8)
    assert InputCodec(np.float32, None, None, ModelInterface(), "m").mode == "cast"
    assert InputCodec(np.uint8, None, None, ModelInterface(), "m").mode == "raw"
    raw = InputCodec(np.uint8, 1.0, 0, ModelInterface(), "m")
    assert raw.mode == "raw" and raw(batch) is batch  # no copy at all
    # A quantized uint8 input whose float side is (pixel - 127.5) / 127.5 takes the pixels as they are.
    model_maker = InputCodec(np.uint8, 1 / 127.5, 127, ModelInterface(normalization=Normalization(127.0, 127.5)), "m")
    assert model_maker.mode == "raw"
    assert InputCodec(np.uint8, 0.5, 3, ModelInterface(), "m").mode == "quantize"


def test_what_cannot_be_fed_is_refused():
    with pytest.raises(EngineError, match="int8 without quantization parameters cannot take 0-255 pixels"):
        InputCodec(np.int8, None, None, ModelInterface(), "'m.tflite'")
    with pytest.raises(EngineError, match="cannot take normalized pixels"):
        InputCodec(np.uint8, None, None, ModelInterface(normalization=IMAGENET), "'m.tflite'")
    with pytest.raises(EngineError, match="no quantization parameters"):
        OutputCodec(np.int8, None, None, ModelInterface(), "'m.tflite'")


def test_logits_become_probabilities_and_quantized_outputs_are_dequantized():
    logits = np.array([[2.0, 1.0, -1.0], [1000.0, 0.0, 999.0]], np.float32)  # large values must not overflow
    probs = OutputCodec(np.float32, None, None, ModelInterface(output="logits"), "m")(logits)
    e = np.exp(logits[0] - logits[0].max())
    np.testing.assert_allclose(probs[0], e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(probs[1], [1 / (1 + np.exp(-1)), 0.0, 1 - 1 / (1 + np.exp(-1))], atol=1e-6)
    assert np.all(np.isfinite(probs))
    quantized = OutputCodec(np.uint8, 1 / 256, 0, ModelInterface(), "m")(np.array([[64, 192]], np.uint8))
    np.testing.assert_allclose(quantized, [[0.25, 0.75]])


def test_normalization_values_are_checked():
    assert Normalization(127.5, 127.5).mean == (127.5, 127.5, 127.5)
    assert Normalization.from_scale_offset(1 / 127.5, -1.0) == Normalization(127.5, 127.5)
    with pytest.raises(ValueError, match="std \\[1.0, 0.0, 1.0\\] is invalid"):
        Normalization(0, (1, 0, 1))
    with pytest.raises(ValueError, match="give 1 or 3 finite numbers"):
        Normalization((1, 2), 1)
    with pytest.raises(ValueError, match="give 1 or 3 finite numbers"):
        Normalization(float("nan"), 1)
    with pytest.raises(ValueError, match="layout 'CHW' is invalid; allowed: NHWC, NCHW"):
        ModelInterface(layout="CHW")
