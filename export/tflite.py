"""Keras model -> TFLite flatbuffer bytes (TensorFlow's converter; only export needs TensorFlow).

Four precisions: fp32; fp16 (weights stored as float16, float32 I/O); dynamic-range (int8 weights,
float activations, float32 I/O); full-integer int8 (per-channel int8 weights, int8 activations
calibrated on representative images, uint8 or int8 input and output). Normalization is inside the graph,
so with uint8 input the int8 model takes raw camera pixels with scale 1 / zero-point 0.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings

import numpy as np

from edgevision.tflogs import STDIO_REDIRECT_LOCK

log = logging.getLogger("edgevision.export")

# Where the edgevision metadata lives inside a .tflite file (Model.metadata entry name).
TFLITE_METADATA_NAME = "edgevision.bundle"


class _HoldConverterRecords(logging.Filter):
    """Holds back the log records the converter makes through Python's logging while it runs (edgevision's
    own pass), for the debug log afterwards. Where a folded bias would not fit its int32 (near-dead
    channels), TFLite's quantizer widens that channel's weight scale instead of clipping it
    (tests/test_quantization.py checks every bias of every backbone)."""

    def __init__(self):
        super().__init__()
        self.held: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("edgevision"):
            return True
        self.held.append(f"{record.name}: {record.getMessage()}")
        return False


_CONVERTING = STDIO_REDIRECT_LOCK  # shared with the runtime's LiteRT notice filter


@contextlib.contextmanager
def _converter_output_to_debug():
    """Keras prints the whole SavedModel signature while converting, the quantizer prints its settings from
    C++ and the converter logs: all of it goes to edgevision's debug log, not the terminal."""
    chatter = io.StringIO()
    root = logging.getLogger()
    hold = _HoldConverterRecords()
    with _CONVERTING, tempfile.TemporaryFile() as held:
        targets = [root, *root.handlers]
        for target in targets:
            target.addFilter(hold)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = []
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(held.fileno(), fd)
                except OSError:  # no such descriptor to quiet
                    pass
            with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
                # "Statistics for quantized inputs were expected": not needed for raw uint8 pixels.
                warnings.simplefilter("ignore", UserWarning)
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            for target in targets:
                target.removeFilter(hold)
            held.seek(0)
            log.debug("converter output:\n%s%s%s", chatter.getvalue(), held.read().decode(errors="replace"),
                      "\n".join(hold.held))


def _convert(converter) -> bytes:
    with _converter_output_to_debug():
        return converter.convert()


def _converter(model):
    """`TFLiteConverter.from_keras_model` freezes the variables itself; converting an unfrozen concrete
    function instead silently yields a model full of VAR_HANDLE ops whose output is NaN (seen with TensorFlow 2.21)."""
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model)


def to_tflite_fp32(model) -> bytes:
    """A float32 TFLite model."""
    return _convert(_converter(model))


def to_tflite_fp16(model) -> bytes:
    """Weights stored as float16 (half the size), float32 input and output."""
    import tensorflow as tf

    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    return _convert(converter)


def to_tflite_dynamic(model) -> bytes:
    """Dynamic-range quantization: int8 weights, activations quantized on the fly, float32 I/O."""
    import tensorflow as tf

    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return _convert(converter)


def to_tflite_int8(model, images: np.ndarray, io_dtype: str = "uint8") -> bytes:
    """Full-integer int8 (every layer int8; see Int8Quantizer for the details and for keeping layers
    in float)."""
    return Int8Quantizer(model, images).quantize((), io_dtype)


def split_hard_swish(model):
    """`model` with every hard-swish activation layer written as (x / 6) * relu6(x + 3).

    The converter fuses the usual forms into TFLite's HARD_SWISH op, which LiteRT's XNNPACK delegate runs in
    float only: in an int8 model each one left the delegate, and MobileNetV3 Small (18 of them) ran 2.5x
    slower than fp32. Written this way the converter leaves an ADD with a fused ReLU6 and two MULs, which
    XNNPACK runs in int8. The same function; the model is returned as it is when it has no hard-swish."""
    import keras

    from .fold import _new_inputs, _one_or_list

    def is_hard_swish(op) -> bool:
        return (isinstance(op, keras.layers.Activation)
                and op.get_config().get("activation") in ("hard_swish", "hard_silu"))  # Keras 3 names it hard_silu

    if not any(is_hard_swish(layer) for layer in model.layers):
        return model

    def call(op, *args, **kwargs):
        if is_hard_swish(op):
            x = args[0]
            return keras.ops.multiply(x * (1.0 / 6.0), keras.ops.relu6(x + 3.0))
        return op(*args, **kwargs)

    inputs = _one_or_list(_new_inputs(model))
    return keras.Model(inputs, model._run_through_graph(inputs, call_fn=call), name=model.name)


