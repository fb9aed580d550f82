"""Train a classifier on a folder of labelled photos and save a run folder for export.

One run, phase by phase (mode "finetune" has two: the head on a frozen backbone, then the unfrozen
top of the backbone at a lower learning rate). Augmentation is a layer in front of the classifier in
the model that `fit` trains, and only the classifier is saved, so the saved model has no random layer.
Every epoch ends with a checkpoint in the work folder (see checkpoint.py) from which `resume=True`
continues a killed run exactly. Keras only: no TensorFlow import and no tf.data, so any backend trains.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgevision.runtime.atomic import atomic_directory, check_output_folder, refuse_inputs
from edgevision.runtime.preprocess import INTERPOLATIONS, RESIZE_MODES, PreprocessPolicy

from .augment import AugmentConfig
from .checkpoint import STATE_FILE, Checkpoint, RunState, assign_arrays, load_checkpoint, restore_best, work_dir
from .dataset import SKIPPED_FILE, Dataset, DatasetIndex, index_image_folder, load_image_folder, skipped_report
from .decode_pool import DECODERS
from .distribute import DISTRIBUTE_MODES
from .model import ModelConfig, build_classifier, momentum_for, recalibrate_batchnorm, trainable_batchnorms, unfreeze
from .run_dir import MODEL_FILE, RunInfo

if TYPE_CHECKING:  # streaming imports Keras, which train() imports only when training starts
    from .streaming import StreamedDataset

log = logging.getLogger("edgevision.train")

CLASS_WEIGHT_MODES = ("none", "balanced")
DATA_IN_MEMORY_MODES = ("auto", "always", "never")
LR_SCHEDULES = ("constant", "cosine")
KEEP_MODES = ("best", "last")
IN_MEMORY_LIMIT_BYTES = 2 * 1024**3  # "auto" decodes into memory when N x H x W x 3 bytes stays below this
LOGS_DIR = "logs"


@dataclass(frozen=True)
class Phase:
    name: str  # "head", "finetune" or "scratch"
    epochs: int
    learning_rate: float


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 10  # mode "finetune": the head phase
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    resize: str = "center_crop"
    interpolation: str = "linear"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    fine_tune_epochs: int | None = None  # mode "finetune", phase two; None: as many as `epochs`
    fine_tune_lr: float | None = None  # mode "finetune", phase two; None: learning_rate / 10
    # "cosine": each phase warms up over its first epoch, then decays to 0 at its end (see optim.py).
    lr_schedule: str = "constant"
    label_smoothing: float = 0.0  # target (1 - s) for the true class, s / classes spread over all
    # Momentum of the trainable BatchNorm layers' moving statistics; None: momentum_for(steps per epoch),
    # which keeps them current on small datasets (Keras' 0.99 lags them by ~100 steps).
    bn_momentum: float | None = None
    # Which epoch's weights model.keras holds: the "best" by validation accuracy (the last when there are
    # no validation images), or the "last" (what a decaying schedule is built for; a small validation
    # set's best is partly luck).
    keep: str = "best"
    patience: int | None = None  # epochs without a better validation accuracy that end a phase
    class_weights: str = "none"  # or "balanced"
    tensorboard: bool = True
    data_in_memory: str = "auto"  # decode the folder into memory, or stream it from disk (see _load_data)
    workers: int | None = None  # decoders for loading or streaming; None: one per core (dataset.default_workers)
    # Streaming decodes in "threads" or "processes" ("auto": processes from 8 usable cores, see decode_pool.py).
    decoder: str = "auto"
    mixed_precision: bool = False  # bf16 compute (Keras' "mixed_bfloat16"); the saved model is float32
    distribute: str = "auto"  # "auto", "none" or "data_parallel" (see distribute.py)

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
        if not isinstance(self.augment, AugmentConfig):
            raise ValueError(f"augment must be an AugmentConfig, got {type(self.augment).__name__}")
        finetune = self.model.mode == "finetune"
        for name in ("fine_tune_epochs", "fine_tune_lr"):
            if getattr(self, name) is not None and not finetune:
                raise ValueError(f"{name}={getattr(self, name)} applies only to mode 'finetune', not {self.model.mode!r}")
        if self.fine_tune_epochs is not None and self.fine_tune_epochs < 1:
            raise ValueError(f"fine_tune_epochs must be at least 1, got {self.fine_tune_epochs}")
        if self.fine_tune_lr is not None and not 0 < self.fine_tune_lr < 1:
            raise ValueError(f"fine-tuning learning rate must be in (0, 1), got {self.fine_tune_lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"Unknown learning-rate schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.bn_momentum is not None and not 0.0 < self.bn_momentum < 1.0:
            raise ValueError(f"BatchNorm momentum must be in (0, 1) (or None: from the steps per epoch), "
                             f"got {self.bn_momentum}")
        if self.keep not in KEEP_MODES:
            raise ValueError(f"Unknown keep {self.keep!r}; choose one of {', '.join(KEEP_MODES)}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1 epoch (or None for no early stopping), got {self.patience}")
        if self.class_weights not in CLASS_WEIGHT_MODES:
            raise ValueError(f"Unknown class weighting {self.class_weights!r}; choose one of {', '.join(CLASS_WEIGHT_MODES)}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ValueError(f"workers must be a positive integer or None (one per core), got {self.workers!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"Unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}")
        if self.data_in_memory not in DATA_IN_MEMORY_MODES:
            raise ValueError(f"Unknown data_in_memory {self.data_in_memory!r}; choose one of {', '.join(DATA_IN_MEMORY_MODES)}")
        if self.distribute not in DISTRIBUTE_MODES:
            raise ValueError(f"Unknown distribution {self.distribute!r}; choose one of {', '.join(DISTRIBUTE_MODES)}")

    @property
    def policy(self) -> PreprocessPolicy:
        size = self.model.input_size
        return PreprocessPolicy(size, size, resize=self.resize, interpolation=self.interpolation)

    def phases(self) -> list[Phase]:
        if self.model.mode != "finetune":
            return [Phase(self.model.mode, self.epochs, self.learning_rate)]
        return [
            Phase("head", self.epochs, self.learning_rate),
            Phase("finetune", self.fine_tune_epochs or self.epochs, self.fine_tune_lr or self.learning_rate / 10),
        ]

    def to_dict(self) -> dict:
        """JSON-ready (what run.json and the checkpoint record)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass
