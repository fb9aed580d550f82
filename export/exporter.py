"""Export a training run to a bundle, and prove each artifact agrees with the trained model.

Every artifact is run on the run's held-out images through the runtime's own `Classifier` (the code a
device runs), compared with the Keras model on the same prepared pixels, and the figures go into
bundle.json and report.md. An artifact below its agreement threshold fails the export.
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

from edgevision.runtime.atomic import atomic_directory
from edgevision.runtime.bundle import BUNDLE_FILE, Artifact, Bundle, TensorSpec, file_sha256
from edgevision.runtime.preprocess import ImageDecodeError, load_and_prepare
from edgevision.train.run_dir import RunInfo

log = logging.getLogger("edgevision.export")


class ExportError(RuntimeError):
    """The export could not produce a bundle that agrees with the trained model."""


@dataclass(frozen=True)
class ArtifactKind:
    file: str
    format: str
    precision: str
    min_agreement: float
    convert: Callable  # (keras model) -> bytes


def _tflite_fp32(model) -> bytes:
    from .tflite import to_tflite_fp32

    return to_tflite_fp32(model)


ARTIFACT_KINDS: dict[str, ArtifactKind] = {
    "tflite_fp32": ArtifactKind("model_fp32.tflite", "tflite", "fp32", 0.995, _tflite_fp32),
}


@dataclass
class ExportResult:
    bundle_dir: Path
    metrics: dict[str, dict] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def load_trained_model(info: RunInfo):
    """Load the run's Keras model and check that it is the classifier run.json describes."""
    import keras

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


def _latency_ms(classifier, images: np.ndarray, repeats: int = 30) -> float:
    one = images[:1]
    classifier.predict(one)  # warm-up: first invoke allocates
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        classifier.predict(one)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def _parity(classifier, images, labels, reference: np.ndarray) -> dict:
    probs = np.concatenate([classifier.predict(images[i : i + 64]) for i in range(0, len(images), 64)])
    top = probs.argmax(axis=1)
    return {
        "heldout_images": int(len(images)),
        "accuracy": float(np.mean(top == labels)),
        "reference_accuracy": float(np.mean(reference.argmax(axis=1) == labels)),
        "agreement": float(np.mean(top == reference.argmax(axis=1))),
        "max_prob_error": float(np.max(np.abs(probs - reference))),
        "latency_ms_p50": _latency_ms(classifier, images),
    }


def _failure_message(name: str, kind: ArtifactKind, metrics: dict) -> str:
    short = (kind.min_agreement - metrics["agreement"]) * 100
    return (
        f"{name} agrees with the trained model on {metrics['agreement']:.1%} of {metrics['heldout_images']} "
        f"held-out images, {short:.1f} points below the {kind.min_agreement:.1%} required for {kind.precision}. "
        "Check that the run's held-out images are the ones it was trained with, or keep a float artifact; "
        "--force writes the bundle anyway, marked as failing."
    )


def _write_report(folder: Path, bundle: Bundle, info: RunInfo) -> None:
    lines = [
        "# edgevision export report", "",
        f"Labels: {', '.join(bundle.labels)}  ",
        f"Input: {bundle.preprocess.height}x{bundle.preprocess.width} RGB, raw 0-255, "
        f"resize {bundle.preprocess.resize}, {bundle.preprocess.interpolation} interpolation  ",
        f"Backbone: {info.model.get('backbone')} (alpha {info.model.get('alpha')}, weights {info.model.get('weights')})",
        "",
        "| artifact | size | accuracy | Keras accuracy | top-1 agreement | max prob error | latency p50 | gate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, artifact in bundle.artifacts.items():
        m = artifact.metrics
        lines.append(
            f"| {name} | {artifact.bytes / 1e6:.2f} MB | {m['accuracy']:.2%} | {m['reference_accuracy']:.2%} | "
            f"{m['agreement']:.2%} | {m['max_prob_error']:.2e} | {m['latency_ms_p50']:.2f} ms | "
            f"{'pass' if m['passed'] else 'FAIL'} (>= {m['min_agreement']:.1%}) |"
        )
    lines += ["", f"Measured on {bundle.artifacts[bundle.default_artifact].metrics['heldout_images']} held-out "
              "images through edgevision.runtime's Classifier, batch-1 latency on this machine."]
    (folder / "report.md").write_text("\n".join(lines) + "\n")


def export(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, formats: tuple[str, ...] = ("tflite_fp32",),
           threads: int | None = None, force: bool = False, overwrite: bool = False) -> ExportResult:
    """Write a bundle for the run in `run_dir` to `out_dir`; raises ExportError if an artifact fails
    its parity gate (unless `force`), leaving no partial bundle behind."""
    from edgevision.runtime.classifier import Classifier

    started = time.perf_counter()
    unknown = [f for f in formats if f not in ARTIFACT_KINDS]
    if unknown or not formats:
        raise ValueError(f"Unknown export format(s) {unknown or formats!r}; choose from {', '.join(ARTIFACT_KINDS)}")
    info = RunInfo.load(run_dir)
    if Path(out_dir).exists() and not overwrite:
        raise FileExistsError(f"Output folder '{out_dir}' already exists; choose another or pass --overwrite")
    model = load_trained_model(info)
    images, labels = load_heldout(info)
    reference = model.predict(images, batch_size=64, verbose=0)

    result = ExportResult(bundle_dir=Path(out_dir))
    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        artifacts = {}
        for fmt in formats:
            kind = ARTIFACT_KINDS[fmt]
            log.info("converting %s", kind.file)
            path = staging / kind.file
            path.write_bytes(kind.convert(model))
            artifacts[kind.file] = Artifact(
                file=kind.file, format=kind.format, precision=kind.precision, sha256=file_sha256(path),
                bytes=path.stat().st_size, input=TensorSpec("float32"), output=TensorSpec("float32"),
            )
        bundle = Bundle(
            labels=info.labels, preprocess=info.preprocess, artifacts=artifacts,
            default_artifact=ARTIFACT_KINDS[formats[0]].file, provenance=_provenance(info), folder=staging,
        )
        for fmt in formats:
            kind = ARTIFACT_KINDS[fmt]
            log.info("checking %s against the trained model", kind.file)
            metrics = _parity(Classifier(bundle, artifact=kind.file, threads=threads), images, labels, reference)
            metrics["min_agreement"] = kind.min_agreement
            metrics["passed"] = metrics["agreement"] >= kind.min_agreement
            bundle.artifacts[kind.file] = replace(artifacts[kind.file], metrics=metrics)
            result.metrics[kind.file] = metrics
            if not metrics["passed"]:
                result.failed.append(_failure_message(kind.file, kind, metrics))
        if result.failed and not force:
            raise ExportError("\n".join(result.failed))
        (staging / BUNDLE_FILE).write_text(json.dumps(bundle.to_dict(), indent=2))
        _write_report(staging, bundle, info)
    result.seconds = time.perf_counter() - started
    return result


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
