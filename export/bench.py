"""Benchmark an export: every artifact's size (and ratio to the fp32 artifact of its format), held-out
accuracy against the Keras model's, top-1 agreement, and batch-1 latency on a fixed number of threads.

    rows = benchmark_export("run/", formats=("all",), threads=2)
    print(format_table(rows))

The parity figures are the exporter's own (measured through the runtime's Classifier); the latency is
measured again here with more repeats, each artifact in turn, after a warm-up.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevision.runtime.timing import batch1_latency_ms

from .calibration import QuantizationConfig
from .exporter import ARTIFACT_KINDS, export, load_heldout, resolve_formats


@dataclass(frozen=True)
class BenchRow:
    name: str  # the ARTIFACT_KINDS name, e.g. "tflite_int8"
    file: str
    bytes: int
    ratio_to_fp32: float | None  # size / size of the fp32 artifact of the same format, when exported
    accuracy: float
    keras_accuracy: float
    agreement: float
    max_prob_error: float
    passed: bool
    latency_ms_p50: float
    latency_ms_p90: float


def benchmark_export(run_dir: str | os.PathLike, formats=("all",), threads: int = 2, repeats: int = 200,
                     out_dir: str | os.PathLike | None = None,
                     quantization: QuantizationConfig | None = None,
                     calibration: str | os.PathLike | np.ndarray | None = None) -> list[BenchRow]:
    """Export `formats` of the run (parity gates reported, not enforced) and measure every artifact."""
    from edgevision.runtime.classifier import Classifier
    from edgevision.train.run_dir import RunInfo

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    names = resolve_formats(formats)
    with tempfile.TemporaryDirectory(prefix="edgevision-bench-") as scratch:
        folder = Path(out_dir) if out_dir is not None else Path(scratch) / "bundle"
        result = export(run_dir, folder, formats=names, threads=threads, force=True,
                        overwrite=out_dir is not None, quantization=quantization,
                        calibration=calibration)
        image = load_heldout(RunInfo.load(run_dir))[0][:1]
        sizes = {name: (folder / ARTIFACT_KINDS[name].file).stat().st_size for name in names}
        fp32_of = {"tflite": "tflite_fp32", "onnx": "onnx_fp32"}
        rows = []
        for name in names:
            kind = ARTIFACT_KINDS[name]
            metrics = result.metrics[kind.file]
            base = fp32_of[kind.format]
            p50, p90 = batch1_latency_ms(Classifier(folder, artifact=kind.file, threads=threads), image, repeats,
                                         percentiles=(50, 90))
            rows.append(BenchRow(
                name=name, file=kind.file, bytes=sizes[name],
                ratio_to_fp32=sizes[name] / sizes[base] if base in sizes else None,
                accuracy=metrics["accuracy"], keras_accuracy=metrics["reference_accuracy"],
                agreement=metrics["agreement"], max_prob_error=metrics["max_prob_error"], passed=metrics["passed"],
                latency_ms_p50=p50, latency_ms_p90=p90,
            ))
    return rows


def format_table(rows: list[BenchRow], threads: int = 2) -> str:
    """The rows as a markdown table."""
    lines = [
        f"| artifact | size | × fp32 | accuracy (Keras) | agreement | max prob error | gate | "
        f"batch-1 ms p50 / p90, {threads} threads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r.ratio_to_fp32:.2f}" if r.ratio_to_fp32 is not None else "-"
        lines.append(
            f"| {r.file} | {r.bytes / 1e6:.2f} MB | {ratio} | {r.accuracy:.1%} ({r.keras_accuracy:.1%}) | "
            f"{r.agreement:.1%} | {r.max_prob_error:.1e} | {'pass' if r.passed else 'FAIL'} | "
            f"{r.latency_ms_p50:.2f} / {r.latency_ms_p90:.2f} |"
        )
    return "\n".join(lines)
