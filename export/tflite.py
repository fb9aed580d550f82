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
import warnings

import numpy as np

log = logging.getLogger("edgevision.export")

# Where the edgevision metadata lives inside a .tflite file (Model.metadata entry name).
TFLITE_METADATA_NAME = "edgevision.bundle"


def _convert(converter) -> bytes:
    # Keras prints the whole SavedModel signature while converting; keep it for --verbose only.
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": not needed for raw uint8 pixels.
        warnings.simplefilter("ignore", UserWarning)
        data = converter.convert()
    log.debug("converter output:\n%s", chatter.getvalue())
    return data


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
    """Full-integer int8: per-channel int8 weights (TFLite's default for convolutions), int8
    activations calibrated on `images` ((N, H, W, 3) uint8, prepared by the runtime's preprocessing),
    and `io_dtype` ("uint8" or "int8") input and output."""
    import tensorflow as tf

    def representative():
        for image in images:
            yield [image[None].astype(np.float32)]

    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = {"uint8": tf.uint8, "int8": tf.int8}[io_dtype]
    converter.inference_output_type = converter.inference_input_type
    return _convert(converter)


def op_names(content: bytes) -> list[str]:
    """The operator names of a TFLite model (e.g. CONV_2D, DEPTHWISE_CONV_2D), in graph order."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    return [op["op_name"] for op in interpreter._get_ops_details()]


def add_metadata(content: bytes, name: str, payload: bytes) -> bytes:
    """The model with `payload` stored as a named Model.metadata buffer (the TFLite schema's place for
    producer data; interpreters ignore entries they do not know)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(payload, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != name.encode()] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(content: bytes, name: str) -> bytes | None:
    """The payload `add_metadata` stored under `name`, or None."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    for entry in model.metadata or []:
        if entry.name in (name, name.encode()):
            data = model.buffers[entry.buffer].data
            return bytes(np.asarray(data, dtype=np.uint8).tobytes()) if data is not None else b""
    return None
