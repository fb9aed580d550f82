"""`edgevision evaluate`: a bundle scored on a labelled folder with the runtime alone, figures checked against
the same pictures classified one by one, and a test folder that does not fit named clearly."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from conftest import realish_image
from edgevision.cli import main
from edgevision.runtime.classifier import Classifier
from edgevision.runtime.evaluate import EvaluationError, evaluate_bundle
from edgevision.runtime.preprocess import load_and_prepare


@pytest.fixture
def test_folder(tiny_bundle, tmp_path):
    """Five pictures for each of the tiny bundle's labels a, b, c, two of them in a nested folder."""
    rng = np.random.default_rng(11)
    root = tmp_path / "test"
    for label in tiny_bundle.labels:
        for i in range(5):
            folder = root / label / ("more" if i >= 3 else "")
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{i}.png"), realish_image(rng, 40 + i, 56))
    return root


def test_figures_match_the_pictures_classified_one_by_one(tiny_bundle, test_folder):
    evaluation = evaluate_bundle(tiny_bundle.folder, test_folder, "all", threads=1, top_k=2, profile=None)
    assert evaluation.images == 15 and evaluation.missing_classes == [] and evaluation.skipped == []
    paths = sorted(str(p) for p in test_folder.rglob("*.png"))
    truth = np.array([tiny_bundle.labels.index(p.split("/test/")[1].split("/")[0]) for p in paths])
    first_predictions = None
    for score in evaluation.artifacts:
        classifier = Classifier(tiny_bundle.folder, artifact=score.artifact, threads=1)
        probs = np.stack([classifier.predict(load_and_prepare(p, classifier.policy)[None])[0] for p in paths])
        predicted = probs.argmax(axis=1)
        assert score.accuracy == pytest.approx((predicted == truth).mean())
        assert score.top_k == 2
        assert score.top_k_accuracy == pytest.approx((np.argsort(-probs, axis=1)[:, :2] == truth[:, None]).any(1).mean())
        confusion = np.array(score.confusion)
        assert confusion.sum() == 15 and confusion.trace() == (predicted == truth).sum()
        assert [c["support"] for c in score.per_class.values()] == [5, 5, 5]
        assert len(score.misclassified) == (predicted != truth).sum()
        confidences = [m["score"] for m in score.misclassified]
        assert confidences == sorted(confidences, reverse=True)  # most confident mistakes first
        if first_predictions is None:
            first_predictions = predicted
            assert score.agreement_with_first is None
        else:
            assert score.agreement_with_first == pytest.approx((predicted == first_predictions).mean())
        assert score.latency_ms_p50 > 0


def test_folders_that_are_not_labels_missing_classes_and_bad_files(tiny_bundle, test_folder):
    (test_folder / "a").rename(test_folder / "apple")
    with pytest.raises(EvaluationError, match=r"Class folder\(s\) apple in .* are not labels of the bundle \(a, b, c\); "
                                              r"rename them or map them with --label-map FOLDER=LABEL"):
        evaluate_bundle(tiny_bundle.folder, test_folder, profile=None)
    renamed = evaluate_bundle(tiny_bundle.folder, test_folder, label_map={"apple": "a"}, profile=None)
    assert renamed.images == 15
    with pytest.raises(EvaluationError, match="--label-map maps to z, which the bundle does not have"):
        evaluate_bundle(tiny_bundle.folder, test_folder, label_map={"apple": "a", "x": "z"}, profile=None)
    for picture in (test_folder / "c").rglob("*.png"):
        picture.unlink()
    (test_folder / "b" / "broken.png").write_text("not a picture")
    partial = evaluate_bundle(tiny_bundle.folder, test_folder, label_map={"apple": "a"}, profile=None)
    assert partial.images == 10 and [p.split("/")[-1] for p, _ in partial.skipped] == ["broken.png"]
    assert partial.missing_classes == []  # c still has its (now empty) folder: 0 support, reported below
    assert partial.artifacts[0].per_class["c"]["support"] == 0
    import shutil

    shutil.rmtree(test_folder / "c")
    assert evaluate_bundle(tiny_bundle.folder, test_folder, label_map={"apple": "a"}, profile=None).missing_classes == ["c"]


def test_empty_or_missing_test_folders_are_named(tiny_bundle, tmp_path):
    with pytest.raises(EvaluationError, match="does not exist or is not a folder"):
        evaluate_bundle(tiny_bundle.folder, tmp_path / "nowhere", profile=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match=r"has no class folders; expected one folder per label \(a, b, c\)"):
        evaluate_bundle(tiny_bundle.folder, tmp_path / "empty", profile=None)
    (tmp_path / "empty" / "a").mkdir()
    with pytest.raises(EvaluationError, match="has no image files"):
        evaluate_bundle(tiny_bundle.folder, tmp_path / "empty", profile=None)


def test_cli_table_json_and_min_accuracy(tiny_bundle, test_folder, capsys):
    assert main(["evaluate", str(tiny_bundle.folder), str(test_folder), "--artifact", "all", "--profile", "none",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "15 images in" in out and "| model_int8.tflite | int8 | litert |" in out and "per class" in out
    assert main(["evaluate", str(tiny_bundle.folder), str(test_folder), "--json", "--profile", "none"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["images"] == 15 and data["artifacts"][0]["artifact"] == "model_fp32.tflite"
    accuracy = data["artifacts"][0]["accuracy"]
    assert accuracy < 1  # the tiny model guesses on these pictures
    assert main(["evaluate", str(tiny_bundle.folder), str(test_folder), "--profile", "none",
                 "--min-accuracy", str(accuracy + 0.01)]) == 1
    assert "evaluate: accuracy below" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_bundle.folder), str(test_folder), "--profile", "none",
                 "--min-accuracy", str(accuracy)]) == 0
    assert main(["evaluate", str(tiny_bundle.folder), str(test_folder), "--min-accuracy", "95"]) == 2
    assert "--min-accuracy must be from 0 to 1, got 95.0" in capsys.readouterr().err


def test_the_report_page_is_self_contained_with_thumbnails_of_the_mistakes(tiny_bundle, test_folder, tmp_path, capsys):
    import base64
    import re

    report = tmp_path / "report"
    assert main(["evaluate", str(tiny_bundle.folder), str(test_folder), "--artifact", "all", "--profile", "none",
                 "--report", str(report)]) == 0
    assert f"wrote {report / 'report.html'}" in capsys.readouterr().out
    page = (report / "report.html").read_text()
    data = json.loads((report / "evaluation.json").read_text())
    assert "http://" not in page and "https://" not in page and "<script" not in page  # opens offline
    for score in data["artifacts"]:
        assert f"<h2>{score['artifact']} " in page
    assert page.count('<table class="cm">') == len(data["artifacts"])
    thumbnails = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(thumbnails) == sum(min(48, len(s["misclassified"])) for s in data["artifacts"]) > 0
    picture = cv2.imdecode(np.frombuffer(base64.b64decode(thumbnails[0]), np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (32, 32, 3)  # what the model saw
    assert main(["evaluate", str(tiny_bundle.folder), str(test_folder), "--profile", "none",
                 "--report", str(report)]) == 2
    assert "already exists" in capsys.readouterr().err
