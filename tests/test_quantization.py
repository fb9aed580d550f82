"""What int8 quantization does to each layer: biases that fit on every backbone (BatchNorm folding leaves
near-dead channels whose weights round to a tiny per-channel scale), uniform weight zero points in the
ONNX int8 graph, and ONNX int8 running on onnxruntime's int8 kernels."""

from __future__ import annotations

import re

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from edgevision.export.fold import fold_batchnorm  # noqa: E402
from edgevision.train.backbones import BACKBONES  # noqa: E402
from edgevision.train.model import ModelConfig, build_classifier  # noqa: E402

SIZE = 32


def _photos(count: int, size: int) -> np.ndarray:
    from edgevision.train.sample_data import photo_crops

    return photo_crops(count, size)


def _folded(backbone: str):
    # EfficientNet-Lite0's ImageNet weights (installed offline) have the near-dead channels: BatchNorm
    # variances of ~1e-8 leave folded weights of 1e-9 next to biases of about -1.
    weights = "imagenet" if backbone == "efficientnet_lite0" else "none"
    model = build_classifier(ModelConfig(backbone=backbone, input_size=SIZE, weights=weights,
                                         mode="head" if weights == "imagenet" else "scratch"), 3)
    folded, _ = fold_batchnorm(model)
    return folded


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_int8_bias_holds_its_float_value_after_folding(backbone):
    """A saturated int32 bias would make its channel compute a wrong constant: every quantized bias of every
    convolution must come back (scale * q) within half a step of its op's int8 output."""
    from ai_edge_litert.interpreter import Interpreter

    from edgevision.export.tflite import Int8Quantizer

    folded = _folded(backbone)
    interpreter = Interpreter(model_content=Int8Quantizer(folded, _photos(16, SIZE)).quantize())
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    layers = {layer.name: layer for layer in folded.layers}
    checked = 0
    for op in interpreter._get_ops_details():
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D") or len(op["inputs"]) < 3 or op["inputs"][2] < 0:
            continue
        weight, bias = tensors[op["inputs"][1]], tensors[op["inputs"][2]]
        # The weight tensor is named after its Keras layer: ".../<layer>_1/..."
        name = next(part.rsplit("_", 1)[0] for part in weight["name"].split("/") if part.rsplit("_", 1)[0] in layers)
        expected = layers[name].get_weights()[1]
        scales = bias["quantization_parameters"]["scales"]
        quantized = interpreter.get_tensor(bias["index"]).astype(np.int64)
        assert np.abs(quantized).max() < 2**31 - 1, f"{name}: a bias saturated int32"
        # Where a bias would overflow, the quantizer widens that channel's scale and clamps the bias at 2^30:
        # what is left must stay below half a step of the op's int8 output, i.e. invisible in it.
        step = tensors[op["outputs"][0]]["quantization_parameters"]["scales"][0]
        difference = quantized * scales - expected
        # MobileNetV3's hard sigmoid, relu6(x + 3) / 6, has its + 3 fused into the squeeze-excite bias: a
        # shift shared by every channel, unlike a saturated channel.
        error = np.abs(difference - np.median(difference))
        assert error.max() <= step / 2, (name, float(error.max()), float(step))
        checked += 1
    convolutions = sum(isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) for layer in folded.layers)
    assert checked == convolutions > 10


