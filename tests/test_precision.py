"""The int8 precision search: the fewest ops from the input kept in float to reach the agreement target,
found by doubling then bisecting, within a size cap; and the ops it keeps in float are float in the file."""

from __future__ import annotations

import numpy as np
import pytest

from edgevision.export.precision import PrecisionSearchError, search_float_ops, search_target

OPS = [f"op{i}" for i in range(20)]


def _model(agreement_by_k, bytes_per_float_op=10, base=1000):
    """A fake quantizer: the "file" records how many ops stayed float; its size grows with them."""
    calls = []

    def quantize(keep):
        calls.append(tuple(keep))
        assert tuple(keep) == tuple(OPS[: len(keep)]), "always a prefix of the ops, from the input"
        return bytes(base + bytes_per_float_op * len(keep))

    def agreement(content):
        return agreement_by_k((len(content) - base) // bytes_per_float_op)

    return quantize, agreement, calls


def test_the_aim_rises_as_the_search_images_get_fewer():
    assert search_target(0.98, 2000, 0.01) == pytest.approx(0.99)  # the minimum margin from 100 images up
    assert search_target(0.98, 100, 0.01) == pytest.approx(0.99)
    assert search_target(0.98, 25, 0.01) == pytest.approx(0.98 + 0.02)  # twice the margin at a quarter
    assert search_target(0.98, 50, 0.01) == pytest.approx(0.98 + 0.01 * 2 ** 0.5)
    assert search_target(0.98, 10, 0.01) == 1.0  # 3.2 points past the gate: capped
    assert search_target(0.98, 10, 0.0) == 0.98
    with pytest.raises(ValueError, match="at least one image"):
        search_target(0.98, 0, 0.01)


def test_full_int8_is_kept_when_it_agrees():
    quantize, agreement, calls = _model(lambda k: 0.99)
    result = search_float_ops(quantize, agreement, OPS, target=0.98, max_bytes=10_000)
    assert result.keep_float == () and calls == [()] and result.agreement == 0.99


def test_finds_the_fewest_float_ops_by_doubling_then_bisecting():
    quantize, agreement, calls = _model(lambda k: 0.95 + 0.01 * min(k, 11) / 3.5)  # 98% from k = 11
    result = search_float_ops(quantize, agreement, OPS, target=0.98, max_bytes=10_000)
    assert result.keep_float == tuple(OPS[:11]) and result.agreement >= 0.98
    tried = [t["float_ops"] for t in result.tried]
    assert tried == [0, 1, 2, 4, 8, 16, 12, 10, 11]
    assert result.tried[-1]["bytes"] == 1110
    # deterministic
    again = search_float_ops(*_model(lambda k: 0.95 + 0.01 * min(k, 11) / 3.5)[:2], OPS, target=0.98, max_bytes=10_000)
    assert again.keep_float == result.keep_float and again.tried == result.tried


def test_size_cap_and_unreachable_target_fail_with_what_was_tried():
    quantize, agreement, _ = _model(lambda k: 0.95 + 0.01 * min(k, 11) / 3.5)
    with pytest.raises(PrecisionSearchError, match=r"first 11 ops in float, 0.00 MB, over the 0.00 MB cap; tried 0 in float"):
        search_float_ops(quantize, agreement, OPS, target=0.98, max_bytes=1100)
    # a full int8 model over the cap (a small model) may still grow by 5% (1000 -> 1050 bytes)
    quantize, agreement, _ = _model(lambda k: 0.95 + 0.01 * min(k, 4))
    assert search_float_ops(quantize, agreement, OPS, target=0.98, max_bytes=500).keep_float == tuple(OPS[:3])
    quantize, agreement, _ = _model(lambda k: 0.95 + 0.01 * min(k, 6) / 2)  # 98% from k = 6: 1060 bytes
    with pytest.raises(PrecisionSearchError, match="over the 0.00 MB cap"):
        search_float_ops(quantize, agreement, OPS, target=0.98, max_bytes=500)
    quantize, agreement, _ = _model(lambda k: 0.9)
    with pytest.raises(PrecisionSearchError, match=r"no mix .* reached 98.0%.*20 in float: 90.00%.*best was 90.00%"):
        search_float_ops(quantize, agreement, OPS, target=0.98, max_bytes=10_000)
    with pytest.raises(ValueError, match="target 1.5 is invalid"):
        search_float_ops(quantize, agreement, OPS, target=1.5, max_bytes=10_000)


@pytest.mark.slow
def test_ops_kept_in_float_are_float_in_the_tflite_file_and_the_rest_int8(caplog):
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    from ai_edge_litert.interpreter import Interpreter

    from edgevision.export.tflite import Int8Quantizer

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="normalize")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="first")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="second")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probs")(x))
    images = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    import logging

    with caplog.at_level(logging.DEBUG):  # the converter's own records go to edgevision's debug log
        quantizer = Int8Quantizer(model, images)
    assert any(r.name == "edgevision.export" and "converter output" in r.getMessage() for r in caplog.records)
    ops = [name for name, kind in quantizer.ops() if kind not in ("QUANTIZE", "DEQUANTIZE", "SOFTMAX")]
    keep = ops[:1]  # the first convolution (the converter folded the normalization into it)
    assert "first" in keep[0] and "second" in ops[1]

    def types(content):
        interpreter = Interpreter(model_content=content)
        tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
        return {tensors[op["outputs"][0]]["name"]: (op["op_name"], tensors[op["outputs"][0]]["dtype"])
                for op in interpreter._get_ops_details()}

    full = types(quantizer.quantize(()))
    assert {dtype for name, (kind, dtype) in full.items() if kind == "CONV_2D"} == {np.int8}
    mixed = types(quantizer.quantize(keep))
    convolutions = {name: dtype for name, (kind, dtype) in mixed.items() if kind == "CONV_2D"}
    assert [dtype for name, dtype in convolutions.items() if "first" in name] == [np.float32]
    assert [dtype for name, dtype in convolutions.items() if "second" in name] == [np.int8]
    # the first op is float, so the model takes float pixels; the softmax runs in float either way
    interpreter = Interpreter(model_content=quantizer.quantize(keep))
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
