"""Export: training run -> bundle (model artifacts + bundle.json), each artifact checked for parity
with the trained model through the runtime's own code. Needs TensorFlow (the `export` extra).

    export("run/", "bundle/", formats=("all",))        # fold BN, convert, check parity, write the bundle
    export("run/", "bundle/", formats=("tflite_int8",), quantization=QuantizationConfig.for_int8(500))
"""

from .calibration import CalibrationError, QuantizationConfig
from .exporter import ARTIFACT_KINDS, FORMAT_PRESETS, ExportError, ExportResult, export, resolve_formats
from .fold import FoldReport, fold_batchnorm

__all__ = [
    "ARTIFACT_KINDS", "FORMAT_PRESETS", "CalibrationError", "ExportError", "ExportResult", "FoldReport",
    "QuantizationConfig", "export", "fold_batchnorm", "resolve_formats",
]
