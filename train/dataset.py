"""Image-folder datasets: one subfolder per class, decoded through the runtime's one preprocessing path.

The layout is the Keras ``image_dataset_from_directory`` / torchvision ``ImageFolder`` convention::

    root/cat/001.jpg            root/train/cat/001.jpg
    root/dog/xyz.png     or     root/val/cat/... (or validation/)
                                root/test/cat/...

With a ``train/`` subfolder the folders are the splits; otherwise every class is split into
train/val/test with a seeded, stratified draw. Every picture goes through
:func:`edgevision.runtime.preprocess.load_and_prepare`, the same function the exporter's parity check
and the device runtime call, so training sees exactly the pixels a deployed model sees.

Files that cannot be used (wrong extension, corrupt, truncated) are skipped and reported in
``Dataset.skipped`` and in one ``logging`` warning; they never crash a load and are never dropped
silently. Hidden files and folders (names starting with ".") are ignored.

:func:`index_image_folder` lists and splits a folder WITHOUT decoding it, for folders too large to hold
in memory (train/streaming.py decodes them batch by batch). A corrupt picture can only be found by
decoding it, so an index still contains corrupt files (only non-image files are skipped); the
streaming loader replaces each one it meets and reports it. :func:`load_image_folder` decodes first
and splits the usable pictures, so with corrupt files present its splits can differ from the index's.

This module imports only the standard library, numpy and the runtime (tqdm lazily, if asked for
progress): no TensorFlow, no Keras.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np

from edgevision.runtime.preprocess import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    PreprocessPolicy,
    load_and_prepare,
)

__all__ = [
    "DatasetError",
    "SkippedFile",
    "Split",
    "Dataset",
    "IndexedSplit",
    "DatasetIndex",
    "index_image_folder",
    "load_image_folder",
    "IMAGE_EXTENSIONS",
    "default_workers",
]

logger = logging.getLogger(__name__)

_ALLOWED = ", ".join(IMAGE_EXTENSIONS)
_SPLIT_NAMES = ("train", "val", "test")
_VAL_FOLDER_NAMES = ("val", "validation")
_MAX_LISTED = 5  # how many paths a message or warning names before "and N more"


MAX_DEFAULT_WORKERS = 32  # 32 cores decode ~30,000 224-px photos/s: past that the disk or the model is the limit


def default_workers() -> int:
    """Decoders (threads, or processes when streaming on many cores): one per core this process may use,
    at most MAX_DEFAULT_WORKERS (`python -m edgevision.train.bench streaming` measures how they scale)."""
    try:
        cores = len(os.sched_getaffinity(0))  # honours taskset / container CPU sets
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores))


class DatasetError(ValueError):
    """The image folder cannot be used as a dataset; the message names the path and what is allowed."""


@dataclass(frozen=True)
class SkippedFile:
    """A file that was found but not used, and why."""

    path: str
    reason: str


@dataclass
class IndexedSplit:
    """One split as files: paths and int64 class indices, nothing decoded."""

    paths: list[str]
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {self.labels.shape}")
        if len(self.paths) != len(self.labels):
            raise ValueError(f"Split has {len(self.paths)} paths and {len(self.labels)} labels; "
                             "they must be the same length")

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self, num_classes: int) -> np.ndarray:
        """Images per class index, length ``num_classes``."""
        return np.bincount(self.labels, minlength=num_classes).astype(np.int64)


@dataclass
class Split(IndexedSplit):
    """One split: paths, int64 class indices and the prepared (N, H, W, 3) uint8 RGB pictures."""

    images: np.ndarray

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (len(self.paths) == len(self.labels) == len(self.images)):
            raise ValueError(
                f"Split has {len(self.paths)} paths, {len(self.labels)} labels and {len(self.images)} images; "
                "they must be the same length"
            )


def _empty_split(policy: PreprocessPolicy) -> Split:
    return Split(
        paths=[],
        labels=np.zeros((0,), dtype=np.int64),
        images=np.zeros((0, policy.height, policy.width, 3), dtype=np.uint8),
    )


@dataclass
class DatasetIndex:
    """An image folder listed and split, nothing decoded: class names (sorted; index = class id), three
    splits of paths and labels, what was skipped (non-image files; corrupt ones are found only when
    decoded, see the module doc).

    ``file_sizes`` maps every listed file's path to its size in bytes at indexing time (what
    :meth:`fingerprint` hashes).
    """

    root: str
    labels: list[str]
    train: IndexedSplit
    val: IndexedSplit
    test: IndexedSplit
    skipped: list[SkippedFile]
    explicit_splits: bool
    file_sizes: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def splits(self) -> dict[str, IndexedSplit]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def warn_skipped(self) -> None:
        """One logging warning naming the skipped files (nothing when none were)."""
        _warn_skipped(self.root, self.skipped)

    def heldout(self) -> IndexedSplit:
        """The images export and parity checks use: ``test`` if it has any, else ``val``."""
        if len(self.test):
            return self.test
        if len(self.val):
            return self.val
        raise DatasetError(
            f"Dataset {self.root} has no held-out images (val and test are both empty); "
            "add val/ or test/ folders, or load with val_fraction/test_fraction > 0"
        )

    def fingerprint(self) -> str:
        """sha256 hex over the sorted (relative path, file size, class name) of every used file.

        Relative paths use "/" so the same folder gives the same fingerprint on every OS. Sizes are the
        ones recorded at load time (falling back to the file on disk for a hand-built Dataset).
        """
        entries = []
        for split in (self.train, self.val, self.test):
            for path, label in zip(split.paths, split.labels):
                size = self.file_sizes.get(path)
                if size is None:
                    size = os.path.getsize(path)
                rel = PurePath(os.path.relpath(path, self.root)).as_posix()
                entries.append((rel, int(size), self.labels[int(label)]))
        entries.sort()
        digest = hashlib.sha256()
        for rel, size, name in entries:
            # Length-prefixed fields: no path or class name can collide with another split of the bytes.
            # os.fsencode: a name that is not valid UTF-8 hashes as its bytes on disk.
            for part in (os.fsencode(rel), str(size).encode("ascii"), os.fsencode(name)):
                digest.update(len(part).to_bytes(4, "big"))
                digest.update(part)
        return digest.hexdigest()

    def describe(self) -> str:
        """A short human summary: classes, counts per split, skipped files."""
        n = self.num_classes
        shown = ", ".join(self.labels[:10]) + (f", ... ({n - 10} more)" if n > 10 else "")
        lines = [f"Dataset {self.root}", f"  {n} classes: {shown}"]
        how = "from train/val/test folders" if self.explicit_splits else "stratified seeded split"
        counts = ", ".join(f"{name} {len(split)}" for name, split in self.splits().items())
        lines.append(f"  splits ({how}): {counts}")
        if n <= 20:
            width = max(len(label) for label in self.labels)
            per_split = {name: split.class_counts(n) for name, split in self.splits().items()}
            for index, label in enumerate(self.labels):
                row = "  ".join(f"{name} {per_split[name][index]:>5d}" for name in _SPLIT_NAMES)
                lines.append(f"    {label:<{width}}  {row}")
        lines.append(f"  skipped files: {len(self.skipped)}")
        return "\n".join(lines)


@dataclass
class Dataset(DatasetIndex):
    """A loaded image folder: a :class:`DatasetIndex` whose splits hold the decoded pictures.

    ``file_sizes`` holds the used files only; it is filled by :func:`load_image_folder`.
    """

    train: Split
    val: Split
    test: Split

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def heldout(self) -> Split:
        return super().heldout()

    # What training reads; streaming.StreamedDataset implements the same methods by decoding from disk.

    def training_batches(self, batch_size: int, seed: int, first_epoch: int, weights):
        """The training split in seeded shuffled batches, from `first_epoch` on."""
        from .pipeline import ShuffledBatches

        return ShuffledBatches(self.train.images, self.train.labels, batch_size, seed, first_epoch=first_epoch,
                               weights=weights)

    def validation_data(self, batch_size: int, pad_multiple: int = 1):
        """(images, labels), or None without validation images (uint8: the model's input casts them)."""
        return (self.val.images, self.val.labels) if len(self.val) else None

    def training_callbacks(self) -> list:
        return []

    def calibration_images(self, batch_size: int, max_batches: int) -> np.ndarray:
        """The training images BatchNorm statistics are re-estimated on."""
        return self.train.images

    def predict_heldout(self, classifier, heldout: Split) -> tuple[np.ndarray, Split]:
        """(predicted classes, the held-out split they belong to)."""
        scores = classifier.predict(heldout.images, batch_size=64, verbose=0)  # uint8: cast per batch by the model
        return np.argmax(scores, axis=1), heldout


# ----------------------------------------------------------------------------------------------------
# Discovery


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _subfolders(folder: str) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not _is_hidden(e.name) and e.is_dir())


