"""The bundle: the one contract between export and the device runtime.

A bundle is a folder with one file per model artifact and `bundle.json`, which says everything the
runtime needs and trusts: labels, the input spec, the preprocessing policy, and per artifact its sha256,
size, tensor types and the parity figures measured at export. `export/` writes it with `Bundle.to_dict`;
the runtime reads it with `Bundle.load` and refuses an artifact whose bytes do not match.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from .bundle_schema import bundle_problems
from .model_io import IN_GRAPH, ModelInterface, Normalization
from .preprocess import PreprocessPolicy

# Version 2 added the model interface (normalization outside the graph, NCHW, BGR, logits) for
# imported models; version 1 bundles (always RGB, NHWC, normalized in the graph) still load.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
BUNDLE_FILE = "bundle.json"
# The key under which every exported model file carries its bundle.json fields (ONNX metadata_props,
# TFLite Model.metadata), so a file alone says how to use it; `edgevision import` reads it back.
EMBEDDED_METADATA_KEY = "edgevision.bundle"
MAX_BUNDLE_JSON_BYTES = 16 << 20
FORMATS = ("tflite", "onnx")
TENSOR_DTYPES = ("float32", "float16", "uint8", "int8")


class ArtifactName(NamedTuple):
    format: str
    precision: str
    file: str


# Artifact kinds by name: what `edgevision export --formats` writes and what `edgevision import` may
# bring. bundle.json keys its artifacts by file name; every command also accepts the kind name.
ARTIFACT_NAMES = {
    "tflite_fp32": ArtifactName("tflite", "fp32", "model_fp32.tflite"),
    "tflite_fp16": ArtifactName("tflite", "fp16", "model_fp16.tflite"),
    "tflite_dynamic": ArtifactName("tflite", "dynamic_int8", "model_dynamic.tflite"),
    "tflite_int8": ArtifactName("tflite", "int8", "model_int8.tflite"),
    "onnx_fp32": ArtifactName("onnx", "fp32", "model.onnx"),
    "onnx_fp16": ArtifactName("onnx", "fp16", "model_fp16.onnx"),
    "onnx_dynamic": ArtifactName("onnx", "dynamic_int8", "model_dynamic.onnx"),
    "onnx_int8": ArtifactName("onnx", "int8", "model_int8.onnx"),
    # Signed, symmetric int8 QDQ: the form TensorRT's explicit quantization takes (Jetson).
    "onnx_int8_tensorrt": ArtifactName("onnx", "int8_symmetric", "model_int8_tensorrt.onnx"),
}


def artifact_file(fmt: str, precision: str) -> str:
    """The file name a bundle gives an artifact of this format and precision."""
    for name in ARTIFACT_NAMES.values():
        if (name.format, name.precision) == (fmt, precision):
            return name.file
    raise ValueError(f"No artifact kind is {fmt} {precision}")


class BundleError(ValueError):
    """A bundle that is missing, malformed, or whose files do not match what bundle.json says."""


def _interface(data: dict) -> ModelInterface:
    """The model interface bundle.json describes (version 1 has only the in-graph, RGB, NHWC one)."""
    norm = data.get("normalization", IN_GRAPH)
    return ModelInterface(
        layout=data["input"]["layout"].upper(),
        channel_order=data["input"]["channel_order"].upper(),
        normalization=None if norm == IN_GRAPH else Normalization(norm["mean"], norm["std"]),
        output=data.get("output", "probabilities"),
    )


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """dtype of a model input or output, and its quantization (real = scale * (q - zero_point))."""

    dtype: str = "float32"
    scale: float | None = None
    zero_point: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in TENSOR_DTYPES:
            raise BundleError(f"Unknown tensor dtype {self.dtype!r}; allowed: {', '.join(TENSOR_DTYPES)}")


@dataclass(frozen=True)
class Artifact:
    """One model file of the bundle."""

    file: str
    format: str
    precision: str
    sha256: str
    bytes: int
    input: TensorSpec = field(default_factory=TensorSpec)
    output: TensorSpec = field(default_factory=TensorSpec)
    # Parity and speed measured at export on held-out images through the runtime's own code.
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise BundleError(f"Artifact {self.file!r} has unknown format {self.format!r}; allowed: {', '.join(FORMATS)}")
        if os.path.basename(self.file) != self.file:
            raise BundleError(f"Artifact file {self.file!r} must be a plain file name inside the bundle folder")

    @classmethod
    def from_file(cls, path: str | os.PathLike, fmt: str, precision: str, *, input: TensorSpec | None = None,
                  output: TensorSpec | None = None, metrics: dict | None = None) -> "Artifact":
        """The entry for a model file already written in the bundle folder: its sha256 and size, and
        its tensor types as the file declares them (TFLite); ONNX graphs say nothing of quantization,
        so theirs are given (default float32, as every exported ONNX model takes and gives)."""
        path = Path(path)
        if fmt == "tflite" and (input is None or output is None):
            from .tflite_file import read_tflite

            model = read_tflite(path.read_bytes())
            input = input or TensorSpec(model.input.dtype, model.input.scale, model.input.zero_point)
            output = output or TensorSpec(model.output.dtype, model.output.scale, model.output.zero_point)
        return cls(file=path.name, format=fmt, precision=precision, sha256=file_sha256(path),
                   bytes=path.stat().st_size, input=input or TensorSpec(), output=output or TensorSpec(),
                   metrics=dict(metrics or {}))

    @classmethod
    def from_dict(cls, data: dict) -> "Artifact":
        data = dict(data)
        data["input"] = TensorSpec(**data.get("input", {}))
        data["output"] = TensorSpec(**data.get("output", {}))
        return cls(**data)


@dataclass
class Bundle:
    labels: list[str]
    preprocess: PreprocessPolicy
    artifacts: dict[str, Artifact]
    default_artifact: str
    # How the model files take pixels and give scores; the default is every edgevision export's.
    interface: ModelInterface = field(default_factory=ModelInterface)
    provenance: dict = field(default_factory=dict)
    # Golden predictions for `edgevision verify` (runtime/golden.py): file, sha256, bytes, images, artifacts.
    golden: dict | None = None
    schema_version: int = SCHEMA_VERSION
    folder: Path | None = None

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise BundleError(f"A bundle needs at least 2 labels, got {self.labels!r}")
        if self.default_artifact not in self.artifacts:
            raise BundleError(
                f"Default artifact {self.default_artifact!r} is not one of the bundle's artifacts: "
                f"{', '.join(self.artifacts) or 'none'}"
            )

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "labels": list(self.labels),
            "input": {
                "height": self.preprocess.height,
                "width": self.preprocess.width,
                "channels": 3,
                "channel_order": self.interface.channel_order,
                "layout": self.interface.layout,
                "value_range": [0, 255],
            },
            "preprocess": self.preprocess.to_dict(),
            "normalization": IN_GRAPH if self.interface.normalization is None else self.interface.normalization.to_dict(),
            "output": self.interface.output,
            "default_artifact": self.default_artifact,
            "artifacts": {name: asdict(a) for name, a in self.artifacts.items()},
            "provenance": self.provenance,
            **({"golden": self.golden} if self.golden else {}),
        }

    @classmethod
    def from_dict(cls, data: dict, folder: Path | None = None) -> "Bundle":
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version not in READABLE_VERSIONS:
            raise BundleError(f"Unsupported bundle schema version {version!r}; this edgevision reads versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
        problems = bundle_problems(data, FORMATS, TENSOR_DTYPES, READABLE_VERSIONS)
        if problems:
            raise BundleError(f"bundle.json has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
        try:
            return cls(
                labels=list(data["labels"]),
                preprocess=PreprocessPolicy.from_dict(data["preprocess"]),
                artifacts={name: Artifact.from_dict(a) for name, a in data["artifacts"].items()},
                default_artifact=data["default_artifact"],
                interface=_interface(data),
                provenance=data.get("provenance", {}),
                golden=data.get("golden"),
                folder=folder,
            )
        except KeyError as missing:
            raise BundleError(f"bundle.json is missing the key {missing}") from None
        except BundleError:
            raise
        except (TypeError, ValueError) as bad:  # PreprocessPolicy names the bad value
            raise BundleError(f"bundle.json has a malformed entry: {bad}") from None

    def write(self, folder: str | os.PathLike | None = None) -> Path:
        """Write bundle.json into `folder` (default: the folder the bundle belongs to)."""
        folder = Path(folder) if folder is not None else self.folder
        if folder is None:
            raise BundleError("This bundle has no folder to write bundle.json into")
        path = folder / BUNDLE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Bundle":
        folder = Path(folder)
        path = folder / BUNDLE_FILE
        if not folder.is_dir():
            raise BundleError(f"Bundle folder '{folder}' does not exist")
        if not path.is_file():
            raise BundleError(f"'{folder}' is not a bundle: it has no {BUNDLE_FILE} (write one with `edgevision export`)")
        if path.stat().st_size > MAX_BUNDLE_JSON_BYTES:
            raise BundleError(f"'{path}' is {path.stat().st_size} bytes; a bundle.json is far smaller "
                              f"(at most {MAX_BUNDLE_JSON_BYTES >> 20} MB)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as bad:
            raise BundleError(f"'{path}' is not valid JSON: {bad}") from None
        except RecursionError:
            raise BundleError(f"'{path}' is nested too deeply to be a bundle.json") from None
        return cls.from_dict(data, folder=folder)

    def artifact_key(self, name: str | None = None) -> str:
        """The bundle.json key of an artifact named by its key (file name) or by its kind name
        (e.g. tflite_int8); None: the default artifact."""
        name = name or self.default_artifact
        if name in self.artifacts:
            return name
        key = self._alias_key(name) if name in ARTIFACT_NAMES else None
        if key is not None:
            return key
        # Each artifact's key, with the kind name that also reaches it: "model_int8.tflite (tflite_int8)".
        aliases = {self._alias_key(alias): alias for alias in ARTIFACT_NAMES if alias not in self.artifacts}
        have = ", ".join(f"{key} ({aliases[key]})" if key in aliases else key for key in self.artifacts)
        raise BundleError(f"Unknown artifact {name!r}; this bundle has: {have}")

    def _alias_key(self, alias: str) -> str | None:
        kind = ARTIFACT_NAMES[alias]
        if kind.file in self.artifacts:
            return kind.file
        matches = [key for key, a in self.artifacts.items() if (a.format, a.precision) == (kind.format, kind.precision)]
        return matches[0] if len(matches) == 1 else None

    def artifact(self, name: str | None = None) -> Artifact:
        return self.artifacts[self.artifact_key(name)]

    def verified_path(self, name: str | None = None) -> Path:
        """Path of an artifact after checking its size and sha256; a missing, truncated or tampered
        file is refused here, before any engine parses it."""
        artifact = self.artifact(name)
        if self.folder is None:
            raise BundleError("This bundle was not loaded from a folder; it has no files to verify")
        path = self.folder / artifact.file
        if not path.is_file():
            raise BundleError(f"Model file '{path}' is missing")
        size = path.stat().st_size
        if size != artifact.bytes:
            raise BundleError(f"Model file '{path}' is {size} bytes, bundle.json says {artifact.bytes}: truncated or replaced")
        if file_sha256(path) != artifact.sha256:
            raise BundleError(f"Model file '{path}' does not match its sha256 in bundle.json: modified or corrupt")
        return path
