"""Training benchmarks that show the toolkit's claims with numbers.

- `limited_data`: Fashion-MNIST with a few dozen training images per class, tested on all 10,000 test
  images: transfer learning (EfficientNet-Lite0 ImageNet features, `head` and `finetune`) against
  MobileNetV2 from scratch, each with and without augmentation. Every configuration goes through the
  same `train()` a user runs, on image folders written to disk.
- `throughput`: training images/s of one configuration with augmentation off and on, in the same
  process, on whatever accelerator Keras sees.
- `streaming`: how fast this machine decodes 224-px training pictures from JPEG files (per core and
  with one decoder per core, in threads and in processes), and a real training step fed streamed from
  the JPEGs (by each decoder) against fed from memory, in the same process.

    python -m edgevision.train.bench limited-data --out /tmp/ld
    python -m edgevision.train.bench throughput --backbone mobilenet_v2 --alpha 1.0 --input-size 224
    python -m edgevision.train.bench streaming --out /tmp/sb
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .augment import AugmentConfig
from .model import ModelConfig
from .trainer import TrainConfig

# Augmentation for Fashion-MNIST-like product photos: small shifts/zoom/rotation and left-right flips
# (a shoe pointing left is still a shoe), light photometric changes. No vertical flips.
CLOTHES_AUGMENT = AugmentConfig(rotation=10, width_shift=0.1, height_shift=0.1, zoom=0.1, horizontal_flip=True,
                                fill_mode="constant", fill_value=0.0, brightness=0.1, contrast=0.1)


@dataclass(frozen=True)
class Setting:
    name: str
    model: ModelConfig
    epochs: int
    learning_rate: float
    fine_tune_epochs: int | None = None
    fine_tune_lr: float | None = None


# Every setting trains with the same recipe: a cosine schedule per phase, label smoothing 0.1 and the
# last epoch's weights (10 validation images a class make the "best" epoch partly luck).
RECIPE = dict(lr_schedule="cosine", label_smoothing=0.1, keep="last")


def limited_data_settings(input_size: int | None = None) -> list[Setting]:
    """The compared settings. Transfer learning at 160 px: ImageNet features are better at the scale they
    were learnt at (frozen Lite0 features + logistic regression: 79.9% at 96 px, 82.3% at 160). Scratch
    at 96 px: upscaling 28-px pictures gives a network without pretrained features nothing to use, at 2.8x
    the cost. `input_size` puts every setting at one size."""
    lite0 = dict(backbone="efficientnet_lite0", input_size=input_size or 160, weights="imagenet")
    return [
        Setting("efficientnet_lite0 head", ModelConfig(**lite0, mode="head"), epochs=20, learning_rate=1e-3),
        Setting("efficientnet_lite0 finetune", ModelConfig(**lite0, mode="finetune"),
                epochs=8, learning_rate=1e-3, fine_tune_epochs=15, fine_tune_lr=3e-4),
        Setting("mobilenet_v2 scratch", ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=input_size or 96,
                                                     weights="none", mode="scratch"),
                epochs=40, learning_rate=2e-3),
    ]


def limited_data(out: str | Path, *, per_class: int = 50, val_per_class: int = 10, input_size: int | None = None,
                 seed: int = 0, only: list[str] | None = None, say=print) -> list[dict]:
    """Train every setting with and without augmentation; returns (and writes out/results.json) one row
    per run with its test accuracy on all 10,000 Fashion-MNIST test images."""
    from .sample_data import write_fashion_task
    from .trainer import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not data.exists():
        write_fashion_task(out / "data", per_class, val_per_class, seed)
    rows = []
    for setting in limited_data_settings(input_size):
        for augment_name, augment in (("no aug", AugmentConfig.none()), ("aug", CLOTHES_AUGMENT)):
            name = f"{setting.name}, {augment_name}"
            if only and not any(o in name for o in only):
                continue
            say(f"== {name}")
            config = TrainConfig(model=setting.model, epochs=setting.epochs, learning_rate=setting.learning_rate,
                                 fine_tune_epochs=setting.fine_tune_epochs, fine_tune_lr=setting.fine_tune_lr,
                                 seed=seed, augment=augment, batch_size=32, tensorboard=False, **RECIPE)
            run_dir = out / name.replace(", ", "-").replace(" ", "_")
            result = train(data, run_dir, config, overwrite=True, progress=False)
            row = {"setting": name, "input_size": setting.model.input_size,
                   "test_accuracy": result.heldout_accuracy, "test_images": result.heldout_count,
                   "train_images": per_class * 10, "seconds": round(result.seconds, 1)}
            say(f"   test accuracy {row['test_accuracy']:.2%} on {row['test_images']} images ({row['seconds']:.0f} s)")
            rows.append(row)
            (out / "results.json").write_text(json.dumps(rows, indent=2))
    return rows


class _StepClock:
    """Times the training steps after the first `warmup` (compilation, the data pipeline's start): images/s
    of batches warmup+1..last, from the end of step `warmup` (results fetched, so the device has finished
    it) to the end of fit (its logs are fetched after the last step)."""

    def __init__(self, warmup: int, batch_size: int):
        import keras

        clock = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch == warmup - 1:
                    keras.ops.convert_to_numpy(logs["loss"])  # wait for the device
                    clock.start = time.perf_counter()
                clock.steps = batch + 1

            def on_train_end(self, logs=None):
                clock.end = time.perf_counter()

        self.callback = Callback()
        self.warmup, self.batch_size = warmup, batch_size
        self.start = self.end = None
        self.steps = 0

    def rate(self) -> float:
        return (self.steps - self.warmup) * self.batch_size / (self.end - self.start)


def timed_fit(model, batches, *, steps: int, warmup: int, batch_size: int) -> float:
    """Training images/s of `model` on `steps` full batches from `batches`, after `warmup` untimed ones."""
    clock = _StepClock(warmup, batch_size)
    model.fit(batches, steps_per_epoch=warmup + steps, epochs=1, shuffle=False, verbose=0, callbacks=[clock.callback])
    return clock.rate()


def _compiled_training_model(config: ModelConfig, classes: int, augment: AugmentConfig):
    from .model import build_classifier
    from .optim import classification_loss
    from .trainer import training_model

    model = training_model(build_classifier(config, classes), TrainConfig(model=config, augment=augment))
    model.compile(optimizer="adam", loss=classification_loss(), metrics=["accuracy"])
    return model


def _set_precision(mixed_precision: bool) -> None:
    import keras

    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")


def throughput(*, backbone: str = "mobilenet_v2", alpha: float | None = 0.35, input_size: int = 96,
               batch_size: int = 64, steps: int = 20, warmup: int = 3, mixed_precision: bool = False,
               say=print) -> dict:
    """Training images/s of one configuration (from scratch: every layer trains), augmentation off then
    on (the `light` preset), timed after `warmup` steps that compile the step. Batches come the way
    `train` feeds in-memory data (uint8 pictures, gathered in a seeded order by `ShuffledBatches`, cast
    on the accelerator), built from random pixels: the speed does not depend on what they show."""
    from .pipeline import ShuffledBatches

    _set_precision(mixed_precision)
    rng = np.random.default_rng(0)
    count = batch_size * (steps + warmup)
    images = rng.integers(0, 256, (count, input_size, input_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, count)
    config = ModelConfig(backbone=backbone, alpha=alpha, input_size=input_size, weights="none", mode="scratch")
    figures = {"backbone": backbone, "alpha": config.alpha, "input_size": input_size, "batch_size": batch_size,
               "images_timed": batch_size * steps, **_machine(), "mixed_precision": mixed_precision}
    for augment in (AugmentConfig.none(), AugmentConfig.light()):
        model = _compiled_training_model(config, 10, augment)
        rate = timed_fit(model, ShuffledBatches(images, labels, batch_size, seed=0), steps=steps, warmup=warmup,
                         batch_size=batch_size)
        figures["images_per_s_augmented" if augment.enabled else "images_per_s"] = round(rate, 1)
    figures["augmentation_cost"] = round(1 - figures["images_per_s_augmented"] / figures["images_per_s"], 3)
    say(json.dumps(figures))
    return figures


def streaming(out: str | Path, *, images: int = 1024, photo_size: tuple[int, int] = (500, 375),
              input_size: int = 224, worker_counts: tuple[int, ...] | None = None, backbone: str = "mobilenet_v2",
              alpha: float | None = 0.35, batch_size: int = 64, steps: int = 20, warmup: int = 3,
              mixed_precision: bool = False, augment: str = "light",
              decoders: tuple[str, ...] = ("threads", "processes"), train_worker_counts: tuple[int, ...] | None = None,
              say=print) -> dict:
    """Can a folder of JPEGs feed training as fast as pictures held in memory?

    1. Decode: images/s of the streaming loader (file -> the one decoder -> crop and resize to
       input_size, uint8 batches) with 1 decoder (the per-core figure) and with more, for each of
       `decoders` ("threads", "processes"): `decode_images_per_s_<decoder>`.
    2. Training: images/s of the same model's real training step fed from memory (the folder decoded
       once, `ShuffledBatches`) and streamed from the JPEGs (`StreamingBatches`) by each of `decoders`
       with each of `train_worker_counts` decoders (default: the stream's default), in the same process:
       `train_images_per_s_streamed_<decoder>_by_workers`; `train_images_per_s_streamed_<decoder>` is
       the best of them and `streamed_vs_in_memory_<decoder>` its ratio to in-memory.

    The keys without a decoder in their name (`decode_images_per_s`, `train_images_per_s_streamed`,
    `streamed_vs_in_memory`) hold the first of `decoders`. The photos are written once to `out`/photos
    (`write_photo_folder`) and read from the page cache, so the figures are decode, not disk, speed."""
    from edgevision.runtime.preprocess import PreprocessPolicy

    from .dataset import IndexedSplit, default_workers, index_image_folder, load_image_folder
    from .pipeline import ShuffledBatches
    from .sample_data import write_photo_folder
    from .decode_pool import DECODERS
    from .streaming import StreamingBatches, benchmark_streaming

    unknown = [d for d in decoders if d not in DECODERS[1:]]
    if unknown or not decoders:
        raise ValueError(f"Unknown decoder(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(DECODERS[1:])} (--decoder takes a comma-separated list)")
    if images < batch_size * 2:
        raise ValueError(f"images ({images}) must be at least two batches ({2 * batch_size})")
    folder = Path(out) / "photos"
    if not folder.exists():
        say(f"writing {images} photos of {photo_size[0]}x{photo_size[1]} to {folder}")
        write_photo_folder(folder, images, photo_size)
    index = index_image_folder(folder, val_fraction=0, test_fraction=0)
    policy = PreprocessPolicy(input_size, input_size)
    cores = default_workers()
    worker_counts = worker_counts or tuple(sorted({1, max(1, cores // 2), cores}))
    figures = {"photos": len(index.train), "photo_size": f"{photo_size[0]}x{photo_size[1]}",
               "mean_file_kb": round(np.mean(list(index.file_sizes.values())) / 1e3, 1), "input_size": input_size,
               **_machine(), "usable_cores": cores}

    for decoder in decoders:
        rates = benchmark_streaming(index.train, policy, workers=worker_counts, batch_size=32, decoder=decoder, say=say)
        figures[f"decode_images_per_s_{decoder}"] = {str(k): round(v, 1) for k, v in rates.items()}
        figures[f"decode_images_per_s_per_core_{decoder}"] = round(rates[min(rates)] / min(rates), 1)
    for key in ("decode_images_per_s", "decode_images_per_s_per_core"):
        figures[key] = figures[f"{key}_{decoders[0]}"]

    started = time.perf_counter()
    memory = load_image_folder(folder, policy, val_fraction=0, test_fraction=0)
    figures["decode_into_memory_s"] = round(time.perf_counter() - started, 2)

    _set_precision(mixed_precision)
    config = ModelConfig(backbone=backbone, alpha=alpha, input_size=input_size, weights="none", mode="scratch")
    model = _compiled_training_model(config, len(index.labels), AugmentConfig.preset(augment))
    figures.update(backbone=backbone, alpha=config.alpha, batch_size=batch_size, augment=augment,
                   mixed_precision=mixed_precision, images_timed=batch_size * steps)
    # Whole batches only (a short last batch would compile another step): both feeds see the same shapes.
    usable = len(memory.train) - len(memory.train) % batch_size
    in_memory = ShuffledBatches(memory.train.images[:usable], memory.train.labels[:usable], batch_size, seed=0)
    figures["train_images_per_s_in_memory"] = round(
        timed_fit(model, in_memory, steps=steps, warmup=warmup, batch_size=batch_size), 1)
    whole = IndexedSplit(index.train.paths[:usable], index.train.labels[:usable])
    for decoder in decoders:
        rates = {}
        for count in train_worker_counts or (None,):  # None: the stream's default count
            with StreamingBatches(whole, policy, batch_size, seed=0, dtype="uint8", decoder=decoder,
                                  workers=count) as streamed:
                count = streamed.decoders
                rates[str(count)] = round(timed_fit(model, streamed, steps=steps, warmup=warmup,
                                                    batch_size=batch_size), 1)
            say(f"training streamed by {count} decoder {decoder}: {rates[str(count)]:,.0f} images/s")
        rate = max(rates.values())
        figures[f"train_images_per_s_streamed_{decoder}_by_workers"] = rates
        figures[f"train_images_per_s_streamed_{decoder}"] = rate
        figures[f"streamed_vs_in_memory_{decoder}"] = round(rate / figures["train_images_per_s_in_memory"], 3)
    for key in ("train_images_per_s_streamed", "streamed_vs_in_memory"):
        figures[key] = figures[f"{key}_{decoders[0]}"]
    say(json.dumps(figures))
    return figures


def _machine() -> dict:
    """What the figures were measured on: Keras backend, accelerator, CPU model and its int8/SIMD flags."""
    import platform

    import keras

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    cpu = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                    break
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "asimd", "asimddp") if f in flags]
    return {"backend": keras.backend.backend(), "devices": _devices(), "cpu": cpu, "cpu_flags": simd}


def _devices() -> list[str]:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return [f"{d.platform}:{d.device_kind}" for d in jax.devices()]  # e.g. gpu:NVIDIA H100 80GB HBM3
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_logical_devices()]
    if keras.backend.backend() == "torch":
        import torch

        return [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else ["cpu"]
    return [keras.backend.backend()]


def main(argv: list[str] | None = None) -> int:
    from edgevision.tflogs import quiet_tensorflow

    quiet_tensorflow()  # as the edgevision command does: TensorFlow's start-up lines only when asked for
    parser = argparse.ArgumentParser(prog="python -m edgevision.train.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    ld = sub.add_parser("limited-data", help="transfer vs scratch, with and without augmentation, on Fashion-MNIST")
    ld.add_argument("--out", required=True)
    ld.add_argument("--per-class", type=int, default=50)
    ld.add_argument("--input-size", type=int, default=None,
                    help="one input size for every setting (default: 160 for transfer, 96 for scratch)")
    ld.add_argument("--seed", type=int, default=0)
    ld.add_argument("--only", action="append", help="run only settings whose name contains this (repeatable)")
    tp = sub.add_parser("throughput", help="training images/s with augmentation off and on")
    tp.add_argument("--input-size", type=int, default=96)
    st = sub.add_parser("streaming", help="JPEG decode images/s per core, and training streamed from JPEGs vs "
                        "from memory")
    st.add_argument("--out", required=True, help="folder for the generated photos (reused when present)")
    st.add_argument("--images", type=int, default=1024, help="how many photos to write")
    st.add_argument("--photo-size", default="500x375", help="WIDTHxHEIGHT of the photos (default: ImageNet-like)")
    st.add_argument("--input-size", type=int, default=224)
    st.add_argument("--workers", default=None, help="comma-separated decoder counts to time "
                    "(default: 1, half the cores, all)")
    st.add_argument("--train-workers", default=None, help="comma-separated decoder counts to stream training "
                    "with (default: the stream's default for the machine)")
    st.add_argument("--augment", default="light", help="augmentation preset for the training step")
    st.add_argument("--decoder", default="threads,processes",
                    help="comma-separated decoders to compare: threads, processes (default: both)")
    for p in (tp, st):
        p.add_argument("--backbone", default="mobilenet_v2")
        p.add_argument("--alpha", type=float, default=0.35)
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--steps", type=int, default=20, help="timed training steps")
        p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
        p.add_argument("--mixed-precision", action="store_true", help="bf16 compute (GPU)")
        p.add_argument("--json", metavar="PATH", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.which == "limited-data":
        rows = limited_data(args.out, per_class=args.per_class, input_size=args.input_size, seed=args.seed,
                            only=args.only)
        print("\n| setting | input | test accuracy (10,000 images) | seconds |\n|---|---|---|---|")
        for row in rows:
            print(f"| {row['setting']} | {row['input_size']} | {row['test_accuracy']:.2%} | {row['seconds']:.0f} |")
        return 0
    common = dict(backbone=args.backbone, alpha=args.alpha, input_size=args.input_size, batch_size=args.batch_size,
                  steps=args.steps, warmup=args.warmup, mixed_precision=args.mixed_precision)
    if args.which == "throughput":
        figures = throughput(**common)
    else:
        width, _, height = args.photo_size.partition("x")
        if not (width.isdigit() and height.isdigit()):
            parser.error(f"--photo-size {args.photo_size!r} is not WIDTHxHEIGHT, e.g. 500x375")
        try:
            counts = tuple(int(c) for c in args.workers.split(",")) if args.workers else None
            train_counts = tuple(int(c) for c in args.train_workers.split(",")) if args.train_workers else None
        except ValueError:
            parser.error(f"--workers {args.workers!r} / --train-workers {args.train_workers!r} must be "
                         f"comma-separated lists of decoder counts, e.g. 1,4,16")
        decoders = tuple(d.strip() for d in args.decoder.split(",") if d.strip())
        try:
            figures = streaming(args.out, images=args.images, photo_size=(int(width), int(height)),
                                worker_counts=counts, augment=args.augment, decoders=decoders,
                                train_worker_counts=train_counts, **common)
        except ValueError as error:
            parser.error(str(error))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