def _loose_files(folder: str) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not _is_hidden(e.name) and not e.is_dir())


def _has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _not_a_readable_file(path: str) -> str | None:
    """Why `path` cannot be one of the dataset's pictures (a dangling or looping link, a FIFO, a device,
    a socket, a folder), or None. Found while listing, so no run stops or hangs on one later."""
    try:
        info = os.stat(path)  # follows links: a loop or a dangling link fails here
    except OSError as err:
        return f"could not read the file: {err.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a named pipe, device, socket or folder); only image files are read"
    return None


def _class_files(class_dir: str, skipped: list[SkippedFile]) -> list[str]:
    """Image files under one class folder (recursively, as Keras and torchvision do), sorted.

    Hidden files and folders are ignored; other non-image files are recorded in ``skipped``.
    """
    found: list[str] = []
    for current, dirs, files in os.walk(class_dir):
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        for name in sorted(files):
            if _is_hidden(name):
                continue
            path = os.path.join(current, name)
            if _has_image_extension(name):
                problem = _not_a_readable_file(path)
                if problem:
                    skipped.append(SkippedFile(path, problem))
                else:
                    found.append(path)
            else:
                ext = os.path.splitext(name)[1] or "(none)"
                skipped.append(
                    SkippedFile(path, f"not an image extension {ext!r}; allowed (any case): {_ALLOWED}")
                )
    return sorted(found)


