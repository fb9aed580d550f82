"""Tiny feature extractors for small grey pictures (28x28 Fashion-MNIST), trained from scratch: the
models `edgevision.train.study` compares. They plug into `build_classifier` in place of a backbone, so
`train()` trains them like any other model and the head is the same for all:

    mlp            Flatten                                   (the head's hidden layer is the MLP's)
    small_cnn      [Conv 3x3 -> BatchNorm -> ReLU -> MaxPool 2] x 2 -> Flatten
    small_cnn_gap  the same convolutions -> GlobalAveragePooling

`batchnorm=False` drops the BatchNormalization (the convolutions then get a bias). They are kept out of
`backbones.BACKBONES`, the closed list of deployable backbones the CLI offers: these exist to show why
the defaults are what they are, not to be deployed. No pretrained weights exist for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backbones import BackboneSpec

CONV_FILTERS = (32, 64)


@dataclass(frozen=True)
class SmallModel:
    name: str
    convolutions: bool  # the two conv blocks in front of the ending
    ending: str  # "flatten" or "gap"

    def spec(self) -> BackboneSpec:
        # 0-255 -> 0-1; 28 px is Fashion-MNIST's native size, 8 px leaves a 2x2 map after two poolings.
        return BackboneSpec(name=self.name, alphas=(1.0,), min_size=8, max_size=224, scale=1 / 255, offset=0.0,
                            pretrained_sizes=(), imagenet_source="none: trained from scratch only")

    def build(self, input_size: int, batchnorm: bool = True):
        import keras

        inputs = keras.Input((input_size, input_size, 3), dtype="float32", name="features_in")
        x = inputs
        if self.convolutions:
            for i, filters in enumerate(CONV_FILTERS, start=1):
                # With BatchNorm the convolution's bias is redundant (BN's beta shifts the same way).
                x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=not batchnorm, name=f"conv{i}")(x)
                if batchnorm:
                    x = keras.layers.BatchNormalization(name=f"conv{i}_bn")(x)
                x = keras.layers.ReLU(name=f"conv{i}_relu")(x)
                x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
        if self.ending == "gap":
            x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        else:
            x = keras.layers.Flatten(name="flatten")(x)
        return keras.Model(inputs, x, name=self.name)


SMALL_MODELS: dict[str, SmallModel] = {
    "mlp": SmallModel("mlp", convolutions=False, ending="flatten"),
    "small_cnn": SmallModel("small_cnn", convolutions=True, ending="flatten"),
    "small_cnn_gap": SmallModel("small_cnn_gap", convolutions=True, ending="gap"),
}
