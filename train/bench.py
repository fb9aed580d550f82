"""Training benchmarks that show the toolkit's claims with numbers.

- `limited_data`: Fashion-MNIST with a few dozen training images per class, tested on all 10,000 test
  images: transfer learning (EfficientNet-Lite0 ImageNet features, `head` and `finetune`) against
  MobileNetV2 from scratch, each with and without augmentation. Every configuration goes through the
  same `train()` a user runs, on image folders written to disk.
- `throughput`: training images/s of one configuration with augmentation off and on, in the same
  process, on whatever accelerator Keras sees.

    python -m edgevision.train.bench limited-data --out /tmp/ld
    python -m edgevision.train.bench throughput --backbone mobilenet_v2 --alpha 1.0 --input-size 224
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


def write_limited_data(root: Path, per_class: int, val_per_class: int, seed: int) -> Path:
    """train/ (per_class a class) and val/ (val_per_class) from Fashion-MNIST's training set, test/ = all
    10,000 test images; grey 28x28 pictures, upscaled and turned RGB by the one preprocessing path."""
    from .sample_data import FASHION_MNIST_FOLDER_NAMES, fashion_mnist, take_per_class, write_image_folder

    images, labels, _ = fashion_mnist("train")
    chosen = take_per_class(labels, per_class + val_per_class, seed=seed)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for cls in range(len(FASHION_MNIST_FOLDER_NAMES)):
        mine = rng.permutation(chosen[labels[chosen] == cls])
        train_idx.extend(mine[:per_class])
        val_idx.extend(mine[per_class:])
    data = root / "data"
    write_image_folder(images[train_idx], labels[train_idx], FASHION_MNIST_FOLDER_NAMES, data / "train")
    write_image_folder(images[val_idx], labels[val_idx], FASHION_MNIST_FOLDER_NAMES, data / "val")
    test_images, test_labels, _ = fashion_mnist("test")
    write_image_folder(test_images, test_labels, FASHION_MNIST_FOLDER_NAMES, data / "test")
    return data


def limited_data(out: str | Path, *, per_class: int = 50, val_per_class: int = 10, input_size: int | None = None,
                 seed: int = 0, only: list[str] | None = None, say=print) -> list[dict]:
    """Train every setting with and without augmentation; returns (and writes out/results.json) one row
    per run with its test accuracy on all 10,000 Fashion-MNIST test images."""
    from .trainer import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not data.exists():
        write_limited_data(out, per_class, val_per_class, seed)
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


def throughput(*, backbone: str = "mobilenet_v2", alpha: float | None = 0.35, input_size: int = 96,
               batch_size: int = 64, steps: int = 20, mixed_precision: bool = False, say=print) -> dict:
    """Training images/s of one configuration (from scratch: every layer trains), augmentation off then
    on (the `light` preset), after a warm-up that compiles the step. Batches come the way `train`
    feeds them (uint8 pictures held in memory, gathered in a seeded order by `ShuffledBatches`, cast
    on the accelerator), built from random pixels: the speed does not depend on what they show."""
    import keras

    from .model import build_classifier
    from .optim import classification_loss
    from .pipeline import ShuffledBatches
    from .trainer import TrainConfig, training_model

    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size * steps, input_size, input_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, batch_size * steps)
    config = ModelConfig(backbone=backbone, alpha=alpha, input_size=input_size, weights="none", mode="scratch")
    figures = {"backbone": backbone, "alpha": config.alpha, "input_size": input_size, "batch_size": batch_size,
               "images_timed": len(images), "backend": keras.backend.backend(),
               "devices": _devices(), "mixed_precision": mixed_precision}
    for augment in (AugmentConfig.none(), AugmentConfig.light()):
        model = training_model(build_classifier(config, 10), TrainConfig(model=config, augment=augment))
        model.compile(optimizer="adam", loss=classification_loss(), metrics=["accuracy"])
        batches = ShuffledBatches(images, labels, batch_size, seed=0)
        model.fit(batches, steps_per_epoch=2, epochs=1, shuffle=False, verbose=0)  # compiles the step
        start = time.perf_counter()
        model.fit(batches, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
        rate = len(images) / (time.perf_counter() - start)
        figures["images_per_s_augmented" if augment.enabled else "images_per_s"] = round(rate, 1)
    figures["augmentation_cost"] = round(1 - figures["images_per_s_augmented"] / figures["images_per_s"], 3)
    say(json.dumps(figures))
    return figures


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
    tp.add_argument("--backbone", default="mobilenet_v2")
    tp.add_argument("--alpha", type=float, default=0.35)
    tp.add_argument("--input-size", type=int, default=96)
    tp.add_argument("--batch-size", type=int, default=64)
    tp.add_argument("--steps", type=int, default=20)
    tp.add_argument("--mixed-precision", action="store_true", help="bf16 compute (GPU)")
    tp.add_argument("--json", metavar="PATH", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.which == "limited-data":
        rows = limited_data(args.out, per_class=args.per_class, input_size=args.input_size, seed=args.seed,
                            only=args.only)
        print("\n| setting | input | test accuracy (10,000 images) | seconds |\n|---|---|---|---|")
        for row in rows:
            print(f"| {row['setting']} | {row['input_size']} | {row['test_accuracy']:.2%} | {row['seconds']:.0f} |")
    else:
        figures = throughput(backbone=args.backbone, alpha=args.alpha, input_size=args.input_size,
                             batch_size=args.batch_size, steps=args.steps, mixed_precision=args.mixed_precision)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
