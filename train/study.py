"""`edgevision study`: the claims the toolkit's defaults rest on, measured on real data and drawn.

    python -m edgevision.train.study --out DIR [--quick] [--data DIR] [--seed N]

Four claims, each a function that returns its figures, its plots and one sentence per statement saying
what the numbers show, including when they do NOT bear the statement out:

- invariance (study_invariance.py): an MLP against a small CNN ending in flatten + Dense and the same
  CNN ending in global average pooling: weights needed, accuracy on centred, shifted, flipped and
  rotated test images; what produces shift robustness (pooling, augmentation), not only "convolution".
- batchnorm (study_batchnorm.py): the classic small CNN with and without BatchNorm at several learning
  rates, validation accuracy per epoch; the small-data moving-statistics pitfall (Keras' default
  momentum against the toolkit's `momentum_for`).
- limited_data (study_limited.py): accuracy against training images per class for scratch, a head on
  the frozen pretrained backbone and full fine-tuning, with and without augmentation; the crossover.
- layers (study_layers.py): the pretrained backbone's first-layer filters and its activation maps at
  increasing depth for real photos, next to the randomly initialised network's.

Every classifier is trained by `train()` on image folders (study_data.py), as a user trains one. The
output folder (written atomically) holds report.html (self-contained: the plots are embedded),
study.json (every figure) and plots/*.png. Defaults: the Fashion-MNIST limited-data task; `--quick` is a
reduced version for CI (a few minutes on 2 CPU cores); `--data DIR` runs it on the user's folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from edgevision.choices import choice_error

log = logging.getLogger("edgevision.study")

CLAIMS = ("invariance", "batchnorm", "limited_data", "layers")
REPORT_FILE = "report.html"
FIGURES_FILE = "study.json"
PLOTS_DIR = "plots"
NOT_BORNE_OUT = "NOT borne out"  # in the sentence of every statement the numbers contradict


@dataclass(frozen=True)
class StudyScale:
    """How big each experiment is. `full()` is the study; `quick()` the reduced one CI runs."""

    # The small-picture experiments (invariance, batchnorm): images per class, input size, epochs.
    per_class: int = 50
    val_per_class: int = 10
    test_images: int = 10_000
    small_size: int = 28
    small_epochs: int = 15
    small_lr: float = 1e-3
    augment_models: tuple[str, ...] = ("mlp", "small_cnn", "small_cnn_gap")  # also trained with augmentation
    shifts: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 8)  # pixels at small_size
    reference_shift: int = 4  # the shift the sentences quote (the 4 px at 28 px)
    rotations: tuple[float, ...] = (15.0, 30.0, 90.0)
    bn_per_class: int = 200
    bn_epochs: int = 12
    bn_rates: tuple[float, ...] = (1e-3, 1e-2, 5e-2)
    # Limited data: images per class, the transfer backbone's input size, epochs per mode.
    counts: tuple[int, ...] = (10, 25, 50, 100)  # --counts 10,25,50,100,500 adds hours on 2 CPU cores
    transfer_backbone: str = "efficientnet_lite0"
    transfer_size: int = 96
    head_epochs: int = 15
    finetune_epochs: tuple[int, int] = (5, 10)  # head phase, then every block
    scratch_epochs: int = 30
    scratch_counts: tuple[int, ...] | None = None  # None: every count (from scratch is the slowest to build)
    limited_augment: bool = True
    # What layers learn: the photos' size (the pretrained weights' own).
    layers_size: int = 224

    @classmethod
    def full(cls) -> "StudyScale":
        return cls()

    @classmethod
    def quick(cls) -> "StudyScale":
        return cls(per_class=20, val_per_class=5, test_images=1000, small_epochs=5, augment_models=("small_cnn",),
                   shifts=(0, 2, 4), rotations=(15.0, 90.0), bn_per_class=20, bn_epochs=4, bn_rates=(1e-3, 3e-2),
                   counts=(10, 40), transfer_size=32, head_epochs=3, finetune_epochs=(2, 2), scratch_epochs=4,
                   scratch_counts=(10,),
                   limited_augment=False, layers_size=128)

    def __post_init__(self) -> None:
        if not self.counts or min(self.counts) < 1:
            raise ValueError(f"counts must be positive images per class, got {self.counts}")
        if 0 not in self.shifts:
            raise ValueError(f"shifts must include 0 (the centred images), got {self.shifts}")
        if self.reference_shift not in self.shifts:
            raise ValueError(f"reference_shift {self.reference_shift} is not one of the shifts {self.shifts}")


@dataclass(frozen=True)
class StudyConfig:
    out: str
    data: str | None = None  # None: the Fashion-MNIST limited-data task
    quick: bool = False
    seed: int = 0
    claims: tuple[str, ...] = CLAIMS
    overwrite: bool = False
    scale: StudyScale | None = None  # None: StudyScale.quick() or .full(), as `quick` says
    # Where the task folders and training runs go: None, a temporary folder removed at the end; a folder,
    # kept, and the finished runs it holds are reused (an interrupted study resumes).
    work: str | None = None

    def __post_init__(self) -> None:
        for claim in self.claims:
            if claim not in CLAIMS:
                raise choice_error("claim", claim, CLAIMS)
        if not self.claims:
            raise ValueError(f"claims must name at least one of {', '.join(CLAIMS)}")
        if self.data is not None and not os.path.isdir(self.data):
            raise ValueError(f"Data folder {self.data!r} does not exist or is not a folder")
        if self.scale is None:
            object.__setattr__(self, "scale", StudyScale.quick() if self.quick else StudyScale.full())


@dataclass
class Finding:
    """One statement of a claim and what the numbers say about it: `holds` True / False (then the
    sentence says NOT_BORNE_OUT), or None when this run cannot tell."""

    statement: str
    holds: bool | None
    sentence: str

    def __post_init__(self) -> None:
        if self.holds is False and NOT_BORNE_OUT not in self.sentence:
            self.sentence = f"{NOT_BORNE_OUT}: {self.sentence}"


@dataclass
class ClaimResult:
    key: str
    title: str
    method: str  # how it was measured, one paragraph
    figures: dict
    findings: list[Finding] = field(default_factory=list)
    plots: dict[str, Path] = field(default_factory=dict)  # caption -> PNG file (under the plots folder)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"title": self.title, "method": self.method, "figures": self.figures,
                "findings": [asdict(f) for f in self.findings],
                "plots": {caption: f"{PLOTS_DIR}/{path.name}" for caption, path in self.plots.items()},
                "seconds": round(self.seconds, 1)}


@dataclass
class StudyContext:
    """What every claim function gets: the config, the source of images, a work folder for task
    folders and training runs, and the folder its plots go to."""

    config: StudyConfig
    source: object  # study_data.StudySource
    work: Path
    plots: Path
    say: Callable[[str], None] = print

    @property
    def scale(self) -> StudyScale:
        return self.config.scale

    def task(self, per_class: int) -> Path:
        return self.source.task(self.work / "tasks" / self.source.key / f"{per_class}_per_class", per_class)

    def fit(self, name: str, data: Path, train_config) -> dict:
        """Train with `train()` into work/runs/name; returns run.json's history and metrics, the held-out
        accuracy, the training seconds and the run folder. A finished run of the same settings on the same
        data already there (a study resumed with --work) is reused instead."""
        from .run_dir import RunInfo
        from .trainer import train

        run_dir = self.work / "runs" / name
        found = finished_run(run_dir, data, train_config)
        if found is not None:
            self.say(f"   {name}: held-out accuracy {found['accuracy']:.2%} on {found['heldout_images']} images "
                     f"(reused from {run_dir})")
            return found
        started = time.perf_counter()
        result = train(data, run_dir, train_config, overwrite=True, progress=False)
        info = RunInfo.load(run_dir)
        seconds = round(time.perf_counter() - started, 1)
        (run_dir / STUDY_RUN_FILE).write_text(json.dumps({"seconds": seconds}))
        self.say(f"   {name}: held-out accuracy {result.heldout_accuracy:.2%} on {result.heldout_count} images "
                 f"({seconds:.0f} s)")
        return {"run_dir": run_dir, "accuracy": result.heldout_accuracy, "heldout_images": result.heldout_count,
                "history": info.history, "seconds": seconds}


STUDY_RUN_FILE = "study-run.json"  # what the study adds to a run folder: the seconds its training took


def finished_run(run_dir: Path, data: Path, train_config) -> dict | None:
    """What `StudyContext.fit` returns, from a finished run in `run_dir` of exactly `train_config` on `data`
    (run.json records both); None when there is none or it differs in anything."""
    from .run_dir import RunError, RunInfo

    try:
        info = RunInfo.load(run_dir)
    except (RunError, OSError, ValueError, KeyError):
        return None
    record = train_config.to_dict()
    same = (info.model == record["model"] and info.training == {k: v for k, v in record.items() if k != "model"}
            and os.path.abspath(str(info.dataset.get("root", ""))) == os.path.abspath(data))
    accuracy = info.metrics.get("test_accuracy", info.metrics.get("val_accuracy"))
    if not same or accuracy is None:
        return None
    try:
        seconds = json.loads((run_dir / STUDY_RUN_FILE).read_text())["seconds"]
    except (OSError, ValueError, KeyError):
        seconds = None
    return {"run_dir": run_dir, "accuracy": float(accuracy), "heldout_images": len(info.heldout_paths),
            "history": info.history, "seconds": seconds}


def run_study(config: StudyConfig, say: Callable[[str], None] = print) -> dict:
    """Run the claims `config` names and write the output folder; returns what study.json holds."""
    from edgevision.runtime.atomic import atomic_directory, check_output_folder

    from .study_data import fashion_source, folder_source
    from .study_report import write_html

    check_output_folder(config.out, config.overwrite)  # before minutes of training
    started = time.perf_counter()
    scale = config.scale
    with contextlib.ExitStack() as stack:
        if config.work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgevision-study-")))
        else:
            work = Path(config.work)
            work.mkdir(parents=True, exist_ok=True)
        staging = stack.enter_context(atomic_directory(config.out, overwrite=config.overwrite,
                                                       inputs=[p for p in (config.data, config.work) if p]))
        plots = staging / PLOTS_DIR
        plots.mkdir()
        if config.data is None:
            needed = max([scale.per_class, scale.bn_per_class,
                          *(scale.counts if "limited_data" in config.claims else ())])
            source = fashion_source(work, train_per_class=needed, val_per_class=scale.val_per_class,
                                    test_images=scale.test_images, seed=config.seed)
        else:
            source = folder_source(config.data, config.seed)
            config = _fit_to_folder(config, source.available_per_class(), say)
            scale = config.scale
        context = StudyContext(config, source, work, plots, say)
        results = []
        for key in config.claims:
            say(f"== {key}")
            begun = time.perf_counter()
            result = _CLAIM_FUNCTIONS[key]()(context)
            result.seconds = time.perf_counter() - begun
            results.append(result)
            for finding in result.findings:
                say(f"   {finding.sentence}")
        record = {
            "config": {"data": config.data, "quick": config.quick, "seed": config.seed, "claims": list(config.claims),
                       "scale": asdict(scale)},
            "data": source.description,
            "versions": _versions(),
            "seconds": round(time.perf_counter() - started, 1),
            "claims": {result.key: result.to_dict() for result in results},
        }
        (staging / FIGURES_FILE).write_text(json.dumps(record, indent=2, default=_json_default), encoding="utf-8")
        write_html(staging / REPORT_FILE, record, results)
    return record


def _fit_to_folder(config: StudyConfig, available: int, say: Callable[[str], None]) -> StudyConfig:
    """A user's folder may have fewer training images per class than the small experiments ask for:
    they then use what every class has (the limited-data claim already keeps only the counts it can)."""
    scale = config.scale
    per_class, bn_per_class = min(scale.per_class, available), min(scale.bn_per_class, available)
    if (per_class, bn_per_class) == (scale.per_class, scale.bn_per_class):
        return config
    say(f"   the smallest class has {available} training images: the small experiments use {per_class} "
        f"per class (asked: {scale.per_class}) and the BatchNorm runs {bn_per_class} (asked: {scale.bn_per_class})")
    return replace(config, scale=replace(scale, per_class=per_class, bn_per_class=bn_per_class))


def _claim_functions() -> dict[str, Callable[[], Callable]]:
    # Imported when run: each claim module imports Keras or matplotlib inside its functions anyway.
    def invariance():
        from .study_invariance import invariance_claim
        return invariance_claim

    def batchnorm():
        from .study_batchnorm import batchnorm_claim
        return batchnorm_claim

    def limited_data():
        from .study_limited import limited_data_claim
        return limited_data_claim

    def layers():
        from .study_layers import layers_claim
        return layers_claim

    return {"invariance": invariance, "batchnorm": batchnorm, "limited_data": limited_data, "layers": layers}


_CLAIM_FUNCTIONS = _claim_functions()


def _json_default(value):
    import numpy as np

    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.ndarray,)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _versions() -> dict:
    import keras
    import numpy as np

    import edgevision

    return {"edgevision": edgevision.__version__, "keras": keras.__version__, "backend": keras.backend.backend(),
            "numpy": np.__version__}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The study's options (`edgevision study` and `python -m edgevision.train.study` share them)."""
    parser.add_argument("--out", required=True, help="output folder (report.html, study.json, plots/)")
    parser.add_argument("--data", default=None, help="an image folder (default: the Fashion-MNIST limited-data task)")
    parser.add_argument("--quick", action="store_true", help="the reduced version CI runs (a few minutes on 2 cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every draw and initialisation (default 0)")
    parser.add_argument("--claims", default=",".join(CLAIMS), help=f"comma-separated subset of {', '.join(CLAIMS)}")
    parser.add_argument("--counts", default=None, help="images per class for the limited-data claim, e.g. 10,25,50")
    parser.add_argument("--transfer-size", type=int, default=None, help="input size of the limited-data claim's models")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--work", default=None, help="keep the task folders and training runs in this folder and "
                        "reuse the finished ones (resumes an interrupted study; default: a temporary folder)")


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """StudyConfig from parsed options; ValueError naming a bad value."""
    scale = StudyScale.quick() if args.quick else StudyScale.full()
    if args.counts:
        try:
            counts = tuple(int(c) for c in args.counts.split(","))
        except ValueError:
            raise ValueError(f"--counts {args.counts!r} is invalid; give whole numbers separated by commas, "
                             "e.g. 10,25,50") from None
        scale = replace(scale, counts=counts)
    if args.transfer_size:
        scale = replace(scale, transfer_size=args.transfer_size)
    return StudyConfig(out=args.out, data=args.data, quick=args.quick, seed=args.seed, overwrite=args.overwrite,
                       work=args.work,
                       claims=tuple(c.strip() for c in args.claims.split(",") if c.strip()), scale=scale)


def run_and_report(config: StudyConfig) -> int:
    record = run_study(config)
    print(f"\nwrote {Path(config.out) / REPORT_FILE} and {FIGURES_FILE} in {record['seconds']:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    from edgevision.tflogs import quiet_tensorflow

    quiet_tensorflow()
    parser = argparse.ArgumentParser(prog="python -m edgevision.train.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    return run_and_report(config)


if __name__ == "__main__":
    raise SystemExit(main())
