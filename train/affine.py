"""Affine resampling for augmentation, in keras.ops only (every backend, and jit, traces it): one 3x3
output->input matrix per image composed from rotation, shear, zoom, shift, flips and a crop window, and
one bilinear gather per image (`apply_affine`).

Conventions (pinned by tests/test_augment.py):
- pixel (x, y) is column x, row y, its centre at integer coordinates; transforms act about the image
  centre ((W-1)/2, (H-1)/2);
- a matrix maps an OUTPUT pixel (x, y, 1) to the INPUT position it samples (ImageDataGenerator's sense);
- rotation > 0 turns the content counter-clockwise as displayed: +90 degrees equals `np.rot90(image)`;
- shift > 0 moves the content right / down by that many pixels; zoom > 1 magnifies the content;
- shear > 0 slants it as ImageDataGenerator's `shear_range` does;
- flips mirror about the centre: a horizontal flip moves pixel (x, y) to (W-1-x, y);
- fill modes decide what is sampled outside the picture: `nearest` repeats the edge pixel, `reflect`
  mirrors it (d c b a | a b c d | d c b a), `wrap` tiles it, `constant` uses `fill_value`.

Keras is imported inside the functions that need it, so importing this module costs nothing.
"""

from __future__ import annotations

import math

import numpy as np

from edgevision.choices import choice_error

FILL_MODES = ("nearest", "reflect", "wrap", "constant")


def _as_float(ops, size):
    """A static dimension stays a Python number; a dynamic one (a traced tensor) becomes float32."""
    return float(size) if isinstance(size, int) else ops.cast(size, "float32")


def _sin_cos_degrees(ops, degrees):
    """sin and cos of an angle in degrees, exact at multiples of 90 degrees.

    float32 cos(pi/2) is -4.4e-8, which puts a 90-degree turn of a 224-pixel image off the pixel grid;
    taking out the quarter turns first and swapping/negating keeps those turns pixel-exact.
    """
    quarter = ops.round(degrees / 90.0)
    rest = (degrees - 90.0 * quarter) * (math.pi / 180.0)
    s, c = ops.sin(rest), ops.cos(rest)
    k = ops.mod(ops.cast(quarter, "int32"), 4)
    k0, k1, k2 = ops.equal(k, 0), ops.equal(k, 1), ops.equal(k, 2)
    sin = ops.where(k0, s, ops.where(k1, c, ops.where(k2, -s, -c)))
    cos = ops.where(k0, c, ops.where(k1, -s, ops.where(k2, -c, s)))
    return sin, cos


def _matrix(ops, a, b, c, d, e, f):
    """(N, 3, 3) matrices [[a, b, c], [d, e, f], [0, 0, 1]] from (N,) entries."""
    zero, one = ops.zeros_like(a), ops.ones_like(a)
    return ops.reshape(ops.stack([a, b, c, d, e, f, zero, zero, one], axis=-1), (-1, 3, 3))


def compose(ops, height, width, rotation, shear, zoom, shift_x, shift_y, flip_h, flip_v, crop_scale, crop_x, crop_y):
    """Output->input matrices of the content pipeline flip, crop, zoom, shear, rotate, shift (all (N,))."""
    zero, one = ops.zeros_like(rotation), ops.ones_like(rotation)
    cx, cy = (_as_float(ops, width) - 1.0) / 2.0, (_as_float(ops, height) - 1.0) / 2.0
    sin_r, cos_r = _sin_cos_degrees(ops, rotation)
    sin_s, cos_s = _sin_cos_degrees(ops, shear)
    sign_x, sign_y = one - 2.0 * flip_h, one - 2.0 * flip_v
    # Listed in the order they act on an OUTPUT position: the content's last change (the shift) is
    # undone first, its first change (the flips) last.
    steps = [
        _matrix(ops, one, zero, -cx * one, zero, one, -cy * one),  # to centre-relative
        _matrix(ops, one, zero, -shift_x, zero, one, -shift_y),  # shift
        _matrix(ops, cos_r, -sin_r, zero, sin_r, cos_r, zero),  # rotation
        _matrix(ops, one, -sin_s, zero, zero, cos_s, zero),  # shear (ImageDataGenerator's matrix)
        _matrix(ops, one / zoom, zero, zero, zero, one / zoom, zero),  # zoom
        _matrix(ops, crop_scale, zero, crop_x, zero, crop_scale, crop_y),  # crop window, resized back
        _matrix(ops, sign_x, zero, zero, zero, sign_y, zero),  # flips
        _matrix(ops, one, zero, cx * one, zero, one, cy * one),  # back from centre-relative
    ]
    result = steps[0]
    for step in steps[1:]:
        result = ops.matmul(step, result)
    return result


