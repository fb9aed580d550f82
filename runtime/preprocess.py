"""The one preprocessing path: decode (devices/imagefile.py), crop, resize.

Training's data loader, the exporter's parity check and the device runtime all call these functions,
so a deployed model sees exactly the pixels the trained model saw. Normalization is NOT done here: it
lives inside the model graph, so every model takes raw 0-255 RGB.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import cv2
import numpy as np

# The one decoder lives in devices/ (the image-folder source needs it too); it is part of this path.
from edgevision.devices.imagefile import (
    CHANNEL_ORDERS,
    IMAGE_EXTENSIONS,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    ImageDecodeError,
    decode_image,
    read_image,
)

__all__ = [
    "CHANNEL_ORDERS", "IMAGE_EXTENSIONS", "INTERPOLATIONS", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "RESIZE_MODES",
    "ImageDecodeError", "PreprocessPolicy", "crop_box", "decode_image", "load_and_prepare", "prepare", "read_image",
]

RESIZE_MODES = ("center_crop", "squash")
INTERPOLATIONS = {
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "nearest": cv2.INTER_NEAREST,
    "cubic": cv2.INTER_CUBIC,
}


@dataclass(frozen=True)
class PreprocessPolicy:
    """How a picture of any size becomes the model's input.

    resize: "center_crop" takes the largest centred region with the model's aspect ratio, then
    resizes it (nothing is distorted); "squash" resizes the whole picture (nothing is cut off).
    """

    height: int
    width: int
    resize: str = "center_crop"
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 1 <= value <= 4096:
                raise ValueError(f"Input {name} {value!r} is invalid; use an integer from 1 to 4096")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"Unknown resize mode {self.resize!r}; choose one of {', '.join(RESIZE_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"Unknown interpolation {self.interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessPolicy":
        known = {"height", "width", "resize", "interpolation"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown preprocessing keys {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**data)


def crop_box(height: int, width: int, policy: PreprocessPolicy) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of the region of a height x width picture that is kept."""
    if policy.resize == "squash":
        return 0, 0, height, width
    target = policy.width / policy.height
    if width / height > target:  # too wide: cut the sides
        crop_w = max(1, round(height * target))
        return 0, (width - crop_w) // 2, height, crop_w
    crop_h = max(1, round(width / target))
    return (height - crop_h) // 2, 0, crop_h, width


def prepare(image: np.ndarray, policy: PreprocessPolicy, channel_order: str = "rgb") -> np.ndarray:
    """Crop and resize one uint8 picture to the model's input: (policy.height, policy.width, 3) RGB uint8.

    channel_order says what `image` holds: "rgb" (decoded files) or "bgr" (OpenCV camera frames). The
    colour conversion runs after the resize, on the small picture: resizing is per channel, so the
    result is identical and the conversion costs a fraction.
    """
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"Unknown channel order {channel_order!r}; choose one of {', '.join(CHANNEL_ORDERS)}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"Expected a uint8 picture of shape (H, W, 3), got {image.dtype} {tuple(image.shape)}"
        )
    height, width = image.shape[:2]
    top, left, crop_h, crop_w = crop_box(height, width, policy)
    region = image[top : top + crop_h, left : left + crop_w]
    if (crop_h, crop_w) == (policy.height, policy.width):
        # Already the right size: copy, so the caller's frame buffer is never aliased.
        resized = np.ascontiguousarray(region) if channel_order == "bgr" else region.copy()
    else:
        resized = cv2.resize(
            region, (policy.width, policy.height), interpolation=INTERPOLATIONS[policy.interpolation]
        )
    if channel_order == "bgr":
        return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    return resized


def load_and_prepare(path: str | os.PathLike, policy: PreprocessPolicy) -> np.ndarray:
    """Read an image file and prepare it for the model: what training, export and `run` on a folder do."""
    return prepare(read_image(path), policy, channel_order="rgb")
