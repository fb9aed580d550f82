"""What an image file's header says before a pixel is decoded: format, size, EXIF orientation.

The decoder (imagefile.py) refuses oversized pictures from these numbers, so a small file that declares
a huge picture (a decompression bomb) is never decoded, and applies the orientation itself, because
OpenCV ignores it in the IMREAD_UNCHANGED mode needed to see 16-bit and alpha pictures. Only the
standard library: the header is plain bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# EXIF tag 0x0112: how the stored pixels must be turned to be shown upright (1 = as stored).
ORIENTATION_TAG = 0x0112
ORIENTATIONS = range(1, 9)
_EXIF_PREFIX = b"Exif\x00\x00"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the picture size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "JPEG", "PNG", "BMP" or "WebP"
    width: int | None = None  # None: the header is damaged; the decoder will say so
    height: int | None = None
    orientation: int = 1
    truncated: bool = False  # a JPEG whose image data has no end-of-image marker


def read_header(data: bytes) -> ImageHeader | None:
    """The header of encoded image bytes, or None when they are not a JPEG, PNG, BMP or WebP file."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_header(data)
    if data[:8] == _PNG_SIGNATURE:
        return _png_header(data)
    if data[:2] == b"BM" and len(data) >= 26:
        return _bmp_header(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_header(data)
    return None


def exif_orientation(tiff: bytes) -> int:
    """The Orientation of IFD0 in an EXIF (TIFF-structured) block, 1 when absent or invalid.

    Both byte orders: "II" (little-endian, most phones) and "MM" (big-endian, some cameras).
    """
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind = struct.unpack_from(order + "HH", tiff, entry)
        if tag != ORIENTATION_TAG:
            continue
        # The value sits in the entry itself: a SHORT (type 3) as the standard says, a LONG from some writers.
        value = struct.unpack_from(order + ("H" if kind == 3 else "I"), tiff, entry + 8)[0] if kind in (3, 4) else 1
        return value if value in ORIENTATIONS else 1
    return 1


def _jpeg_header(data: bytes) -> ImageHeader:
    """Walk the segments up to the start of scan: the frame size, the APP1 EXIF block, truncation.

    The end-of-image marker is searched from the first start-of-scan on, so an EXIF thumbnail's own
    marker does not count and data appended after the image (motion photos) does not matter. Some
    libjpeg builds "recover" a truncated JPEG by filling the missing rows with grey and only warn; a
    training set must not learn from that.
    """
    size, orientation, pos = (None, None), 1, 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:  # stray bytes between segments: libjpeg skips to the next marker too
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            truncated = data.find(b"\xff\xd9", pos) < 0
            return ImageHeader("JPEG", size[1], size[0], orientation, truncated)
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : end]
        if marker in _JPEG_SOF and len(segment) >= 5:
            size = struct.unpack_from(">HH", segment, 1)  # (height, width)
        elif marker == 0xE1 and segment.startswith(_EXIF_PREFIX) and orientation == 1:
            orientation = exif_orientation(segment[len(_EXIF_PREFIX) :])
        pos = end
    return ImageHeader("JPEG", size[1], size[0], orientation, truncated=True)  # it ends inside the header


def _png_header(data: bytes) -> ImageHeader:
    """IHDR (always the first chunk) gives the size; an eXIf chunk, the orientation."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return ImageHeader("PNG")
    width, height = struct.unpack_from(">II", data, 16)
    exif = _chunk(data, 8, ">", b"eXIf", stop=b"IEND")
    return ImageHeader("PNG", width, height, exif_orientation(exif) if exif else 1)


def _bmp_header(data: bytes) -> ImageHeader:
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack_from("<HH", data, 18)
    else:  # BITMAPINFOHEADER and later; a negative height means rows stored top-down
        width, height = struct.unpack_from("<ii", data, 18)
    return ImageHeader("BMP", abs(width), abs(height))


def _webp_header(data: bytes) -> ImageHeader:
    """The first chunk says how the size is stored: VP8 (lossy), VP8L (lossless) or VP8X (extended,
    the only kind that can carry an EXIF chunk)."""
    kind = data[12:16]
    width = height = None
    if kind == b"VP8 " and len(data) >= 30:
        width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", data, 26))
    elif kind == b"VP8L" and len(data) >= 25:
        (bits,) = struct.unpack_from("<I", data, 21)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif kind == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    exif = _chunk(data, 12, "<", b"EXIF") if kind == b"VP8X" else None
    return ImageHeader("WebP", width, height, exif_orientation(exif) if exif else 1)


def _chunk(data: bytes, pos: int, order: str, wanted: bytes, stop: bytes | None = None) -> bytes | None:
    """The payload of the first `wanted` chunk of a PNG (">": length, type, data, CRC) or a RIFF/WebP
    ("<": type, length, data padded to even) file, walking chunk headers from `pos`."""
    png = order == ">"
    while pos + 8 <= len(data):
        if png:
            (length,) = struct.unpack_from(">I", data, pos)
            kind = data[pos + 4 : pos + 8]
        else:
            kind = data[pos : pos + 4]
            (length,) = struct.unpack_from("<I", data, pos + 4)
        if kind == wanted:
            return data[pos + 8 : pos + 8 + length]
        if kind == stop:
            break
        pos += 8 + length + (4 if png else length % 2)
    return None
