"""Export a training run to a bundle, and prove each artifact agrees with the trained model.

Every artifact is run on the run's held-out images through the runtime's own `Classifier` (the code a
device runs), compared with the Keras model on the same prepared pixels, and the figures go into
bundle.json and report.md. An artifact below its agreement threshold fails the export. A few of those
images and every artifact's answers on them go into the bundle as its golden set (runtime/golden.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from edgevision.runtime.atomic import atomic_directory, check_output_folder, refuse_inputs
from edgevision.runtime.engines import usable_cpus
from edgevision.runtime.golden import computed_on, golden_entry, golden_probs, write_golden
from edgevision.runtime.timing import batch1_latency_ms
from edgevision.runtime.bundle import ARTIFACT_NAMES, EMBEDDED_METADATA_KEY, Artifact, Bundle
from edgevision.runtime.preprocess import ImageDecodeError, load_and_prepare
from edgevision.train.run_dir import RunInfo

from .agreement import images_needed, too_few_warning
from .calibration import CalibrationError, QuantizationConfig, calibration_images, search_images
from .golden import choose_golden

log = logging.getLogger("edgevision.export")


class ExportError(RuntimeError):
    """The export could not produce a bundle that agrees with the trained model."""


@dataclass(frozen=True)
class ArtifactKind:
    """One artifact an export can write.

    convert: (keras model) -> bytes, or for `calibrated` kinds (keras model, Calibration, gate) -> (bytes,
    recipe or None), the recipe saying what stayed in float and why.
    min_agreement: the parity gate, top-1 agreement with the Keras model on held-out images.
    advice: what to try when the gate fails.
    """

    file: str
    format: str
    precision: str
    min_agreement: float
    convert: Callable
    calibrated: bool = False
    advice: str = ""


@dataclass(frozen=True)
class SearchSet:
    """Images the int8 precision search compares candidates on, the trained model's probabilities on
    them, and `agreement(format, content)`: the top-1 agreement a candidate is expected to reach on images
    of this kind (`agreement.estimated_agreement`), run through the runtime's engine."""

    images: np.ndarray
    probs: np.ndarray
    source: str
    threads: int | None = None

    def agreement(self, fmt: str, content: bytes) -> float:
        from .agreement import estimated_agreement

        import tempfile

        from edgevision.runtime.engines import open_engine

        with tempfile.TemporaryDirectory(prefix="edgevision-search-") as work:
            path = Path(work) / f"candidate.{fmt}"
            path.write_bytes(content)
            engine = open_engine(path, Artifact.from_file(path, fmt, "int8"), threads=self.threads)
            probs = np.concatenate([engine.run(self.images[i : i + 64]) for i in range(0, len(self.images), 64)])
        return estimated_agreement(self.probs, probs)


@dataclass(frozen=True)
class Calibration:
    """What a calibrated converter gets (besides its artifact's gate): the representative images, the
    quantization settings, and the precision search's images (None: no search)."""

    images: np.ndarray
    config: QuantizationConfig
    search: SearchSet | None = None


def _tflite_fp32(model) -> bytes:
    from .tflite import to_tflite_fp32

    return to_tflite_fp32(model)


def _tflite_fp16(model) -> bytes:
    from .tflite import to_tflite_fp16

    return to_tflite_fp16(model)


def _tflite_dynamic(model) -> bytes:
    from .tflite import to_tflite_dynamic

    return to_tflite_dynamic(model)


def _tflite_int8(model, calibration: Calibration, gate: float) -> tuple[bytes, dict | None]:
    """Full int8, or, when that changes too many answers on the search images, int8 with the fewest ops
    from the input kept in float (export/precision.py); the recipe says what stayed float and why."""
    from .tflite import Int8Quantizer

    quantizer = Int8Quantizer(model, calibration.images)
    io_dtype = calibration.config.io_dtype
    if io_dtype == "int8":  # int8 in and out is the point of it: no float op may take the input
        calibration = replace(calibration, search=None)
    ops = [name for name, kind in quantizer.ops() if kind not in ("QUANTIZE", "DEQUANTIZE", "SOFTMAX")]
    return _searched("tflite", lambda keep: quantizer.quantize(keep, io_dtype), ops, len(quantizer.calibrated),
                     model, calibration, gate)


