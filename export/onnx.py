"""Keras model -> ONNX bytes: fp32 with tf2onnx, static int8 (QDQ, per-channel) with onnxruntime's
quantization tools.

The graph keeps the Keras layout: input `image`, float32 (N, H, W, 3) NHWC raw 0-255 RGB pixels
(normalization is inside the graph); output `probs`, float32 (N, classes). Opset 17 (onnxruntime >= 1.14
runs it; TensorRT 8.6 on a Jetson too). The names are fixed here, whatever the converter called them,
so a device can rely on them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile

import numpy as np

log = logging.getLogger("edgevision.export")

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probs"
# Activation x weight types for static int8. U8S8 (onnxruntime's own default) runs on its fastest kernels
# where the CPU has int8 dot products: 0.50-0.99x fp32's time on every registry backbone at 224 px (AVX-512
# VNNI), where U8U8 took 0.93-1.46x (docs/measured.md). On x86 CPUs without them U8S8 saturates; the
# runtime then runs it on onnxruntime's exact u8u8 kernels (runtime/onnx_int8.py), with the same answers
# bit for bit: the default.
# U8U8 is exact on every CPU as written, and slower. S8S8 is turned into U8S8 by onnxruntime's x86 loader,
# which misses the pairs around residual Adds: 14 convolutions and every Add of Lite0 then ran in float.
ONNX_INT8_TYPES = {"s8s8": ("QInt8", "QInt8"), "u8u8": ("QUInt8", "QUInt8"), "u8s8": ("QUInt8", "QInt8")}
# The form TensorRT's explicit quantization takes (Jetson): signed int8 activations and weights, both
# symmetric (zero point 0), per-channel weights, Q/DQ pairs on the inputs of the weighted ops and of the
# residual Adds (so TensorRT fuses each Add into the convolution before it), everything else float.
TENSORRT_OP_TYPES = ("Conv", "Gemm", "MatMul", "Add")
# How onnxruntime's quantizer sets each activation's range from the calibration images: its MinMax or its
# Percentile (the 99.999th, clipping rare outliers). Measured on three models (docs/measured.md), minmax
# agreed as well or better: the default. Its Entropy is not offered: quantize_static (onnxruntime 1.32)
# builds 128-bin histograms for 128 quantized levels, which leaves the KL search one candidate, the
# whole range, so it gave exactly min-max's ranges on every model measured.
ONNX_CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile"}


def _rename(model, old: str, new: str) -> None:
    """Rename a graph input/output and every reference to it."""
    if old == new:
        return
    graph = model.graph
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def compact_tensor_names(proto) -> None:
    """Give every inner tensor a short name ("t1a"); the graph's input and output keep theirs, and nodes
    keep theirs (they name the Keras layers a node came from). tf2onnx's names (".../block_3_expand_1/
    convolution/ReadVariableOp:0") and the quantizer's suffixes on them were 13% of an int8 model's file
    on the demo's MobileNetV2 0.35."""
    graph = proto.graph
    if any(attr.type in (attr.GRAPH, attr.GRAPHS) for node in graph.node for attr in node.attribute):
        return  # a control-flow subgraph may refer to outer names; classifiers here have none
    keep = {v.name for v in list(graph.input) + list(graph.output)} | {""}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if name in keep:
            return name
        if name not in names:
            names[name] = f"t{np.base_repr(len(names), 36).lower()}"
        return names[name]

    for node in graph.node:
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for value in graph.value_info:
        value.name = short(value.name)


