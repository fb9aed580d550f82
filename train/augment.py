"""Training-time image augmentation: what to apply (AugmentConfig and its presets).

Geometry (rotation, shear, zoom, shift, flips, random crop) is composed into ONE 3x3 matrix per image and
the image is resampled ONCE by a hand-written bilinear gather, as ImageDataGenerator does: one
interpolation keeps the picture sharp, and a gather is what accelerators do fast (measured on an H200
under JAX: 4x faster than `keras.ops.image.affine_transform` and 17x faster than the stock Keras random
layers). Photometric changes (brightness, contrast, channel shift, Gaussian noise) follow. The pieces:

- augment.py (this module): the configuration, checked, and the none / light / strong presets;
- affine.py: the matrices and the resampling (`affine_matrix`, `apply_affine`; the conventions);
- augment_layer.py: the Keras layer that draws the random transforms (`augmentation_layer`,
  `augment_batch` for numpy batches);
- augment_bench.py: `python -m edgevision.train.augment_bench`, this layer against Keras' stock chain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from edgevision.choices import choice_error

from .affine import FILL_MODES

PRESETS = ("none", "light", "strong")


# Allowed range of each numeric field: (low, high, high_inclusive, unit for the message).
_RANGES = {
    "rotation": (0.0, 180.0, True, "degrees"),
    "width_shift": (0.0, 1.0, True, "fraction of the width"),
    "height_shift": (0.0, 1.0, True, "fraction of the height"),
    "shear": (0.0, 90.0, False, "degrees"),
    "zoom": (0.0, 1.0, False, "scale spread: magnification in [1-zoom, 1+zoom]"),
    "fill_value": (0.0, 255.0, True, "pixel value"),
    "brightness": (0.0, 1.0, True, "fraction of 255"),
    "contrast": (0.0, 1.0, True, "factor spread: factor in [1-contrast, 1+contrast]"),
    "channel_shift": (0.0, 255.0, True, "pixel values"),
    "noise_std": (0.0, 255.0, True, "pixel values"),
    "crop": (0.0, 1.0, False, "fraction of each side cut away"),
}


@dataclass(frozen=True)
class AugmentConfig:
    """What to randomise per training image; every field at its default means "no augmentation"."""

    rotation: float = 0.0  # degrees, uniform in [-rotation, rotation]
    width_shift: float = 0.0  # fraction of width, uniform in [-w, w]
    height_shift: float = 0.0
    shear: float = 0.0  # degrees, uniform in [-shear, shear]
    zoom: float = 0.0  # magnification uniform in [1-zoom, 1+zoom], same for both axes (keeps aspect)
    horizontal_flip: bool = False
    vertical_flip: bool = False
    fill_mode: str = "nearest"
    fill_value: float = 0.0  # for constant, in 0-255 pixel units
    brightness: float = 0.0  # additive delta, fraction of 255, uniform in [-b, b]
    contrast: float = 0.0  # factor uniform in [1-c, 1+c] around each image's per-channel mean
    channel_shift: float = 0.0  # per-channel additive shift in pixel units, uniform in [-s, s]
    noise_std: float = 0.0  # Gaussian noise std in pixel units
    crop: float = 0.0  # keep a random window of (1-crop) of each side, resized back (part of the matrix)

    def __post_init__(self) -> None:
        for name, (low, high, inclusive, unit) in _RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if not (low <= value <= high if inclusive else low <= value < high):
                interval = f"[{low:g}, {high:g}{']' if inclusive else ')'}"
                raise ValueError(f"{name} {value!r} is out of range; allowed {interval} ({unit})")
        for name in ("horizontal_flip", "vertical_flip"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.fill_mode not in FILL_MODES:
            raise choice_error("fill mode", self.fill_mode, FILL_MODES)

    @property
    def geometric(self) -> bool:
        return bool(
            self.rotation or self.width_shift or self.height_shift or self.shear or self.zoom
            or self.horizontal_flip or self.vertical_flip or self.crop
        )

    @property
    def photometric(self) -> bool:
        return bool(self.brightness or self.contrast or self.channel_shift or self.noise_std)

    @property
    def enabled(self) -> bool:
        return self.geometric or self.photometric

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls()

    @classmethod
    def light(cls) -> AugmentConfig:
        """A safe default for photos: mirror, small turn/zoom/shift, mild lighting changes."""
        return cls(
            rotation=10.0, width_shift=0.1, height_shift=0.1, zoom=0.1, horizontal_flip=True,
            fill_mode="reflect", brightness=0.1, contrast=0.1,
        )

    @classmethod
    def strong(cls) -> AugmentConfig:
        """For very small datasets: everything on, still label-preserving for upright photos."""
        return cls(
            rotation=20.0, width_shift=0.15, height_shift=0.15, shear=10.0, zoom=0.2, horizontal_flip=True,
            fill_mode="reflect", brightness=0.2, contrast=0.2, channel_shift=20.0, noise_std=5.0, crop=0.1,
        )

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        if name not in PRESETS:
            raise choice_error("augmentation preset", name, PRESETS)
        return getattr(cls, name)()

    @classmethod
    def from_dict(cls, data: dict) -> AugmentConfig:
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                raise choice_error("augmentation option", key, known)
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)
