"""export/exporter.py on bad input: every failure names what is wrong and leaves no bundle (complete or
partial) behind, including an export that fails its parity gate.

The run is real but untrained (a 32x32 MobileNetV2 saved without fitting, with MNIST held-out PNGs):
enough to exercise every check. Tests that convert to TFLite are marked slow.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgevision.export import exporter
from edgevision.export.exporter import ARTIFACT_KINDS, ExportError, export
from edgevision.runtime.bundle import BUNDLE_FILE, Bundle
from edgevision.runtime.preprocess import PreprocessPolicy
from edgevision.train.run_dir import MODEL_FILE, RUN_FILE, RunError, RunInfo

SIZE = 32
LABELS = ["0", "1", "7"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A training run folder as `train` writes it, built without training."""
    keras = pytest.importorskip("keras")
    from edgevision.train.model import ModelConfig, build_classifier
    from edgevision.train.sample_data import SampleDataUnavailable, mnist_sample, write_image_folder

    try:
        images, labels, names = mnist_sample()
    except SampleDataUnavailable as missing:
        pytest.skip(str(missing))
    root = tmp_path_factory.mktemp("export_errors")
    picks = np.concatenate([np.flatnonzero(labels == int(name))[:4] for name in LABELS])
    heldout = write_image_folder(images[picks], np.repeat(np.arange(len(LABELS)), 4), LABELS, root / "heldout")
    paths = sorted(str(p) for p in heldout.rglob("*.png"))
    assert len(paths) == 12

    keras.utils.set_random_seed(0)
    config = ModelConfig(input_size=SIZE, weights="none", mode="scratch", dropout=0.0)
    model = build_classifier(config, len(LABELS))
    run = root / "run"
    run.mkdir()
    model.save(run / MODEL_FILE)
    RunInfo(
        labels=list(LABELS),
        preprocess=PreprocessPolicy(SIZE, SIZE),
        model=config.to_dict(),
        training={"epochs": 0},
        dataset={"fingerprint": "test-fingerprint"},
        heldout_paths=paths,
        heldout_labels=[LABELS.index(Path(p).parent.name) for p in paths],
    ).save(run)
    RunInfo.load(run)  # the fixture itself is a valid run
    return run


def _copy_run(run_dir: Path, tmp_path: Path, edit=None) -> Path:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    if edit is not None:
        data = json.loads((run / RUN_FILE).read_text())
        edit(data)
        (run / RUN_FILE).write_text(json.dumps(data))
    return run


def _hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- not a run ---


def test_a_folder_that_is_not_a_run_is_named(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"not really")
    with pytest.raises(RunError) as info:
        export(folder, tmp_path / "bundle")
    message = str(info.value)
    assert f"'{folder}'" in message and RUN_FILE in message and MODEL_FILE in message
    assert not (tmp_path / "bundle").exists()


