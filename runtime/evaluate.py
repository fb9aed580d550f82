"""Score a bundle on a labelled folder with the runtime alone: how good is the model on these photos, on
this machine, in the format that ships.

    DATA_DIR/<label>/**/*.jpg   one folder per class, named as the bundle's labels (or mapped to them)

Every picture goes through the one decoder and preprocessing path (`load_and_prepare`) and each artifact's
engine. Per artifact: accuracy, top-k accuracy, per-class precision / recall / F1, the confusion matrix,
batch-1 latency and the misclassified files, most confident mistakes first; across artifacts, top-1
agreement with the first one.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .bundle import Bundle
from .preprocess import IMAGE_EXTENSIONS, ImageDecodeError, load_and_prepare
from .timing import batch1_latency_ms

LATENCY_REPEATS = 20


class EvaluationError(ValueError):
    """A test folder that cannot be scored (missing, empty, class folders that are not labels)."""


@dataclass
class TestSet:
    paths: list[str]
    labels: np.ndarray  # index into the bundle's labels
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    missing_classes: list[str] = field(default_factory=list)  # bundle labels with no test picture


def parse_label_map(pairs: list[str] | None) -> dict[str, str]:
    """["folder=label", ...] -> {folder: label}; ValueError naming a malformed pair."""
    mapping = {}
    for pair in pairs or ():
        folder, sep, label = pair.partition("=")
        if not sep or not folder or not label:
            raise EvaluationError(f"--label-map {pair!r} is not FOLDER=LABEL")
        mapping[folder] = label
    return mapping


def find_test_set(data_dir: str | os.PathLike, labels: list[str], label_map: dict[str, str] | None = None) -> TestSet:
    """List DATA_DIR's class folders (each a bundle label, directly or through `label_map`) and their image
    files (recursively, sorted). Pictures are decoded later, one by one; a file that fails is skipped then."""
    root = Path(data_dir)
    if not root.is_dir():
        raise EvaluationError(f"Test folder '{root}' does not exist or is not a folder")
    label_map = label_map or {}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise EvaluationError(f"Test folder '{root}' has no class folders; expected one folder per label "
                              f"({', '.join(labels)})")
    unknown = [f.name for f in folders if label_map.get(f.name, f.name) not in labels]
    if unknown:
        raise EvaluationError(f"Class folder(s) {', '.join(unknown)} in '{root}' are not labels of the bundle "
                              f"({', '.join(labels)}); rename them or map them with --label-map FOLDER=LABEL")
    bad_map = sorted(set(label_map.values()) - set(labels))
    if bad_map:
        raise EvaluationError(f"--label-map maps to {', '.join(bad_map)}, which the bundle does not have "
                              f"({', '.join(labels)})")
    paths, targets = [], []
    for folder in folders:
        index = labels.index(label_map.get(folder.name, folder.name))
        for current, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                    paths.append(os.path.join(current, name))
                    targets.append(index)
    if not paths:
        raise EvaluationError(f"Test folder '{root}' has no image files ({', '.join(IMAGE_EXTENSIONS)}) in its "
                              "class folders")
    present = {label_map.get(f.name, f.name) for f in folders}
    return TestSet(paths=paths, labels=np.asarray(targets, dtype=np.int64),
                   missing_classes=[label for label in labels if label not in present])


def load_test_images(test: TestSet, policy) -> tuple[np.ndarray, TestSet]:
    """Decode every picture through the one path; unreadable files are skipped and reported."""
    images, kept_paths, kept_labels, skipped = [], [], [], list(test.skipped)
    for path, label in zip(test.paths, test.labels):
        try:
            images.append(load_and_prepare(path, policy))
        except (ImageDecodeError, OSError) as bad:
            skipped.append((path, str(bad)))
            continue
        kept_paths.append(path)
        kept_labels.append(label)
    if not images:
        raise EvaluationError(f"None of the {len(test.paths)} test files could be read (first: {skipped[0][1]})")
    return np.stack(images), TestSet(kept_paths, np.asarray(kept_labels, np.int64), skipped, test.missing_classes)


@dataclass
class ArtifactScore:
    artifact: str
    precision: str
    engine: str
    images: int
    accuracy: float
    top_k: int
    top_k_accuracy: float
    per_class: dict  # label -> {"precision", "recall", "f1", "support"}
    confusion: list  # rows: true label, columns: predicted, in bundle label order
    latency_ms_p50: float
    misclassified: list  # [{"path", "true", "predicted", "score"}], most confident first
    agreement_with_first: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _per_class(confusion: np.ndarray, labels: list[str]) -> dict:
    scores = {}
    for i, label in enumerate(labels):
        true_pos = confusion[i, i]
        predicted, actual = confusion[:, i].sum(), confusion[i].sum()
        precision = true_pos / predicted if predicted else 0.0
        recall = true_pos / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[label] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                         "support": int(actual)}
    return scores


def score_artifact(classifier, images: np.ndarray, test: TestSet, top_k: int) -> tuple[ArtifactScore, np.ndarray]:
    labels = classifier.labels
    probs = np.concatenate([classifier.predict(images[i : i + 32]) for i in range(0, len(images), 32)])
    predicted = probs.argmax(axis=1)
    k = min(top_k, len(labels))
    best_k = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(confusion, (test.labels, predicted), 1)
    wrong = np.flatnonzero(predicted != test.labels)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")]
    score = ArtifactScore(
        artifact=classifier.artifact_name, precision=classifier.artifact.precision, engine=classifier.engine.name,
        images=len(images), accuracy=float((predicted == test.labels).mean()), top_k=k,
        top_k_accuracy=float((best_k == test.labels[:, None]).any(axis=1).mean()),
        per_class=_per_class(confusion, labels), confusion=confusion.tolist(),
        latency_ms_p50=batch1_latency_ms(classifier, images[0], LATENCY_REPEATS)[0],
        misclassified=[{"path": test.paths[i], "true": labels[test.labels[i]], "predicted": labels[predicted[i]],
                        "score": float(probs[i, predicted[i]])} for i in wrong],
    )
    return score, predicted


@dataclass
class Evaluation:
    data_dir: str
    labels: list[str]
    images: int
    skipped: list  # [(path, reason)]
    missing_classes: list[str]
    threads: int
    artifacts: list[ArtifactScore]

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "artifacts"},
                "artifacts": [a.to_dict() for a in self.artifacts]}

    def table(self, errors: int = 5) -> str:
        lines = [f"{self.images} images in {self.data_dir} ({len(self.labels)} classes"
                 + (f"; no test images for {', '.join(self.missing_classes)}" if self.missing_classes else "")
                 + (f"; {len(self.skipped)} files skipped" if self.skipped else "") + ")", "",
                 "| artifact | precision | engine | accuracy | top-k accuracy | macro F1 | agreement with first "
                 f"| latency p50 ({self.threads} threads) |",
                 "|---|---|---|---|---|---|---|---|"]
        for a in self.artifacts:
            macro = np.mean([c["f1"] for c in a.per_class.values() if c["support"]]) if a.per_class else 0.0
            agree = "-" if a.agreement_with_first is None else f"{a.agreement_with_first:.2%}"
            lines.append(f"| {a.artifact} | {a.precision} | {a.engine} | {a.accuracy:.2%} | {a.top_k_accuracy:.2%} "
                         f"(top {a.top_k}) | {macro:.3f} | {agree} | {a.latency_ms_p50:.2f} ms |")
        first = self.artifacts[0]
        lines += ["", f"{first.artifact}: per class (precision / recall / F1, support)"]
        lines += [f"  {label}: {c['precision']:.2f} / {c['recall']:.2f} / {c['f1']:.2f}, {c['support']}"
                  for label, c in first.per_class.items()]
        if first.misclassified and errors:
            lines += ["", f"{first.artifact}: {len(first.misclassified)} misclassified, most confident first:"]
            lines += [f"  {m['path']}: {m['true']} -> {m['predicted']} ({m['score']:.2f})"
                      for m in first.misclassified[:errors]]
        for path, reason in self.skipped[:errors]:
            lines.append(f"skipped {path}: {reason}")
        return "\n".join(lines)


def evaluate_bundle(bundle: Bundle | str | os.PathLike, data_dir: str | os.PathLike, artifacts: str | None = None,
                    *, label_map: dict[str, str] | None = None, threads: int | None = None, top_k: int = 5,
                    engine: str | None = None, profile=None) -> Evaluation:
    """Score `artifacts` (one name, "all", or None for the one `run` would use) on a labelled folder."""
    from .classifier import Classifier, artifact_names, resolve_profile
    from .engines import check_engine_name, check_threads, usable_cpus

    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    check_threads(threads)
    if engine is not None:
        check_engine_name(engine)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise EvaluationError(f"top_k {top_k!r} is invalid; use a positive integer")
    profile = resolve_profile(profile)
    names = artifact_names(bundle, artifacts, profile, engine)
    test = find_test_set(data_dir, bundle.labels, label_map)
    images, test = load_test_images(test, bundle.preprocess)
    scores, first = [], None
    for name in names:
        classifier = Classifier(bundle, artifact=name, engine=engine, threads=threads, profile=profile)
        score, predicted = score_artifact(classifier, images, test, top_k)
        if first is None:
            first = predicted
        else:
            score.agreement_with_first = float((predicted == first).mean())
        scores.append(score)
    return Evaluation(data_dir=str(data_dir), labels=list(bundle.labels), images=len(images), skipped=test.skipped,
                      missing_classes=test.missing_classes, threads=threads or usable_cpus(), artifacts=scores)