class TrainResult:
    run_dir: Path
    labels: list[str]
    heldout_accuracy: float
    heldout_split: str
    heldout_count: int
    skipped: int
    seconds: float
    epochs: int = 0  # epochs trained, all phases (fewer than planned after early stopping)
    best_epoch: int | None = None  # 0-based epoch whose weights were saved; None: the last
    resumed_at: list[int] = field(default_factory=list)


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> np.ndarray | None:
    """Per-class loss weights: None for "none"; for "balanced" n / (k * n_c), as scikit-learn's
    `compute_class_weight("balanced")`: every class weighs the same in the loss, and the mean weight
    over the training images is 1, so the learning rate keeps its meaning."""
    if mode not in CLASS_WEIGHT_MODES:
        raise ValueError(f"Unknown class weighting {mode!r}; choose one of {', '.join(CLASS_WEIGHT_MODES)}")
    if mode == "none":
        return None
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def _versions() -> dict:
    import keras

    import edgevision

    return {"edgevision": edgevision.__version__, "keras": keras.__version__, "backend": keras.backend.backend(),
            "numpy": np.__version__}


def training_model(classifier, config: TrainConfig):
    """What `fit` trains: the classifier, behind the augmentation layer when augmentation is on. Always a
    model of its own, so the classifier saved to model.keras is never compiled: its file holds no loss
    or optimizer that a plain `keras.saving.load_model` would have to resolve."""
    import keras

    from .augment_layer import augmentation_layer

    # The augmentation takes the uint8 batches as they are (it casts them itself): a float32 input here
    # made TensorFlow log a false oneDNN "DT_UINT8" error in every augmented training.
    dtype = "uint8" if config.augment.enabled else "float32"
    inputs = keras.Input(classifier.input_shape[1:], dtype=dtype, name="image")
    x = augmentation_layer(config.augment, seed=config.seed)(inputs) if config.augment.enabled else inputs
    return keras.Model(inputs, classifier(x), name="training")


# Options that do not change what is trained (how pictures are decoded): a run may resume with other values.
_FREE_ON_RESUME = ("workers", "decoder")