def _searched(fmt: str, quantize, ops: list[str], float_bytes: int, model, calibration: Calibration,
              gate: float) -> tuple[bytes, dict | None]:
    """quantize(()) when there is no search; else the precision search's choice and its recipe."""
    from .precision import PrecisionSearchError, search_float_ops, search_target

    search = calibration.search
    if search is None:
        return quantize(()), None
    layers = {layer.name for layer in model.layers}
    # Aim above the gate: validation images chose the kept epoch, so the model is surer of them than of
    # held-out ones (on a fine-tuned Lite0, 99.0% agreement on validation came out 97.55% held out), and
    # the fewer they are, the further off their estimate can be (search_target).
    target = search_target(gate, len(search.images), calibration.config.search_margin)
    recipe = {"search_images": int(len(search.images)), "search_source": search.source, "target": target,
              "max_bytes": int(calibration.config.max_size_fraction * float_bytes)}
    try:
        result = search_float_ops(quantize, lambda content: search.agreement(fmt, content), ops,
                                  target=target, max_bytes=recipe["max_bytes"])
    except PrecisionSearchError as failed:
        log.warning("%s int8: %s", fmt, failed)
        return quantize(()), {**recipe, "float_ops": 0, "float_layers": [], "search_failed": str(failed)}
    float_layers = list(dict.fromkeys(name for op in result.keep_float for name in _layers_of(op, layers)))
    return result.content, {**recipe, "float_ops": len(result.keep_float), "float_layers": float_layers,
                            "search_agreement": result.agreement, "tried": list(result.tried)}


def _layers_of(op: str, layers: set[str]) -> list[str]:
    """The Keras layers an op of the converted graph came from: its name joins the TensorFlow names of the
    fused ops (".../stem_conv_1/BiasAdd;.../stem_relu_1/Relu6"), whose second part is the layer's call."""
    found = []
    for part in op.split(";"):
        for call in part.split("/"):  # ONNX node names (tf2onnx) hold the same calls
            name = call if call in layers else call.rsplit("_", 1)[0]
            if name in layers and name not in found:
                found.append(name)
    return found


def _onnx_fp32(model) -> bytes:
    from .onnx import to_onnx_fp32

    return to_onnx_fp32(model)


def _onnx_int8(model, calibration: Calibration, gate: float) -> tuple[bytes, dict | None]:
    """As _tflite_int8, with onnxruntime's quantizer: nodes from the input excluded from quantization."""
    from .onnx import OnnxInt8Quantizer, to_onnx_fp32

    fp32 = to_onnx_fp32(model)
    with OnnxInt8Quantizer(fp32, calibration.images, calibration.config.onnx_types,
                           calibration=calibration.config.onnx_calibration) as quantizer:
        return _searched("onnx", quantizer.quantize, quantizer.nodes, len(fp32), model, calibration, gate)


def _onnx_int8_tensorrt(model, calibration: Calibration, gate: float) -> tuple[bytes, dict | None]:
    """As _onnx_int8, in the form TensorRT takes (signed symmetric int8, Q/DQ on weighted ops' inputs)."""
    from .onnx import OnnxInt8Quantizer, to_onnx_fp32

    fp32 = to_onnx_fp32(model)
    with OnnxInt8Quantizer(fp32, calibration.images, tensorrt=True,
                           calibration=calibration.config.onnx_calibration) as quantizer:
        return _searched("onnx", quantizer.quantize, quantizer.nodes, len(fp32), model, calibration, gate)


_FLOAT_ADVICE = ("A float artifact should agree exactly: check that the run's held-out images are the ones it was "
                 "trained with (dataset moved or changed?).")
_INT8_ADVICE = ("Try more calibration data (--calibration-images, now {n}), calibration images that look like "
                "the deployment pictures (--calibration DIR), or keep a float artifact (tflite_fp16 halves the "
                "size and agrees like fp32). Weights are already quantized per channel.")