def to_onnx_fp32(model) -> bytes:
    """A float32 ONNX model (opset OPSET) with input INPUT_NAME and output OUTPUT_NAME."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    height, width, channels = model.input_shape[1:]
    signature = [tf.TensorSpec((None, height, width, channels), tf.float32, name=INPUT_NAME)]

    @tf.function(input_signature=signature)
    def forward(image):
        return model(image, training=False)

    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        proto, _ = tf2onnx.convert.from_function(forward, input_signature=signature, opset=OPSET)
    log.debug("tf2onnx output:\n%s", chatter.getvalue())
    if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
        raise ValueError(f"tf2onnx produced {len(proto.graph.input)} inputs / {len(proto.graph.output)} outputs; "
                         "a classifier has one of each")
    _rename(proto, proto.graph.input[0].name, INPUT_NAME)
    _rename(proto, proto.graph.output[0].name, OUTPUT_NAME)
    compact_tensor_names(proto)
    proto.producer_name = "edgevision"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def set_metadata(proto, metadata: dict[str, str]) -> None:
    """Replace `metadata_props` entries with these keys (ONNX's place for producer key/value strings)."""
    keep = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def node_types(content: bytes) -> list[str]:
    import onnx

    return [node.op_type for node in onnx.load_from_string(content).graph.node]


class _Reader:
    """onnxruntime's CalibrationDataReader over prepared uint8 images, one image per batch."""

    def __init__(self, images: np.ndarray):
        self._images = iter(images)

    def get_next(self):
        image = next(self._images, None)
        return None if image is None else {INPUT_NAME: image[None].astype(np.float32)}


def to_onnx_int8(fp32: bytes, images: np.ndarray, types: str = "u8s8", tensorrt: bool = False,
                 calibration: str = "minmax") -> bytes:
    """Static int8 in QDQ form, every node quantized (see OnnxInt8Quantizer)."""
    with OnnxInt8Quantizer(fp32, images, types, tensorrt=tensorrt, calibration=calibration) as quantizer:
        return quantizer.quantize(())


class OnnxInt8Quantizer:
    """Prepare an fp32 ONNX model once, then write int8 versions of it, optionally with chosen nodes kept
    in float (`nodes`: every node name of the prepared graph, in graph order).

    Static int8 in QDQ form: per-channel weights of `types` (ONNX_INT8_TYPES), activations calibrated
    (`calibration`, ONNX_CALIBRATION_METHODS) on `images` ((N, H, W, 3) uint8 through the runtime's
    preprocessing); input and output stay
    float32. Dead channels are zeroed first and weight zero points made uniform after (see below).
    `tensorrt`: the form TensorRT takes instead (TENSORRT_OP_TYPES; `types` is then s8s8, symmetric).
    Use as a context manager (it holds a temporary folder)."""

    def __init__(self, fp32: bytes, images: np.ndarray, types: str = "u8s8", tensorrt: bool = False,
                 calibration: str = "minmax"):
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        if types not in ONNX_INT8_TYPES:
            raise ValueError(f"Unknown ONNX int8 types {types!r}; choose one of {', '.join(ONNX_INT8_TYPES)}")
        if calibration not in ONNX_CALIBRATION_METHODS:
            raise ValueError(f"Unknown ONNX calibration {calibration!r}; choose one of "
                             f"{', '.join(ONNX_CALIBRATION_METHODS)}")
        self.calibration = calibration
        self.images, self.types, self.tensorrt = images, "s8s8" if tensorrt else types, tensorrt
        self._work = tempfile.TemporaryDirectory(prefix="edgevision-onnx-")
        source, self._prepared = (os.path.join(self._work.name, n) for n in ("fp32.onnx", "pre.onnx"))
        try:
            proto = onnx.load_from_string(fp32)
            zero_dead_channels(proto)
            onnx.save(proto, source)
            # Shape inference + graph optimization before quantizing (symbolic shapes would need sympy).
            quant_pre_process(source, self._prepared, skip_symbolic_shape=True)
            self.nodes = [node.name for node in onnx.load(self._prepared).graph.node]
        except BaseException:
            self.close()
            raise

    def quantize(self, keep_float=()) -> bytes:
        import onnx
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)

        class Reader(_Reader, CalibrationDataReader):
            pass

        activation, weight = ONNX_INT8_TYPES[self.types]
        target = os.path.join(self._work.name, "int8.onnx")
        form, extra = {}, {}
        if self.tensorrt:
            form = dict(op_types_to_quantize=list(TENSORRT_OP_TYPES))
            # Q/DQ on the inputs only: a quantized convolution output would be the pre-activation, whose
            # large negative values a symmetric scale must cover (the positive part then got 3 bits on
            # EfficientNet-Lite0: 86% agreement, against 96.6% for u8u8).
            # Biases stay float (TensorRT's parser takes no int32 DequantizeLinear), and every consumer gets a
            # Q/DQ pair of its own, as TensorRT's fusions expect.
            extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                     "DedicatedQDQPair": True, "OpTypesToExcludeOutputQuantization": list(TENSORRT_OP_TYPES)}
        quantize_static(
            self._prepared, target, Reader(self.images), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=getattr(QuantType, activation), weight_type=getattr(QuantType, weight),
            nodes_to_exclude=list(keep_float), extra_options=extra,
            calibrate_method=getattr(CalibrationMethod, ONNX_CALIBRATION_METHODS[self.calibration]), **form,
        )
        proto = onnx.load(target)
        uniform_weight_zero_points(proto)
        half_float_weights(proto, set(keep_float))
        compact_tensor_names(proto)
        proto.producer_name = "edgevision"
        return proto.SerializeToString()

    def close(self) -> None:
        self._work.cleanup()

    def __enter__(self) -> "OnnxInt8Quantizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _constant_inputs(proto, op_type: str, *positions: int):
    """(node, initializer, ...) for every `op_type` node whose inputs at `positions` are all initializers
    (constants stored in the graph), for rewriting them in place."""
    initializers = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != op_type or len(node.input) <= max(positions):
            continue
        found = [initializers.get(node.input[i]) for i in positions]
        if all(f is not None for f in found):
            yield (node, *found)