def _check_resumable(state: RunState, config: dict, fingerprint: str, work: Path) -> None:
    saved = {k: v for k, v in state.config.items() if k not in _FREE_ON_RESUME}
    config = {k: v for k, v in config.items() if k not in _FREE_ON_RESUME}
    if saved != config:
        changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {config.get(k)!r}" for k in changed)
        raise ValueError(f"Cannot resume from '{work}': the options differ ({details}); "
                         "rerun with the options of the interrupted run, or without --resume to start over")
    if state.fingerprint != fingerprint:
        raise ValueError(f"Cannot resume from '{work}': the image folder changed since the checkpoint "
                         "(files added, removed or resized); rerun without --resume to start over")


def train(data_dir: str | os.PathLike, out_dir: str | os.PathLike, config: TrainConfig = TrainConfig(),
          *, overwrite: bool = False, progress: bool = True, resume: bool = False) -> TrainResult:
    """Load the image folder, train phase by phase with a checkpoint after every epoch, keep the best
    epoch (by validation accuracy), re-estimate BatchNorm statistics, evaluate on held-out images, and
    write `out_dir` (model.keras, run.json, report, logs/) atomically. `resume` continues the killed
    run that was writing `out_dir` from its last finished epoch."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    work = _check_destination(data_dir, out_dir, overwrite, resume)
    # Listing the folder finds a missing or badly laid out one in milliseconds, before the training stack
    # (seconds to import) and before minutes of decoding.
    index = index_folder(data_dir, config)
    from .distribute import resolve_devices

    devices = resolve_devices(config.distribute, config.batch_size)  # before minutes of image loading
    dataset = _load_data(index, config, progress)
    log.info(dataset.describe())
    heldout_split = "test" if len(dataset.test) else "val"
    heldout = dataset.heldout()
    record, fingerprint = config.to_dict(), dataset.fingerprint()
    checkpoint = _checkpoint_to_continue(work, resume, record, fingerprint)
    classifier, state, kept_epoch = _train_classifier(dataset, config, devices, work, checkpoint, record,
                                                      fingerprint, progress)
    classifier, predicted, heldout = _finish_classifier(classifier, dataset, heldout, config)
    heldout_accuracy = float(np.mean(predicted == heldout.labels)) if len(heldout) else float("nan")
    best_epoch = state.monitor.get("best_epoch") if len(dataset.val) else None
    info = _run_info(dataset, config, record, state, heldout, heldout_split, heldout_accuracy, best_epoch,
                     kept_epoch)
    _write_run(out_dir, data_dir, overwrite, work, classifier, info, state, dataset, heldout, predicted,
               heldout_split)
    shutil.rmtree(work, ignore_errors=True)
    return TrainResult(
        run_dir=out_dir, labels=dataset.labels, heldout_accuracy=heldout_accuracy, heldout_split=heldout_split,
        heldout_count=len(heldout), skipped=len(dataset.skipped), seconds=time.perf_counter() - started,
        epochs=state.epoch, best_epoch=best_epoch if kept_epoch == best_epoch else None, resumed_at=list(state.resumed_at),
    )


def _check_destination(data_dir, out_dir: Path, overwrite: bool, resume: bool) -> Path:
    """The checks that need no data: fail before spending minutes on loading and training. Returns the
    work folder (checkpoints and live logs)."""
    check_output_folder(out_dir, overwrite)
    refuse_inputs(out_dir, [data_dir])  # --overwrite must never delete the photos it trains on
    work = work_dir(out_dir)
    if resume and not (work / STATE_FILE).is_file():
        raise FileNotFoundError(f"Nothing to resume for '{out_dir}': no checkpoint in '{work}' "
                                "(a run writes one after every epoch; start it without --resume)")
    return work


def _checkpoint_to_continue(work: Path, resume: bool, record: dict, fingerprint: str) -> Checkpoint | None:
    """With `resume`, the checkpoint, once checked against these options and this folder. Without it, a
    leftover checkpoint is deleted: a fresh run must never mix in an older run's epochs."""
    checkpoint = load_checkpoint(work) if resume else None
    if checkpoint is not None:
        _check_resumable(checkpoint.state, record, fingerprint, work)
    elif work.exists():
        log.warning("Discarding the checkpoint of an unfinished earlier run in '%s' (pass --resume to continue it)", work)
        shutil.rmtree(work)
    return checkpoint


