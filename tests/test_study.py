"""`python -m edgevision.train.study --quick`: it runs end to end, writes a self-contained report and a
JSON of every figure, and every sentence it prints agrees with its numbers, including the statements
the numbers do not bear out (the report must say so, not hide it). Plus the pure parts: the image
transforms, the computed parameter counts, the small study models, the verdict logic."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest

from edgevision.train.sample_data import FASHION_MNIST_DIR
from edgevision.train.study import (
    CLAIMS,
    FIGURES_FILE,
    NOT_BORNE_OUT,
    REPORT_FILE,
    Finding,
    StudyConfig,
    StudyScale,
)

needs_fashion = pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                   reason="Debian's dataset-fashion-mnist is not installed")


# --- pure parts ---


def test_shifted_moves_content_and_fills_black():
    from edgevision.train.study_invariance import shifted

    images = np.zeros((1, 5, 5, 3), np.uint8)
    images[0, 2, 2] = 255
    right_down = shifted(images, 2, 1)
    assert right_down[0, 3, 4].tolist() == [255] * 3 and right_down.sum() == 3 * 255
    assert shifted(images, -3, 0).sum() == 0  # moved out of the picture
    assert np.array_equal(shifted(shifted(images, 1, 0), -1, 0), images)


def test_parameter_counts_are_computed_from_the_shapes():
    from edgevision.train.study_invariance import parameter_counts

    counts = parameter_counts(256, 28, (32, 64))
    assert counts["one_mlp_neuron_224x224x3"] == 150_529  # 224*224*3 weights + 1 bias
    assert counts["one_3x3_filter_rgb"] == 28
    assert counts["at_28"]["mlp_hidden_layer"] == (28 * 28 * 3 + 1) * 256
    assert counts["at_28"]["cnn_flatten_dense_layer"] == (7 * 7 * 64 + 1) * 256
    assert counts["at_224"]["cnn_gap_dense_layer"] == counts["at_28"]["cnn_gap_dense_layer"]  # size-independent


def test_small_study_models_build_and_train_only_from_scratch():
    import keras

    from edgevision.train.model import ModelConfig, build_classifier

    for name in ("mlp", "small_cnn", "small_cnn_gap"):
        with pytest.raises(ValueError, match=f"Study model '{name}' has no pretrained weights"):
            ModelConfig(backbone=name, input_size=28)
    plain = build_classifier(ModelConfig(backbone="small_cnn", input_size=28, weights="none", mode="scratch",
                                         batchnorm=False), 10)
    assert not [l for l in plain._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    with_bn = build_classifier(ModelConfig(backbone="small_cnn", input_size=28, weights="none", mode="scratch"), 10)
    assert len([l for l in with_bn._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]) == 3
    mlp = build_classifier(ModelConfig(backbone="mlp", input_size=28, weights="none", mode="scratch"), 10)
    assert mlp.output_shape == (None, 10)
    with pytest.raises(ValueError, match="Unknown backbone 'smal_cnn'.*did you mean 'small_cnn'"):
        ModelConfig(backbone="smal_cnn", weights="none", mode="scratch")


def test_a_contradicted_statement_is_said_so():
    assert Finding("x", False, "the numbers").sentence.startswith(NOT_BORNE_OUT)
    assert NOT_BORNE_OUT not in Finding("x", True, "the numbers").sentence


def test_config_names_bad_values(tmp_path):
    with pytest.raises(ValueError, match="Unknown claim 'layer'.*did you mean 'layers'"):
        StudyConfig(out=str(tmp_path / "o"), claims=("layer",))
    with pytest.raises(ValueError, match="does not exist"):
        StudyConfig(out=str(tmp_path / "o"), data=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="shifts must include 0"):
        StudyScale(shifts=(1, 2), reference_shift=2)


# --- the quick study, as CI runs it ---


def _recomputed(key: str, figures: dict) -> list:
    """The findings recomputed from study.json's figures alone."""
    from edgevision.train.study_batchnorm import batchnorm_findings
    from edgevision.train.study_invariance import invariance_findings
    from edgevision.train.study_layers import layers_findings
    from edgevision.train.study_limited import limited_findings

    return {"invariance": invariance_findings, "batchnorm": batchnorm_findings, "limited_data": limited_findings,
            "layers": layers_findings}[key](figures)


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    from edgevision.train.study import main

    out = tmp_path_factory.mktemp("study") / "quick"
    assert main(["--out", str(out), "--quick"]) == 0
    return out