# A convolution channel whose weights are this small next to its bias computes a constant (bias): see
# zero_dead_channels.
DEAD_CHANNEL_RATIO = 1e-5


def zero_dead_channels(proto) -> int:
    """Make exactly zero the weights of convolution channels that are dead next to their bias; returns how
    many channels changed.

    BatchNorm folding leaves channels with weights of 1e-9 and a bias near 1 (variances of ~1e-8 in
    EfficientNet-Lite0's ImageNet weights). onnxruntime's quantizer scales a channel's int32 bias by its
    weight scale, so such a bias overflows and is clipped ("Quantized bias ... exceeds the range of a
    int32"), and the channel computes a wrong constant. A channel of zeros gets a sane scale, and its bias
    is then exact. The weights removed contribute at most DEAD_CHANNEL_RATIO * |bias| per input, far below
    one int8 step of the output."""
    from onnx import numpy_helper

    changed = 0
    for node, weight, bias in _constant_inputs(proto, "Conv", 1, 2):
        kernel, offsets = numpy_helper.to_array(weight).copy(), numpy_helper.to_array(bias)
        largest = np.abs(kernel.reshape(kernel.shape[0], -1)).max(axis=1)
        dead = (largest > 0) & (largest <= DEAD_CHANNEL_RATIO * np.abs(offsets))
        if dead.any():
            kernel[dead] = 0
            weight.CopyFrom(numpy_helper.from_array(kernel, weight.name))
            changed += int(dead.sum())
    return changed


def half_float_weights(proto, nodes: set[str]) -> int:
    """Store the weights of the float ops among `nodes` (Conv, Gemm, MatMul) as float16, cast back to float32
    in the graph (onnxruntime folds the cast when it loads the model, so they compute in float32); returns
    how many changed. Ops the precision search keeps in float then cost 2 bytes a weight instead of 4, so
    more of them fit under the size cap (EfficientNet-Lite0 at 96 px needed its first 50 ops in float:
    4.87 MB against a 4.86 MB cap). float16 keeps 11 significant bits, where int8 keeps 8: the search
    measures the candidate with them."""
    from onnx import TensorProto, helper, numpy_helper

    initializers = {i.name: i for i in proto.graph.initializer}
    uses: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    changed = 0
    for node in list(proto.graph.node):
        if node.name not in nodes or node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or weight.data_type != TensorProto.FLOAT or uses[weight.name] != 1:
            continue
        values = numpy_helper.to_array(weight).astype(np.float16)
        if not np.isfinite(values).all():
            continue  # past float16's range (65504): stays float32
        half = numpy_helper.from_array(values, f"{weight.name}_fp16")
        proto.graph.initializer.remove(weight)
        proto.graph.initializer.append(half)
        cast = helper.make_node("Cast", [half.name], [weight.name], to=TensorProto.FLOAT, name=f"{node.name}_weights")
        proto.graph.node.insert(list(proto.graph.node).index(node), cast)
        changed += 1
    return changed


def uniform_weight_zero_points(proto) -> int:
    """Give every channel of a per-channel uint8 weight the same zero point; returns how many changed.

    onnxruntime's quantizer gives an all-zero weight channel (BatchNorm folding leaves a few in
    EfficientNet-Lite0's depthwise convolutions) scale 1 and zero point 0, where every other channel of a
    symmetric uint8 weight has 128; a convolution with mixed zero points runs on onnxruntime's slow
    generic kernel (5 such convolutions took 74% of Lite0's int8 run time, 4x slower than fp32). An
    all-zero channel is exact with any zero point, so it takes the common one."""
    from onnx import numpy_helper

    changed = 0
    for node, weight, zero_point in _constant_inputs(proto, "DequantizeLinear", 0, 2):
        points = numpy_helper.to_array(zero_point).copy()
        if points.ndim != 1 or len(np.unique(points)) < 2:
            continue
        values, counts = np.unique(points, return_counts=True)
        common = values[counts.argmax()]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        quantized = np.moveaxis(numpy_helper.to_array(weight).copy(), axis, 0)
        for channel in np.nonzero(points != common)[0]:
            if np.all(quantized[channel] == points[channel]):  # every weight is zero
                quantized[channel], points[channel] = common, common
                changed += 1
        weight.CopyFrom(numpy_helper.from_array(np.moveaxis(quantized, 0, axis), weight.name))
        zero_point.CopyFrom(numpy_helper.from_array(points, zero_point.name))
    return changed
