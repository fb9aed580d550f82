"""Train a classifier on a folder of labelled photos and save a run folder for export."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgevision.runtime.atomic import atomic_directory
from edgevision.runtime.preprocess import INTERPOLATIONS, RESIZE_MODES, PreprocessPolicy

from .dataset import Dataset, load_image_folder
from .model import ModelConfig, build_classifier, momentum_for, recalibrate_batchnorm, trainable_batchnorms
from .run_dir import MODEL_FILE, RunInfo

log = logging.getLogger("edgevision.train")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    resize: str = "center_crop"
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning rate must be in (0, 1), got {self.learning_rate}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"Unknown resize mode {self.resize!r}; choose one of {', '.join(RESIZE_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"Unknown interpolation {self.interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")

    @property
    def policy(self) -> PreprocessPolicy:
        size = self.model.input_size
        return PreprocessPolicy(size, size, resize=self.resize, interpolation=self.interpolation)


@dataclass
class TrainResult:
    run_dir: Path
    labels: list[str]
    heldout_accuracy: float
    heldout_split: str
    heldout_count: int
    skipped: int
    seconds: float


def _versions() -> dict:
    import keras

    import edgevision

    return {"edgevision": edgevision.__version__, "keras": keras.__version__, "backend": keras.backend.backend(),
            "numpy": np.__version__}


def train(data_dir: str | os.PathLike, out_dir: str | os.PathLike, config: TrainConfig = TrainConfig(),
          *, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Load the image folder, train, re-estimate BatchNorm statistics, evaluate on held-out images,
    and write `out_dir` (model.keras + run.json) atomically."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:  # fail before spending minutes on training
        raise FileExistsError(f"Output folder '{out_dir}' already exists; choose another or pass --overwrite")
    dataset = load_image_folder(
        data_dir, config.policy, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
        seed=config.seed, progress=progress,
    )
    log.info(dataset.describe())
    heldout_split = "test" if len(dataset.test) else "val"
    heldout = dataset.heldout()

    import keras

    keras.utils.set_random_seed(config.seed)
    model = build_classifier(config.model, len(dataset.labels))
    steps_per_epoch = -(-len(dataset.train) // config.batch_size)
    for layer in trainable_batchnorms(model):
        layer.momentum = momentum_for(steps_per_epoch)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    validation = (dataset.val.images, dataset.val.labels) if len(dataset.val) else None
    history = model.fit(
        dataset.train.images, dataset.train.labels, batch_size=config.batch_size, epochs=config.epochs,
        validation_data=validation, shuffle=True, verbose=1 if progress else 0,
    )
    recalibrate_batchnorm(model, dataset.train.images, batch_size=max(config.batch_size, 32))

    heldout_accuracy = _accuracy(model, heldout) if len(heldout) else float("nan")
    info = RunInfo(
        labels=dataset.labels,
        preprocess=config.policy,
        model=config.model.to_dict(),
        training={k: v for k, v in asdict(config).items() if k != "model"},
        dataset=_dataset_record(dataset),
        heldout_paths=[os.path.abspath(p) for p in heldout.paths],
        heldout_labels=[int(v) for v in heldout.labels],
        metrics={f"{heldout_split}_accuracy": heldout_accuracy},
        history={k: [float(v) for v in values] for k, values in history.history.items()},
        versions=_versions(),
    )
    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        model.save(staging / MODEL_FILE)
        info.save(staging)
    return TrainResult(
        run_dir=out_dir, labels=dataset.labels, heldout_accuracy=heldout_accuracy, heldout_split=heldout_split,
        heldout_count=len(heldout), skipped=len(dataset.skipped), seconds=time.perf_counter() - started,
    )


def _accuracy(model, split) -> float:
    probs = model.predict(split.images, batch_size=64, verbose=0)
    return float(np.mean(np.argmax(probs, axis=1) == split.labels))


def _dataset_record(dataset: Dataset) -> dict:
    return {
        "root": os.path.abspath(dataset.root),
        "fingerprint": dataset.fingerprint(),
        "explicit_splits": dataset.explicit_splits,
        "counts": {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)},
        "skipped": [{"path": s.path, "reason": s.reason} for s in dataset.skipped],
    }
