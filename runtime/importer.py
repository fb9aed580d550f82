"""`edgevision import`: a classifier trained elsewhere (.tflite or .onnx) becomes a bundle that run,
evaluate, verify and deploy accept.

What the model file says is read and used: its input shape (size, layout), tensor types and quantization,
TFLite Model Metadata (labels, normalization, colour space: what MediaPipe Model Maker writes), ONNX
metadata (Ultralytics' `names` and `imgsz`), and edgevision's own embedded metadata. Flags fill what
the file does not say; a flag that contradicts the file is an error. Only the runtime is needed (no
TensorFlow), so a model can be imported on the device itself.

Everything is checked before anything is written; the bundle is written atomically with a golden set
(the model's answers on this machine) so `edgevision verify` can check a device against it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .atomic import atomic_directory, check_output_folder, refuse_inputs
from .bundle import EMBEDDED_METADATA_KEY, TENSOR_DTYPES, Artifact, Bundle, TensorSpec, artifact_file, file_sha256
from .model_io import LAYOUTS, MODEL_CHANNEL_ORDERS, OUTPUT_KINDS, ModelInterface, Normalization
from .preprocess import IMAGE_EXTENSIONS, RESIZE_MODES, ImageDecodeError, PreprocessPolicy, load_and_prepare
from .tflite_file import TFLiteFileError, parse_labels, read_tflite

log = logging.getLogger("edgevision")

MODEL_SUFFIXES = {".tflite": "tflite", ".onnx": "onnx"}
MAX_MODEL_BYTES = 2 << 30  # protobuf's and flatbuffers' own limit
GOLDEN_IMAGES = 16
PRECISIONS = ("fp32", "fp16", "dynamic_int8", "int8")


class ModelImportError(ValueError):
    """A model file or flags that cannot make a bundle; the message says which and why."""



@dataclass
class ImportOptions:
    """What the user says about the model; None: read it from the file (or it is not needed)."""

    labels: str | os.PathLike | None = None  # a file, one class name per line
    input_size: tuple[int, int] | None = None  # (height, width)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None
    layout: str | None = None  # "nhwc" | "nchw"
    channel_order: str | None = None  # "rgb" | "bgr"
    output: str | None = None  # "probabilities" | "logits"
    precision: str | None = None
    resize: str = "center_crop"
    golden_images: str | os.PathLike | None = None  # a folder of photos for the golden set


@dataclass
class ModelFacts:
    """What the model file itself says (None where it is silent)."""

    format: str
    shape: list  # the input's dims; str or None where dynamic
    input_dtype: str
    input_scale: float | None
    input_zero_point: int | None
    output_shape: list
    output_dtype: str
    output_scale: float | None
    output_zero_point: int | None
    precision: str | None = None
    labels: list[str] | None = None
    normalization: Normalization | None = None
    in_graph: bool = False  # the file says it normalizes its own input (edgevision's own models)
    input_size: tuple[int, int] | None = None
    color_space: str | None = None
    said: dict = field(default_factory=dict)  # what was read, for the bundle's provenance


@dataclass
class ImportResult:
    bundle: Bundle
    out_dir: Path
    facts: ModelFacts
    interface: ModelInterface
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading the file


def _read_tflite_facts(path: Path, content: bytes) -> ModelFacts:
    try:
        model = read_tflite(content)
    except TFLiteFileError as bad:
        raise ModelImportError(f"'{path}' is {bad}") from None
    _one_in_one_out(path, model.inputs, model.outputs)
    facts = ModelFacts("tflite", list(model.input.shape), model.input.dtype, model.input.scale, model.input.zero_point,
                       list(model.output.shape), model.output.dtype, model.output.scale, model.output.zero_point)
    quantized = model.activation_types["int8"] + model.activation_types["uint8"]
    if quantized > model.activation_types["float32"]:
        facts.precision = "int8"
    elif model.tensor_types["int8"] or model.tensor_types["uint8"]:
        facts.precision = "dynamic_int8"
    elif model.tensor_types["float16"]:
        facts.precision = "fp16"
    else:
        facts.precision = "fp32"
    meta = model.model_metadata
    if meta is not None:
        facts.said["tflite_metadata"] = {"name": meta.name, "mean": meta.mean, "std": meta.std,
                                         "color_space": meta.color_space, "labels_file": meta.labels_file}
        if meta.labels_file and meta.labels is None:
            raise ModelImportError(f"'{path}' names the labels file {meta.labels_file!r} in its metadata but does not "
                               "contain it (the zip appended to the model is missing or damaged)")
        facts.labels = meta.labels
        if meta.mean and meta.std:
            facts.normalization = _normalization(path, meta.mean, meta.std, "its TFLite metadata")
        facts.color_space = meta.color_space
    if EMBEDDED_METADATA_KEY in model.metadata:
        _read_edgevision(path, facts, model.metadata[EMBEDDED_METADATA_KEY].decode("utf-8", "replace"))
    return facts


def _read_onnx_facts(path: Path) -> ModelFacts:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelImportError("Importing an ONNX model needs onnxruntime: pip install 'edgevision[onnx]'") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types
        raise ModelImportError(f"'{path}' is not an ONNX model onnxruntime can load: {error}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    _one_in_one_out(path, len(inputs), len(outputs))
    types = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
             "tensor(int8)": "int8", "tensor(double)": "float64"}
    inp, out = inputs[0], outputs[0]
    if inp.type not in types or out.type not in types:
        raise ModelImportError(f"'{path}' has tensor types {inp.type} -> {out.type}; a classifier takes and gives "
                           f"one of {', '.join(types)}")
    facts = ModelFacts("onnx", list(inp.shape), types[inp.type], None, None, list(out.shape), types[out.type],
                       None, None)
    facts.precision = _onnx_precision(path)
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    if metadata:
        facts.said["onnx_metadata_keys"] = sorted(metadata)
    if EMBEDDED_METADATA_KEY in metadata:
        _read_edgevision(path, facts, metadata[EMBEDDED_METADATA_KEY])
    elif "names" in metadata:  # Ultralytics: names "{0: 'cat', ...}", imgsz "[224, 224]", input scaled to 0-1
        facts.labels = _ultralytics_names(path, metadata["names"])
        if "imgsz" in metadata:
            size = _literal(path, "imgsz", metadata["imgsz"])
            if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size):
                facts.input_size = (size[0], size[1])
        if "ultralytics" in metadata.get("author", "").lower() or "ultralytics" in metadata.get("description", "").lower():
            facts.normalization = Normalization(0.0, 255.0)
        facts.said["ultralytics"] = {"names": len(facts.labels), "imgsz": metadata.get("imgsz")}
    elif "labels" in metadata:
        text = metadata["labels"]
        try:
            labels = json.loads(text)
        except json.JSONDecodeError:
            labels = parse_labels(text)
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ModelImportError(f"'{path}': its metadata 'labels' is not a list of names: {text[:80]!r}")
        facts.labels = labels
    return facts


def _onnx_precision(path: Path) -> str | None:
    """From the graph's operators and initializers (needs the onnx package; None without it)."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 (onnx raises DecodeError and others); onnxruntime already loaded it
        return None
    ops = {node.op_type for node in model.graph.node}
    if "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops or "ConvInteger" in ops:
        return "dynamic_int8"
    if ops & {"QuantizeLinear", "QLinearConv", "QLinearMatMul"}:
        return "int8"
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        return "fp16"
    return "fp32"


