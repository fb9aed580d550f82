"""Build the classifier: raw 0-255 RGB in, class probabilities out.

    image (H, W, 3) float32, 0-255  ->  Rescaling to [-1, 1]  ->  backbone (global average pool)
    ->  BatchNormalization  ->  Dropout  ->  Dense softmax

Normalization is the first layer of the graph, so every exported artifact takes camera pixels as they
are and no device has to know the backbone's normalization.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass

TRANSFER_MODES = ("head", "scratch")


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry: how to build the backbone and which settings it accepts."""

    name: str
    alphas: tuple[float, ...]
    min_size: int
    max_size: int
    # Scaling that maps 0-255 pixels to what the backbone's pretrained weights expect: x * scale + offset.
    scale: float
    offset: float


BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(
        name="mobilenet_v2", alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4), min_size=32, max_size=224,
        scale=1 / 127.5, offset=-1.0,
    ),
}


def _choice_error(kind: str, value: object, choices) -> ValueError:
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"Unknown {kind} {value!r}; choose one of {', '.join(choices)}{hint}")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "mobilenet_v2"
    alpha: float = 0.35
    input_size: int = 96
    # "imagenet" (Keras' download, needs network once), "none" (random init), or a path to a
    # weights file saved by Keras for this backbone.
    weights: str = "imagenet"
    mode: str = "head"
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise _choice_error("backbone", self.backbone, BACKBONES)
        spec = BACKBONES[self.backbone]
        if self.alpha not in spec.alphas:
            raise ValueError(
                f"alpha {self.alpha} is not available for {self.backbone}; choose one of {', '.join(map(str, spec.alphas))}"
            )
        if not spec.min_size <= self.input_size <= spec.max_size:
            raise ValueError(
                f"Input size {self.input_size} is outside {spec.min_size}-{spec.max_size} for {self.backbone}"
            )
        if self.mode not in TRANSFER_MODES:
            raise _choice_error("transfer mode", self.mode, TRANSFER_MODES)
        if self.weights not in ("imagenet", "none") and not os.path.isfile(self.weights):
            raise ValueError(f"Weights {self.weights!r} are neither 'imagenet', 'none' nor an existing file")
        if self.mode == "head" and self.weights == "none":
            raise ValueError(
                "Mode 'head' trains only a new head on a frozen backbone, which needs pretrained weights; "
                "use --weights imagenet or a weights file, or --mode scratch"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Dropout {self.dropout} must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


def build_classifier(config: ModelConfig, num_classes: int):
    """A Keras model for `num_classes` classes; in mode "head" the backbone is frozen and its
    BatchNorm layers run in inference mode (their statistics describe ImageNet, not this batch)."""
    import keras

    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got {num_classes}")
    spec = BACKBONES[config.backbone]
    size = config.input_size
    keras_weights = "imagenet" if config.weights == "imagenet" else None
    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(spec.scale, offset=spec.offset, name="normalize")(inputs)
    backbone = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=config.alpha, include_top=False,
        weights=keras_weights, pooling="avg",
    )
    if config.weights not in ("imagenet", "none"):
        backbone.load_weights(config.weights)
    if config.mode == "head":
        backbone.trainable = False
        x = backbone(x, training=False)
    else:
        x = backbone(x)
    x = keras.layers.BatchNormalization(name="head_bn")(x)
    x = keras.layers.Dropout(config.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"edgevision_{config.backbone}")


def trainable_batchnorms(model) -> list:
    """The BatchNormalization layers whose statistics this training run updates."""
    import keras

    found = []

    def visit(layer, parent_trainable: bool) -> None:
        trainable = parent_trainable and layer.trainable
        if isinstance(layer, keras.layers.BatchNormalization) and trainable:
            found.append(layer)
        for child in getattr(layer, "layers", []):
            visit(child, trainable)

    for layer in model.layers:
        visit(layer, True)
    return found


def momentum_for(steps_per_epoch: int) -> float:
    """BatchNorm momentum for a run with this many steps per epoch.

    Keras' MobileNets ship momentum 0.999: the moving statistics need thousands of steps to forget
    their initial values, so on a few hundred steps the inference-mode model is at chance level
    while training accuracy looks fine. An averaging window of about half an epoch keeps the
    per-epoch validation figures meaningful; `recalibrate_batchnorm` then makes them exact.
    """
    return min(0.99, max(0.9, 1.0 - 2.0 / max(1, steps_per_epoch)))


def recalibrate_batchnorm(model, images, batch_size: int = 64, max_batches: int = 50) -> int:
    """Re-estimate the moving mean/variance of every trainable BatchNorm layer as the plain average
    over batches of training images ("precise BN"), so the saved model's inference-mode statistics
    describe its final weights. Returns the number of batches used."""
    import numpy as np

    layers = trainable_batchnorms(model)
    if not layers or len(images) == 0:
        return 0
    saved = [layer.momentum for layer in layers]
    starts = list(range(0, len(images), batch_size))[:max_batches]
    # Drop a ragged last batch: tiny batches give noisy variances.
    if len(starts) > 1 and len(images) - starts[-1] < batch_size:
        starts = starts[:-1]
    try:
        for k, start in enumerate(starts):
            # momentum k/(k+1) turns the exponential average into a cumulative mean over batches.
            for layer in layers:
                layer.momentum = k / (k + 1)
            batch = np.asarray(images[start : start + batch_size], dtype="float32")
            model(batch, training=True)
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
    return len(starts)