def _report_loose_files(folder: str, skipped: list[SkippedFile], where: str) -> None:
    for name in _loose_files(folder):
        skipped.append(SkippedFile(os.path.join(folder, name), f"not inside a class folder ({where})"))


def _check_root(root: str) -> None:
    if not os.path.exists(root):
        raise DatasetError(
            f"Dataset folder '{root}' does not exist; expected a folder with one subfolder per class "
            f"holding images ({_ALLOWED})"
        )
    if not os.path.isdir(root):
        raise DatasetError(
            f"Dataset path '{root}' is not a folder; expected a folder with one subfolder per class "
            f"holding images ({_ALLOWED})"
        )


def _no_classes_error(folder: str) -> DatasetError:
    loose = [n for n in _loose_files(folder) if _has_image_extension(n)]
    hint = (
        f"; it holds {len(loose)} image file(s) directly (e.g. {loose[0]!r}): move them into one subfolder per class"
        if loose
        else ""
    )
    return DatasetError(
        f"Dataset folder {folder} has no class subfolders; expected one subfolder per class holding "
        f"images ({_ALLOWED}){hint}"
    )


def _discover(root: str, skipped: list[SkippedFile]):
    """Returns (class names, explicit, files) where files is a list of (path, class index, split name)."""
    top = _subfolders(root)
    explicit = "train" in top
    if not explicit:
        classes = top
        if not classes:
            raise _no_classes_error(root)
        _check_class_count(root, classes)
        _report_loose_files(root, skipped, "the dataset root")
        files = []
        for index, name in enumerate(classes):
            for path in _class_files(os.path.join(root, name), skipped):
                files.append((path, index, ""))
        return classes, False, files, {name: os.path.join(root, name) for name in classes}

    val_present = [name for name in _VAL_FOLDER_NAMES if name in top]
    if len(val_present) > 1:
        raise DatasetError(
            f"Dataset folder {root} has both val/ and validation/; keep one (they are the same split)"
        )
    split_dirs = {"train": "train", "val": val_present[0] if val_present else None,
                  "test": "test" if "test" in top else None}
    allowed_top = {"train", "test", *_VAL_FOLDER_NAMES}
    unexpected = [name for name in top if name not in allowed_top]
    if unexpected:
        raise DatasetError(
            f"Dataset folder {root} has a train/ folder, so its subfolders must be splits; unexpected "
            f"folder(s) {', '.join(repr(n) for n in unexpected)}: allowed are train/, val/ (or validation/) "
            "and test/, each with one subfolder per class (if 'train' is one of your classes, rename that folder)"
        )
    _report_loose_files(root, skipped, "the dataset root, which holds train/val/test folders")

    train_dir = os.path.join(root, "train")
    classes = _subfolders(train_dir)
    if not classes:
        raise _no_classes_error(train_dir)
    _check_class_count(train_dir, classes)
    index_of = {name: i for i, name in enumerate(classes)}
    files = []
    class_dirs: dict[str, str] = {}
    for split, folder in split_dirs.items():
        if folder is None:
            continue
        split_dir = os.path.join(root, folder)
        split_classes = _subfolders(split_dir)
        unknown = [name for name in split_classes if name not in index_of]
        if unknown:
            raise DatasetError(
                f"Class folder(s) {', '.join(repr(os.path.join(split_dir, n)) for n in unknown)} in {folder}/ "
                f"not found in {train_dir}; classes come from train/: {', '.join(classes)}"
            )
        _report_loose_files(split_dir, skipped, f"{folder}/ itself")
        for name in split_classes:
            class_dir = os.path.join(split_dir, name)
            class_dirs[class_dir] = class_dir
            for path in _class_files(class_dir, skipped):
                files.append((path, index_of[name], split))
    return classes, True, files, class_dirs


