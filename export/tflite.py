"""Keras model -> TFLite flatbuffer bytes (TensorFlow's converter; only export needs TensorFlow)."""

from __future__ import annotations

import contextlib
import io
import logging

log = logging.getLogger("edgevision.export")


def to_tflite_fp32(model) -> bytes:
    """Convert a Keras model to a float32 TFLite model.

    `TFLiteConverter.from_keras_model` freezes the variables itself; converting an unfrozen concrete
    function instead silently yields a model full of VAR_HANDLE ops whose output is NaN (see
    PITFALLS.md), which the exporter's parity gate would catch but is better never produced.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # Keras prints the whole SavedModel signature while converting; keep it for --verbose only.
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):
        data = converter.convert()
    log.debug("converter output:\n%s", chatter.getvalue())
    return data
