"""The study's image folders: one source (the Fashion-MNIST limited-data task, or the user's folder),
and task folders drawn from it with N training images per class, all sharing its validation and test
images. Every folder is an ordinary image folder with train/ val/ test/, read by the dataset code
that `train()` uses; files are hard-linked from the source (copied where links are not possible).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import DatasetError, DatasetIndex, index_image_folder


@dataclass
class StudySource:
    """What the study draws from: the source folder's index and a seeded order of each class's training
    images (task folders take the first N, so a smaller task's images are part of every larger one)."""

    index: DatasetIndex
    order: dict[int, list[str]]  # class id -> training paths in draw order
    description: str
    key: str  # names this source's task folders: a resumed study reuses only those drawn from the same source

    @property
    def labels(self) -> list[str]:
        return self.index.labels

    def available_per_class(self) -> int:
        return min(len(paths) for paths in self.order.values())

    def task(self, root: str | os.PathLike, per_class: int) -> Path:
        """An image folder at `root` with `per_class` training images of every class, and the source's
        validation and test images (written once; an existing folder is reused)."""
        root = Path(root)
        if per_class > self.available_per_class():
            raise ValueError(f"{per_class} training images per class asked for, but the source has only "
                             f"{self.available_per_class()} for its smallest class ({self.description})")
        if (root / ".complete").is_file():
            return root
        if root.exists():
            shutil.rmtree(root)
        split_paths = {"train": [(c, p) for c, paths in self.order.items() for p in paths[:per_class]],
                       "val": list(zip(self.index.val.labels.tolist(), self.index.val.paths)),
                       "test": list(zip(self.index.test.labels.tolist(), self.index.test.paths))}
        for split, items in split_paths.items():
            for label, path in items:
                folder = root / split / self.labels[label]
                folder.mkdir(parents=True, exist_ok=True)
                _link(path, folder / os.path.basename(path))
        (root / ".complete").write_text("")
        return root


def _link(source: str, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


# The Fashion-MNIST source always draws at least this many training images a class (the full study's
# largest count), so the task of N images a class is the same images whatever else a run asks for.
FASHION_DRAW = 500


def fashion_source(work: str | os.PathLike, *, train_per_class: int, val_per_class: int, test_images: int,
                   seed: int) -> StudySource:
    """The Fashion-MNIST limited-data task (28x28 grey, from Debian's files), written under `work`:
    max(FASHION_DRAW, `train_per_class`) + `val_per_class` images of each class drawn from the training
    set, `test_images` drawn stratified from the 10,000 test images (all of them at 10,000)."""
    from .sample_data import write_fashion_task

    train_per_class = max(FASHION_DRAW, train_per_class)
    key = f"fashion-{train_per_class}+{val_per_class}-test{test_images}-seed{seed}"
    root = Path(work) / f"source-{key}"
    if not (root / ".complete").is_file():
        if root.exists():
            shutil.rmtree(root)
        write_fashion_task(root, train_per_class, val_per_class, seed, test_images)
        (root / ".complete").write_text("")
    description = (f"Fashion-MNIST: {val_per_class} validation images per class and the training images drawn "
                   f"from its training set, tested on {min(test_images, 10_000):,} of its test images")
    return _source(root, seed, description, key)


def folder_source(data_dir: str | os.PathLike, seed: int) -> StudySource:
    """The user's image folder, split as `train()` splits it (train/ val/ test/ folders, or 70/15/15)."""
    index = index_image_folder(data_dir, seed=seed, warn=True)
    if not len(index.test) and not len(index.val):
        raise DatasetError(f"'{data_dir}' has no validation or test images to measure on")
    counts = index.train.class_counts(index.num_classes)
    description = (f"{os.path.abspath(data_dir)}: {index.num_classes} classes, {len(index.train)} training images "
                   f"({counts.min()}-{counts.max()} per class), {len(index.val)} validation, {len(index.test)} test")
    # The folder's place and contents (file names, sizes, classes): a changed folder gets new task folders.
    where = hashlib.sha256(f"{os.path.abspath(data_dir)}\n{index.fingerprint()}".encode()).hexdigest()[:12]
    return _source(data_dir, seed, description, f"folder-{where}-seed{seed}", index)


def _source(root, seed: int, description: str, key: str, index: DatasetIndex | None = None) -> StudySource:
    index = index or index_image_folder(root, seed=seed, warn=True)
    rng = np.random.default_rng(seed)
    order = {}
    for cls in range(index.num_classes):
        paths = sorted(p for p, label in zip(index.train.paths, index.train.labels) if label == cls)
        order[cls] = [paths[i] for i in rng.permutation(len(paths))]
    return StudySource(index=index, order=order, description=description, key=key)
