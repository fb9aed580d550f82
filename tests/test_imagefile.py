"""The one image decoder: EXIF orientation, header limits, non-regular files, and proof that training,
`load_and_prepare`, `Classifier.classify_file` and the image-folder source see the same upright pixels.

Phone photos taken sideways store their pixels rotated and say so in an EXIF tag; the files here are
built the same way, with the APP1 segment (or PNG eXIf chunk) written byte by byte.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import realish_image
from edgevision.devices.imagefile import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    ImageDecodeError,
    decode_image,
    read_image,
    to_colour_uint8,
)
from edgevision.devices.imageheader import exif_orientation, read_header
from edgevision.devices.sources import open_source
from edgevision.runtime.preprocess import PreprocessPolicy, load_and_prepare, prepare
from edgevision.train.dataset import load_image_folder

# How a photo viewer shows stored pixels for each EXIF orientation, written with numpy alone (the
# decoder uses OpenCV), from the tag's definition: 0th row / 0th column of the stored picture.
SHOWN = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a[:, ::-1], -1),
    8: lambda a: np.rot90(a, 1),
}
# The orientation whose turn undoes each one: what a camera does to store an upright scene.
STORED_AS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}
# Mean absolute difference, in pixel values, after one JPEG round trip of `photo`'s pictures at quality 95
# (about 3); a picture turned the wrong way differs by about 60.
JPEG_TOLERANCE = 5.0


def exif_block(orientation: int | None, order: str = "II") -> bytes:
    """A TIFF-structured EXIF block: IFD0 with a Make entry, then Orientation (when not None)."""
    e = "<" if order == "II" else ">"
    entries = [struct.pack(e + "HHI", 0x010F, 2, 4) + b"ACM\x00"]  # Make "ACM", stored in the entry
    if orientation is not None:
        entries.append(struct.pack(e + "HHIHH", 0x0112, 3, 1, orientation, 0))
    magic = b"II*\x00" if order == "II" else b"MM\x00*"
    return magic + struct.pack(e + "IH", 8, len(entries)) + b"".join(entries) + b"\x00\x00\x00\x00"


def with_app1(jpeg: bytes, tiff: bytes) -> bytes:
    """The JPEG with an APP1 "Exif" segment right after its start-of-image marker, as cameras write it."""
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def with_exif_chunk(png: bytes, tiff: bytes) -> bytes:
    """The PNG with an eXIf chunk after IHDR (signature 8 bytes + IHDR 25 bytes)."""
    chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff + struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
    return png[:33] + chunk + png[33:]


def encode(rgb: np.ndarray, ext: str = ".jpg") -> bytes:
    ok, data = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


def phone_photo(upright: np.ndarray, orientation: int, order: str = "II") -> bytes:
    """A JPEG of `upright` as a camera stores it: pixels turned, and the tag that turns them back."""
    stored = np.ascontiguousarray(SHOWN[STORED_AS[orientation]](upright))
    np.testing.assert_array_equal(SHOWN[orientation](stored), upright)  # the two tables agree
    return with_app1(encode(stored), exif_block(orientation, order))


def photo(rng: np.random.Generator) -> np.ndarray:
    """A smooth 48 x 80 RGB picture, wider than tall, so a wrong turn also gets the shape wrong."""
    return cv2.GaussianBlur(cv2.cvtColor(realish_image(rng, 48, 80), cv2.COLOR_BGR2RGB), (5, 5), 0)


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def upright() -> np.ndarray:
    return photo(np.random.default_rng(3))


# --- orientation ---


@pytest.mark.parametrize("order", ["II", "MM"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_comes_out_upright_in_both_byte_orders(upright, orientation, order):
    data = phone_photo(upright, orientation, order)
    assert read_header(data).orientation == orientation
    decoded = decode_image(data, "photo.jpg")
    assert mean_difference(decoded, upright) < JPEG_TOLERANCE
    # Exactly the stored pixels turned, and what OpenCV's IMREAD_COLOR mode (which applies the tag) shows.
    stored = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded, SHOWN[orientation](stored))
    shown = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded, shown)


def test_pictures_without_an_orientation_are_unchanged(upright):
    plain = encode(upright)
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decode_image(plain), expected)
    tagless = with_app1(plain, exif_block(None))  # EXIF present, no Orientation entry
    np.testing.assert_array_equal(decode_image(tagless), expected)
    for bad in (0, 9, 65535):  # out of range: ignored, as viewers do
        np.testing.assert_array_equal(decode_image(with_app1(plain, exif_block(bad))), expected)


def test_damaged_exif_blocks_are_ignored():
    for tiff in (b"", b"XX*\x00", b"II*\x00\xff\xff\x00\x00", exif_block(6)[:20]):
        assert exif_orientation(tiff) == 1


def test_png_exif_chunk_is_applied(upright):
    stored = np.ascontiguousarray(SHOWN[STORED_AS[6]](upright))
    data = with_exif_chunk(encode(stored, ".png"), exif_block(6, "MM"))
    np.testing.assert_array_equal(decode_image(data, "photo.png"), upright)  # lossless: exact


@pytest.mark.skipif(not hasattr(cv2, "imencodeWithMetadata"), reason="this OpenCV cannot write WebP EXIF")
def test_webp_exif_chunk_is_applied(upright):
    stored = np.ascontiguousarray(SHOWN[STORED_AS[8]](upright))
    ok, data = cv2.imencodeWithMetadata(".webp", cv2.cvtColor(stored, cv2.COLOR_RGB2BGR), [cv2.IMAGE_METADATA_EXIF],
                                        [np.frombuffer(exif_block(8), np.uint8)], [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert ok
    np.testing.assert_array_equal(decode_image(data.tobytes(), "photo.webp"), upright)


def test_channel_order_bgr_is_the_same_picture(tmp_path, upright):
    path = tmp_path / "photo.jpg"
    path.write_bytes(phone_photo(upright, 6))
    np.testing.assert_array_equal(read_image(path, "bgr"), read_image(path)[:, :, ::-1])
    with pytest.raises(ValueError, match="'yuv'.*rgb, bgr"):
        read_image(path, "yuv")


# --- every reader sees the same upright pixels ---


@pytest.fixture(scope="module")
def phone_folder(tmp_path_factory, upright) -> tuple[Path, dict[str, np.ndarray]]:
    """Two class folders of phone-style JPEGs (orientations 3, 6, 8, a mirrored 5 and none, both byte
    orders); returns the root and each file's upright picture."""
    root = tmp_path_factory.mktemp("phone")
    rng = np.random.default_rng(11)
    truth = {}
    for label in ("cat", "dog"):
        (root / label).mkdir()
        for orientation, order in ((3, "II"), (6, "MM"), (8, "II"), (5, "MM"), (1, "II")):
            picture = photo(rng)
            path = root / label / f"{orientation}{order}.jpg"
            path.write_bytes(phone_photo(picture, orientation, order))
            truth[str(path)] = picture
    return root, truth


