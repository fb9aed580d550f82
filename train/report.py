"""The training report written into the run folder: curves, confusion matrix, per-class metrics.

    curves.png               loss and accuracy per epoch, training and validation, phases marked
    confusion_matrix.png     held-out images: true class (rows) by predicted class (columns)
    classification.json      held-out accuracy, per-class precision/recall/F1/support, the matrix

matplotlib is imported inside the plotting functions, with the Agg backend (no display needed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion_matrix.png"
CLASSIFICATION_FILE = "classification.json"


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return matrix


def classification_report(y_true, y_pred, labels: list[str], split: str) -> dict:
    """Accuracy and per-class precision, recall, F1 and support. A class never predicted has precision
    0 (scikit-learn's zero_division=0), reported as such rather than hidden."""
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    correct = np.diag(matrix).astype(np.float64)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)
    recall = np.divide(correct, support, out=np.zeros_like(correct), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(correct), where=denominator > 0)
    total = int(matrix.sum())
    return {
        "split": split,
        "images": total,
        "accuracy": float(correct.sum() / total) if total else float("nan"),
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "support": int(support[i])}
            for i, label in enumerate(labels)
        },
        "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "labels": list(labels),
        "confusion_matrix": matrix.tolist(),
    }


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); for other modules' plots (the study)."""
    return _pyplot()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: dict[str, list[float]], path: str | os.PathLike) -> Path:
    """Loss and accuracy per epoch (1-based), training solid and validation dashed; a vertical line
    where a new phase (fine-tuning) starts."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for key, style, name in ((metric, "-", "training"), (f"val_{metric}", "--", "validation")):
            if history.get(key):
                axis.plot(epochs, history[key], style, marker="o", markersize=3, label=name)
        phases = history.get("phase", [])
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                axis.axvline(i + 0.5, color="grey", linestyle=":", label="fine-tuning starts")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_confusion(report: dict, path: str | os.PathLike) -> Path:
    """The confusion matrix as a heat map with the count in every cell."""
    plt = _pyplot()
    matrix = np.asarray(report["confusion_matrix"])
    labels = report["labels"]
    n = len(labels)
    size = max(4.0, 0.6 * n + 2)
    figure, axis = plt.subplots(figsize=(size, size), constrained_layout=True)
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(n), labels, rotation=45, ha="right")
    axis.set_yticks(range(n), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"{report['split']}: {report['images']} images, accuracy {report['accuracy']:.1%}")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            axis.text(j, i, str(matrix[i, j]), ha="center", va="center",
                      color="white" if matrix[i, j] > threshold else "black", fontsize=8)
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_report(folder: str | os.PathLike, history: dict, y_true, y_pred, labels: list[str], split: str) -> dict:
    """Write the three report files into `folder`; returns the classification report."""
    folder = Path(folder)
    report = classification_report(y_true, y_pred, labels, split)
    (folder / CLASSIFICATION_FILE).write_text(json.dumps(report, indent=2))
    plot_curves(history, folder / CURVES_FILE)
    plot_confusion(report, folder / CONFUSION_FILE)
    return report