def test_a_missing_run_folder_is_named(tmp_path):
    with pytest.raises(RunError, match="'/nonexistent/run' does not exist"):
        export("/nonexistent/run", tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_a_run_with_a_damaged_run_json_is_named(run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path)
    (run / RUN_FILE).write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        export(run, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_a_model_file_that_is_not_a_keras_model(run_dir, tmp_path):
    import pickle
    import zipfile

    run = _copy_run(run_dir, tmp_path)
    for content in (b"garbage", pickle.dumps({"weights": [1, 2, 3]})):  # Keras said "File not found" to both
        (run / MODEL_FILE).write_bytes(content)
        with pytest.raises(ExportError, match="is not a Keras model file: a .keras file is a zip archive"):
            export(run, tmp_path / "bundle")
    with zipfile.ZipFile(run / MODEL_FILE, "w") as archive:  # a zip, but not a Keras model
        archive.writestr("notes.txt", "hello")
    with pytest.raises(ExportError, match="not a loadable Keras model"):
        export(run, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


# --- run.json disagrees with the model, or its images are gone ---


def test_label_count_that_differs_from_the_model_outputs(run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path, edit=lambda d: d.update(labels=["0", "1"]))
    with pytest.raises(ExportError) as info:
        export(run, tmp_path / "bundle")
    message = str(info.value)
    assert "3 outputs" in message and "2 labels" in message
    assert not (tmp_path / "bundle").exists()


def test_input_size_that_differs_from_the_model(run_dir, tmp_path):
    def edit(data):
        data["preprocess"].update(height=64, width=64)

    run = _copy_run(run_dir, tmp_path, edit=edit)
    with pytest.raises(ExportError) as info:
        export(run, tmp_path / "bundle")
    assert "(None, 32, 32, 3)" in str(info.value) and "(None, 64, 64, 3)" in str(info.value)


def test_heldout_images_all_missing_or_unreadable(run_dir, tmp_path):
    """Moved files and files that no longer decode both count as unreadable; with none left the
    parity check is impossible and the export says so."""
    broken = tmp_path / "broken"
    broken.mkdir()

    def edit(data):
        paths = data["heldout_paths"]
        half = len(paths) // 2
        moved = [str(tmp_path / "moved" / Path(p).name) for p in paths[:half]]
        corrupt = []
        for i in range(half, len(paths)):
            (broken / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
            corrupt.append(str(broken / f"{i}.png"))
        data["heldout_paths"] = moved + corrupt

    run = _copy_run(run_dir, tmp_path, edit=edit)
    with pytest.raises(ExportError) as info:
        export(run, tmp_path / "bundle")
    message = str(info.value)
    assert "None of the run's 12 held-out images could be read" in message and "parity" in message
    assert not (tmp_path / "bundle").exists()
    assert _hidden_leftovers(tmp_path) == []


# --- bad options and output locations ---


@pytest.mark.parametrize("formats", [("tflite_fp33",), ("tflite_fp32", "onnx_int9"), ()])
def test_unknown_format_lists_the_known_ones(run_dir, tmp_path, formats):
    with pytest.raises(ValueError) as info:
        export(run_dir, tmp_path / "bundle", formats=formats)
    message = str(info.value)
    for name in ARTIFACT_KINDS:
        assert name in message
    for bad in formats:
        if bad not in ARTIFACT_KINDS:
            assert bad in message
    assert not (tmp_path / "bundle").exists()


def test_existing_output_folder_is_refused_without_overwrite(run_dir, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError) as info:
        export(run_dir, out)
    assert f"'{out}'" in str(info.value) and "--overwrite" in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert _hidden_leftovers(tmp_path) == []


def test_overwrite_never_deletes_the_run_being_exported(run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(ValueError, match="is or contains the input"):
        export(run, run, overwrite=True, force=True)
    assert sorted(p.name for p in run.iterdir()) == before


def test_output_under_an_unwritable_location(run_dir, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    with pytest.raises(OSError) as info:
        export(run_dir, blocker / "bundle")
    assert str(blocker) in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
    assert blocker.read_text() == "a file, not a folder"


# --- the parity gate ---


_CONVERTED: dict[str, bytes] = {}
_REAL_CONVERT = ARTIFACT_KINDS["tflite_fp32"].convert


def _convert_once(model) -> bytes:
    """The real fp32 converter, run once per session: every export here loads the same run's model,
    and a conversion of it takes ~20 s on two cores."""
    if "fp32" not in _CONVERTED:
        _CONVERTED["fp32"] = _REAL_CONVERT(model)
    return _CONVERTED["fp32"]


@pytest.fixture
def impossible_gate(monkeypatch):
    """fp32 TFLite must agree on more than 100% of the held-out images: it always fails."""
    kind = replace(ARTIFACT_KINDS["tflite_fp32"], min_agreement=1.01, convert=_convert_once)
    monkeypatch.setitem(exporter.ARTIFACT_KINDS, "tflite_fp32", kind)


@pytest.mark.slow
def test_failed_parity_gate_leaves_no_bundle_and_no_staging(run_dir, tmp_path, impossible_gate):
    out = tmp_path / "bundle"
    with pytest.raises(ExportError) as info:
        export(run_dir, out, threads=1)
    message = str(info.value)
    assert "model_fp32.tflite agrees with the trained model on" in message
    assert "of 12 held-out images" in message and "below the 101.0% required" in message
    assert "--force" in message
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "no .bundle.partial-* staging folder may be left"


@pytest.mark.slow
def test_failed_parity_gate_keeps_the_previous_bundle_on_overwrite(run_dir, tmp_path, impossible_gate):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "bundle.json").write_text('{"previous": true}')
    with pytest.raises(ExportError):
        export(run_dir, out, overwrite=True, threads=1)
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json"]
    assert json.loads((out / "bundle.json").read_text()) == {"previous": True}
    assert _hidden_leftovers(tmp_path) == []


@pytest.mark.slow
def test_force_writes_a_failing_bundle_marked_as_failing(run_dir, tmp_path, impossible_gate):
    out = tmp_path / "bundle"
    result = export(run_dir, out, force=True, threads=1)
    assert result.bundle_dir == out
    assert len(result.failed) == 1 and "below the 101.0% required" in result.failed[0]
    assert result.metrics["model_fp32.tflite"]["passed"] is False

    bundle = Bundle.load(out)
    artifact = bundle.artifact()
    assert artifact.file == "model_fp32.tflite"
    assert artifact.metrics["passed"] is False
    assert artifact.metrics["min_agreement"] == 1.01
    assert artifact.metrics["heldout_images"] == 12
    assert bundle.labels == LABELS
    assert bundle.provenance["dataset_fingerprint"] == "test-fingerprint"
    assert "FAIL" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == [BUNDLE_FILE, "golden.npz", "model_fp32.tflite", "report.md"]
    assert _hidden_leftovers(tmp_path) == []


def test_a_searched_int8_that_fails_its_gate_says_what_the_search_estimated():
    """The search met its aim on the validation images and the held-out ones disagreed: the message says
    how far off the search's estimate was and what would make it truer."""
    from edgevision.export.calibration import QuantizationConfig

    metrics = {"agreement": 0.974, "heldout_images": 2000,
               "precision_search": {"search_agreement": 0.99, "search_images": 100,
                                    "search_source": "validation images", "target": 0.99}}
    message = exporter._failure_message("model_int8_tensorrt.onnx", ARTIFACT_KINDS["onnx_int8_tensorrt"], metrics,
                                        QuantizationConfig())
    assert "97.4% of 2000 held-out images, 0.6 points below the 98.0% required for int8_symmetric" in message
    assert "estimated 99.0% on 100 validation images (aim 99.0%); more validation images" in message
    assert message.endswith("--force writes the bundle anyway, marked as failing.")
    del metrics["precision_search"]  # full int8, no search: the calibration advice only
    assert "estimated" not in exporter._failure_message("model_int8.onnx", ARTIFACT_KINDS["onnx_int8"], metrics,
                                                        QuantizationConfig())