def _literal(path: Path, key: str, text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ModelImportError(f"'{path}': its metadata {key!r} cannot be read: {text[:80]!r}") from None


def _ultralytics_names(path: Path, text: str) -> list[str]:
    names = _literal(path, "names", text)
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        return [str(names[i]) for i in range(len(names))]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise ModelImportError(f"'{path}': its metadata 'names' is not a list of class names: {text[:80]!r}")


def _read_edgevision(path: Path, facts: ModelFacts, text: str) -> None:
    """A model file exported by edgevision: labels, preprocessing and in-graph normalization."""
    try:
        meta = json.loads(text)
        facts.labels = list(meta["labels"])
        facts.input_size = (int(meta["input"]["height"]), int(meta["input"]["width"]))
        facts.in_graph = meta.get("normalization", "in_graph") == "in_graph"
        if not facts.in_graph:
            norm = meta["normalization"]
            facts.normalization = _normalization(path, norm["mean"], norm["std"], "its edgevision metadata")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ModelImportError(f"'{path}': its edgevision metadata is damaged") from None
    facts.said["edgevision_metadata"] = True


def _one_in_one_out(path: Path, inputs: int, outputs: int) -> None:
    if inputs != 1 or outputs != 1:
        raise ModelImportError(f"'{path}' has {inputs} input(s) and {outputs} output(s); an image classifier has one of "
                           "each (detection and multi-head models are not classifiers)")


def _normalization(path, mean, std, where: str) -> Normalization:
    try:
        # float32 in the file: 123.675 reads back as 123.67500305; keep the digits that were meant
        return Normalization([float(f"{v:.6g}") for v in mean], [float(f"{v:.6g}") for v in std])
    except ValueError as bad:
        raise ModelImportError(f"'{path}': {where} has an unusable normalization: {bad}") from None


# ---------------------------------------------------------------- deciding the interface


def _dim(value) -> int | None:
    return int(value) if isinstance(value, (int, np.integer)) and value > 0 else None


def _layout(path: Path, facts: ModelFacts, wanted: str | None) -> str:
    shape = facts.shape
    if len(shape) != 4:
        raise ModelImportError(f"'{path}' takes input of shape {shape}; an image classifier takes (batch, height, width, 3) "
                           "or (batch, 3, height, width)")
    nhwc, nchw = _dim(shape[3]) == 3, _dim(shape[1]) == 3
    if wanted is not None:
        wanted = wanted.upper()
        if wanted not in LAYOUTS:
            raise ModelImportError(f"--layout {wanted.lower()!r} is invalid; use nhwc or nchw")
        if (wanted == "NHWC" and not nhwc) or (wanted == "NCHW" and not nchw):
            raise ModelImportError(f"--layout {wanted.lower()} contradicts '{path}', whose input shape is {shape}")
        return wanted
    if nhwc and nchw:
        raise ModelImportError(f"'{path}' takes input of shape {shape}, which could be NHWC or NCHW: pass --layout")
    if nhwc or nchw:
        return "NHWC" if nhwc else "NCHW"
    channels = [d for d in (shape[1], shape[3]) if _dim(d)]
    if 1 in channels:
        raise ModelImportError(f"'{path}' takes a 1-channel (greyscale) input of shape {shape}; edgevision feeds 3-channel "
                           "colour images")
    raise ModelImportError(f"'{path}' takes input of shape {shape}: no axis has 3 channels; pass --layout if its "
                       "channel axis is dynamic")


def _input_size(path: Path, facts: ModelFacts, layout: str, wanted: tuple[int, int] | None) -> tuple[int, int]:
    hw = (facts.shape[1], facts.shape[2]) if layout == "NHWC" else (facts.shape[2], facts.shape[3])
    static = tuple(_dim(d) for d in hw)
    if wanted is not None:
        if any(s is not None and s != w for s, w in zip(static, wanted)):
            raise ModelImportError(f"--input-size {wanted[0]}x{wanted[1]} contradicts '{path}', which takes "
                               f"{hw[0]}x{hw[1]} (height x width)")
        if facts.input_size and facts.input_size != tuple(wanted) and None in static:
            raise ModelImportError(f"--input-size {wanted[0]}x{wanted[1]} contradicts the model's metadata "
                               f"({facts.input_size[0]}x{facts.input_size[1]})")
        return tuple(wanted)
    if None not in static:
        return static  # type: ignore[return-value]
    if facts.input_size:
        return facts.input_size
    raise ModelImportError(f"'{path}' leaves its input size open ({hw[0]}x{hw[1]}); pass --input-size HxW "
                       "(the size it was trained at)")


def _labels(path: Path, facts: ModelFacts, labels_file, classes: int) -> list[str]:
    labels = facts.labels
    if labels_file is not None:
        labels_file = Path(labels_file)
        try:
            given = parse_labels(labels_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as bad:
            raise ModelImportError(f"Cannot read the labels file '{labels_file}': {bad}") from None
        if labels is not None and given != labels:
            raise ModelImportError(f"--labels '{labels_file}' ({len(given)} names: {_few(given)}) contradicts the labels "
                               f"in '{path}' ({len(labels)} names: {_few(labels)}); leave --labels out to use the "
                               "model's")
        labels, source = given, f"'{labels_file}'"
    elif labels is None:
        raise ModelImportError(f"'{path}' does not carry its labels: pass --labels FILE (one class name per line, in the "
                           f"order of the model's {classes} outputs)")
    else:
        source = f"'{path}'"
    if len(labels) != classes:
        raise ModelImportError(f"The labels from {source} are {len(labels)} names but the model outputs {classes} "
                           "classes; give one name per output, in order")
    if len(set(labels)) != len(labels):
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        raise ModelImportError(f"The labels from {source} repeat {', '.join(map(repr, repeated))}; every class needs its "
                           "own name")
    if len(labels) < 2:
        raise ModelImportError(f"The model outputs {classes} class(es); a classifier needs at least 2")
    return labels


def _few(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def _decide_normalization(path: Path, facts: ModelFacts, options: ImportOptions) -> Normalization | None:
    """None: the model normalizes its own input (or takes raw pixels)."""
    given = None
    if (options.mean is None) != (options.std is None):
        raise ModelImportError("--mean and --std go together (pixels in 0-255: x = (pixel - mean) / std)")
    if (options.scale is None) != (options.offset is None):
        raise ModelImportError("--scale and --offset go together (x = pixel * scale + offset)")
    if options.mean is not None and options.scale is not None:
        raise ModelImportError("Give either --mean/--std or --scale/--offset, not both: they say the same thing")
    try:
        if options.mean is not None:
            if max(map(abs, options.mean)) <= 1 and max(options.std) <= 1 and max(options.std) < 0.5:
                raise ModelImportError(
                    f"--mean {_csv(options.mean)} --std {_csv(options.std)} look like values for pixels in 0-1; "
                    "edgevision's are in 0-255 pixel units: multiply both by 255 (e.g. ImageNet's are "
                    "--mean 123.675,116.28,103.53 --std 58.395,57.12,57.375), or use --scale/--offset")
            given = Normalization(options.mean, options.std)
        elif options.scale is not None:
            given = Normalization.from_scale_offset(options.scale, options.offset)
    except ValueError as bad:
        raise ModelImportError(str(bad)) from None
    if facts.input_dtype == "uint8":
        # Quantized image models take the pixels as they are (the TFLite convention; their quantization
        # parameters hold the float model's normalization), so nothing is applied outside the graph.
        if given is not None and not _is_identity(given):
            raise ModelImportError(f"'{path}' takes uint8 pixels, which are fed as they are; --mean/--std and "
                               "--scale/--offset apply to models with float input")
        if facts.input_scale:
            implied = Normalization(float(facts.input_zero_point or 0), 1.0 / facts.input_scale)
            return None if _is_identity(implied) else implied
        return None
    from_file = facts.normalization
    if facts.in_graph:
        from_file = Normalization(0.0, 1.0)
    if given is not None and from_file is not None and not _same(given, from_file):
        raise ModelImportError(f"The normalization given ({_describe(given)}) contradicts '{path}', which says "
                           f"{_describe(from_file)}; leave the flags out to use the model's")
    chosen = given or from_file
    if chosen is None:
        raise ModelImportError(
            f"'{path}' takes {facts.input_dtype} input and does not say how pixels are normalized: pass --mean/--std "
            "in 0-255 pixel units (e.g. --mean 127.5 --std 127.5 for [-1, 1]; --mean 0 --std 255 for [0, 1]; "
            "--mean 0 --std 1 when the model takes raw 0-255 pixels)")
    return None if _is_identity(chosen) else chosen


def _is_identity(norm: Normalization) -> bool:
    return _same(norm, Normalization(0.0, 1.0))


def _same(a: Normalization, b: Normalization) -> bool:
    return np.allclose(a.mean, b.mean, rtol=1e-4, atol=1e-3) and np.allclose(a.std, b.std, rtol=1e-4, atol=1e-6)


def _describe(norm: Normalization) -> str:
    return f"mean {_csv(norm.mean)}, std {_csv(norm.std)}"


def _csv(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def _channel_order(path: Path, facts: ModelFacts, wanted: str | None) -> str:
    if facts.color_space == "GRAYSCALE":
        raise ModelImportError(f"'{path}' says (in its metadata) it takes greyscale images; edgevision feeds colour")
    if wanted is None:
        return "RGB"
    wanted = wanted.upper()
    if wanted not in MODEL_CHANNEL_ORDERS:
        raise ModelImportError(f"--channel-order {wanted.lower()!r} is invalid; use rgb or bgr")
    if facts.color_space == "RGB" and wanted == "BGR":
        raise ModelImportError(f"--channel-order bgr contradicts '{path}', whose metadata says it takes RGB")
    return wanted


def _output_kind(path: Path, facts: ModelFacts, wanted: str | None, raw: np.ndarray) -> tuple[str, str]:
    """(kind, why): probabilities when every answer on the golden images is non-negative and sums to 1."""
    if len(facts.output_shape) != 2:
        raise ModelImportError(f"'{path}' gives output of shape {facts.output_shape}; a classifier gives (batch, classes)")
    sums = raw.sum(axis=1)
    slack = 1e-3 + raw.shape[1] * float(facts.output_scale or 0.0)  # quantized outputs round each class
    looks = bool(raw.min() >= -1e-6 and np.all(np.abs(sums - 1.0) <= slack))
    if wanted is not None:
        if wanted not in OUTPUT_KINDS:
            raise ModelImportError(f"--output {wanted!r} is invalid; use {' or '.join(OUTPUT_KINDS)}")
        if wanted == "probabilities" and not looks:
            raise ModelImportError(f"--output probabilities contradicts '{path}': its outputs on test images sum to "
                               f"{sums.min():.3g}-{sums.max():.3g} (minimum {raw.min():.3g}); they are logits or "
                               "scores, so leave --output out or say logits")
        return wanted, "as told"
    if looks:
        return "probabilities", "its outputs are non-negative and sum to 1"
    return "logits", f"its outputs sum to {sums.min():.3g}-{sums.max():.3g}, so a softmax is applied"


# ---------------------------------------------------------------- golden images


def synthetic_images(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Deterministic smooth colour fields with some texture: inputs whose answers an engine must
    reproduce (not a test of accuracy; pass --golden-images for photos like the model's)."""
    import cv2

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        texture = rng.integers(-24, 25, (height, width, 3), dtype=np.int16)
        images.append(np.clip(smooth + texture, 0, 255).astype(np.uint8))
    return np.stack(images)


def folder_images(folder: Path, policy: PreprocessPolicy, count: int = GOLDEN_IMAGES) -> np.ndarray:
    """Up to `count` photos of a folder (subfolders searched, sorted), prepared like every input."""
    if not folder.is_dir():
        raise ModelImportError(f"--golden-images '{folder}' is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    images = []
    for file in files:
        try:
            images.append(load_and_prepare(file, policy))
        except ImageDecodeError as bad:
            log.warning("skipped '%s': %s", file, bad)
        if len(images) == count:
            break
    if not images:
        raise ModelImportError(f"--golden-images '{folder}' has no readable images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return np.stack(images)


# ---------------------------------------------------------------- the command


def import_model(model: str | os.PathLike, out_dir: str | os.PathLike, options: ImportOptions | None = None, *,
                 overwrite: bool = False) -> ImportResult:
    """Make a bundle in `out_dir` from a .tflite or .onnx classifier; ModelImportError (a ValueError) naming
    the problem when the file or the options cannot make one, before anything is written."""
    options = options or ImportOptions()
    path, out_dir = Path(model), Path(out_dir)
    fmt = _check_model_file(path)
    refuse_inputs(out_dir, [path] + ([options.golden_images] if options.golden_images else [])
                  + ([options.labels] if options.labels else []))
    check_output_folder(out_dir, overwrite)
    content = path.read_bytes()
    facts = _read_tflite_facts(path, content) if fmt == "tflite" else _read_onnx_facts(path)
    # Everything the file and the flags say, reconciled (or refused) before the model runs.
    precision = _precision(path, facts, options.precision)
    layout = _layout(path, facts, options.layout)
    height, width = _input_size(path, facts, layout, options.input_size)
    labels = _labels(path, facts, options.labels, _classes(path, facts))
    if options.resize not in RESIZE_MODES:
        raise ModelImportError(f"--resize {options.resize!r} is invalid; use {' or '.join(RESIZE_MODES)}")
    policy = PreprocessPolicy(height, width, resize=options.resize)
    interface = ModelInterface(layout=layout, channel_order=_channel_order(path, facts, options.channel_order),
                               normalization=_decide_normalization(path, facts, options))
    images = (folder_images(Path(options.golden_images), policy) if options.golden_images
              else synthetic_images(GOLDEN_IMAGES, height, width))
    sha = hashlib.sha256(content).hexdigest()
    artifact = Artifact(file=artifact_file(fmt, precision), format=fmt, precision=precision, sha256=sha,
                        bytes=len(content), input=_tensor_spec(facts.input_dtype, facts.input_scale,
                                                               facts.input_zero_point),
                        output=_tensor_spec(facts.output_dtype, facts.output_scale, facts.output_zero_point),
                        metrics={"imported": True})
    kind, why = _output_kind(path, facts, options.output, _probe(path, artifact, interface, images))
    interface = replace(interface, output=kind)
    provenance = {"imported": {"file": path.name, "sha256": sha, "format": fmt, "read_from_file": facts.said,
                               "output": why, "precision": precision,
                               "golden_images": str(options.golden_images) if options.golden_images else "synthetic"},
                  "versions": _versions()}
    bundle = Bundle(labels=labels, preprocess=policy, artifacts={artifact.file: artifact},
                    default_artifact=artifact.file, interface=interface, provenance=provenance)
    _write_bundle(path, bundle, images, out_dir, overwrite)
    return ImportResult(bundle=bundle, out_dir=out_dir, facts=facts, interface=interface,
                        notes=[f"output: {kind} ({why})"])


def _classes(path: Path, facts: ModelFacts) -> int:
    if len(facts.output_shape) != 2 or _dim(facts.output_shape[-1]) is None:
        raise ModelImportError(f"'{path}' gives output of shape {facts.output_shape}; a classifier gives (batch, classes)")
    return int(facts.output_shape[-1])


def _probe(path: Path, artifact: Artifact, interface: ModelInterface, images: np.ndarray) -> np.ndarray:
    """The file's raw outputs on the golden images, one at a time (to tell probabilities from logits)."""
    from .engines import open_engine

    try:
        engine = open_engine(path, artifact, threads=None, interface=interface)
        return np.concatenate([engine.run(images[i : i + 1]) for i in range(len(images))])
    except (RuntimeError, ValueError) as bad:
        raise ModelImportError(f"'{path}' does not run as described: {bad}") from None


def _write_bundle(path: Path, bundle: Bundle, images: np.ndarray, out_dir: Path, overwrite: bool) -> None:
    """The model file, its golden answers on this machine and bundle.json, written atomically."""
    from .classifier import Classifier
    from .golden import computed_on, golden_entry, golden_probs, write_golden

    name = bundle.default_artifact
    with atomic_directory(out_dir, overwrite=overwrite, inputs=[path]) as staging:
        shutil.copyfile(path, staging / name)
        if file_sha256(staging / name) != bundle.artifacts[name].sha256:
            raise ModelImportError(f"'{path}' changed while it was being imported; try again")
        bundle.folder = staging
        probs = golden_probs(Classifier(bundle, artifact=name), images)
        write_golden(staging, images, probs.argmax(axis=1), {name: probs})
        bundle.golden = golden_entry(staging, [name], computed_on())
        bundle.write()
    bundle.folder = out_dir


def _check_model_file(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise ModelImportError(f"'{path}' is not a .tflite or .onnx file (suffix {suffix or 'none'!r}); "
                           "edgevision imports TFLite and ONNX classifiers")
    if not path.is_file():
        raise ModelImportError(f"Model file '{path}' does not exist")
    size = path.stat().st_size
    if size == 0 or size > MAX_MODEL_BYTES:
        raise ModelImportError(f"Model file '{path}' is {size} bytes; a model is between 1 byte and 2 GB")
    return MODEL_SUFFIXES[suffix]


def _precision(path: Path, facts: ModelFacts, wanted: str | None) -> str:
    if wanted is not None and wanted not in PRECISIONS:
        raise ModelImportError(f"--precision {wanted!r} is invalid; use one of {', '.join(PRECISIONS)}")
    if wanted is not None and facts.precision is not None and wanted != facts.precision:
        raise ModelImportError(f"--precision {wanted} contradicts '{path}', which is {facts.precision}")
    precision = wanted or facts.precision
    if precision is None:
        raise ModelImportError(f"Cannot tell the precision of '{path}' without the onnx package: pip install onnx, or "
                           f"pass --precision ({', '.join(PRECISIONS)})")
    return precision


def _tensor_spec(dtype: str, scale: float | None, zero_point: int | None) -> TensorSpec:
    if dtype not in TENSOR_DTYPES:
        raise ModelImportError(f"A model tensor of type {dtype} cannot take pixels or give scores")
    return TensorSpec(dtype, scale, zero_point) if scale else TensorSpec(dtype)


def _versions() -> dict:
    from edgevision import __version__

    return {"edgevision": __version__}
