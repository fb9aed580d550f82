"""Golden predictions and `edgevision verify`: the golden set a bundle carries is replayed through this
machine's engines; answers that moved beyond the precision's tolerance fail, a damaged golden file is
refused before it is read, and a bundle without one says how to get one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgevision.cli import main
from edgevision.export.golden import choose_golden
from edgevision.runtime.bundle import BUNDLE_FILE, Bundle, BundleError, file_sha256
from edgevision.runtime.golden import TOLERANCES, Tolerance, compare_answers, load_golden, verify_bundle


@pytest.fixture
def bundle_copy(golden_bundle, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(golden_bundle, folder)
    return folder


def _rewrite_answers(folder, name, change) -> None:
    """Replace one artifact's golden answers and re-seal the file (a consistent but wrong golden set)."""
    path = folder / "golden.npz"
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    arrays[name] = change(arrays[name].copy())
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    meta = json.loads((folder / BUNDLE_FILE).read_text())
    meta["golden"].update(sha256=file_sha256(path), bytes=path.stat().st_size)
    (folder / BUNDLE_FILE).write_text(json.dumps(meta))


def test_every_artifact_reproduces_its_golden_answers(golden_bundle, capsys):
    results = verify_bundle(golden_bundle, "all", threads=1, profile=None)
    assert [r.artifact for r in results] == list(Bundle.load(golden_bundle).artifacts)
    for result in results:
        assert result.passed and result.error is None, result.line()
        assert result.images == 32 and result.labels_equal == 32 and result.within == 32
        assert result.max_prob_diff < 1e-6  # same machine, same engine, one image at a time: identical
    assert main(["verify", str(golden_bundle), "--artifact", "all", "--profile", "none"]) == 0
    out = capsys.readouterr().out
    assert "model_int8.tflite (int8, litert): labels equal 32/32" in out and "(needs 80%) -> pass" in out
    assert "verify: 4 of 4 artifacts reproduce the export machine's answers" in out


def test_default_is_the_artifact_the_device_would_run(golden_bundle):
    assert [r.artifact for r in verify_bundle(golden_bundle, profile=None)] == ["model_fp32.tflite"]
    # A profile picks its first preference the bundle has: generic-x86-64 prefers tflite:fp32.
    assert [r.artifact for r in verify_bundle(golden_bundle, profile="raspberry-pi-5")] == ["model_int8.tflite"]


def test_moved_answers_fail_and_exit_1(bundle_copy, capsys):
    _rewrite_answers(bundle_copy, "model_fp32.tflite", lambda p: p[:, ::-1])  # every answer permuted
    assert main(["verify", str(bundle_copy), "--artifact", "all", "--profile", "none"]) == 1
    out = capsys.readouterr().out
    assert "model_fp32.tflite (fp32, litert): labels equal" in out and "-> FAIL" in out
    assert "failed: model_fp32.tflite" in out
    result = verify_bundle(bundle_copy, "tflite_fp32", profile=None)[0]
    assert not result.passed and result.max_prob_diff > 0.01 and result.within < 32


def test_float_allows_no_outlier_int8_a_few():
    reference = np.full((32, 3), 1 / 3, np.float32)
    nudged = reference.copy()
    nudged[:3, 0] += 0.2  # three images far off, the rest equal
    assert compare_answers(nudged, reference, TOLERANCES["int8"])["passed"]  # 29/32 >= 80%
    assert not compare_answers(nudged, reference, TOLERANCES["fp32"])["passed"]
    nudged[:8, 0] += 0.2  # eight: 24/32 < 80%
    assert not compare_answers(nudged, reference, TOLERANCES["int8"])["passed"]
    assert not compare_answers(reference * np.nan, reference, Tolerance(1.0))["passed"]  # NaN never passes
    broken = reference.copy()
    broken[:2] = np.nan  # two NaN rows of 32 would fit int8's 80%, but an engine emitting NaN is broken
    outcome = compare_answers(broken, reference, TOLERANCES["int8"])
    assert not outcome["passed"] and np.isnan(outcome["max_prob_diff"]) and outcome["labels_equal"] == 30
    tiny = reference.copy()
    tiny[:, 0] += 1e-3
    assert compare_answers(tiny, reference, TOLERANCES["fp32"]) == {
        "labels_equal": 32, "max_prob_diff": pytest.approx(1e-3, rel=1e-3), "within": 32, "passed": True}