@pytest.mark.slow
@pytest.mark.parametrize("types", ["u8s8", "u8u8"])
def test_onnx_int8_weights_share_one_zero_point_per_tensor_and_run_on_int8_kernels(tmp_path, types):
    """An all-zero weight channel (Lite0 has five after folding) got zero point 0 next to 128 from
    onnxruntime's quantizer, which sends the convolution to a slow generic kernel."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgevision.export.onnx import to_onnx_fp32, to_onnx_int8
    from edgevision.runtime.onnx_int8 import EXACT_INT8_OPTION

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu6")(x)
    depthwise = keras.layers.DepthwiseConv2D(3, activation="relu6")
    x = depthwise(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    kernel, bias = depthwise.get_weights()
    kernel[..., 2, 0] = 0.0  # a dead channel, as BatchNorm folding leaves them
    kernel[..., 5, 0], bias[5] = 1e-9, 3.0  # a near-dead one: its int32 bias would overflow and be clipped
    depthwise.set_weights([kernel, bias])

    import logging

    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    try:
        content = to_onnx_int8(to_onnx_fp32(model), _photos(16, SIZE), types)
    finally:
        logging.getLogger().removeHandler(handler)
    assert not [w for w in warnings if "exceeds the range of a int32" in w], warnings
    proto = onnx.load_from_string(content)
    initializers = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    per_channel = [initializers[node.input[2]] for node in proto.graph.node
                   if node.op_type == "DequantizeLinear" and len(node.input) == 3
                   and initializers.get(node.input[2]) is not None and initializers[node.input[2]].ndim == 1]
    assert per_channel and all(len(np.unique(points)) == 1 for points in per_channel)

    for exact in ("0", "1"):  # onnxruntime's fast kernels, and the exact ones CPUs without VNNI get
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"optimized{exact}.onnx")
        options.add_session_config_entry(EXACT_INT8_OPTION, exact)
        session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
        ran = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
        assert "Conv" not in ran and ran.count("QLinearConv") == 2, ran
    # and it still computes the model
    photos = _photos(8, SIZE)
    probs = session.run(None, {"image": photos.astype(np.float32)})[0]
    assert np.abs(probs - model.predict(photos.astype(np.float32), verbose=0)).max() < 0.05
    # the near-dead channel's bias came through whole (clipped, it would have been about 0)
    biases = [numpy_helper.to_array(i) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT32
              and numpy_helper.to_array(i).shape == (8,)]
    assert biases and all(np.abs(b).max() < 2**31 - 1 for b in biases)


@pytest.mark.slow
def test_tensorrt_form_is_signed_symmetric_qdq_on_every_weighted_op():
    """What TensorRT's explicit quantization needs: every Q/DQ int8 with zero point 0, the weights of each
    convolution and dense layer quantized per output channel, each of their inputs dequantized from int8,
    the residual Add's inputs too; and the model still computes the float one. Tensor names are short
    (the graph's input and output keep theirs)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgevision.export.onnx import INPUT_NAME, OUTPUT_NAME, to_onnx_fp32, to_onnx_int8

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu6", padding="same")(x)
    y = keras.layers.DepthwiseConv2D(3, activation="relu6", padding="same")(x)
    x = keras.layers.Add()([x, keras.layers.Conv2D(8, 1)(y)])  # a residual block
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))

    content = to_onnx_int8(to_onnx_fp32(model), _photos(16, SIZE), tensorrt=True)
    proto = onnx.load_from_string(content)
    graph = proto.graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    produced_by = {out: node for node in graph.node for out in node.output}
    qdq = [node for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(len(node.input) == 3 for node in qdq)
    for node in qdq:
        points = initializers[node.input[2]]
        assert points.dtype == np.int8 and not points.any(), (node.name, points)
    weighted = [node for node in graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    assert len(weighted) == 4
    for node in weighted:
        sources = [produced_by.get(name) for name in node.input[:2]]
        assert all(s is not None and s.op_type == "DequantizeLinear" for s in sources), node.name
        weight = sources[1]
        quantized, scales = initializers[weight.input[0]], initializers[weight.input[1]]
        channel_axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
        assert quantized.dtype == np.int8 and scales.shape == (quantized.shape[channel_axis],), node.name
    residual = [node for node in graph.node if node.op_type == "Add" and "rescaling" not in node.name]
    assert len(residual) == 1 and "add" in residual[0].name  # the Keras Add layer's
    assert all(produced_by[name].op_type == "DequantizeLinear" for name in residual[0].input)
    # biases stay float (TensorRT's parser takes no int32 DequantizeLinear); one Q/DQ pair per consumer
    dequantized = {node.input[0] for node in qdq if node.op_type == "DequantizeLinear"}
    assert not [name for name in dequantized if name in initializers and initializers[name].dtype == np.int32]
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    assert all(len(consumers[node.output[0]]) == 1 for node in qdq if node.op_type == "DequantizeLinear")
    # Outputs stay float: a quantized convolution output is the pre-activation, whose negative part a
    # symmetric scale must cover too; and the logits reach the softmax unquantized.
    quantized_inputs = {node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"}
    relus = [node for node in graph.node if node.op_type in ("Relu", "Clip")]
    assert relus and not any(produced_by[node.input[0]].op_type == "DequantizeLinear" for node in relus)
    softmax = next(node for node in graph.node if node.op_type == "Softmax")
    assert produced_by[softmax.input[0]].op_type in ("Gemm", "MatMul") and softmax.input[0] not in quantized_inputs
    assert graph.input[0].name == INPUT_NAME and graph.output[0].name == OUTPUT_NAME
    assert max(len(name) for node in graph.node for name in node.input) <= len(INPUT_NAME) + 1

    session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
    photos = _photos(16, SIZE)
    probs = session.run(None, {INPUT_NAME: photos.astype(np.float32)})[0]
    assert np.abs(probs - model.predict(photos.astype(np.float32), verbose=0)).max() < 0.05


def test_onnx_ops_kept_in_float_store_their_weights_as_float16():
    """The precision search's float ops cost 2 bytes a weight: float16 initializers cast to float32 in the
    graph, the rest still int8, and the model still computes the float one."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, numpy_helper

    from edgevision.export.onnx import OnnxInt8Quantizer, to_onnx_fp32

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu6", name="first")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu6", name="second")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    fp32 = to_onnx_fp32(model)
    with OnnxInt8Quantizer(fp32, _photos(16, SIZE)) as quantizer:
        first_conv = next(n for n in quantizer.nodes if "/first" in n and n.endswith("/convolution"))
        full, kept = quantizer.quantize(()), quantizer.quantize([first_conv])
    proto = onnx.load_from_string(kept)
    initializers = {i.name: i for i in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    float_conv = [c for c in convs if producers[c.input[1]].op_type == "Cast"]
    assert len(float_conv) == 1 and len(convs) == 2
    cast = producers[float_conv[0].input[1]]
    assert initializers[cast.input[0]].data_type == TensorProto.FLOAT16
    assert not [i for i in proto.graph.initializer if i.data_type == TensorProto.FLOAT and i.dims and
                numpy_helper.to_array(i).size >= 16 * 3 * 3 * 3]  # no float32 weights left
    assert len(kept) < len(full) + 16 * 3 * 3 * 3 * 2 + 500  # the float weights at 2 bytes each
    photos = _photos(8, SIZE)
    probs = ort.InferenceSession(kept, providers=["CPUExecutionProvider"]).run(None, {"image": photos.astype(np.float32)})[0]
    assert np.abs(probs - model.predict(photos.astype(np.float32), verbose=0)).max() < 0.05


def test_hard_swish_is_split_into_ops_that_xnnpack_runs_in_int8():
    """TFLite's HARD_SWISH runs in float only under XNNPACK: each one split an int8 MobileNetV3 into
    another delegate partition. Split, it is the same function and the whole int8 graph is one partition."""
    from ai_edge_litert.interpreter import Interpreter

    from edgevision.export.tflite import Int8Quantizer, split_hard_swish

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Activation("hard_swish")(keras.layers.Conv2D(8, 3)(x))
    x = keras.layers.Activation("hard_swish")(keras.layers.DepthwiseConv2D(3)(x))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    split = split_hard_swish(model)
    assert not [layer for layer in split.layers if isinstance(layer, keras.layers.Activation)]
    photos = _photos(8, SIZE).astype(np.float32)
    np.testing.assert_allclose(split.predict(photos, verbose=0), model.predict(photos, verbose=0), atol=1e-6)
    assert split_hard_swish(split) is split  # nothing left to split

    interpreter = Interpreter(model_content=Int8Quantizer(model, _photos(16, SIZE)).quantize(), num_threads=1)
    interpreter.allocate_tensors()
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert "HARD_SWISH" not in ops and ops.count("MUL") >= 4
    assert ops.count("DELEGATE") == 1, ops


@pytest.mark.slow
def test_int8_speed_benchmark_prints_every_format_of_a_backbone(capsys, monkeypatch):
    """benchmarks/int8_speed.py, at a tiny size: both engines' fp32 and int8 figures, their ratio, the
    target, and which CPU it ran on; a bad backbone is named."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "int8_speed.py"
    spec = importlib.util.spec_from_file_location("int8_speed", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    assert bench.main(["--backbones", "mobilenet_v3_small", "--size", "64", "--rounds", "1", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^cpu: .+, int8 dot products: (yes|no); batch 1, 2 threads, 64x64", out, re.M)
    rows = re.findall(r"^\| mobilenet_v3_small \| (LiteRT|onnxruntime) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (yes|NO) \|$",
                      out, re.M)
    assert [r[0] for r in rows] == ["LiteRT", "onnxruntime"]
    for _, fp32, int8, ratio, _ in rows:
        assert float(fp32) > 0 and float(int8) > 0 and abs(float(int8) / float(fp32) - float(ratio)) < 0.06
    with pytest.raises(SystemExit):
        bench.main(["--backbones", "mobilenet_v9"])
    assert "mobilenet_v9" in capsys.readouterr().err


@pytest.mark.slow
def test_onnx_calibration_methods_set_other_ranges_and_each_still_computes_the_model():
    """Percentile calibration clips ranges that min-max keeps whole, and every method's int8 model stays
    close to the float one."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgevision.export.onnx import ONNX_CALIBRATION_METHODS, to_onnx_fp32, to_onnx_int8

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    fp32, photos = to_onnx_fp32(model), _photos(32, SIZE)
    reference = model.predict(photos.astype(np.float32), verbose=0)
    scales = {}
    for method in ONNX_CALIBRATION_METHODS:
        content = to_onnx_int8(fp32, photos, calibration=method)
        graph = onnx.load_from_string(content).graph
        initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        scales[method] = sorted(float(initializers[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear")
        probs = ort.InferenceSession(content, providers=["CPUExecutionProvider"]).run(
            None, {"image": photos.astype(np.float32)})[0]
        assert np.abs(probs - reference).max() < 0.1, method
    assert len(scales["percentile"]) == len(scales["minmax"])
    assert min(np.subtract(scales["percentile"], scales["minmax"])) < -1e-5  # some range clipped