def test_training_preprocessing_and_the_folder_source_see_the_same_upright_pixels(phone_folder):
    root, truth = phone_folder
    policy = PreprocessPolicy(40, 40)
    dataset = load_image_folder(root, policy, seed=0)
    trained = {p: image for split in (dataset.train, dataset.val, dataset.test)
               for p, image in zip(split.paths, split.images)}
    assert sorted(trained) == sorted(truth) and not dataset.skipped
    for label in ("cat", "dog"):
        with open_source(root / label) as source:
            frames = {str(p): frame.image for p, frame in zip(source.files, source)}
        assert len(frames) == 5
        for path, frame in frames.items():
            seen = prepare(frame, policy, channel_order="bgr")
            np.testing.assert_array_equal(seen, trained[path])
            np.testing.assert_array_equal(seen, load_and_prepare(path, policy))
            assert mean_difference(seen, prepare(truth[path], policy)) < JPEG_TOLERANCE, path


def test_classify_file_agrees_with_the_folder_source(phone_folder, tiny_bundle):
    from edgevision.runtime.classifier import Classifier

    root, _ = phone_folder
    classifier = Classifier(tiny_bundle.folder, artifact="tflite_fp32", threads=1, top_k=3)
    with open_source(root / "dog") as source:
        for path, frame in zip(source.files, source):
            assert classifier.classify_file(path) == classifier.classify(frame.image, "bgr"), path


# --- limits and refusals ---


def test_a_file_over_the_byte_limit_is_refused_before_reading(tmp_path, upright):
    path = tmp_path / "big.jpg"
    path.write_bytes(encode(upright))
    size = path.stat().st_size
    with pytest.raises(ImageDecodeError, match=rf"big\.jpg: the file is {size:,} bytes, more than the limit of 1,000"):
        read_image(path, max_bytes=1000)
    assert read_image(path, max_bytes=size).shape == (48, 80, 3)
    assert MAX_IMAGE_BYTES == 100_000_000