def test_a_damaged_golden_file_is_refused_before_it_is_read(bundle_copy, capsys):
    path = bundle_copy / "golden.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its sha256"):
        load_golden(Bundle.load(bundle_copy))
    assert main(["verify", str(bundle_copy)]) == 2
    assert "does not match its sha256 in bundle.json" in capsys.readouterr().err
    path.unlink()
    with pytest.raises(BundleError, match="Golden file .* is missing"):
        load_golden(Bundle.load(bundle_copy))


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(labels=np.int64(3)), "integer labels"),
    (lambda a: a.update(images=a["images"][:0], labels=a["labels"][:0]), "with N >= 1"),
    (lambda a: a.update({"model_fp32.tflite": a["model_fp32.tflite"].astype(np.complex64)}), "expected float32"),
])
def test_malformed_golden_arrays_are_refused_by_name(bundle_copy, change, message):
    path = bundle_copy / "golden.npz"
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    change(arrays)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    meta = json.loads((bundle_copy / BUNDLE_FILE).read_text())
    meta["golden"].update(sha256=file_sha256(path), bytes=path.stat().st_size)
    (bundle_copy / BUNDLE_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=message):
        load_golden(Bundle.load(bundle_copy))


def test_a_bundle_without_golden_answers_says_how_to_get_them(tiny_bundle, capsys):
    assert main(["verify", str(tiny_bundle.folder), "--profile", "none"]) == 2
    assert "has no golden predictions (exported by an older edgevision): export it again" in capsys.readouterr().err


def test_bad_arguments_name_the_allowed_values(golden_bundle):
    with pytest.raises(BundleError, match="Unknown artifact 'nope'; this bundle has: model_fp32.tflite"):
        verify_bundle(golden_bundle, "nope", profile=None)
    with pytest.raises(ValueError, match=r"tolerance 2 is invalid; use a probability difference in \(0, 1\]"):
        verify_bundle(golden_bundle, tolerance=2, profile=None)
    # An engine that cannot open the artifact is a failed artifact, named, not a crash.
    result = verify_bundle(golden_bundle, "tflite_fp32", engine="onnxruntime", profile=None)[0]
    assert not result.passed and "onnxruntime" in result.error
    # A bad engine name or thread count is the user's argument: refused before anything runs (exit 2).
    with pytest.raises(ValueError, match="Unknown engine 'litrt'; choose one of litert, onnxruntime"):
        verify_bundle(golden_bundle, engine="litrt", profile=None)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        verify_bundle(golden_bundle, threads=0, profile=None)


def test_an_explicit_tolerance_applies_to_every_image(bundle_copy):
    _rewrite_answers(bundle_copy, "model_int8.tflite", lambda p: np.clip(p + np.float32(0.004), 0, 1))
    assert verify_bundle(bundle_copy, "tflite_int8", profile=None)[0].passed  # within int8's 0.05
    assert not verify_bundle(bundle_copy, "tflite_int8", tolerance=0.001, profile=None)[0].passed


def test_golden_images_cover_every_class_within_the_budget():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 20)
    noisy = rng.integers(0, 256, (80, 96, 96, 3), dtype=np.uint8)  # incompressible: 27 KB each
    chosen = choose_golden(noisy, labels)
    assert len(chosen) == 18  # 18 x 27 KB fits in 512 KB, 19 does not
    assert np.bincount(labels[chosen], minlength=4).min() >= 4  # every class in turn
    flat = np.zeros_like(noisy)
    assert len(choose_golden(flat, labels)) == 32  # compressible pictures: the full 32
    assert len(choose_golden(noisy, labels, budget_bytes=1)) == 8  # never fewer than 8
    assert len(choose_golden(flat[:5], labels[:5])) == 5  # or all there are


def test_the_litert_delegate_notice_is_not_printed(golden_bundle):
    code = (f"from edgevision.runtime.classifier import Classifier; "
            f"Classifier({str(golden_bundle)!r}, profile=None).classify(__import__('numpy').zeros((9, 9, 3), 'uint8'))")
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0 and quiet.stderr == ""
    # The notice is real: shown when the user asks for TensorFlow's INFO lines.
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert "Created TensorFlow Lite XNNPACK delegate for CPU" in loud.stderr