# Thresholds: fp32 and fp16 >= 99.5%, full int8 >= 98% (the gates). Dynamic-range (int8 weights,
# float activations) sits between them; 99% measured 99.6% on the demo model, where int8 reached 97.6%.
def _kind(name: str, gate: float, convert: Callable, **options) -> ArtifactKind:
    """An export kind; its file name, format and precision are the runtime's (ARTIFACT_NAMES)."""
    fmt, precision, file = ARTIFACT_NAMES[name]
    return ArtifactKind(file, fmt, precision, gate, convert, **options)


ARTIFACT_KINDS: dict[str, ArtifactKind] = {
    "tflite_fp32": _kind("tflite_fp32", 0.995, _tflite_fp32, advice=_FLOAT_ADVICE),
    "tflite_fp16": _kind("tflite_fp16", 0.995, _tflite_fp16, advice="Keep the fp32 artifact for this model (tflite_fp32)."),
    "tflite_dynamic": _kind("tflite_dynamic", 0.99, _tflite_dynamic,
                            advice="Use tflite_fp16 (about as small on disk) or a calibrated tflite_int8."),
    "tflite_int8": _kind("tflite_int8", 0.98, _tflite_int8, calibrated=True, advice=_INT8_ADVICE),
    "onnx_fp32": _kind("onnx_fp32", 0.995, _onnx_fp32, advice=_FLOAT_ADVICE),
    "onnx_int8": _kind("onnx_int8", 0.98, _onnx_int8, calibrated=True,
                       advice=_INT8_ADVICE + " For ONNX also try --onnx-calibration percentile."),
    "onnx_int8_tensorrt": _kind("onnx_int8_tensorrt", 0.98, _onnx_int8_tensorrt, calibrated=True,
                                advice=_INT8_ADVICE),
}

# Named sets of artifacts, usable wherever a list of formats is (`--formats all`). Dynamic-range is in
# none of them: it was slower than fp32 under XNNPACK on every model measured (x86 CPUs; 2.50 against
# 1.55 ms on an EfficientNet-Lite0, 3.00 against 0.32 ms on the demo model) and agreed less than full int8
# with its search, so it is written only when named (`--formats tflite_dynamic`).
FORMAT_PRESETS: dict[str, tuple[str, ...]] = {
    "default": ("tflite_fp32",),
    "float": ("tflite_fp32", "tflite_fp16", "onnx_fp32"),
    "int8": ("tflite_int8", "onnx_int8"),
    "tflite": ("tflite_fp32", "tflite_fp16", "tflite_int8"),
    "onnx": ("onnx_fp32", "onnx_int8"),
    # The TensorRT form is for Jetsons only (onnxruntime's CPU kernels run it slower than fp32), and its
    # precision search takes as long again as the CPU form's, so `all` leaves it out.
    "jetson": ("onnx_fp32", "onnx_int8_tensorrt"),
    "all": ("tflite_fp32", "tflite_fp16", "tflite_int8", "onnx_fp32", "onnx_int8"),
}


def resolve_formats(formats) -> tuple[str, ...]:
    """Artifact names from names and preset names (a comma-separated string or a sequence), in order,
    without repeats. Raises ValueError naming the unknown ones and the allowed set."""
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = list(formats)
    unknown = [f for f in formats if f not in ARTIFACT_KINDS and f not in FORMAT_PRESETS]
    if unknown or not formats:
        raise ValueError(
            f"Unknown export format(s) {unknown or formats!r}; choose from {', '.join(ARTIFACT_KINDS)} "
            f"or a preset: {', '.join(FORMAT_PRESETS)}"
        )
    names: list[str] = []
    for f in formats:
        for name in FORMAT_PRESETS.get(f, (f,)):
            if name not in names:
                names.append(name)
    return tuple(names)


@dataclass
class ExportResult:
    bundle_dir: Path
    metrics: dict[str, dict] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def load_trained_model(info: RunInfo):
    """Load the run's Keras model and check that it is the classifier run.json describes."""
    import zipfile

    import keras

    path = Path(info.model_path)
    if not zipfile.is_zipfile(path):  # Keras would call it "File not found"
        raise ExportError(f"'{path}' is not a Keras model file: a .keras file is a zip archive and this one is not "
                          "(a pickle, or a damaged or truncated copy?)")
    try:
        model = keras.saving.load_model(info.model_path, compile=False)
    except Exception as err:  # Keras raises many types for a file that is not a Keras model
        raise ExportError(f"'{info.model_path}' is not a loadable Keras model: {err}") from None
    expected_in = (None, info.preprocess.height, info.preprocess.width, 3)
    if tuple(model.input_shape) != expected_in:
        raise ExportError(f"'{info.model_path}' takes input {model.input_shape}, run.json says {expected_in}")
    classes = model.output_shape[-1]
    if classes != len(info.labels):
        raise ExportError(
            f"'{info.model_path}' has {classes} outputs but run.json lists {len(info.labels)} labels {info.labels}"
        )
    return model


