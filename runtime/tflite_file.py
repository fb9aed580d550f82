"""What a .tflite file says about itself, read without TensorFlow: its input and output tensors, the
types of all its tensors, its operators, named metadata entries, and TFLite Model Metadata (the
"TFLITE_METADATA" entry that MediaPipe Model Maker and TFLite Support write: normalization, colour space,
and the labels file packed in a zip appended to the model).

Schemas: tensorflow/lite/schema/schema.fbs and tflite-support's metadata_schema.fbs; the numbers below
are their field indices.
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from dataclasses import dataclass, field

from .flatbuf import FlatBufferError, Table

TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool",
                7: "int16", 9: "int8", 10: "float64"}
BUILTIN_OPS = {3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 25: "SOFTMAX",
               114: "QUANTIZE"}
METADATA_NAME = "TFLITE_METADATA"
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union
_TENSOR_AXIS_LABELS = 2  # AssociatedFileType
_IMAGE_PROPERTIES = 2  # ContentProperties union
_COLOR_SPACES = {0: "unknown", 1: "RGB", 2: "GRAYSCALE"}


class TFLiteFileError(ValueError):
    """A file that is not a readable TFLite model."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None


@dataclass
class TFLiteMetadata:
    """The parts of TFLite Model Metadata an image classifier's import needs."""

    name: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    color_space: str | None = None
    labels_file: str | None = None
    labels: list[str] | None = None


@dataclass
class TFLiteFile:
    input: TensorInfo
    output: TensorInfo
    inputs: int
    outputs: int
    tensor_types: Counter = field(default_factory=Counter)  # over every tensor of the main subgraph
    activation_types: Counter = field(default_factory=Counter)  # over operator outputs
    operators: Counter = field(default_factory=Counter)
    metadata: dict[str, bytes] = field(default_factory=dict)  # named metadata buffers
    model_metadata: TFLiteMetadata | None = None


def _tensor(table: Table) -> TensorInfo:
    scale = zero = None
    quant = table.table(4)
    if quant is not None:
        scales, zeros = quant.scalars(2, "f"), quant.scalars(3, "q")
        if len(scales) == 1 and scales[0]:
            scale, zero = float(scales[0]), int(zeros[0]) if zeros else 0
    dtype = table.scalar(1, "b")
    return TensorInfo(table.string(3) or "", tuple(table.scalars(0, "i")), TENSOR_TYPES.get(dtype, f"type{dtype}"),
                      scale, zero)


def read_tflite(content: bytes) -> TFLiteFile:
    """Parse a .tflite file's bytes; TFLiteFileError when it is not one."""
    try:
        model = Table.root(content, b"TFL3")
        subgraphs = model.tables(2)
        if not subgraphs:
            raise TFLiteFileError("the model has no subgraph")
        graph = subgraphs[0]
        tensors = graph.tables(0)
        inputs, outputs = graph.scalars(1, "i"), graph.scalars(2, "i")
        if not inputs or not outputs or max(inputs + outputs) >= len(tensors) or min(inputs + outputs) < 0:
            raise TFLiteFileError("the model's inputs or outputs do not name its tensors")
        infos = [_tensor(t) for t in tensors]
        codes = []
        for code in model.tables(1):
            builtin = max(code.scalar(0, "b"), code.scalar(3, "i"))  # the deprecated byte, or the int32 code
            codes.append(BUILTIN_OPS.get(builtin, code.string(1) or f"op{builtin}"))
        operators, activations = Counter(), Counter()
        for op in graph.tables(3):
            index = op.scalar(0, "I")
            operators[codes[index] if index < len(codes) else f"op{index}"] += 1
            for out in op.scalars(2, "i"):
                if 0 <= out < len(infos):
                    activations[infos[out].dtype] += 1
        buffers = model.tables(4)
        metadata = {}
        for entry in model.tables(6):
            index = entry.scalar(1, "I")
            if index < len(buffers):
                metadata[entry.string(0) or ""] = bytes(buffers[index].bytes(0))
    except FlatBufferError as bad:
        raise TFLiteFileError(f"not a readable TFLite model: {bad}") from None
    result = TFLiteFile(input=infos[inputs[0]], output=infos[outputs[0]], inputs=len(inputs), outputs=len(outputs),
                        tensor_types=Counter(i.dtype for i in infos), activation_types=activations,
                        operators=operators, metadata=metadata)
    if METADATA_NAME in metadata:
        result.model_metadata = _model_metadata(metadata[METADATA_NAME], content)
    return result


def _model_metadata(buf: bytes, content: bytes) -> TFLiteMetadata:
    """TFLite Model Metadata of the first subgraph's first input and output."""
    try:
        root = Table.root(buf, b"M001")
        found = TFLiteMetadata(name=root.string(0))
        subgraphs = root.tables(3)
        if not subgraphs:
            return found
        inputs, outputs = subgraphs[0].tables(2), subgraphs[0].tables(3)
        if inputs:
            for unit in inputs[0].tables(4):
                options = unit.table(1)
                if unit.scalar(0, "B") == _NORMALIZATION_OPTIONS and options is not None:
                    found.mean, found.std = options.scalars(0, "f"), options.scalars(1, "f")
            content_table = inputs[0].table(3)
            if content_table is not None and content_table.scalar(0, "B") == _IMAGE_PROPERTIES:
                properties = content_table.table(1)
                if properties is not None:
                    found.color_space = _COLOR_SPACES.get(properties.scalar(0, "b"), "unknown")
        if outputs:
            for associated in outputs[0].tables(6):
                if associated.scalar(2, "b") == _TENSOR_AXIS_LABELS:
                    found.labels_file = associated.string(0)
                    break
    except FlatBufferError as bad:
        raise TFLiteFileError(f"its TFLite Model Metadata is damaged: {bad}") from None
    if found.labels_file:
        found.labels = _packed_labels(content, found.labels_file)
    return found


def _packed_labels(content: bytes, name: str) -> list[str] | None:
    """The labels file packed in the zip appended to the model (None when it is not there)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            text = archive.read(name).decode("utf-8")
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError):
        return None
    return parse_labels(text)


def parse_labels(text: str) -> list[str]:
    """One class name per line; surrounding spaces and blank lines (e.g. a trailing newline) dropped."""
    return [line.strip() for line in text.splitlines() if line.strip()]
