"""The augmentation as a Keras layer (random with training=True, the exact identity otherwise), and
`augment_batch` for numpy batches. One random draw per image of every transform the AugmentConfig
enables: the geometry through train/affine.py, then brightness, contrast, channel shift and noise.

Keras is imported inside the functions that need it, so importing this module costs nothing.
"""

from __future__ import annotations

import functools

import numpy as np

from .affine import _as_float, apply_affine, compose
from .augment import AugmentConfig


def _augment(images, config: AugmentConfig, seed_generator):
    """One random draw per image of every enabled transform, then clip to [0, 255]."""
    import keras
    from keras import ops

    random = keras.random
    # Through int32 (exact either way): TensorFlow's oneDNN path logs a false error for a uint8 Cast on
    # some CPUs ("oneDNN supports DT_UINT8 only on platforms with AVX-512", then falls back), seen on an
    # AVX-512 VNNI EPYC in every augmented training.
    x = images
    if keras.backend.standardize_dtype(x.dtype) == "uint8":
        x = ops.cast(x, "int32")
    x = ops.cast(x, "float32")
    batch, height, width, channels = ops.shape(x)

    def uniform(shape, low, high):
        return random.uniform(shape, minval=low, maxval=high, dtype="float32", seed=seed_generator)

    if config.geometric:
        per_image = (batch,)
        zeros = ops.zeros(per_image, dtype="float32")

        def spread(amount, scale=1.0):
            return uniform(per_image, -amount, amount) * scale if amount else zeros

        def coin(enabled):
            return ops.cast(ops.less(uniform(per_image, 0.0, 1.0), 0.5), "float32") if enabled else zeros

        crop_scale = 1.0 - config.crop
        matrices = compose(
            ops, height, width,
            rotation=spread(config.rotation),
            shear=spread(config.shear),
            zoom=uniform(per_image, 1.0 - config.zoom, 1.0 + config.zoom) if config.zoom else zeros + 1.0,
            shift_x=spread(config.width_shift, _as_float(ops, width)),
            shift_y=spread(config.height_shift, _as_float(ops, height)),
            flip_h=coin(config.horizontal_flip),
            flip_v=coin(config.vertical_flip),
            crop_scale=zeros + crop_scale,
            # The window (crop_scale of each side) may lie anywhere inside the picture.
            crop_x=spread(config.crop, _as_float(ops, width) / 2.0),
            crop_y=spread(config.crop, _as_float(ops, height) / 2.0),
        )
        x = apply_affine(x, matrices, config.fill_mode, config.fill_value)
    if config.brightness:
        x = x + uniform((batch, 1, 1, 1), -config.brightness, config.brightness) * 255.0
    if config.contrast:
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        x = (x - mean) * uniform((batch, 1, 1, 1), 1.0 - config.contrast, 1.0 + config.contrast) + mean
    if config.channel_shift:
        x = x + uniform((batch, 1, 1, channels), -config.channel_shift, config.channel_shift)
    if config.noise_std:
        x = x + random.normal(ops.shape(x), stddev=config.noise_std, dtype="float32", seed=seed_generator)
    return ops.clip(x, 0.0, 255.0)


@functools.lru_cache(maxsize=None)
def _layer_class():
    import keras

    @keras.saving.register_keras_serializable(package="edgevision")
    class Augmentation(keras.layers.Layer):
        """Random augmentation with training=True; the exact identity otherwise (validation, export)."""

        def __init__(self, config: AugmentConfig | dict | None = None, seed: int | None = None, **kwargs):
            # float32 whatever the global policy: sampling positions need it, and the next layer casts.
            kwargs["dtype"] = "float32"
            super().__init__(**kwargs)
            self.config = config if isinstance(config, AugmentConfig) else AugmentConfig.from_dict(config or {})
            self.seed = seed
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, inputs, training=None):
            if not training or not self.config.enabled:
                return inputs
            return _augment(inputs, self.config, self.seed_generator)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            base = super().get_config()
            base.pop("dtype", None)
            return {**base, "config": self.config.to_dict(), "seed": self.seed}

    return Augmentation


def augmentation_layer(config: AugmentConfig, seed: int | None = None):
    """A Keras layer: (N, H, W, 3) 0-255 uint8 or float in, float32 out when training (random only when called
    with training=True; otherwise the batch passes unchanged)."""
    if not isinstance(config, AugmentConfig):
        raise TypeError(f"config must be an AugmentConfig, got {type(config).__name__}")
    return _layer_class()(config, seed=seed, name="augmentation")


def augment_batch(images: np.ndarray, config: AugmentConfig, seed: int = 0) -> np.ndarray:
    """uint8 or float (N, H, W, 3) 0-255 batch -> float32 augmented batch (numpy), reproducible by seed."""
    from keras import ops

    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be a batch (N, H, W, C), got shape {images.shape}")
    layer = augmentation_layer(config, seed=seed)
    return np.asarray(ops.convert_to_numpy(layer(images.astype(np.float32), training=True)), dtype=np.float32)
