"""edgevision: from a folder of labelled photos to real-time camera classification on a device.

The public API, imported lazily so that `import edgevision` on a device never pulls in Keras or
TensorFlow: only the names you touch import their stage.

    from edgevision.train import train, TrainConfig, ModelConfig
    from edgevision.export import export
    from edgevision import Classifier, open_source, run_loop

(`edgevision.train` and `edgevision.export` are the stage packages; their main functions carry the
same names inside them.)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    # train
    "TrainConfig": "edgevision.train.trainer",
    "TrainResult": "edgevision.train.trainer",
    "ModelConfig": "edgevision.train.model",
    "BACKBONES": "edgevision.train.model",
    "load_image_folder": "edgevision.train.dataset",
    "Dataset": "edgevision.train.dataset",
    "DatasetError": "edgevision.train.dataset",
    "RunInfo": "edgevision.train.run_dir",
    # export
    "ExportError": "edgevision.export.exporter",
    "ExportResult": "edgevision.export.exporter",
    # runtime
    "Bundle": "edgevision.runtime.bundle",
    "BundleError": "edgevision.runtime.bundle",
    "PreprocessPolicy": "edgevision.runtime.preprocess",
    "Classifier": "edgevision.runtime.classifier",
    "Prediction": "edgevision.runtime.classifier",
    "run_loop": "edgevision.runtime.loop",
    "LoopSummary": "edgevision.runtime.loop",
    # devices
    "open_source": "edgevision.devices.sources",
    # demo
    "run_demo": "edgevision.demo",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'edgevision' has no attribute {name!r}")


def __dir__():
    return __all__
