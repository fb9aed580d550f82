"""Is int8 at least as fast as fp32, on every backbone and engine? Batch-1 latency of the full-int8 and
fp32 artifacts of each registry backbone, TFLite (LiteRT) and ONNX (onnxruntime), through the runtime's
engines, interleaved so that both see the same machine load.

    python benchmarks/int8_speed.py [--backbones all] [--size 224] [--threads 2]

Each backbone gets a new 10-class head and is folded and converted as `edgevision export` does it
(int8 calibrated on 16 real photos, full int8: no ops kept in float). EfficientNet-Lite0 uses its
ImageNet weights, whose near-dead channels once sent ONNX int8 to a slow kernel; the other backbones'
ImageNet weights are not installed offline and run with random ones whose BatchNorm statistics are set
on the photos as training would set them (settle_batchnorm), so that int8 meets realistic ranges.
Timing: `rounds` rounds, each running every artifact `repeats` times in turn after a warm-up; an
artifact's figure is the median of its round medians. The target:
int8 no slower than fp32 where the CPU has int8 dot products (AVX-512 VNNI, Arm's dot product), within
10% where it has not.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevision.choices import choice_error

FORMATS = {"tflite": ("tflite_fp32", "tflite_int8"), "onnx": ("onnx_fp32", "onnx_int8")}
WARMUP = 10
SLOWER_WITHOUT_DOT_PRODUCTS = 1.10  # the allowance where the CPU has no int8 dot-product instructions


@dataclass(frozen=True)
class SpeedRow:
    backbone: str
    format: str
    fp32_ms: float
    int8_ms: float

    @property
    def ratio(self) -> float:
        return self.int8_ms / self.fp32_ms


def int8_dot_products() -> tuple[str, bool]:
    """This CPU's model and whether it has int8 dot-product instructions: on x86, as the ONNX engine decides
    it (runtime/onnx_int8.py, AVX-512 VNNI read with CPUID); on Arm, the asimddp flag."""
    import platform

    from edgevision.runtime.onnx_int8 import X86_MACHINES, signed_weights_saturate
    from edgevision.runtime.preview_bench import cpu_model

    model, _ = cpu_model()
    if platform.machine().lower() in X86_MACHINES:
        return model, not signed_weights_saturate()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = set(cpuinfo.read().split())
    except OSError:
        flags = set()
    return model, "asimddp" in flags


def settle_batchnorm(model, images: np.ndarray) -> None:
    """Set every BatchNormalization's statistics to those of its input on `images` (one training-mode pass
    with momentum 0), as training leaves them. Random weights otherwise shrink the activations layer by
    layer, and int8 then meets ranges no trained model has: on MobileNetV3, hard-swish inputs of 1e-7 whose
    quantized ADD LiteRT's XNNPACK delegate refuses, splitting the graph."""
    import keras

    def batchnorms(layer):
        for child in getattr(layer, "layers", []):
            yield from batchnorms(child)
        if isinstance(layer, keras.layers.BatchNormalization):
            yield layer

    for bn in batchnorms(model):
        bn.momentum = 0.0
    model(images.astype(np.float32), training=True)


def convert_backbone(backbone: str, size: int, folder: Path) -> dict[str, Path]:
    """fp32 and full-int8 TFLite and ONNX files of `backbone` with a new 10-class head, as export writes
    them (folded; short tensor names), in `folder`."""
    from edgevision.runtime.bundle import ARTIFACT_NAMES
    from edgevision.train.model import ModelConfig, build_classifier
    from edgevision.train.sample_data import photo_crops

    from edgevision.export.fold import fold_batchnorm
    from edgevision.export.onnx import OnnxInt8Quantizer, to_onnx_fp32
    from edgevision.export.tflite import Int8Quantizer, add_metadata, to_tflite_fp32

    weights = "imagenet" if backbone == "efficientnet_lite0" else "none"
    model = build_classifier(ModelConfig(backbone=backbone, input_size=size, weights=weights,
                                         mode="head" if weights == "imagenet" else "scratch"), 10)
    images = photo_crops(16, size)
    if weights == "none":
        settle_batchnorm(model, images)
    folded, _ = fold_batchnorm(model)
    onnx_fp32 = to_onnx_fp32(folded)
    with OnnxInt8Quantizer(onnx_fp32, images) as quantizer:
        onnx_int8 = quantizer.quantize(())
    contents = {
        "tflite_fp32": add_metadata(to_tflite_fp32(folded), "bench", b"{}"),
        "tflite_int8": add_metadata(Int8Quantizer(folded, images).quantize(()), "bench", b"{}"),
        "onnx_fp32": onnx_fp32, "onnx_int8": onnx_int8,
    }
    paths = {}
    for name, content in contents.items():
        paths[name] = folder / f"{backbone}_{ARTIFACT_NAMES[name].file}"
        paths[name].write_bytes(content)
    return paths