def _train_classifier(dataset: Dataset | StreamedDataset, config: TrainConfig, devices, work: Path, checkpoint,
                      record: dict, fingerprint: str, progress: bool) -> tuple:
    """Build (or restore) the model, run the phases that are left and load the weights to keep.
    Returns (classifier, run state, kept epoch)."""
    import keras

    from .distribute import float32_output, precision

    # Variables are created inside the distribution scope (replicated on every device) and layers
    # under the precision policy; both end with training.
    with devices.scope(), precision(config.mixed_precision):
        keras.utils.set_random_seed(config.seed)
        classifier = build_classifier(config.model, len(dataset.labels))
        if config.mixed_precision:
            float32_output(classifier)
        trained = training_model(classifier, config)
        state = _run_state(trained, checkpoint, record, fingerprint, work, progress)
        # Only once the model is built: a run whose weights cannot be had leaves no folder behind.
        work.mkdir(parents=True, exist_ok=True)
        log.info("checkpoints and live TensorBoard logs: %s", work)
        _fit_phases(trained, classifier, dataset, config, state, work, checkpoint, progress,
                    devices.count)

        kept_epoch = keep_weights(config.keep, classifier, work, state, bool(len(dataset.val)))
    return classifier, state, kept_epoch


def _run_state(trained, checkpoint, record: dict, fingerprint: str, work: Path, progress: bool) -> RunState:
    """A fresh state, or the checkpoint's with its weights and random generators restored into place."""
    if checkpoint is None:
        return RunState(config=record, fingerprint=fingerprint)
    state = checkpoint.state
    assign_arrays(trained.variables, checkpoint.model_paths, checkpoint.model_arrays, "model")
    checkpoint.restore_rng()
    state.resumed_at.append(state.epoch)
    if progress:
        print(f"Resuming from the checkpoint after epoch {state.epoch} in {work}")
    return state


def _finish_classifier(classifier, dataset: Dataset | StreamedDataset, heldout, config: TrainConfig) -> tuple:
    """The classifier as export will read it, and its answers on the held-out images. Returns
    (classifier, predicted classes, the held-out split they belong to)."""
    from .distribute import float32_copy

    if config.mixed_precision:
        classifier = float32_copy(classifier)  # export and the runtime expect float32 in and out
    # Deterministic preprocessing: the classifier alone, never the augmentation in front of it.
    batch = max(config.batch_size, 32)
    recalibrate_batchnorm(classifier, dataset.calibration_images(batch, _RECALIBRATION_BATCHES), batch_size=batch)
    predicted, heldout = dataset.predict_heldout(classifier, heldout)
    return classifier, predicted, heldout


def _run_info(dataset: Dataset | StreamedDataset, config: TrainConfig, record: dict, state: RunState, heldout,
              heldout_split: str, heldout_accuracy: float, best_epoch: int | None, kept_epoch: int) -> RunInfo:
    """What run.json records: everything export needs to rebuild the preprocessing and check parity."""
    return RunInfo(
        labels=dataset.labels,
        preprocess=config.policy,
        model=config.model.to_dict(),
        training={k: v for k, v in record.items() if k != "model"},
        dataset=_dataset_record(dataset),
        heldout_paths=[os.path.abspath(p) for p in heldout.paths],
        train_paths=[os.path.abspath(p) for p in dataset.train.paths],  # int8 calibration images
        # int8 precision search images: validation, unless validation is what was held out
        val_paths=[os.path.abspath(p) for p in dataset.val.paths] if heldout_split == "test" else [],
        heldout_labels=[int(v) for v in heldout.labels],
        metrics={f"{heldout_split}_accuracy": heldout_accuracy, "epochs": state.epoch, "best_epoch": best_epoch,
                 "kept_epoch": kept_epoch,
                 "best_val_accuracy": state.monitor.get("best") if len(dataset.val) else None,
                 "resumed_at": state.resumed_at},
        history=state.history,
        versions=_versions(),
    )


def _write_run(out_dir: Path, data_dir, overwrite: bool, work: Path, classifier, info: RunInfo, state: RunState,
               dataset: Dataset | StreamedDataset, heldout, predicted: np.ndarray, heldout_split: str) -> None:
    """Write the run folder atomically: a run killed while writing leaves no half-written folder."""
    from .report import write_report

    with atomic_directory(out_dir, overwrite=overwrite, inputs=[data_dir]) as staging:
        classifier.save(staging / MODEL_FILE)
        info.save(staging)
        write_report(staging, state.history, heldout.labels, predicted, dataset.labels, heldout_split)
        if dataset.skipped:
            (staging / SKIPPED_FILE).write_text(skipped_report(dataset.skipped), encoding="utf-8")
        if (work / LOGS_DIR).is_dir():
            shutil.copytree(work / LOGS_DIR, staging / LOGS_DIR)