def load_heldout(info: RunInfo) -> tuple[np.ndarray, np.ndarray]:
    """The held-out images of the run, through the one preprocessing path."""
    images, labels, missing = [], [], []
    for path, label in zip(info.heldout_paths, info.heldout_labels):
        try:
            images.append(load_and_prepare(path, info.preprocess))
            labels.append(label)
        except (OSError, ImageDecodeError):
            missing.append(path)
    if missing:
        log.warning("%d held-out images could not be read (first: %s)", len(missing), missing[0])
    if not images:
        raise ExportError(
            f"None of the run's {len(info.heldout_paths)} held-out images could be read (dataset moved?); "
            "the parity check needs them"
        )
    return np.stack(images), np.asarray(labels, dtype=np.int64)


LATENCY_WARMUP, LATENCY_REPEATS = 5, 30


def _parity(classifier, images, labels, reference: np.ndarray) -> dict:
    from .agreement import compare

    probs = np.concatenate([classifier.predict(images[i : i + 64]) for i in range(0, len(images), 64)])
    top = probs.argmax(axis=1)
    agreement = compare(reference, probs, labels)
    return {
        "heldout_images": int(len(images)),
        "accuracy": float(np.mean(top == labels)),
        "reference_accuracy": float(np.mean(reference.argmax(axis=1) == labels)),
        "agreement": agreement.rate,
        # How far to trust the rate (95% Wilson interval), and what the changed answers did.
        "agreement_interval_95": [agreement.lower, agreement.upper],
        "changed_answers": {"total": agreement.changed, "right_to_wrong": agreement.right_to_wrong,
                            "wrong_to_right": agreement.wrong_to_right,
                            "wrong_to_other_wrong": agreement.wrong_to_other_wrong, "ties": agreement.changed_ties},
        "max_prob_error": float(np.max(np.abs(probs - reference))),
        "latency_ms_p50": batch1_latency_ms(classifier, images[0], LATENCY_REPEATS, warmup=LATENCY_WARMUP)[0],
    }


def _failure_message(name: str, kind: ArtifactKind, metrics: dict, quantization: QuantizationConfig) -> str:
    short = (kind.min_agreement - metrics["agreement"]) * 100
    advice = kind.advice.format(n=quantization.calibration_images)
    search = metrics.get("precision_search") or {}
    if "search_agreement" in search:
        # The search met its aim on its own images, and the held-out ones disagree: its estimate was off.
        truer = ("more validation images give it" if search["search_source"] == "validation images"
                 else "a run with a validation split gives it")
        advice = (f"The precision search estimated {search['search_agreement']:.1%} on {search['search_images']} "
                  f"{search['search_source']} (aim {search['target']:.1%}); {truer} a truer estimate. {advice}")
    return (
        f"{name} agrees with the trained model on {metrics['agreement']:.1%} of {metrics['heldout_images']} "
        f"held-out images, {short:.1f} points below the {kind.min_agreement:.1%} required for {kind.precision}. "
        f"{advice} --force writes the bundle anyway, marked as failing."
    )