def _check_class_count(folder: str, classes: list[str]) -> None:
    if len(classes) < 2:
        raise DatasetError(
            f"Dataset folder {folder} needs at least 2 classes, found {len(classes)}: "
            + ", ".join(repr(c) for c in classes)
            + "; put each class's images in its own subfolder"
        )


# ----------------------------------------------------------------------------------------------------
# Splitting


def _validate_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise DatasetError(f"{name} must be a number in [0, 1), got {value!r}")
        if not (0.0 <= float(value) < 1.0) or math.isnan(float(value)):
            raise DatasetError(f"{name} must be in [0, 1), got {value!r}")
    if float(val_fraction) + float(test_fraction) >= 1.0:
        raise DatasetError(
            f"val_fraction + test_fraction must be below 1 so training keeps images; got "
            f"{val_fraction!r} + {test_fraction!r} = {float(val_fraction) + float(test_fraction):g}"
        )


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) for one class of n images."""

    def share(fraction: float) -> int:
        count = int(math.floor(n * fraction + 0.5))
        if fraction > 0 and n >= 3:
            count = max(1, count)
        return count

    n_val, n_test = share(val_fraction), share(test_fraction)
    # Training keeps at least one image; trim the larger held-out share, never below 1 when asked for.
    floor_val = 1 if (val_fraction > 0 and n >= 3) else 0
    floor_test = 1 if (test_fraction > 0 and n >= 3) else 0
    while n_val + n_test > max(n - 1, 0):
        if n_val >= n_test and n_val > floor_val:
            n_val -= 1
        elif n_test > floor_test:
            n_test -= 1
        elif n_val > floor_val:
            n_val -= 1
        else:
            break
    return n_val, n_test


def _stratified_assign(labels: np.ndarray, names: list[str], val_fraction: float, test_fraction: float,
                       seed: int) -> np.ndarray:
    """Split name per file ("train", "val" or "test"), seeded per class.

    Each class draws from its own generator seeded by (seed, crc32(class name)), so adding or removing a
    class leaves every other class's split unchanged.
    """
    assigned = np.full(len(labels), "train", dtype=object)
    for index, name in enumerate(names):
        members = np.flatnonzero(labels == index)
        n_val, n_test = _split_counts(len(members), val_fraction, test_fraction)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        order = members[rng.permutation(len(members))]
        assigned[order[:n_test]] = "test"
        assigned[order[n_test : n_test + n_val]] = "val"
        if len(members) < 3 and (val_fraction > 0 or test_fraction > 0):
            logger.warning(
                "Class %r has only %d image(s): all go to training, none to validation or test", name, len(members)
            )
    return assigned


def _assign_splits(files: list, classes: list[str], explicit: bool, usable: np.ndarray, val_fraction: float,
                   test_fraction: float, seed: int) -> np.ndarray:
    """Split name per file: the folder's split when explicit, else a stratified draw over the usable files."""
    if explicit:
        return np.array([split for _, _, split in files], dtype=object)
    labels = np.array([label for _, label, _ in files], dtype=np.int64)
    assigned = np.full(len(files), "train", dtype=object)
    kept = np.flatnonzero(usable)
    assigned[kept] = _stratified_assign(labels[kept], classes, float(val_fraction), float(test_fraction), int(seed))
    return assigned


def _check_options(val_fraction: float, test_fraction: float, seed: int) -> None:
    _validate_fractions(val_fraction, test_fraction)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed!r}")


# ----------------------------------------------------------------------------------------------------
# Decoding