def keep_weights(keep: str, classifier, work: Path, state: RunState, has_validation: bool) -> int:
    """Load the weights model.keras will hold into `classifier` (which ends training with the last
    epoch's) and return that epoch (0-based): the best by validation accuracy for keep="best" when
    there was validation, else the last."""
    last = state.epoch - 1
    if keep == "best" and has_validation and restore_best(work, classifier.variables):
        best = state.monitor.get("best_epoch")
        log.info("keeping epoch %s, the best by validation accuracy", None if best is None else best + 1)
        return best
    return last


def _fit_phases(trained, classifier, dataset: Dataset | StreamedDataset, config: TrainConfig, state: RunState, work: Path,
                checkpoint, progress: bool, device_count: int = 1) -> None:
    """Run the phases that are left, from `state` (a fresh state starts at phase 0, epoch 0)."""
    from .callbacks import EpochEnd, Monitor
    from .tensorboard import ScalarWriter

    weights = class_weights(dataset.train.labels, len(dataset.labels), config.class_weights)
    steps = math.ceil(len(dataset.train) / config.batch_size)
    validation, corrections = _validation_data(dataset, config.batch_size, device_count)
    if validation is None and config.patience is not None:
        log.warning("No validation images: early stopping watches the training accuracy")
    monitor = Monitor(**state.monitor) if state.monitor else Monitor(
        "val_accuracy" if validation else "accuracy", config.patience)
    writers = ({name: ScalarWriter(work / LOGS_DIR / name) for name in ("train", "validation")}
               if config.tensorboard else None)
    # A checkpoint from a phase that ended (last epoch, or early stopping) resumes with the next phase;
    # any other, inside its own.
    mid_phase = checkpoint is not None and not state.phase_done
    first = (state.phase + (0 if mid_phase else 1)) if checkpoint is not None else 0
    epoch = state.epoch
    try:  # a stream holds decoder processes until it is closed, whether training ends or fails
        for index, phase in enumerate(config.phases()):
            if index < first:
                continue
            _compile_phase(trained, classifier, phase, config, steps)
            if mid_phase and index == state.phase:
                _restore_optimizer(trained, checkpoint)
                phase_start = state.phase_start
            else:
                phase_start = epoch
                monitor.start_phase()
            phase_end = phase_start + phase.epochs
            if progress and len(config.phases()) > 1:
                print(f"Phase {index + 1}/{len(config.phases())} ({phase.name}): epochs {epoch + 1}-{phase_end}, "
                      f"learning rate {phase.learning_rate:g}")
            callbacks = [*corrections,
                         EpochEnd(state, monitor, classifier, work, index, phase_start, phase_end, writers)]
            _fit_phase(trained, dataset, config, weights, steps, epoch, phase_end, validation, callbacks,
                       device_count, progress)
            epoch = state.epoch
    finally:
        _close_stream(validation)


def _validation_data(dataset: Dataset | StreamedDataset, batch_size: int, device_count: int) -> tuple:
    """(validation data or None, the callbacks that correct the metrics for how it was fed). Over several
    devices every batch must split evenly, so validation is padded and the padding taken out again."""
    from .distribute import ValidationPadding, padded_validation

    validation = dataset.validation_data(batch_size, pad_multiple=device_count)
    corrections = []
    if validation is not None and device_count > 1:
        if isinstance(validation, tuple):
            validation, padding = padded_validation(*validation, device_count)
        else:  # a stream pads its own batches, with copies of weight 0
            padding = ValidationPadding.of_stream(validation, len(dataset.val))
        corrections.append(padding.callback())
    corrections += dataset.training_callbacks()
    return validation, corrections


def _compile_phase(trained, classifier, phase: Phase, config: TrainConfig, steps: int) -> None:
    """Set what the phase trains and compile a fresh optimizer for its learning rate."""
    import keras

    from .optim import classification_loss, learning_rate

    if phase.name == "finetune":
        unfreeze(classifier, config.model)
    momentum = config.bn_momentum if config.bn_momentum is not None else momentum_for(steps)
    for layer in trainable_batchnorms(classifier):
        layer.momentum = momentum
    rate = learning_rate(phase.learning_rate, config.lr_schedule, phase.epochs, steps)
    trained.compile(optimizer=keras.optimizers.Adam(rate), loss=classification_loss(config.label_smoothing),
                    metrics=["accuracy"])


