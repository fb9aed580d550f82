"""The one image decoder: every picture the project reads from a file comes through `read_image`.

Training, int8 calibration, the export's parity check, `Classifier.classify_file` and the image-folder
source all call it, so they see the same pixels: regular files only, size and pixel limits checked
from the header before decoding, EXIF orientation applied as photo viewers apply it (a phone photo
taken sideways stores its pixels rotated and says so in a tag), grey, alpha and 16-bit pictures
converted to 8-bit colour. Camera and video frames skip the file part and share `to_colour_uint8`.

It lives in devices/, the lowest layer, because the image-folder source needs it;
`edgevision.runtime.preprocess` re-exports it for everything above.
"""

from __future__ import annotations

import os
import stat

import cv2
import numpy as np

from .imageheader import ImageHeader, read_header

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CHANNEL_ORDERS = ("rgb", "bgr")
# Limits checked before a file is read or a picture decoded: a decoded 100-megapixel picture takes
# 300 MB, and training decodes several at once.
MAX_IMAGE_BYTES = 100_000_000
MAX_IMAGE_PIXELS = 100_000_000
# Set lower on a device with little memory (or higher for huge scans); read at each call, so decoder
# processes started later see it too.
PIXEL_LIMIT_VARIABLE = "EDGEVISION_MAX_IMAGE_PIXELS"


def pixel_limit() -> int:
    """The pixel limit: EDGEVISION_MAX_IMAGE_PIXELS when set, else MAX_IMAGE_PIXELS."""
    value = os.environ.get(PIXEL_LIMIT_VARIABLE)
    if value is None or not value.strip():
        return MAX_IMAGE_PIXELS
    try:
        limit = int(value.replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"{PIXEL_LIMIT_VARIABLE}={value!r} is invalid; use a positive number of pixels "
                         f"(default {MAX_IMAGE_PIXELS:,})")
    return limit

_FORMATS = "JPEG, PNG, BMP or WebP"
# (channels, channel order) -> the OpenCV conversion from what imdecode/VideoCapture deliver
# (grey, BGR, BGRA); None: already right.
_CONVERSIONS = {
    (1, "rgb"): cv2.COLOR_GRAY2RGB, (1, "bgr"): cv2.COLOR_GRAY2BGR,
    (3, "rgb"): cv2.COLOR_BGR2RGB, (3, "bgr"): None,
    (4, "rgb"): cv2.COLOR_BGRA2RGB, (4, "bgr"): cv2.COLOR_BGRA2BGR,
}
# EXIF orientation -> the steps that turn the stored pixels upright, in order.
_UPRIGHT = {
    1: (),
    2: (("flip", 1),),  # mirrored left-right
    3: (("rotate", cv2.ROTATE_180),),
    4: (("flip", 0),),  # mirrored top-bottom
    5: (("transpose", None),),  # mirrored, then turned 90 degrees anticlockwise
    6: (("rotate", cv2.ROTATE_90_CLOCKWISE),),  # the common phone photo held upright
    7: (("transpose", None), ("rotate", cv2.ROTATE_180)),  # mirrored, then turned 90 degrees clockwise
    8: (("rotate", cv2.ROTATE_90_COUNTERCLOCKWISE),),
}
_NOT_REGULAR = (
    (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)


class ImageDecodeError(ValueError):
    """A file that is not a usable image (corrupt, truncated, too large, not an image, not a file)."""


def read_image(path: str | os.PathLike, channel_order: str = "rgb", *, max_bytes: int = MAX_IMAGE_BYTES,
               max_pixels: int | None = None) -> np.ndarray:
    """Read an image file to an upright uint8 (H, W, 3) picture in `channel_order`.

    Raises ImageDecodeError naming the file when it is not a regular file, larger than `max_bytes`,
    declares more than `max_pixels` pixels (default: pixel_limit()), or does not decode; OSError when it
    cannot be read.
    """
    name = os.fspath(path)
    return decode_image(_read_regular_file(name, max_bytes), name, channel_order, max_pixels=max_pixels)


def decode_image(data: bytes, name: str = "<bytes>", channel_order: str = "rgb", *,
                 max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, BMP, WebP) to an upright uint8 (H, W, 3) picture."""
    _check_channel_order(channel_order)
    max_pixels = pixel_limit() if max_pixels is None else max_pixels
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    header = read_header(data)
    if header is None:
        raise ImageDecodeError(f"{name}: not a decodable image (a {_FORMATS} file is needed; extensions "
                               f"{', '.join(IMAGE_EXTENSIONS)})")
    _check_header(header, name, max_pixels)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageDecodeError(f"{name}: not a decodable image (a damaged {header.format} file)")
    return upright(to_colour_uint8(image, channel_order, name), header.orientation)


def to_colour_uint8(image: np.ndarray, channel_order: str = "bgr", name: str = "picture") -> np.ndarray:
    """Any decoded picture or frame (grey, grey+alpha, BGR, BGRA; 8 or 16 bit) -> uint8 (H, W, 3) in
    `channel_order`. Alpha is dropped, as PIL's convert("RGB") does; an 8-bit BGR input asked for as
    "bgr" is returned as it is."""
    _check_channel_order(channel_order)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageDecodeError(f"{name}: unsupported pixel type {image.dtype}; expected 8- or 16-bit pictures")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 2:  # grey + alpha
        image, channels = np.ascontiguousarray(image[:, :, 0]), 1
    if (channels, channel_order) not in _CONVERSIONS:
        raise ImageDecodeError(f"{name}: unsupported channel count {channels}; expected 1 to 4")
    code = _CONVERSIONS[channels, channel_order]
    return image if code is None else cv2.cvtColor(image, code)


def upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """The picture as a photo viewer shows it, from its stored pixels and EXIF orientation (1-8)."""
    if orientation not in _UPRIGHT:
        raise ValueError(f"EXIF orientation {orientation!r} is invalid; it is 1 to 8")
    for step, argument in _UPRIGHT[orientation]:
        if step == "flip":
            image = cv2.flip(image, argument)
        elif step == "rotate":
            image = cv2.rotate(image, argument)
        else:
            image = cv2.transpose(image)
    return image


def _check_channel_order(channel_order: str) -> None:
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"Unknown channel order {channel_order!r}; choose one of {', '.join(CHANNEL_ORDERS)}")


def _check_header(header: ImageHeader, name: str, max_pixels: int) -> None:
    if header.truncated:
        raise ImageDecodeError(f"{name}: truncated JPEG (no end-of-image marker)")
    if header.width is None or header.height is None:
        raise ImageDecodeError(f"{name}: not a decodable image (a {header.format} file whose header has no size)")
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise ImageDecodeError(
            f"{name}: the {header.format} header declares {header.width} x {header.height} = {pixels:,} pixels, "
            f"more than the limit of {max_pixels:,}"
        )


def _read_regular_file(name: str, max_bytes: int) -> bytes:
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below, from the open file.
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((kind for test, kind in _NOT_REGULAR if test(info.st_mode)), "a special file")
            raise ImageDecodeError(f"{name}: {kind}, not a regular file; only image files are read")
        if info.st_size > max_bytes:
            raise ImageDecodeError(f"{name}: the file is {info.st_size:,} bytes, more than the limit of {max_bytes:,}")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while being read
        raise ImageDecodeError(f"{name}: the file is more than the limit of {max_bytes:,} bytes")
    return data