def test_a_header_declaring_too_many_pixels_is_refused_before_decoding(tmp_path, upright):
    with pytest.raises(ImageDecodeError, match=r"p\.png: the PNG header declares 80 x 48 = 3,840 pixels, more than "
                                               r"the limit of 3,839"):
        decode_image(encode(upright, ".png"), "p.png", max_pixels=3839)
    assert decode_image(encode(upright, ".png"), max_pixels=3840).shape == (48, 80, 3)
    # A bomb: a tiny file whose header declares 100,000 x 100,000 pixels; refused at the default limit.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with pytest.raises(ImageDecodeError, match=rf"10,000,000,000 pixels, more than the limit of {MAX_IMAGE_PIXELS:,}"):
        decode_image(bomb, "bomb.png")
    # The other formats' headers are read too (JPEG frame, BMP, lossy and lossless WebP).
    for ext, params in ((".jpg", []), (".bmp", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
                        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])):
        ok, data = cv2.imencode(ext, upright, params)
        header = read_header(data.tobytes())
        assert (header.width, header.height) == (80, 48), ext
        with pytest.raises(ImageDecodeError, match="3,840 pixels"):
            decode_image(data.tobytes(), max_pixels=100)


POSIX = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/null are POSIX")


@POSIX
@pytest.mark.timeout(20)
def test_a_fifo_a_folder_and_a_device_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(ImageDecodeError, match=r"pipe\.jpg: a named pipe \(FIFO\), not a regular file"):
        read_image(fifo)
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageDecodeError, match=r"folder\.png: a folder, not a regular file"):
        load_and_prepare(tmp_path / "folder.png", PreprocessPolicy(8, 8))
    with pytest.raises(ImageDecodeError, match=r"/dev/null: a character device, not a regular file"):
        read_image("/dev/null")


@POSIX
@pytest.mark.timeout(60)
def test_training_skips_and_reports_a_fifo_among_the_photos(tmp_path, upright):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            (tmp_path / label / f"{i}.jpg").write_bytes(encode(upright))
    os.mkfifo(tmp_path / "a" / "pipe.jpg")
    dataset = load_image_folder(tmp_path, PreprocessPolicy(16, 16))
    assert [(Path(s.path).name, "named pipe" in s.reason) for s in dataset.skipped] == [("pipe.jpg", True)]


def test_unknown_formats_and_damaged_headers_name_the_file():
    with pytest.raises(ImageDecodeError, match=r"x\.jpg: not a decodable image \(a JPEG, PNG, BMP or WebP file"):
        decode_image(b"GIF89a" + bytes(40), "x.jpg")
    with pytest.raises(ImageDecodeError, match=r"y\.png: not a decodable image \(a PNG file whose header has no size"):
        decode_image(b"\x89PNG\r\n\x1a\n" + bytes(40), "y.png")


def test_camera_frames_share_the_conversion():
    grey16 = np.full((4, 6), 0x1234, np.uint16)
    np.testing.assert_array_equal(to_colour_uint8(grey16), np.full((4, 6, 3), 0x12, np.uint8))
    bgra = np.dstack([np.full((4, 6), v, np.uint8) for v in (1, 2, 3, 4)])
    np.testing.assert_array_equal(to_colour_uint8(bgra, "rgb")[0, 0], [3, 2, 1])
    frame = np.zeros((4, 6, 3), np.uint8)
    assert to_colour_uint8(frame, "bgr") is frame  # the camera's common case costs nothing
    with pytest.raises(ImageDecodeError, match="CameraSource: unsupported pixel type float32"):
        to_colour_uint8(frame.astype(np.float32), "bgr", "CameraSource")


def test_the_pixel_limit_is_set_by_an_environment_variable(tmp_path, upright, monkeypatch):
    path = tmp_path / "p.png"
    path.write_bytes(encode(upright, ".png"))
    monkeypatch.setenv("EDGEVISION_MAX_IMAGE_PIXELS", "3_000")  # a small device
    with pytest.raises(ImageDecodeError, match=r"3,840 pixels, more than the limit of 3,000"):
        read_image(path)
    assert read_image(path, max_pixels=4000).shape == (48, 80, 3)  # an explicit limit wins
    monkeypatch.setenv("EDGEVISION_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match=r"EDGEVISION_MAX_IMAGE_PIXELS='lots' is invalid; use a positive number"):
        read_image(path)
    monkeypatch.delenv("EDGEVISION_MAX_IMAGE_PIXELS")
    assert read_image(path).shape == (48, 80, 3)