def _restore_optimizer(trained, checkpoint: Checkpoint) -> None:
    """Resuming inside a phase: the optimizer's moments and step count continue too, not just the weights."""
    trained.optimizer.build(trained.trainable_variables)
    assign_arrays(trained.optimizer.variables, checkpoint.optimizer_paths, checkpoint.optimizer_arrays,
                  "optimizer")


def _fit_phase(trained, dataset: Dataset | StreamedDataset, config: TrainConfig, weights, steps: int, epoch: int,
               phase_end: int, validation, callbacks: list, device_count: int, progress: bool) -> None:
    """Train from `epoch` to `phase_end` on a fresh stream of seeded batches, closed however fit ends."""
    from .distribute import pad_batches

    stream = dataset.training_batches(config.batch_size, config.seed, epoch, weights)
    batches = pad_batches(stream, device_count) if device_count > 1 else stream
    try:
        trained.fit(
            batches, steps_per_epoch=steps, initial_epoch=epoch, epochs=phase_end,
            validation_data=validation, shuffle=False,  # the batches are already in their seeded order
            callbacks=callbacks, verbose=1 if progress else 0,
        )
    finally:
        _close_stream(stream)


def preview_augmentation(data_dir: str | os.PathLike, path: str | os.PathLike, config: TrainConfig, *,
                         count: int = 16, columns: int = 4, progress: bool = False) -> Path:
    """Write a PNG grid of `count` training images as the augmentation of `config` changes them."""
    if not config.augment.enabled:
        raise ValueError("Nothing to preview: every augmentation option is off; pass --augment light or "
                         "options such as --rotation 15 --hflip")
    from .preview import preview_grid

    dataset = load_image_folder(
        data_dir, config.policy, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
        seed=config.seed, progress=progress,
    )
    chosen = np.random.default_rng(config.seed).permutation(len(dataset.train))[:count]
    return preview_grid(dataset.train.images[np.sort(chosen)], config.augment, path, count=count,
                        columns=columns, seed=config.seed)


def _dataset_record(dataset: DatasetIndex) -> dict:
    return {
        "root": os.path.abspath(dataset.root),
        "fingerprint": dataset.fingerprint(),
        "explicit_splits": dataset.explicit_splits,
        "counts": {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)},
        "skipped": [{"path": s.path, "reason": s.reason} for s in dataset.skipped],
    }


# ----------------------------------------------------------------------------------------------------
# Data: decoded into memory, or streamed from disk while training runs (TrainConfig.data_in_memory)

_RECALIBRATION_BATCHES = 50  # recalibrate_batchnorm's max_batches: all a streamed run decodes for it


def index_folder(data_dir: str | os.PathLike, config: TrainConfig) -> DatasetIndex:
    """The folder listed and split as `config` says, nothing decoded (its warnings are left to the loader)."""
    return index_image_folder(data_dir, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                              seed=config.seed, warn=False)


def _load_data(index: DatasetIndex, config: TrainConfig, progress: bool) -> Dataset | StreamedDataset:
    """A decoded `Dataset` of the indexed folder, or a `StreamedDataset` when data_in_memory is "never",
    or "auto" and the decoded pictures would take more than IN_MEMORY_LIMIT_BYTES. Both give training
    the same methods (training_batches, validation_data, training_callbacks, calibration_images,
    predict_heldout), so nothing here asks which one it has."""
    size = len(index.file_sizes) * config.policy.height * config.policy.width * 3
    if config.data_in_memory == "never" or (config.data_in_memory == "auto" and size > IN_MEMORY_LIMIT_BYTES):
        from .streaming import StreamedDataset

        index.warn_skipped()
        if config.data_in_memory == "auto":
            log.info("Streaming the images from disk: decoded they would take %.1f GB (more than %.1f GB)",
                     size / 1e9, IN_MEMORY_LIMIT_BYTES / 1e9)
        return StreamedDataset.from_index(index, config.policy, workers=config.workers, decoder=config.decoder)
    return load_image_folder(index.root, config.policy, val_fraction=config.val_fraction,
                             test_fraction=config.test_fraction, seed=config.seed, workers=config.workers,
                             progress=progress)


def _close_stream(data) -> None:
    """Stop a dataset's prefetching threads and decoder processes (in-memory arrays have nothing to stop)."""
    close = getattr(data, "close", None)
    if close is not None:
        close()