class Int8Quantizer:
    """Calibrate once, then write int8 models, optionally with chosen ops kept in float.

    Weights are int8 per channel (TFLite's default for convolutions), activations int8 with ranges
    calibrated (min-max) on `images` ((N, H, W, 3) uint8, prepared by the runtime's preprocessing).
    `quantize(keep_float, io_dtype)`:
    - io_dtype "uint8": uint8 input (raw camera pixels, scale 1 / zero-point 0, when the first op is
      int8) and float32 probabilities out: the softmax runs in float, so two classes never tie the way
      a uint8 softmax (steps of 1/256) makes close ones tie.
    - io_dtype "int8": int8 input and output, softmax included (accelerators that take signed tensors).
    - keep_float: names of ops (`ops()`, the output tensor names of the calibrated graph) that stay
      float; the converter puts quantize / dequantize around them.
    """

    def __init__(self, model, images: np.ndarray):
        import tensorflow as tf

        def representative():
            for image in images:
                yield [image[None].astype(np.float32)]

        converter = _converter(split_hard_swish(model))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        converter._experimental_calibrate_only = True  # the calibrated float graph, quantized below as asked
        self.calibrated = _convert(converter)
        self._ops: list[tuple[str, str]] | None = None

    def ops(self) -> list[tuple[str, str]]:
        """(output tensor name, op type) of every op of the calibrated graph, in graph order."""
        if self._ops is None:  # read once: the search asks for every candidate
            from ai_edge_litert.interpreter import Interpreter

            interpreter = Interpreter(model_content=self.calibrated)
            tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
            self._ops = [(tensors[op["outputs"][0]], op["op_name"]) for op in interpreter._get_ops_details()
                         if len(op["outputs"])]
        return list(self._ops)

    def quantize(self, keep_float=(), io_dtype: str = "uint8") -> bytes:
        import tensorflow as tf
        from tensorflow.lite.python import convert, util

        if io_dtype not in ("uint8", "int8"):
            raise ValueError(f"Unknown int8 input/output type {io_dtype!r}; choose one of uint8, int8")
        keep = list(keep_float)
        if io_dtype == "uint8":
            keep += [name for name, kind in self.ops() if kind == "SOFTMAX"]
        with _converter_output_to_debug():
            content = convert.mlir_quantize(self.calibrated, disable_per_channel=False, fully_quantize=False,
                                            enable_numeric_verify=False, denylisted_nodes=keep or None)
        input_type = {"uint8": tf.uint8, "int8": tf.int8}[io_dtype]
        if not _input_is_quantized(content):
            input_type = tf.float32  # the first op was kept in float: it takes float pixels (0-255)
        output_type = tf.float32 if io_dtype == "uint8" else tf.int8
        return bytes(util.modify_model_io_type(content, input_type, output_type))


def _input_is_quantized(content: bytes) -> bool:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    first = interpreter.get_input_details()[0]["index"]
    return any(op["op_name"] == "QUANTIZE" and first in op["inputs"] for op in interpreter._get_ops_details())


def op_names(content: bytes) -> list[str]:
    """The operator names of a TFLite model (e.g. CONV_2D, DEPTHWISE_CONV_2D), in graph order."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    return [op["op_name"] for op in interpreter._get_ops_details()]


def add_metadata(content: bytes, name: str, payload: bytes) -> bytes:
    """The model with `payload` stored as a named Model.metadata buffer (the TFLite schema's place for
    producer data; interpreters ignore entries they do not know), and short inner tensor names
    (compact_tensor_names)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    compact_tensor_names(model)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(payload, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != name.encode()] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def compact_tensor_names(model) -> None:
    """Give every inner tensor of a TFLite model object a short name ("t1a"); each subgraph's inputs and
    outputs keep theirs (interpreters show them), and signatures point at tensors by index. The
    converter's names (".../block_3_expand_relu/Relu6;.../block_3_expand_BN/FusedBatchNormV3...") were 28 KB
    of the demo's 0.97 MB int8 model."""
    for subgraph in model.subgraphs:
        keep = set(subgraph.inputs.tolist() if hasattr(subgraph.inputs, "tolist") else subgraph.inputs)
        keep |= set(subgraph.outputs.tolist() if hasattr(subgraph.outputs, "tolist") else subgraph.outputs)
        for index, tensor in enumerate(subgraph.tensors):
            if index not in keep:
                tensor.name = f"t{np.base_repr(index, 36).lower()}".encode()
