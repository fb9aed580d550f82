"""Training: image folder -> fine-tuned MobileNet-family classifier -> run folder for export.

Keras (and its backend) is imported inside the functions that need it, not here.
"""

from .augment import AugmentConfig
from .dataset import Dataset, DatasetError, load_image_folder
from .model import BACKBONES, TRANSFER_MODES, ModelConfig
from .run_dir import RunError, RunInfo
from .trainer import TrainConfig, TrainResult, train

__all__ = [
    "AugmentConfig", "BACKBONES", "TRANSFER_MODES", "Dataset", "DatasetError", "ModelConfig", "RunError", "RunInfo",
    "TrainConfig", "TrainResult", "load_image_folder", "train",
]
