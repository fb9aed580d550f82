"""Augmentation: each transform's geometry pinned pixel-exactly, fill modes, photometric ranges,
identity at inference, reproducibility, validation, the preview grid, and the JAX backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgevision.train.affine import FILL_MODES, affine_matrix, apply_affine
from edgevision.train.augment import AugmentConfig
from edgevision.train.augment_layer import augment_batch
from edgevision.train.preview import preview_grid


def _numpy(tensor) -> np.ndarray:
    from keras import ops

    return np.asarray(ops.convert_to_numpy(tensor))


def _warp(images, fill_mode="nearest", fill_value=0.0, **params) -> np.ndarray:
    images = np.asarray(images, np.float32)
    matrix = affine_matrix(images.shape[1], images.shape[2], **params)
    return _numpy(apply_affine(images, matrix, fill_mode, fill_value))


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """One (1, 6, 9, 3) image with a distinct non-integer value per pixel and channel (not square)."""
    return (np.arange(6 * 9 * 3, dtype=np.float32).reshape(1, 6, 9, 3) * 1.37 + 0.25) % 255


# --- geometry, pinned pixel by pixel ---


def test_horizontal_flip_moves_x_to_w_minus_1_minus_x(picture):
    out = _warp(picture, horizontal_flip=True)
    height, width = picture.shape[1:3]
    for y in range(height):
        for x in range(width):
            np.testing.assert_array_equal(out[0, y, width - 1 - x], picture[0, y, x])


def test_vertical_flip_moves_y_to_h_minus_1_minus_y(picture):
    out = _warp(picture, vertical_flip=True)
    np.testing.assert_array_equal(out[0], picture[0, ::-1])


@pytest.mark.parametrize("degrees, turns", [(90, 1), (-90, -1), (180, 2), (270, 3), (-270, 1), (450, 1)])
def test_quarter_turns_of_a_square_image_are_exact(degrees, turns):
    # 224 pixels: float32 cos(pi/2) = -4.4e-8 would put a naive rotation off the grid here.
    image = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    out = _warp(image, rotation=degrees)
    # Positive degrees turn the content counter-clockwise as displayed, like np.rot90.
    np.testing.assert_array_equal(out[0], np.rot90(image[0], k=turns))


def test_zero_parameters_are_the_identity(picture):
    np.testing.assert_array_equal(_warp(picture), picture)


@pytest.mark.parametrize("dx, dy", [(2, 0), (0, 3), (-1, 2), (4, -2)])
def test_integer_shift_moves_content_by_exactly_k_pixels(picture, dx, dy):
    out = _warp(picture, shift_x=dx, shift_y=dy, fill_mode="constant", fill_value=-1.0)
    height, width = picture.shape[1:3]
    for y in range(height):
        for x in range(width):
            src_x, src_y = x - dx, y - dy
            expected = picture[0, src_y, src_x] if 0 <= src_x < width and 0 <= src_y < height else -1.0
            np.testing.assert_array_equal(out[0, y, x], expected)


def test_zoom_magnifies_about_the_centre():
    # 9x9, centre (4, 4); zoom 2 samples input position c + (p - c) / 2.
    image = np.random.default_rng(1).uniform(0, 255, (1, 9, 9, 1)).astype(np.float32)
    out = _warp(image, zoom=2.0)
    np.testing.assert_array_equal(out[0, 4, 4], image[0, 4, 4])
    np.testing.assert_array_equal(out[0, 2, 6], image[0, 3, 5])  # (x=6, y=2) -> (5, 3)
    np.testing.assert_allclose(out[0, 4, 5], (image[0, 4, 4] + image[0, 4, 5]) / 2, rtol=1e-6)  # x 4.5


def test_shear_uses_image_data_generators_matrix():
    # Output -> input about the centre: x_in = x - sin(s) * y, y_in = cos(s) * y (relative coordinates).
    matrix = _numpy(affine_matrix(5, 7, shear=30.0))[0]
    cx, cy = 3.0, 2.0
    for x, y in [(0.0, 0.0), (6.0, 4.0), (1.0, 3.0)]:
        x_in, y_in, _ = matrix @ np.array([x, y, 1.0])
        np.testing.assert_allclose([x_in, y_in], [cx + (x - cx) - 0.5 * (y - cy), cy + np.cos(np.pi / 6) * (y - cy)],
                                   atol=1e-5)


def test_crop_window_maps_the_output_onto_a_window_inside_the_picture():
    # Keep half of each side, window pushed to the right edge: output edges land on the window's edges.
    width, height = 16, 10
    matrix = _numpy(affine_matrix(height, width, crop_scale=0.5, crop_x=width / 4, crop_y=-height / 4))[0]
    left_top = matrix @ np.array([-0.5, -0.5, 1.0])
    right_bottom = matrix @ np.array([width - 0.5, height - 0.5, 1.0])
    np.testing.assert_allclose(left_top[:2], [width / 2 - 0.5, -0.5], atol=1e-5)
    np.testing.assert_allclose(right_bottom[:2], [width - 0.5, height / 2 - 0.5], atol=1e-5)


def test_random_crop_never_samples_outside_the_picture():
    # Constant fill 0 on an all-200 picture: any outside read would pull values below 200.
    images = np.full((8, 20, 30, 3), 200.0, np.float32)
    out = augment_batch(images, AugmentConfig(crop=0.4, fill_mode="constant", fill_value=0.0), seed=3)
    np.testing.assert_allclose(out, 200.0, atol=1e-3)


# --- fill modes ---


def test_each_fill_mode_at_the_left_border():
    row = np.array([10.0, 20.0, 30.0, 40.0, 50.0], np.float32).reshape(1, 1, 5, 1)
    expected = {  # content shifted right by 3: the 3 leftmost pixels come from positions -3, -2, -1
        "nearest": [10, 10, 10, 10, 20],  # repeats the edge pixel
        "reflect": [30, 20, 10, 10, 20],  # mirrors it: c b a | a b c
        "wrap": [30, 40, 50, 10, 20],  # tiles the picture
        "constant": [7, 7, 7, 10, 20],  # fill_value
    }
    assert set(expected) == set(FILL_MODES)
    for mode, values in expected.items():
        out = _warp(row, fill_mode=mode, fill_value=7.0, shift_x=3)
        np.testing.assert_array_equal(out[0, 0, :, 0], values, err_msg=mode)


def test_each_fill_mode_at_the_bottom_border_and_far_outside():
    column = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(1, 4, 1, 1)
    expected = {  # content shifted up by 6: rows sample positions 6..9 (4 = one picture height outside)
        "nearest": [4, 4, 4, 4],
        "reflect": [2, 1, 1, 2],  # mirrored at 3.5, then at -0.5: 6 -> 1, 7 -> 0, 8 -> 0, 9 -> 1
        "wrap": [3, 4, 1, 2],
        "constant": [0, 0, 0, 0],
    }
    for mode, values in expected.items():
        out = _warp(column, fill_mode=mode, shift_y=-6)
        np.testing.assert_array_equal(out[0, :, 0, 0], values, err_msg=mode)


def test_constant_fill_blends_half_a_pixel_at_a_fractional_border():
    row = np.array([100.0, 100.0, 100.0], np.float32).reshape(1, 1, 3, 1)
    out = _warp(row, fill_mode="constant", fill_value=20.0, shift_x=0.5)
    np.testing.assert_allclose(out[0, 0, :, 0], [60.0, 100.0, 100.0], rtol=1e-6)


# --- the random layer ---


def _mid_range(shape, seed=0) -> np.ndarray:
    """Pixels in [80, 176]: photometric changes below stay clear of the clip at 0 and 255."""
    return np.random.default_rng(seed).uniform(80, 176, shape).astype(np.float32)


def test_identity_at_inference_bit_exact():
    from edgevision.train.augment_layer import augmentation_layer

    images = np.random.default_rng(0).uniform(0, 255, (4, 16, 12, 3)).astype(np.float32)
    layer = augmentation_layer(AugmentConfig.strong(), seed=0)
    np.testing.assert_array_equal(_numpy(layer(images, training=False)), images)
    np.testing.assert_array_equal(_numpy(layer(images)), images)
    assert not np.array_equal(_numpy(layer(images, training=True)), images)
    np.testing.assert_array_equal(augment_batch(images, AugmentConfig.none()), images)


def test_inside_a_model_only_training_is_random():
    import keras

    from edgevision.train.augment_layer import augmentation_layer

    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, augmentation_layer(AugmentConfig.light(), seed=1)(inputs))
    images = _mid_range((3, 16, 16, 3))
    np.testing.assert_array_equal(model.predict(images, verbose=0), images)
    assert not np.array_equal(_numpy(model(images, training=True)), images)
    clone = keras.Model.from_config(model.get_config())
    assert clone.layers[-1].config == AugmentConfig.light() and clone.layers[-1].seed == 1


def test_flips_are_drawn_per_image():
    image = np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
    out = augment_batch(np.repeat(image, 32, axis=0), AugmentConfig(horizontal_flip=True), seed=5)
    flipped = [np.array_equal(o, image[0, :, ::-1]) for o in out]
    kept = [np.array_equal(o, image[0]) for o in out]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 4 <= sum(flipped) <= 28


def test_brightness_is_one_bounded_offset_per_image():
    images = _mid_range((16, 8, 8, 3))
    out = augment_batch(images, AugmentConfig(brightness=0.1), seed=2)
    delta = out - images
    per_image = delta[:, :1, :1, :1]
    np.testing.assert_allclose(delta, np.broadcast_to(per_image, delta.shape), atol=1e-4)
    assert np.all(np.abs(per_image) <= 25.5 + 1e-4)
    assert np.ptp(per_image) > 5  # images got different offsets


def test_contrast_keeps_each_channels_mean_and_scales_within_range():
    images = _mid_range((16, 10, 10, 3))
    out = augment_batch(images, AugmentConfig(contrast=0.3), seed=3)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), images.mean(axis=(1, 2)), atol=1e-3)
    factors = out.std(axis=(1, 2)) / images.std(axis=(1, 2))
    assert np.all((factors >= 0.7 - 1e-4) & (factors <= 1.3 + 1e-4))
    np.testing.assert_allclose(factors, factors[:, :1].repeat(3, axis=1), rtol=1e-4)  # one factor per image


def test_channel_shift_is_one_bounded_offset_per_channel():
    images = _mid_range((16, 8, 8, 3))
    delta = augment_batch(images, AugmentConfig(channel_shift=30.0), seed=4) - images
    per_channel = delta[:, :1, :1, :]
    np.testing.assert_allclose(delta, np.broadcast_to(per_channel, delta.shape), atol=1e-4)
    assert np.all(np.abs(per_channel) <= 30.0 + 1e-4)
    assert np.ptp(per_channel[:, 0, 0, :], axis=1).max() > 1  # channels move independently


def test_noise_has_the_configured_spread():
    images = _mid_range((4, 32, 32, 3))
    noise = augment_batch(images, AugmentConfig(noise_std=10.0), seed=6) - images
    assert abs(noise.mean()) < 0.5 and 9.5 < noise.std() < 10.5


def test_output_is_float32_within_0_255_for_uint8_and_extreme_inputs():
    rng = np.random.default_rng(7)
    images = np.where(rng.uniform(size=(6, 20, 20, 3)) < 0.5, 0, 255).astype(np.uint8)
    out = augment_batch(images, AugmentConfig.strong(), seed=0)
    assert out.dtype == np.float32 and out.shape == images.shape
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert out.min() == 0.0 and out.max() == 255.0  # the clip was exercised


def test_same_seed_same_output_different_seed_different_output():
    images = _mid_range((4, 16, 16, 3))
    config = AugmentConfig.strong()
    first, again = augment_batch(images, config, seed=11), augment_batch(images, config, seed=11)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, augment_batch(images, config, seed=12))


def test_float32_under_a_bfloat16_policy():
    import keras

    from edgevision.train.augment_layer import augmentation_layer

    images = np.random.default_rng(8).uniform(0, 255, (8, 224, 224, 3)).astype(np.float32)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        out = _numpy(augmentation_layer(AugmentConfig(vertical_flip=True), seed=0)(images, training=True))
    finally:
        keras.config.set_dtype_policy(previous)
    assert out.dtype == np.float32
    # Exactly the picture or its mirror: bf16 anywhere (values or positions) would break equality.
    assert all(np.array_equal(o, i) or np.array_equal(o, i[::-1]) for o, i in zip(out, images))


def test_unknown_batch_and_picture_size_in_a_traced_graph():
    import keras

    from edgevision.train.augment_layer import augmentation_layer

    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.function with an input signature is TensorFlow's way to leave dimensions unknown")
    import tensorflow as tf

    layer = augmentation_layer(AugmentConfig.strong(), seed=0)
    spec = tf.TensorSpec((None, None, None, 3), tf.float32)
    augment = tf.function(lambda x: layer(x, training=True), input_signature=[spec])
    for shape in [(2, 20, 30, 3), (3, 17, 9, 3)]:
        out = augment(_mid_range(shape)).numpy()
        assert out.shape == shape and 0 <= out.min() and out.max() <= 255


# --- configuration ---


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("rotation", -5.0, ["rotation", "-5.0", "[0, 180]"]),
        ("zoom", 1.0, ["zoom", "1.0", "[0, 1)"]),
        ("zoom", 1.5, ["zoom", "1.5"]),
        ("width_shift", 2.0, ["width_shift", "2.0", "[0, 1]"]),
        ("shear", 90.0, ["shear", "90.0", "[0, 90)"]),
        ("brightness", -0.1, ["brightness"]),
        ("crop", 1.0, ["crop", "[0, 1)"]),
        ("noise_std", float("nan"), ["noise_std", "finite"]),
        ("fill_value", 300.0, ["fill_value", "300.0", "[0, 255]"]),
        ("horizontal_flip", "yes", ["horizontal_flip", "'yes'"]),
    ],
)
def test_bad_values_are_refused_with_their_name_and_range(field, value, words):
    with pytest.raises(ValueError) as err:
        AugmentConfig(**{field: value})
    for word in words:
        assert word in str(err.value)


def test_unknown_fill_mode_names_the_value_and_the_choices():
    with pytest.raises(ValueError) as err:
        AugmentConfig(fill_mode="refelct")
    message = str(err.value)
    assert "'refelct'" in message and all(mode in message for mode in FILL_MODES) and "did you mean 'reflect'" in message
    with pytest.raises(ValueError, match="'mirror'"):
        apply_affine(np.zeros((1, 2, 2, 1), np.float32), np.eye(3, dtype=np.float32), "mirror")


def test_presets_dict_round_trip_and_unknown_keys():
    assert not AugmentConfig.none().enabled and AugmentConfig.light().enabled and AugmentConfig.strong().enabled
    assert AugmentConfig.light().horizontal_flip and not AugmentConfig.light().vertical_flip
    for name in ("none", "light", "strong"):
        config = AugmentConfig.preset(name)
        assert AugmentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="'lite'.*none, light, strong"):
        AugmentConfig.preset("lite")
    with pytest.raises(ValueError, match="'rotate'.*did you mean 'rotation'"):
        AugmentConfig.from_dict({"rotate": 10})


def test_importing_augment_and_preview_loads_no_deep_learning_framework():
    code = (
        "import sys, edgevision.train.augment, edgevision.train.affine, edgevision.train.augment_layer, "
        "edgevision.train.preview\n"
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


# --- preview ---


def test_preview_grid_writes_originals_then_augmented_cells(tmp_path):
    rng = np.random.default_rng(9)
    images = rng.uniform(0, 255, (2, 24, 32, 3)).astype(np.uint8)
    path = preview_grid(images, AugmentConfig.light(), tmp_path / "out" / "preview.png", count=5, columns=2, seed=1)
    assert path == tmp_path / "out" / "preview.png" and os.listdir(path.parent) == ["preview.png"]
    grid = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    scale, gap = 3, 2  # 32-px images are enlarged 3x to reach the 96-px minimum cell
    cell_h, cell_w = 24 * scale, 32 * scale
    assert grid.shape == (3 * (cell_h + gap) + gap, 3 * (cell_w + gap) + gap, 3)  # 3 rows of 1 + 2 cells

    def cell(row, col):
        top, left = gap + row * (cell_h + gap), gap + col * (cell_w + gap)
        return grid[top : top + cell_h : scale, left : left + cell_w : scale]

    np.testing.assert_array_equal(cell(0, 0), images[0])  # rows cycle through the images
    np.testing.assert_array_equal(cell(1, 0), images[1])
    np.testing.assert_array_equal(cell(2, 0), images[0])
    assert not np.array_equal(cell(0, 1), images[0]) and not np.array_equal(cell(0, 1), cell(0, 2))
    assert np.all(cell(2, 2) == 128)  # the 6th cell is beyond count=5: left grey


def test_preview_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        preview_grid(np.zeros((4, 4)), AugmentConfig.light(), tmp_path / "p.png")
    with pytest.raises(ValueError, match="p.jpg"):
        preview_grid(np.zeros((4, 4, 3)), AugmentConfig.light(), tmp_path / "p.jpg")


# --- benchmark command and other backends ---


def test_benchmark_command_prints_both_layers(capsys):
    from edgevision.train.augment_bench import main

    assert main(["--batch", "2", "--size", "16", "--repeats", "1", "--jit", "off"]) == 0
    printed = capsys.readouterr().out
    for name in ("edgevision_geometry", "edgevision_strong", "keras_stock_chain", "images/s"):
        assert name in printed


_JAX_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from edgevision.train.affine import affine_matrix, apply_affine
    from edgevision.train.augment import AugmentConfig
    from edgevision.train.augment_layer import augmentation_layer

    assert __import__("keras").backend.backend() == "jax"
    modes = [("nearest", [10, 10, 10, 10, 20]), ("reflect", [30, 20, 10, 10, 20]),
             ("wrap", [30, 40, 50, 10, 20]), ("constant", [7, 7, 7, 10, 20])]

    @jax.jit  # one compile for all geometry checks (eager JAX compiles every op on its own)
    def geometry(image, row):
        turned = apply_affine(image, affine_matrix(224, 224, rotation=90))
        return turned, [apply_affine(row, affine_matrix(1, 5, shift_x=3), mode, 7.0) for mode, _ in modes]

    image = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    row = np.array([10, 20, 30, 40, 50], np.float32).reshape(1, 1, 5, 1)
    turned, filled = geometry(image, row)
    assert np.array_equal(np.asarray(turned)[0], np.rot90(image[0])), "rot90"
    for (mode, want), got in zip(modes, filled):
        assert np.array_equal(np.asarray(got)[0, 0, :, 0], want), (mode, got)
    # The layer under jax.jit, as model.fit runs it: stateless, the seed state threaded through.
    layer = augmentation_layer(AugmentConfig.light(), seed=0)
    images = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    assert np.array_equal(np.asarray(layer(images, training=False)), images)
    step = jax.jit(lambda state, x: layer.stateless_call([], state, x, training=True))
    state = [v.value for v in layer.non_trainable_variables]
    first, state = step(state, images)
    second, _ = step(state, images)
    first, second = np.asarray(first), np.asarray(second)
    assert first.dtype == np.float32 and 0 <= first.min() and first.max() <= 255
    assert not np.allclose(first, images) and not np.allclose(first, second)
    print("ok")
    """
)


def test_runs_under_the_jax_backend():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _JAX_SCRIPT], capture_output=True, text=True, env=env, timeout=300,
                         cwd=Path(__file__).parent)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
