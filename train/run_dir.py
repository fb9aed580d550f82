"""The training run folder: what `train` saves and `export` reads.

    run/
      model.keras   the trained Keras model (raw 0-255 RGB in, probabilities out, no random layers)
      run.json      labels, preprocessing policy, model and training config, dataset fingerprint,
                    the held-out images (paths and labels) that export checks parity on, metrics

Standard library only, so export can read a run without importing Keras first.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgevision.runtime.preprocess import PreprocessPolicy

RUN_FORMAT = "edgevision-run"
RUN_VERSION = 1
MODEL_FILE = "model.keras"
RUN_FILE = "run.json"


class RunError(ValueError):
    """A folder that is not a usable training run."""


@dataclass
class RunInfo:
    labels: list[str]
    preprocess: PreprocessPolicy
    model: dict
    training: dict
    dataset: dict
    heldout_paths: list[str]
    heldout_labels: list[int]
    metrics: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    # The training images (absolute paths): export draws int8 calibration images from them. Older runs
    # lack the field; export then finds them from the dataset record.
    train_paths: list[str] = field(default_factory=list)
    # The validation images that are not the held-out ones (empty when validation is what was held out):
    # export's int8 precision search compares candidates on them. Older runs lack the field.
    val_paths: list[str] = field(default_factory=list)
    folder: Path | None = None

    @property
    def model_path(self) -> Path:
        if self.folder is None:
            raise RunError("This run was not loaded from a folder")
        return self.folder / MODEL_FILE

    def training_images(self) -> list[str]:
        """The run's training image paths: from run.json when it lists them, else the dataset's train/
        folder, else the seeded split that training made (reloaded with the run's seed and fractions).
        FileNotFoundError when none of these can be found."""
        if self.train_paths:
            return list(self.train_paths)
        root = self.dataset.get("root")
        if not root or not Path(root).is_dir():
            raise FileNotFoundError(f"The run's dataset folder {root!r} is gone, and run.json lists no training images")
        if self.dataset.get("explicit_splits"):
            from edgevision.runtime.preprocess import IMAGE_EXTENSIONS

            train = Path(root) / "train"
            return sorted(str(p) for p in train.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        from .dataset import load_image_folder  # Keras-free; only runs older than train_paths need it

        dataset = load_image_folder(root, self.preprocess, val_fraction=self.training.get("val_fraction", 0.15),
                                    test_fraction=self.training.get("test_fraction", 0.15),
                                    seed=self.training.get("seed", 0))
        return list(dataset.train.paths)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("folder")
        data["preprocess"] = self.preprocess.to_dict()
        return {"format": RUN_FORMAT, "version": RUN_VERSION, **data}

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder, RUN_FILE).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "RunInfo":
        folder = Path(folder)
        if not folder.is_dir():
            raise RunError(f"Training run folder '{folder}' does not exist")
        path = folder / RUN_FILE
        if not path.is_file() or not (folder / MODEL_FILE).is_file():
            raise RunError(
                f"'{folder}' is not an edgevision training run: it needs {RUN_FILE} and {MODEL_FILE} "
                "(write one with `edgevision train`)"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as bad:
            raise RunError(f"'{path}' is not valid JSON: {bad}") from None
        if data.get("format") != RUN_FORMAT or data.get("version") != RUN_VERSION:
            raise RunError(
                f"'{path}' is not an edgevision run file of version {RUN_VERSION} "
                f"(format={data.get('format')!r}, version={data.get('version')!r})"
            )
        data = {k: v for k, v in data.items() if k not in ("format", "version")}
        try:
            data["preprocess"] = PreprocessPolicy.from_dict(data["preprocess"])
            return cls(**data, folder=folder)
        except (KeyError, TypeError) as bad:
            raise RunError(f"'{path}' is malformed: {bad}") from None