def time_interleaved(engines: dict[str, object], image: np.ndarray, rounds: int, repeats: int) -> dict[str, float]:
    """Median over `rounds` of each engine's median batch-1 latency (ms) in that round."""
    batch = image[None]
    for engine in engines.values():
        for _ in range(WARMUP):
            engine.run(batch)
    medians: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                engine.run(batch)
                times.append(time.perf_counter() - start)
            medians[name].append(float(np.median(times)) * 1000)
    return {name: float(np.median(values)) for name, values in medians.items()}


def benchmark_backbone(backbone: str, size: int = 224, threads: int = 2, rounds: int = 5,
                       repeats: int = 30) -> list[SpeedRow]:
    from edgevision.runtime.bundle import ARTIFACT_NAMES, Artifact
    from edgevision.runtime.engines import open_engine
    from edgevision.train.sample_data import photo_crops

    with tempfile.TemporaryDirectory(prefix="edgevision-speed-") as work:
        paths = convert_backbone(backbone, size, Path(work))
        engines = {name: open_engine(path, Artifact.from_file(path, ARTIFACT_NAMES[name].format,
                                                              ARTIFACT_NAMES[name].precision), threads=threads)
                   for name, path in paths.items()}
        image = photo_crops(1, size)[0]
        latency = time_interleaved(engines, image, rounds, repeats)
    return [SpeedRow(backbone, fmt, latency[fp32], latency[int8]) for fmt, (fp32, int8) in FORMATS.items()]


def format_table(rows: list[SpeedRow], has_dot_products: bool) -> str:
    allowed = 1.0 if has_dot_products else SLOWER_WITHOUT_DOT_PRODUCTS
    lines = ["| backbone | engine | fp32 ms | int8 ms | int8 / fp32 | target met |", "|---|---|---|---|---|---|"]
    for r in rows:
        engine = {"tflite": "LiteRT", "onnx": "onnxruntime"}[r.format]
        lines.append(f"| {r.backbone} | {engine} | {r.fp32_ms:.2f} | {r.int8_ms:.2f} | {r.ratio:.2f} | "
                     f"{'yes' if r.ratio <= allowed else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from edgevision.tflogs import quiet_tensorflow

    quiet_tensorflow()
    from edgevision.train.backbones import BACKBONES

    parser = argparse.ArgumentParser(prog="python benchmarks/int8_speed.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="all", help=f"comma-separated subset of {', '.join(BACKBONES)}")
    parser.add_argument("--size", type=int, default=224, help="input size in pixels (default 224)")
    parser.add_argument("--threads", type=int, default=2, help="engine threads (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per artifact and round (default 30)")
    args = parser.parse_args(argv)
    names = list(BACKBONES) if args.backbones == "all" else [b.strip() for b in args.backbones.split(",") if b.strip()]
    for name in names:
        if name not in BACKBONES:
            parser.error(str(choice_error("backbone", name, BACKBONES)))
    for option in ("size", "threads", "rounds", "repeats"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be a positive integer, got {getattr(args, option)}")
    model, dot = int8_dot_products()
    print(f"cpu: {model} ({os.cpu_count()} cores), int8 dot products: {'yes' if dot else 'no'}; "
          f"batch 1, {args.threads} threads, {args.size}x{args.size}, median of {args.rounds} interleaved rounds "
          f"of {args.repeats} runs", flush=True)
    rows = []
    for name in names:
        started = time.perf_counter()
        found = benchmark_backbone(name, args.size, args.threads, args.rounds, args.repeats)
        rows += found
        print(f"  {name}: " + ", ".join(f"{r.format} int8/fp32 {r.ratio:.2f}" for r in found)
              + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    print()
    print(format_table(rows, dot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