def _decode_all(paths: list[str], policy: PreprocessPolicy, workers: int, progress: bool):
    """Decode every path into one preallocated array. Returns (images, ok mask, sizes, failure reasons)."""
    images = np.empty((len(paths), policy.height, policy.width, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    sizes = [0] * len(paths)
    reasons: list[str | None] = [None] * len(paths)

    def work(index: int) -> None:
        path = paths[index]
        try:
            sizes[index] = os.path.getsize(path)
            images[index] = load_and_prepare(path, policy)
            ok[index] = True
        except ImageDecodeError as error:
            reasons[index] = f"not a decodable image: {error}"
        except OSError as error:
            reasons[index] = f"could not read the file: {error.strerror or error}"

    bar = _progress_bar(len(paths)) if progress else None
    try:
        if workers <= 1 or len(paths) <= 1:
            for index in range(len(paths)):
                work(index)
                if bar is not None:
                    bar.update(1)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgevision-decode") as pool:
                # Each task writes its own row, so the output order is the path order whatever the timing.
                for _ in pool.map(work, range(len(paths))):
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return images, ok, sizes, reasons


def _progress_bar(total: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety; loading works without it
        logger.info("tqdm is not installed; loading without a progress bar (pip install tqdm)")
        return None
    return tqdm(total=total, desc="Decoding images", unit="img")


def shown_path(path: str) -> str:
    """A path as it can be printed: bytes that are not UTF-8 (os.listdir keeps them as surrogates) as
    \\xNN escapes, so the user sees which file is meant and no output stream fails on it."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


SKIPPED_FILE = "skipped_files.txt"


def skipped_report(skipped: list[SkippedFile]) -> str:
    """One "path<TAB>reason" line per skipped file (what a run writes to SKIPPED_FILE)."""
    return "".join(f"{shown_path(s.path)}\t{s.reason}\n" for s in skipped)


def _warn_skipped(root: str, skipped: list[SkippedFile]) -> None:
    if not skipped:
        return
    undecodable = sum(1 for s in skipped if not s.reason.startswith(("not an image extension", "not inside")))
    listed = "; ".join(f"{shown_path(s.path)} ({s.reason})" for s in skipped[:_MAX_LISTED])
    more = f"; and {len(skipped) - _MAX_LISTED} more" if len(skipped) > _MAX_LISTED else ""
    logger.warning(
        "Skipped %d file(s) in %s (%d could not be read or decoded, %d are not images): %s%s",
        len(skipped), root, undecodable, len(skipped) - undecodable, listed, more,
    )


# ----------------------------------------------------------------------------------------------------
# Public entry points


def index_image_folder(
    root: str | os.PathLike,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    warn: bool = True,
) -> DatasetIndex:
    """List an image folder and split it like :func:`load_image_folder`, without decoding a picture.

    Same layout rules, split rules and errors as :func:`load_image_folder`; for a folder without
    corrupt pictures the splits are identical. Corrupt pictures stay in the index (only decoding finds
    them); :class:`edgevision.train.streaming.StreamingBatches` replaces and reports them. ``warn=False``
    leaves the warning about skipped files to the caller (:meth:`DatasetIndex.warn_skipped`), for one
    that may load the folder with :func:`load_image_folder` next, which warns again.
    """
    _check_options(val_fraction, test_fraction, seed)
    root = os.path.abspath(os.fspath(root))
    _check_root(root)
    skipped: list[SkippedFile] = []
    classes, explicit, files, _ = _discover(root, skipped)
    assigned = _assign_splits(files, classes, explicit, np.ones(len(files), dtype=bool), val_fraction,
                              test_fraction, seed)
    splits = {}
    for name in _SPLIT_NAMES:
        members = np.flatnonzero(assigned == name)
        splits[name] = IndexedSplit(paths=[files[i][0] for i in members],
                                    labels=np.array([files[i][1] for i in members], dtype=np.int64))
    index = DatasetIndex(
        root=root, labels=list(classes), train=splits["train"], val=splits["val"], test=splits["test"],
        skipped=skipped, explicit_splits=explicit, file_sizes={path: os.path.getsize(path) for path, _, _ in files},
    )
    if warn:
        index.warn_skipped()
    return index


def load_image_folder(
    root: str | os.PathLike,
    policy: PreprocessPolicy,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
) -> Dataset:
    """Load an image folder (one subfolder per class) into train/val/test splits of prepared pictures.

    If ``root`` holds a ``train/`` folder (and optionally ``val/`` or ``validation/`` and ``test/``),
    those folders are the splits and the fractions are not used; classes come from ``train/``.
    Otherwise each class is split with a seeded stratified draw: ``round(n * fraction)`` images to val
    and to test, at least one each for every class with 3 or more images when the fraction is > 0.

    Pictures are decoded in parallel threads (OpenCV releases the GIL) through
    ``runtime.preprocess.load_and_prepare(path, policy)``; output order is deterministic (class, then
    path). Unusable files are listed in ``Dataset.skipped`` and summarized in one logging warning.
    Raises DatasetError naming the offending path and what is allowed.
    """
    # Options and layout first: both fail in milliseconds, before any picture is decoded.
    workers = _check_load_options(policy, val_fraction, test_fraction, seed, workers)
    root = os.path.abspath(os.fspath(root))
    _check_root(root)
    skipped: list[SkippedFile] = []
    classes, explicit, files, class_dirs = _discover(root, skipped)

    paths = [path for path, _, _ in files]
    labels = np.array([label for _, label, _ in files], dtype=np.int64)
    images, ok, sizes, reasons = _decode_all(paths, policy, workers, progress)
    for index in np.flatnonzero(~ok):
        skipped.append(SkippedFile(paths[index], reasons[index] or "could not be decoded"))
    _check_every_class_usable(root, files, classes, explicit, class_dirs, labels, ok, skipped)
    _warn_skipped(root, skipped)

    # The seeded draw counts usable pictures only, so a corrupt file never leaves a split short.
    assigned = _assign_splits(files, classes, explicit, ok, val_fraction, test_fraction, seed)
    splits = _decoded_splits(paths, labels, images, ok, assigned, policy)
    del images  # the splits hold their own copies; drop the staging array
    file_sizes = {paths[i]: sizes[i] for i in np.flatnonzero(ok)}
    return Dataset(
        root=root,
        labels=list(classes),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        skipped=skipped,
        explicit_splits=explicit,
        file_sizes=file_sizes,
    )


def _check_load_options(policy: PreprocessPolicy, val_fraction: float, test_fraction: float, seed: int,
                        workers: int | None) -> int:
    """Check the options of :func:`load_image_folder`; returns the number of decode threads."""
    if not isinstance(policy, PreprocessPolicy):
        raise TypeError(f"policy must be a PreprocessPolicy, got {type(policy).__name__}")
    _check_options(val_fraction, test_fraction, seed)
    if workers is None:
        workers = default_workers()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise DatasetError(f"workers must be a positive integer or None, got {workers!r}")
    return int(workers)


def _check_every_class_usable(root: str, files: list, classes: list[str], explicit: bool,
                              class_dirs: dict[str, str], labels: np.ndarray, ok: np.ndarray,
                              skipped: list[SkippedFile]) -> None:
    """Every class folder must keep at least one usable picture: a class without one cannot be learnt,
    and the error says which files were skipped there and why."""
    if explicit:  # every split's class folder counts on its own (train/cat and val/cat)
        per_folder = {folder: 0 for folder in class_dirs}
        for index, (path, _, _) in enumerate(files):
            if ok[index]:
                folder = _owning_folder(path, class_dirs)
                per_folder[folder] += 1
        empty = [folder for folder, count in per_folder.items() if count == 0]
    else:
        used = np.bincount(labels[ok], minlength=len(classes)) if len(labels) else np.zeros(len(classes), int)
        empty = [class_dirs[name] for name, count in zip(classes, used) if count == 0]
    if empty:
        _warn_skipped(root, skipped)
        bad = [s for s in skipped if any(_inside(s.path, folder) for folder in empty)]
        detail = (
            "; skipped there: " + "; ".join(f"{s.path} ({s.reason})" for s in bad[:_MAX_LISTED]) if bad else ""
        )
        raise DatasetError(
            f"Class folder(s) {', '.join(empty)} have no usable images; allowed extensions (any case): "
            f"{_ALLOWED}{detail}"
        )


def _decoded_splits(paths: list[str], labels: np.ndarray, images: np.ndarray, ok: np.ndarray,
                    assigned: np.ndarray, policy: PreprocessPolicy) -> dict[str, Split]:
    """The usable pictures of each split, copied out of the staging array; an empty split is still a
    (0, H, W, 3) array, so callers never special-case it."""
    splits = {}
    for name in _SPLIT_NAMES:
        members = np.flatnonzero(ok & (assigned == name))
        if len(members) == 0:
            splits[name] = _empty_split(policy)
        else:
            splits[name] = Split(
                paths=[paths[i] for i in members], labels=labels[members], images=images[members]
            )
    return splits


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _owning_folder(path: str, class_dirs: dict[str, str]) -> str:
    # The longest matching folder: a class folder is never inside another one, but be exact anyway.
    return max((folder for folder in class_dirs if _inside(path, folder)), key=len)
