"""Export: training run -> bundle (model artifacts + bundle.json), each artifact checked for parity
with the trained model through the runtime's own code. Needs TensorFlow (the `export` extra)."""

from .exporter import ARTIFACT_KINDS, ExportError, ExportResult, export

__all__ = ["ARTIFACT_KINDS", "ExportError", "ExportResult", "export"]
