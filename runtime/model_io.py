"""What a model file takes and gives, and the conversions between that and the runtime's one format.

Everything before the engine is the same for every model: `prepare()` makes an (N, H, W, 3) uint8 RGB
batch of raw 0-255 pixels. What differs between model files is described by a ModelInterface (in
bundle.json) and applied here, once per batch, in one vectorised step:

- channel order: RGB, or BGR (reversed channels, as OpenCV- and Caffe-trained models expect);
- normalization: inside the graph (edgevision's own models), or per channel outside it,
  x = (pixel - mean) / std with pixel in 0-255, in the model's channel order;
- the input tensor's type: float (cast), uint8 fed as it is, or quantized (real = scale * (q - zero_point));
- layout: NHWC, or NCHW (transposed last, on the small prepared batch);
- the output: probabilities, or logits (a softmax is applied); quantized outputs are dequantized first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LAYOUTS = ("NHWC", "NCHW")
MODEL_CHANNEL_ORDERS = ("RGB", "BGR")
OUTPUT_KINDS = ("probabilities", "logits")
IN_GRAPH = "in_graph"


class EngineError(RuntimeError):
    """An engine that cannot load or run a model file (as opposed to a file that fails verification),
    e.g. one whose input tensor this runtime cannot feed."""


def quantize(values: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """Real values -> integers of `dtype` with real = scale * (q - zero_point), rounded and saturated."""
    info = np.iinfo(dtype)
    q = np.rint(values.astype(np.float32) * np.float32(1.0 / scale)) + np.float32(zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integers -> float32 real values, real = scale * (q - zero_point)."""
    return (values.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


def _three(name: str, values) -> tuple[float, float, float]:
    """One value per channel: a number or 1 or 3 numbers, finite."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    try:
        numbers = [float(v) for v in values if not isinstance(v, bool)]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != len(list(values)) or len(numbers) not in (1, 3) or not all(map(math.isfinite, numbers)):
        raise ValueError(f"Normalization {name} {values!r} is invalid; give 1 or 3 finite numbers (one per channel)")
    return tuple(numbers * 3) if len(numbers) == 1 else tuple(numbers)


@dataclass(frozen=True)
class Normalization:
    """x = (pixel - mean) / std per channel, pixels in 0-255, in the order the model takes its channels.
    E.g. mean 127.5, std 127.5 gives [-1, 1]; mean 0, std 255 gives [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _three("mean", self.mean))
        object.__setattr__(self, "std", _three("std", self.std))
        if not all(s > 0 for s in self.std):
            raise ValueError(f"Normalization std {list(self.std)} is invalid; every value must be > 0")

    @classmethod
    def from_scale_offset(cls, scale, offset) -> "Normalization":
        """x = pixel * scale + offset, the other common way to write the same thing."""
        scale, offset = _three("scale", scale), _three("offset", offset)
        if not all(s > 0 for s in scale):
            raise ValueError(f"Normalization scale {list(scale)} is invalid; every value must be > 0")
        return cls(tuple(-o / s for o, s in zip(offset, scale)), tuple(1.0 / s for s in scale))

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class ModelInterface:
    """How a model file takes its input and gives its output (see the module docstring). The default is
    what every model edgevision exports takes: raw 0-255 RGB pixels, NHWC, normalized inside the graph,
    probabilities out."""

    layout: str = "NHWC"
    channel_order: str = "RGB"
    normalization: Normalization | None = None  # None: inside the graph
    output: str = "probabilities"

    def __post_init__(self) -> None:
        for name, allowed in (("layout", LAYOUTS), ("channel_order", MODEL_CHANNEL_ORDERS), ("output", OUTPUT_KINDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Model {name} {getattr(self, name)!r} is invalid; allowed: {', '.join(allowed)}")
        if self.normalization is not None and not isinstance(self.normalization, Normalization):
            raise ValueError(f"normalization must be a Normalization or None (inside the graph), "
                             f"got {self.normalization!r}")

    @property
    def channels_axis(self) -> int:
        return 3 if self.layout == "NHWC" else 1

    def input_hw(self, shape) -> tuple:
        """(height, width) dimensions of an input shape in this layout."""
        return (shape[1], shape[2]) if self.layout == "NHWC" else (shape[2], shape[3])

    def describe(self) -> str:
        norm = ("normalized inside the graph" if self.normalization is None else
                f"(pixel - {_short(self.normalization.mean)}) / {_short(self.normalization.std)}")
        return f"{self.channel_order} {self.layout}, {norm}, {self.output} out"


def _short(values) -> str:
    values = [float(f"{v:.4g}") for v in values]
    return f"{values[0]:g}" if len(set(values)) == 1 else "[" + ", ".join(f"{v:g}" for v in values) + "]"


class InputCodec:
    """How a prepared uint8 RGB NHWC batch becomes the model's input tensor; decided once per engine.

    mode: "raw" (pixels fed as they are: no arithmetic), "cast" (to float), "normalize" (float, per-channel
    mean and std) or "quantize" (to the tensor's integers). Channel reversal and NCHW come on top.

    Every conversion of a uint8 pixel is a function of its value and channel alone, so normalization and
    quantization are one 256-entry table per channel, applied with cv2.LUT (a 224x224 NCHW frame: 0.07 ms,
    where numpy's broadcasting arithmetic and a float transpose take 1 ms).
    """

    def __init__(self, dtype, scale: float | None, zero_point: int | None, interface: ModelInterface, where: str):
        self.dtype = np.dtype(dtype)
        self.interface = interface
        self._flip = interface.channel_order == "BGR"
        self._nchw = interface.layout == "NCHW"
        norm = interface.normalization
        # real input = pixel * a + b, per channel in the model's order (identity when normalized in the graph)
        a = np.ones(3) if norm is None else 1.0 / np.asarray(norm.std)
        b = np.zeros(3) if norm is None else -np.asarray(norm.mean) / np.asarray(norm.std)
        quantized = bool(scale)  # TFLite reports scale 0.0 for "not quantized"
        pixels = np.arange(256, dtype=np.float64)[:, None]
        if self.dtype.kind == "f":
            self.mode = "cast" if norm is None else "normalize"
            table = pixels * a + b
        elif self.dtype.kind in "iu" and quantized:
            # q = round(real / scale + zero_point) = round(pixel * a' + b')
            a, b = a / scale, b / scale + zero_point
            table = np.clip(np.rint(pixels * a + b), np.iinfo(self.dtype).min, np.iinfo(self.dtype).max)
            # Within one step of the pixel itself: feed pixels as they are, as TFLite's image classifiers do
            # (e.g. scale 1/127.5, zero-point 127 for a model whose float input was (pixel - 127.5) / 127.5).
            raw = self.dtype == np.uint8 and float(np.max(np.abs(pixels * a + b - pixels))) <= 1.01
            self.mode = "raw" if raw else "quantize"
        elif self.dtype == np.uint8 and norm is None:
            self.mode = "raw"  # camera pixels go in as they are
            table = pixels * a
        else:
            raise EngineError(
                f"{where}: input tensor type {self.dtype} without quantization parameters cannot take "
                + ("normalized pixels" if self.dtype == np.uint8 else "0-255 pixels")
                + "; expected float, uint8 (raw pixels), or a quantized integer input"
            )
        # cv2.LUT writes float32 or 8-bit integers; other float types are cast after it.
        self._table_dtype = np.float32 if self.dtype.kind == "f" else self.dtype
        self._tables = [np.ascontiguousarray(table[:, c], dtype=self._table_dtype) for c in range(3)]
        self._table3 = np.ascontiguousarray(np.stack(self._tables, axis=1).reshape(256, 1, 3))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.mode == "raw" or (self.mode == "cast" and not self._flip):
            return self._plain(batch)
        return self._lookup(batch)

    def _plain(self, batch: np.ndarray) -> np.ndarray:
        """No arithmetic on the values: at most a cast, a channel reversal and a transpose."""
        x = batch[..., ::-1] if self._flip else batch
        if self._nchw:
            x = x.transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x)
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    def _lookup(self, batch: np.ndarray) -> np.ndarray:
        import cv2

        n, height, width = batch.shape[:3]
        shape = (n, 3, height, width) if self._nchw else (n, height, width, 3)
        out = np.empty(shape, self._table_dtype)
        for i in range(n):
            image = np.ascontiguousarray(batch[i])
            if self._nchw:
                planes = cv2.split(image)
                for c in range(3):  # model channel c comes from RGB channel 2 - c when the model takes BGR
                    cv2.LUT(planes[2 - c if self._flip else c], self._tables[c], dst=out[i, c])
            else:
                if self._flip:
                    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
                cv2.LUT(image, self._table3, dst=out[i])
        return out if out.dtype == self.dtype else out.astype(self.dtype)


class OutputCodec:
    """Model output -> float32 probabilities: dequantized where the output is quantized, softmax over
    logits."""

    def __init__(self, dtype, scale: float | None, zero_point: int | None, interface: ModelInterface, where: str):
        self.dtype = np.dtype(dtype)
        self.scale = scale
        self.zero_point = zero_point
        self.softmax = interface.output == "logits"
        if self.dtype.kind == "f":
            self.dequantize = False
        elif self.dtype.kind in "iu" and scale:
            self.dequantize = True
        else:
            raise EngineError(
                f"{where}: output tensor type {self.dtype} has no quantization parameters; "
                "cannot turn it into probabilities"
            )

    def __call__(self, values: np.ndarray) -> np.ndarray:
        if self.dequantize:
            values = dequantize(values, self.scale, self.zero_point)
        values = values.astype(np.float32, copy=False)
        if self.softmax:
            shifted = values - values.max(axis=1, keepdims=True)  # stable: the largest logit becomes 0
            exp = np.exp(shifted)
            values = exp / exp.sum(axis=1, keepdims=True)
        return values