def _write_report(folder: Path, bundle: Bundle, info: RunInfo) -> None:
    lines = [
        "# edgevision export report", "",
        f"Labels: {', '.join(bundle.labels)}  ",
        f"Input: {bundle.preprocess.height}x{bundle.preprocess.width} RGB, raw 0-255, "
        f"resize {bundle.preprocess.resize}, {bundle.preprocess.interpolation} interpolation  ",
        f"Backbone: {info.model.get('backbone')} (alpha {info.model.get('alpha')}, weights {info.model.get('weights')})",
        "",
        "| artifact | size | accuracy | Keras accuracy | top-1 agreement (95% interval) | changed: right→wrong / "
        "wrong→right / wrong→other | max prob error | latency p50 | gate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, artifact in bundle.artifacts.items():
        m = artifact.metrics
        low, high = m["agreement_interval_95"]
        changed = m["changed_answers"]
        lines.append(
            f"| {name} | {artifact.bytes / 1e6:.2f} MB | {m['accuracy']:.2%} | {m['reference_accuracy']:.2%} | "
            f"{m['agreement']:.2%} ({low:.1%}-{high:.1%}) | {changed['right_to_wrong']} / {changed['wrong_to_right']} / "
            f"{changed['wrong_to_other_wrong']} | {m['max_prob_error']:.2e} | {m['latency_ms_p50']:.2f} ms | "
            f"{'pass' if m['passed'] else 'FAIL'} (>= {m['min_agreement']:.1%}) |"
        )
        if m.get("too_few_images"):
            lines.append(f"|  | {m['too_few_images']} | | | | | | | |")
    default = bundle.artifacts[bundle.default_artifact].metrics
    lines += ["", f"Measured on {default['heldout_images']} held-out images through edgevision.runtime's Classifier; "
              f"latency: batch 1, {default.get('latency_threads', '?')} threads, median of {LATENCY_REPEATS} runs after "
              f"{LATENCY_WARMUP} warm-up runs, on this machine."]
    exported = bundle.provenance.get("export", {})
    fold = exported.get("batchnorm_fold")
    if fold:
        lines += ["", f"BatchNorm folded before conversion: {fold['folded_into_conv']} into convolutions, "
                  f"{fold['folded_into_dense']} into Dense layers, {len(fold['unfolded'])} left; the folded model "
                  f"differs from the trained one by at most {fold['max_prob_difference']:.1e} in probability."]
    if exported.get("calibration_images"):
        q = exported["quantization"]
        lines += ["", f"int8 calibration: {exported['calibration_images']} images ({exported['calibration_source']}), "
                  f"TFLite int8 interface {q['io_dtype']}, ONNX QDQ types {q['onnx_types']} (the TensorRT form: "
                  f"s8s8 symmetric) calibrated by {q.get('onnx_calibration', 'minmax')}, per-channel weights."]
    lines += _precision_search_notes(bundle)
    if bundle.golden:
        lines += ["", f"Golden predictions: {bundle.golden['images']} held-out images at model size with every "
                  f"artifact's answers on this machine ({bundle.golden['file']}); `edgevision verify` replays them "
                  "on a device."]
    if exported.get("onnx_opset"):
        lines += ["", f"ONNX: opset {exported['onnx_opset']}, input `image` float32 NHWC raw 0-255 RGB, output `probs`."]
    (folder / "report.md").write_text("\n".join(lines) + "\n")


def _precision_search_notes(bundle: Bundle) -> list[str]:
    """report.md's paragraph per int8 artifact: what the precision search kept in float, and why."""
    lines = []
    for name, artifact in bundle.artifacts.items():
        search = artifact.metrics.get("precision_search")
        if not search:
            continue
        if search.get("search_failed"):
            lines += ["", f"{name}: full int8; the precision search found nothing better: {search['search_failed']}"]
        elif search.get("float_ops"):
            lines += ["", f"{name}: full int8 would change too many answers, judged on {search['search_images']} "
                      f"{search['search_source']}, so the first {search['float_ops']} ops from the input stay float "
                      f"(layers {', '.join(search['float_layers'])}): {search['search_agreement']:.2%} estimated "
                      f"agreement from them (aim: {search['target']:.1%})."]
        else:
            lines += ["", f"{name}: full int8 ({search['tried'][0]['agreement']:.2%} estimated agreement from "
                      f"{search['search_images']} {search['search_source']}; aim: {search['target']:.1%})."]
    return lines


def _check_probabilities(model_path: Path, reference: np.ndarray) -> None:
    """An edgevision model ends in a softmax: its outputs are probabilities."""
    sums = reference.sum(axis=1)
    if reference.min() < -1e-6 or np.max(np.abs(sums - 1.0)) > 1e-3:
        raise ExportError(
            f"'{model_path}' does not output class probabilities (row sums {sums.min():.3g}-{sums.max():.3g}, "
            f"minimum {reference.min():.3g}): it is not a classifier trained by edgevision, which ends in a softmax"
        )


def _fold(model, images: np.ndarray, reference: np.ndarray):
    """The BN-free model to convert, checked against the original on the held-out images."""
    from .fold import fold_batchnorm

    folded, report = fold_batchnorm(model)
    difference = float(np.max(np.abs(folded.predict(images, batch_size=64, verbose=0) - reference)))
    if difference > 1e-4:
        raise ExportError(
            f"Folding BatchNorm changed the model's probabilities by up to {difference:.2e} on held-out images "
            "(expected < 1e-5); this is a bug in edgevision's folding, please report it with the model"
        )
    return folded, {**report.to_dict(), "max_prob_difference": difference}


def embedded_metadata(info: RunInfo, artifact: Artifact, provenance: dict) -> dict:
    """What each model file carries about itself: the bundle.json fields a device needs to use the file
    alone (labels, input spec with its quantization, preprocessing, model interface, provenance), made by
    the same Bundle.to_dict. The sha256, size and parity figures are only in bundle.json: a file cannot
    contain its own hash."""
    kept = {k: provenance.get(k) for k in ("backbone", "alpha", "weights", "mode", "dataset_fingerprint")}
    data = Bundle(labels=list(info.labels), preprocess=info.preprocess, artifacts={artifact.file: artifact},
                  default_artifact=artifact.file, provenance=kept).to_dict()
    entry = data.pop("artifacts")[artifact.file]
    del data["default_artifact"]
    data["artifact"] = {key: entry[key] for key in ("file", "format", "precision", "input", "output")}
    return data


METADATA_KEY = EMBEDDED_METADATA_KEY


def _embed(fmt: str, content: bytes, metadata: dict) -> bytes:
    payload = json.dumps(metadata, sort_keys=True)
    if fmt == "onnx":
        import onnx

        from .onnx import set_metadata

        proto = onnx.load_from_string(content)
        set_metadata(proto, {METADATA_KEY: payload})
        return proto.SerializeToString()
    from .tflite import add_metadata

    return add_metadata(content, METADATA_KEY, payload.encode())


def export(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, formats=("tflite_fp32",),
           threads: int | None = None, force: bool = False, overwrite: bool = False,
           quantization: QuantizationConfig | None = None,
           calibration: str | os.PathLike | np.ndarray | None = None) -> ExportResult:
    """Write a bundle for the run in `run_dir` to `out_dir`; raises ExportError if an artifact fails
    its parity gate (unless `force`), leaving no partial bundle behind.

    formats: artifact names and presets (see ARTIFACT_KINDS, FORMAT_PRESETS), e.g. ("all",).
    quantization: settings for int8 artifacts (QuantizationConfig(); QuantizationConfig.for_int8()).
    calibration: representative images for int8 artifacts: an image folder or prepared (N, H, W, 3)
    uint8 images; default: the run's training images.
    """
    started = time.perf_counter()
    formats, quantization = _resolve_options(formats, quantization)
    info = RunInfo.load(run_dir)
    out_dir = Path(out_dir)
    # Everything that can reject the request cheaply runs before the model is loaded or converted.
    check_output_folder(out_dir, overwrite)
    refuse_inputs(out_dir, [run_dir])  # --overwrite must never delete the run it exports
    calibration_set = _calibration_set(info, formats, quantization, calibration)
    model = load_trained_model(info)
    images, labels = load_heldout(info)
    reference = model.predict(images, batch_size=64, verbose=0)
    _check_probabilities(info.model_path, reference)
    folded, fold_report = _fold(model, images, reference)
    calibration_set = _with_search_set(calibration_set, info, quantization, folded, threads)
    provenance = _provenance(info)
    provenance["export"] = _export_provenance(formats, fold_report, quantization, calibration_set, calibration)

    result = ExportResult(bundle_dir=out_dir)
    # Everything is written to a staging folder that replaces out_dir only when the export succeeds.
    with atomic_directory(out_dir, overwrite=overwrite, inputs=[run_dir]) as staging:
        artifacts, recipes = _convert_artifacts(staging, formats, folded, calibration_set, info, provenance)
        bundle = Bundle(
            labels=info.labels, preprocess=info.preprocess, artifacts=artifacts,
            default_artifact=ARTIFACT_KINDS[formats[0]].file, provenance=provenance, folder=staging,
        )
        golden_index = choose_golden(images, labels)
        golden_answers = _check_artifacts(bundle, formats, recipes, images, labels, reference, golden_index,
                                          threads, quantization, result)
        if result.failed and not force:
            raise ExportError("\n".join(result.failed))
        _write_outputs(staging, bundle, info, images[golden_index], labels[golden_index], golden_answers)
    result.seconds = time.perf_counter() - started
    return result


def _resolve_options(formats, quantization: QuantizationConfig | None) -> tuple[tuple[str, ...], QuantizationConfig]:
    """The artifact names to write, and the quantization settings (the defaults when None)."""
    formats = resolve_formats(formats)
    quantization = quantization or QuantizationConfig()
    if not isinstance(quantization, QuantizationConfig):
        raise TypeError(f"quantization must be a QuantizationConfig, got {type(quantization).__name__}")
    return formats, quantization


def _calibration_set(info: RunInfo, formats: tuple[str, ...], quantization: QuantizationConfig,
                     calibration) -> Calibration | None:
    """The int8 representative images, or None when no calibrated artifact is asked for. Read before the
    model is loaded, so a bad calibration folder fails in seconds, not after minutes of work."""
    if not any(ARTIFACT_KINDS[f].calibrated for f in formats):
        return None
    try:
        return Calibration(calibration_images(info, quantization, calibration), quantization)
    except CalibrationError as bad:
        raise ExportError(f"Cannot calibrate the int8 artifacts: {bad}") from None


def _with_search_set(calibration_set: Calibration | None, info: RunInfo, quantization: QuantizationConfig,
                     folded, threads: int | None) -> Calibration | None:
    """calibration_set with the precision search's images and the folded model's answers on them (the
    model that is converted, so the search measures only what quantization changes)."""
    if calibration_set is None or not quantization.search:
        return calibration_set
    try:
        found, source = search_images(info, quantization.search_images)
    except CalibrationError as bad:
        raise ExportError(f"Cannot search int8 precision: {bad}") from None
    probs = folded.predict(found, batch_size=64, verbose=0)
    return replace(calibration_set, search=SearchSet(found, probs, source, threads))


def _export_provenance(formats: tuple[str, ...], fold_report: dict, quantization: QuantizationConfig,
                       calibration_set: Calibration | None, calibration) -> dict:
    """provenance["export"]: how this export was made (fold, ONNX opset, int8 settings and data)."""
    calibrated = calibration_set is not None
    return {
        "batchnorm_fold": fold_report,
        "onnx_opset": _onnx_opset() if any(ARTIFACT_KINDS[f].format == "onnx" for f in formats) else None,
        "quantization": quantization.to_dict() if calibrated else None,
        "calibration_images": int(len(calibration_set.images)) if calibrated else 0,
        "calibration_source": _calibration_source(calibration) if calibrated else None,
    }


def _calibration_source(calibration) -> str:
    """Where the int8 representative images came from, in words."""
    if calibration is None:
        return "run training images"
    return "given array" if isinstance(calibration, np.ndarray) else str(calibration)


def _convert_artifacts(staging: Path, formats: tuple[str, ...], folded, calibration_set: Calibration | None,
                       info: RunInfo, provenance: dict) -> tuple[dict[str, Artifact], dict[str, dict]]:
    """Every artifact converted into `staging`, by file name, and the precision-search recipes of those
    that have one. All are written before any is checked: the Bundle the checks run needs them all."""
    artifacts, recipes = {}, {}
    for fmt in formats:
        kind = ARTIFACT_KINDS[fmt]
        artifacts[kind.file], recipe = _convert_artifact(staging, kind, folded, calibration_set, info, provenance)
        if recipe is not None:
            recipes[kind.file] = recipe
    return artifacts, recipes


def _convert_artifact(staging: Path, kind: ArtifactKind, folded, calibration_set: Calibration | None,
                      info: RunInfo, provenance: dict) -> tuple[Artifact, dict | None]:
    """One artifact written to `staging` with its embedded metadata, and its recipe (or None)."""
    log.info("converting %s", kind.file)
    recipe = None
    if kind.calibrated:
        content, recipe = kind.convert(folded, calibration_set, kind.min_agreement)
    else:
        content = kind.convert(folded)
    path = staging / kind.file
    # Written twice: the metadata embedded in the file describes its tensors, which are read from the
    # converted file; the final Artifact keeps those specs and hashes the file with its metadata.
    path.write_bytes(content)
    draft = Artifact.from_file(path, kind.format, kind.precision)  # tensor types as the file declares
    path.write_bytes(_embed(kind.format, content, embedded_metadata(info, draft, provenance)))
    return Artifact.from_file(path, kind.format, kind.precision, input=draft.input, output=draft.output), recipe


def _check_artifacts(bundle: Bundle, formats: tuple[str, ...], recipes: dict[str, dict], images: np.ndarray,
                     labels: np.ndarray, reference: np.ndarray, golden_index: np.ndarray, threads: int | None,
                     quantization: QuantizationConfig, result: ExportResult) -> dict[str, np.ndarray]:
    """Run every artifact of `bundle` through the runtime's Classifier: its metrics go into the bundle and
    `result` (a failed gate into result.failed); returns each artifact's answers on the golden images."""
    from edgevision.runtime.classifier import Classifier

    golden_answers = {}
    for fmt in formats:
        kind = ARTIFACT_KINDS[fmt]
        log.info("checking %s against the trained model", kind.file)
        classifier = Classifier(bundle, artifact=kind.file, threads=threads)
        metrics = _parity(classifier, images, labels, reference)
        golden_answers[kind.file] = golden_probs(classifier, images[golden_index])
        _add_gate_metrics(metrics, kind, threads, recipes.get(kind.file))
        bundle.artifacts[kind.file] = replace(bundle.artifacts[kind.file], metrics=metrics)
        result.metrics[kind.file] = metrics
        if not metrics["passed"]:
            result.failed.append(_failure_message(kind.file, kind, metrics, quantization))
    return golden_answers


def _add_gate_metrics(metrics: dict, kind: ArtifactKind, threads: int | None, recipe: dict | None) -> None:
    """Complete an artifact's parity metrics: latency threads, the gate and whether it passed, the
    precision search's recipe, and a warning when the held-out set is too small to judge the gate."""
    metrics["latency_threads"] = threads or usable_cpus()
    metrics["min_agreement"] = kind.min_agreement
    if recipe is not None:
        metrics["precision_search"] = recipe
    metrics["passed"] = metrics["agreement"] >= kind.min_agreement
    # Warn when the interval is wider than a point either way (or half the room the gate leaves):
    # a set that cannot tell the gate from a point below it. A gate of 0 or 1 has no interval.
    gate, total = kind.min_agreement, metrics["heldout_images"]
    warning = (too_few_warning(total, gate)
               if 0 < gate < 1 and total < images_needed(gate, max((1 - gate) / 2, 0.01)) else None)
    if warning:
        metrics["too_few_images"] = warning
        log.warning("%s: %s", kind.file, warning)


def _write_outputs(staging: Path, bundle: Bundle, info: RunInfo, golden_images: np.ndarray,
                   golden_labels: np.ndarray, golden_answers: dict[str, np.ndarray]) -> None:
    """The golden set, then bundle.json (which names the golden file), then report.md, into `staging`."""
    write_golden(staging, golden_images, golden_labels, golden_answers)
    bundle.golden = golden_entry(staging, list(golden_answers), computed_on())
    bundle.write()
    _write_report(staging, bundle, info)


def _onnx_opset() -> int:
    from .onnx import OPSET

    return OPSET


def _provenance(info: RunInfo) -> dict:
    import keras
    import tensorflow as tf

    return {
        "backbone": info.model.get("backbone"),
        "alpha": info.model.get("alpha"),
        "weights": info.model.get("weights"),
        "mode": info.model.get("mode"),
        "training": info.training,
        "dataset_fingerprint": info.dataset.get("fingerprint"),
        "run_metrics": info.metrics,
        "versions": {**info.versions, "export_keras": keras.__version__, "tensorflow": tf.__version__},
    }
