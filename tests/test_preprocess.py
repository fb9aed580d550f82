"""The one preprocessing path: geometry of crop/resize, colour order, decoding and refusals."""

import cv2
import numpy as np
import pytest

from edgevision.runtime.preprocess import (
    ImageDecodeError,
    PreprocessPolicy,
    crop_box,
    decode_image,
    prepare,
)


def test_center_crop_keeps_the_centre_of_a_wide_picture():
    policy = PreprocessPolicy(4, 4, interpolation="nearest")
    # 4 rows x 8 columns: columns 2..5 are the centred square.
    image = np.zeros((4, 8, 3), np.uint8)
    image[:, :, 0] = np.arange(8)[None, :]
    assert crop_box(4, 8, policy) == (0, 2, 4, 4)
    out = prepare(image, policy)
    assert out.shape == (4, 4, 3)
    assert out[0, :, 0].tolist() == [2, 3, 4, 5]


def test_center_crop_of_a_tall_picture_and_squash():
    assert crop_box(10, 4, PreprocessPolicy(2, 2)) == (3, 0, 4, 4)
    assert crop_box(10, 4, PreprocessPolicy(2, 2, resize="squash")) == (0, 0, 10, 4)
    assert crop_box(480, 640, PreprocessPolicy(96, 128)) == (0, 0, 480, 640)


def test_bgr_frames_give_the_same_pixels_as_rgb_files():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    for interpolation in ("linear", "area", "nearest", "cubic"):
        policy = PreprocessPolicy(32, 32, interpolation=interpolation)
        np.testing.assert_array_equal(prepare(bgr, policy, channel_order="bgr"), prepare(rgb, policy))


def test_prepare_returns_a_copy_when_no_resize_is_needed():
    image = np.full((8, 8, 3), 7, np.uint8)
    out = prepare(image, PreprocessPolicy(8, 8))
    out[0, 0, 0] = 99
    assert image[0, 0, 0] == 7


def test_bad_policy_and_inputs_name_the_value():
    with pytest.raises(ValueError, match="'zoom'.*center_crop, squash"):
        PreprocessPolicy(8, 8, resize="zoom")
    with pytest.raises(ValueError, match="'bilinear'"):
        PreprocessPolicy(8, 8, interpolation="bilinear")
    with pytest.raises(ValueError, match="height 0"):
        PreprocessPolicy(0, 8)
    with pytest.raises(ValueError, match="'yuv'"):
        prepare(np.zeros((8, 8, 3), np.uint8), PreprocessPolicy(8, 8), channel_order="yuv")
    with pytest.raises(ValueError, match="float32"):
        prepare(np.zeros((8, 8, 3), np.float32), PreprocessPolicy(8, 8))
    with pytest.raises(ValueError, match="Unknown preprocessing keys"):
        PreprocessPolicy.from_dict({"height": 8, "width": 8, "mean": 0})


def _jpeg(progressive: bool = False) -> bytes:
    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_jpeg_is_refused(progressive):
    data = _jpeg(progressive)
    assert decode_image(data).shape == (48, 64, 3)
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        decode_image(data[: len(data) * 2 // 3], name="cut.jpg")


def test_jpeg_with_data_appended_after_the_image_still_decodes():
    # Motion photos append a video after the JPEG's end-of-image marker.
    data = _jpeg() + bytes(range(256)) * 16
    assert decode_image(data).shape == (48, 64, 3)


def test_non_image_bytes_are_refused_with_the_name():
    with pytest.raises(ImageDecodeError, match="notes.png: not a decodable image"):
        decode_image(b"this is text, not a PNG", name="notes.png")
    with pytest.raises(ImageDecodeError, match="empty file"):
        decode_image(b"", name="empty.jpg")