@pytest.mark.slow
@needs_fashion
def test_quick_study_writes_a_self_contained_report(quick_study):
    record = json.loads((quick_study / FIGURES_FILE).read_text())
    assert list(record["claims"]) == list(CLAIMS)
    page = (quick_study / REPORT_FILE).read_text()
    # Self-contained: no external URL of any kind; every image is embedded.
    assert not re.search(r"""(?:src|href)=["'](?!data:|#)""", page)
    assert "http://" not in page and "https://" not in page
    images = re.findall(r'<img src="([^"]*)"', page)
    assert len(images) == sum(len(c["plots"]) for c in record["claims"].values()) >= 5
    assert all(src.startswith("data:image/png;base64,") for src in images)
    for claim in record["claims"].values():
        for plot in claim["plots"].values():
            assert (quick_study / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for finding in claim["findings"]:
            assert finding["sentence"] in page or finding["sentence"].replace("'", "&#x27;") in page
    assert not list(quick_study.parent.glob(".quick.partial-*"))  # written atomically, nothing left over


@pytest.mark.slow
@needs_fashion
def test_every_sentence_matches_its_numbers(quick_study):
    """Recomputing each statement from the JSON gives the same verdict and sentence; a statement the
    data contradicts is reported as such (and would be visible here), not dropped."""
    record = json.loads((quick_study / FIGURES_FILE).read_text())
    for key, claim in record["claims"].items():
        stored = claim["findings"]
        again = _recomputed(key, claim["figures"])
        assert [f["statement"] for f in stored] == [f.statement for f in again]
        for s, f in zip(stored, again):
            assert s["holds"] == f.holds and s["sentence"] == f.sentence, key
            assert (NOT_BORNE_OUT in s["sentence"]) == (s["holds"] is False)


@pytest.mark.slow
@needs_fashion
def test_quick_study_directions_it_can_check(quick_study):
    """The directions that hold even at the quick size (20 images a class, a few epochs)."""
    claims = json.loads((quick_study / FIGURES_FILE).read_text())["claims"]
    inv = claims["invariance"]["figures"]
    runs, d = inv["runs"], str(inv["reference_shift"])
    assert inv["computed"]["one_mlp_neuron_224x224x3"] == 150_529
    assert inv["parameters"]["small_cnn_gap"] < inv["parameters"]["mlp"]
    for run in runs.values():
        assert run["centred"] > 0.3  # far above chance (10%): the models learnt something
    loss = {k: r["centred"] - r["shift"][d] for k, r in runs.items()}
    assert loss["small_cnn_gap"] < loss["small_cnn"] and loss["small_cnn_gap"] < loss["mlp"]  # pooling
    assert loss["small_cnn-augmented"] < loss["small_cnn"]  # augmentation
    lim = claims["limited_data"]["figures"]["test_accuracy"]["no augmentation"]
    low = str(claims["limited_data"]["figures"]["counts"][0])
    assert max(lim["head"][low], lim["finetune"][low]) > lim["scratch"][low]  # transfer beats scratch
    layers = claims["layers"]["figures"]["networks"]
    assert layers["pretrained"]["first_layer_neighbour_correlation"] > layers["random"]["first_layer_neighbour_correlation"]
    bn = claims["batchnorm"]["figures"]
    assert all(len(run["val_accuracy"]) == bn["epochs"] for run in bn["runs"].values())


@pytest.mark.slow
@needs_fashion
def test_seeded_parts_repeat_exactly(tmp_path):
    """Two runs of a cheap part (the invariance claim at a tiny size) give identical figures."""
    from edgevision.train.study import run_study

    tiny = replace(StudyScale.quick(), per_class=5, val_per_class=2, test_images=100, small_epochs=1,
                   augment_models=(), shifts=(0, 2), reference_shift=2, rotations=(90.0,), counts=(5,))
    figures = []
    for name in ("a", "b"):
        record = run_study(StudyConfig(out=str(tmp_path / name), quick=True, claims=("invariance",), scale=tiny),
                           say=lambda _: None)
        figures.append(record["claims"]["invariance"]["figures"])
    assert figures[0] == figures[1]


@pytest.mark.slow
@needs_fashion
def test_study_runs_on_a_users_folder(tmp_path):
    """`--data DIR`: a folder of another shape (4 classes, 12 training images a class, fewer than the
    quick scale's 20) runs the same claims; the small experiments use what every class has and say so."""
    import shutil

    from edgevision.train.sample_data import write_fashion_task
    from edgevision.train.study import main

    folder = write_fashion_task(tmp_path / "mine", per_class=12, val_per_class=3, seed=1, test_images=200)
    for split in ("train", "val", "test"):
        for extra in sorted(p for p in (folder / split).iterdir())[4:]:
            shutil.rmtree(extra)
    out = tmp_path / "study"
    assert main(["--out", str(out), "--quick", "--data", str(folder), "--claims", "invariance,layers"]) == 0
    record = json.loads((out / FIGURES_FILE).read_text())
    assert record["config"]["data"] == str(folder) and record["config"]["scale"]["per_class"] == 12
    assert record["data"].startswith(str(folder.resolve())) and "4 classes, 48 training images" in record["data"]
    invariance = record["claims"]["invariance"]
    assert "12 images per class" in invariance["method"]
    assert invariance["figures"]["test_images"] == 80  # the folder's 4 test classes, 20 images each
    for key, claim in record["claims"].items():
        assert [f["sentence"] for f in claim["findings"]] == [f.sentence for f in _recomputed(key, claim["figures"])]
    assert (out / REPORT_FILE).is_file() and all((out / p).is_file() for c in record["claims"].values()
                                                 for p in c["plots"].values())


@pytest.mark.slow
@needs_fashion
def test_a_study_resumed_with_work_reuses_only_runs_of_the_same_settings(tmp_path):
    """--work keeps the task folders and runs: a second study reuses every finished run (same figures, no
    training), and one with other settings trains anew."""
    from edgevision.train.study import run_study

    tiny = replace(StudyScale.quick(), per_class=5, val_per_class=2, test_images=100, small_epochs=1,
                   augment_models=(), shifts=(0, 2), reference_shift=2, rotations=(90.0,), counts=(5,))
    work = tmp_path / "work"

    def study(name, scale):
        said = []
        record = run_study(StudyConfig(out=str(tmp_path / name), quick=True, claims=("invariance",), scale=scale,
                                       work=str(work)), say=said.append)
        return record["claims"]["invariance"]["figures"], [s for s in said if "held-out accuracy" in s]

    first, trained = study("a", tiny)
    assert len(trained) == 3 and not any("reused" in s for s in trained)
    again, reused = study("b", tiny)
    assert again == first and len(reused) == 3 and all("reused from" in s for s in reused)
    _, retrained = study("c", replace(tiny, small_epochs=2))
    assert len(retrained) == 3 and not any("reused" in s for s in retrained)