def affine_matrix(
    height: int,
    width: int,
    *,
    rotation=0.0,
    shear=0.0,
    zoom=1.0,
    shift_x=0.0,
    shift_y=0.0,
    horizontal_flip=False,
    vertical_flip=False,
    crop_scale=1.0,
    crop_x=0.0,
    crop_y=0.0,
):
    """(N, 3, 3) float32 output->input matrices from explicit parameters (scalars or length-N arrays).

    rotation and shear in degrees; zoom is the magnification; shift_x/shift_y in output pixels;
    crop_scale is the kept fraction of each side and crop_x/crop_y the window centre's offset from the
    image centre in input pixels. Returns a backend tensor (`keras.ops.convert_to_numpy` for numpy).
    """
    from keras import ops

    values = [rotation, shear, zoom, shift_x, shift_y, horizontal_flip, vertical_flip, crop_scale, crop_x, crop_y]
    arrays = np.broadcast_arrays(*[np.atleast_1d(np.asarray(v, dtype=np.float32)) for v in values])
    tensors = [ops.convert_to_tensor(np.ascontiguousarray(a), dtype="float32") for a in arrays]
    return compose(ops, height, width, *tensors)


def _axis(ops, coord, size: int, fill_mode: str):
    """Float sampling positions along one axis -> (lower index, upper index, lower weight, upper weight).

    Indices come back inside [0, size). `reflect` folds the position itself (mirroring commutes with
    linear interpolation), `nearest` clamps, `wrap` wraps each neighbour, and `constant` zeroes the
    weight of a neighbour outside the picture, so every mode costs a few ops on positions, none on pixels.
    """
    if fill_mode == "reflect":
        size_f = _as_float(ops, size)
        folded = ops.mod(coord + 0.5, 2.0 * size_f)
        coord = ops.where(ops.greater_equal(folded, size_f), 2.0 * size_f - folded, folded) - 0.5
    lower_f = ops.floor(coord)
    upper_weight = coord - lower_f
    lower_weight = 1.0 - upper_weight
    lower = ops.cast(lower_f, "int32")
    upper = lower + 1
    if fill_mode == "wrap":
        return ops.mod(lower, size), ops.mod(upper, size), lower_weight, upper_weight
    if fill_mode == "constant":
        lower_weight = ops.where(ops.logical_and(ops.greater_equal(lower, 0), ops.less(lower, size)), lower_weight, 0.0)
        upper_weight = ops.where(ops.logical_and(ops.greater_equal(upper, 0), ops.less(upper, size)), upper_weight, 0.0)
    return ops.clip(lower, 0, size - 1), ops.clip(upper, 0, size - 1), lower_weight, upper_weight


def apply_affine(images, matrices, fill_mode: str = "nearest", fill_value: float = 0.0):
    """Resample float (N, H, W, C) images through (N, 3, 3) (or one (3, 3)) output->input matrices.

    Bilinear: four gathers (one per neighbour) from the batch laid out as C planes of N*H*W pixels, the
    positions shared by the channels. Measured inside the `light` layer on an H200 (256x224x224x3, XLA):
    3.7 ms a batch this way against 31 ms gathering 3-channel pixel rows from NHWC, where XLA fused the
    gathers into the photometric ops that follow and repeated them. Sampling positions are float32
    whatever the dtype policy (bf16 has 8 mantissa bits and cannot even address pixel 224). Returns float32.
    """
    from keras import ops

    if fill_mode not in FILL_MODES:
        raise choice_error("fill mode", fill_mode, FILL_MODES)
    images = ops.cast(ops.convert_to_tensor(images), "float32")
    matrices = ops.cast(ops.convert_to_tensor(matrices), "float32")
    batch, height, width, channels = ops.shape(images)
    if len(ops.shape(matrices)) == 2:
        matrices = ops.broadcast_to(matrices[None], (batch, 3, 3))

    # Affine positions are separable: a (N, 1, W) term plus a (N, H, 1) term, one full-size add each.
    cols = ops.arange(width, dtype="float32")[None, None, :]
    rows = ops.arange(height, dtype="float32")[None, :, None]
    m = [[matrices[:, r, c][:, None, None] for c in range(3)] for r in range(2)]
    x = (m[0][0] * cols + m[0][2]) + m[0][1] * rows  # (N, H, W)
    y = (m[1][0] * cols + m[1][2]) + m[1][1] * rows
    x0, x1, wx0, wx1 = _axis(ops, x, width, fill_mode)
    y0, y1, wy0, wy1 = _axis(ops, y, height, fill_mode)

    planes = ops.reshape(ops.transpose(images, (3, 0, 1, 2)), (channels, -1))  # (C, N*H*W)
    image_rows = (ops.arange(batch, dtype="int32") * height)[:, None, None]
    row0, row1 = (image_rows + y0) * width, (image_rows + y1) * width

    def term(row, col, weight):
        return ops.take(planes, ops.reshape(row + col, (-1,)), axis=1) * ops.reshape(weight, (1, -1))

    out = term(row0, x0, wy0 * wx0) + term(row0, x1, wy0 * wx1) + term(row1, x0, wy1 * wx0) + term(row1, x1, wy1 * wx1)
    out = ops.transpose(ops.reshape(out, (channels, batch, height, width)), (1, 2, 3, 0))
    if fill_mode == "constant" and fill_value:
        # Whatever weight fell outside the picture reads fill_value.
        outside = 1.0 - (wy0 + wy1) * (wx0 + wx1)
        out = out + (outside * fill_value)[..., None]
    return out
