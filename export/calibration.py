"""Quantization settings and the representative images that int8 artifacts are calibrated on.

The images are the run's TRAINING images (never the held-out ones the parity gate measures on), drawn
with a fixed seed and prepared by the runtime's one preprocessing function, so the quantization ranges
describe exactly the pixels a device will feed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevision.choices import choice_error
from edgevision.runtime.preprocess import IMAGE_EXTENSIONS, ImageDecodeError, load_and_prepare
from edgevision.train.run_dir import RunInfo

INT8_IO_DTYPES = ("uint8", "int8")


class CalibrationError(ValueError):
    """Calibration data that cannot calibrate this model (empty, wrong shape or type, unreadable)."""


@dataclass(frozen=True)
class QuantizationConfig:
    """How int8 artifacts are made.

    calibration_images: how many representative images to calibrate on (at most; fewer if the run has
    fewer training images). io_dtype: the int8 TFLite model's interface, "uint8" (raw camera pixels go
    in with scale 1 / zero-point 0, float32 probabilities come out of a float softmax) or "int8" (int8 in
    and out, the softmax quantized too). onnx_types: activation/weight types of
    the ONNX QDQ model ("u8s8", "u8u8", "s8s8"; see export/onnx.py). onnx_calibration: how onnxruntime sets
    activation ranges ("minmax", "percentile"; TFLite's converter has min-max only). seed:
    which images are drawn.
    search: when an int8 model would change too many answers, keep the fewest ops from the input in
    float until its agreement estimated on `search_images` validation images reaches the gate plus at
    least `search_margin`, more for fewer images (export/precision.search_target), within
    `max_size_fraction` of the float model's size.
    """

    calibration_images: int = 200
    io_dtype: str = "uint8"
    onnx_types: str = "u8s8"
    onnx_calibration: str = "minmax"
    seed: int = 0
    search: bool = True
    search_images: int = 500
    max_size_fraction: float = 0.33
    search_margin: float = 0.01

    def __post_init__(self) -> None:
        from .onnx import ONNX_CALIBRATION_METHODS, ONNX_INT8_TYPES

        n = self.calibration_images
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 100_000:
            raise ValueError(f"calibration_images {n!r} is invalid; use an integer from 1 to 100000")
        m = self.search_images
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 10 <= m <= 100_000:
            raise ValueError(f"search_images {m!r} is invalid; use an integer from 10 to 100000")
        if not 0 <= self.search_margin < 0.1:
            raise ValueError(f"search_margin {self.search_margin!r} is invalid; use a fraction from 0 to 0.1")
        if not 0 < self.max_size_fraction <= 1:
            raise ValueError(f"max_size_fraction {self.max_size_fraction!r} is invalid; use a fraction in (0, 1]")
        if self.io_dtype not in INT8_IO_DTYPES:
            raise choice_error("int8 input/output type", self.io_dtype, INT8_IO_DTYPES)
        if self.onnx_types not in ONNX_INT8_TYPES:
            raise choice_error("ONNX int8 types", self.onnx_types, ONNX_INT8_TYPES)
        if self.onnx_calibration not in ONNX_CALIBRATION_METHODS:
            raise choice_error("ONNX calibration method", self.onnx_calibration, ONNX_CALIBRATION_METHODS)

    @classmethod
    def for_int8(cls, calibration_images: int = 200, io_dtype: str = "uint8") -> "QuantizationConfig":
        """The preset for devices with camera pixels: uint8 in and out, 200 calibration images."""
        return cls(calibration_images=calibration_images, io_dtype=io_dtype)

    @classmethod
    def for_signed_int8(cls, calibration_images: int = 200) -> "QuantizationConfig":
        """int8 input and output (accelerators that take signed tensors only)."""
        return cls(calibration_images=calibration_images, io_dtype="int8")

    def to_dict(self) -> dict:
        return {"calibration_images": int(self.calibration_images), "io_dtype": self.io_dtype,
                "onnx_types": self.onnx_types, "onnx_calibration": self.onnx_calibration, "seed": int(self.seed),
                "search": bool(self.search),
                "search_images": int(self.search_images), "max_size_fraction": float(self.max_size_fraction),
                "search_margin": float(self.search_margin)}


def _image_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def training_paths(info: RunInfo) -> list[str]:
    """The run's training image paths (see RunInfo.training_images)."""
    try:
        return info.training_images()
    except FileNotFoundError as gone:
        raise CalibrationError(f"{gone}: pass calibration images (a folder, or --calibration DIR)") from None


def _sample(paths: list[str], config: QuantizationConfig) -> list[str]:
    if len(paths) <= config.calibration_images:
        return list(paths)
    rng = np.random.default_rng(config.seed)
    return [paths[i] for i in sorted(rng.choice(len(paths), config.calibration_images, replace=False))]


def _load(paths: list[str], info: RunInfo, where: str) -> np.ndarray:
    images = []
    for path in paths:
        try:
            images.append(load_and_prepare(path, info.preprocess))
        except (OSError, ImageDecodeError):
            continue  # an unreadable file is skipped, as training skipped it
    if not images:
        raise CalibrationError(f"{where} holds no readable images ({len(paths)} files tried); "
                               f"int8 calibration needs some (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return np.stack(images)


def check_images(images, info: RunInfo) -> np.ndarray:
    """Prepared calibration images must be a non-empty (N, H, W, 3) uint8 array at the model's size."""
    expected = f"(N, {info.preprocess.height}, {info.preprocess.width}, 3) uint8"
    if not isinstance(images, np.ndarray):
        raise CalibrationError(f"Calibration data must be a numpy array {expected}, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1:] != (info.preprocess.height, info.preprocess.width, 3):
        raise CalibrationError(f"Calibration images have shape {images.shape}; expected {expected} "
                               "(prepare them with the run's preprocessing policy)")
    if len(images) == 0:
        raise CalibrationError(f"Calibration data is empty; int8 calibration needs at least one image {expected}")
    if images.dtype != np.uint8:
        raise CalibrationError(f"Calibration images are {images.dtype}; expected raw 0-255 pixels as uint8")
    return images


def calibration_images(info: RunInfo, config: QuantizationConfig,
                       source: str | os.PathLike | np.ndarray | None = None) -> np.ndarray:
    """The representative images: `source` (an image folder, searched recursively, or prepared images)
    or, by default, the run's training images; at most `config.calibration_images` of them."""
    if isinstance(source, np.ndarray):
        images = check_images(source, info)
        return images[: config.calibration_images]
    if source is not None:
        folder = Path(source)
        if not folder.is_dir():
            raise CalibrationError(f"Calibration folder '{folder}' does not exist")
        paths = _image_files(folder)
        if not paths:
            raise CalibrationError(f"Calibration folder '{folder}' holds no images "
                                   f"(extensions: {', '.join(IMAGE_EXTENSIONS)})")
        return _load(_sample(paths, config), info, f"Calibration folder '{folder}'")
    paths = training_paths(info)
    if not paths:
        raise CalibrationError("The run has no training images to calibrate on; pass a calibration folder")
    return _load(_sample(paths, config), info, "The run's training set")


def search_images(info: RunInfo, count: int) -> tuple[np.ndarray, str]:
    """Images the int8 precision search compares candidates on, and where they came from: the run's
    validation images (never the held-out ones); for runs that have none, training images, which agree
    more easily (the model is sure of what it was trained on), said so in the source."""
    config = QuantizationConfig(calibration_images=count, seed=1)
    if info.val_paths:
        return _load(_sample(list(info.val_paths), config), info, "The run's validation set"), "validation images"
    return calibration_images(info, config), "training images (the run lists no validation images: optimistic)"
