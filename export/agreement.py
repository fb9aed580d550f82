"""How far to trust a parity gate: top-1 agreement between an artifact and the trained model, with its
confidence interval, and how the changed answers split against the true labels.

    result = compare(keras_probs, tflite_probs, labels)   # Agreement(total=90, agree=88, lower=..., ...)
    too_few_warning(result.total, gate=0.98)              # a sentence when 90 images cannot test a 98% gate

A rate measured on a few dozen held-out images is a noisy number: 88 of 90 (97.8%) is consistent with a
true agreement anywhere from about 92% to 99%, so a 98% gate passed or failed on it says little. The
Wilson score interval (not the normal "p +- z*sqrt(p(1-p)/n)" one, which collapses to zero width at 0/n
and n/n, exactly where a gate lives) says how little, and `images_needed` says how many images make it
say enough.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np


def _z(confidence: float) -> float:
    """The two-sided normal quantile for `confidence` (1.959963984540054 for 0.95); stdlib, no scipy."""
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence!r} is invalid; use a number strictly between 0 and 1, e.g. 0.95")
    return NormalDist().inv_cdf(0.5 + float(confidence) / 2)


def _count(name: str, value) -> int:
    """`value` as a plain int, refusing floats and bools: a count of 97.5 images is a caller's bug."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} {value!r} is invalid; use a whole number of images")
    return int(value)


def _wilson(p: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval (center, half-width) for observed proportion p on n trials."""
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return center, half


def wilson_interval(agree: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for agree/total: stays inside [0, 1] and keeps a width at 0/n and n/n,
    where the textbook normal interval would claim certainty."""
    agree, total = _count("agree", agree), _count("total", total)
    if total <= 0:
        raise ValueError(f"total {total!r} is invalid; an interval needs at least 1 image")
    if not 0 <= agree <= total:
        raise ValueError(f"agree {agree!r} is invalid; use a count from 0 to total ({total})")
    center, half = _wilson(agree / total, total, _z(confidence))
    # Exact bounds at 0/n and n/n; clamping only removes float rounding (e.g. 1.0000000000000002).
    lower = 0.0 if agree == 0 else max(0.0, center - half)
    upper = 1.0 if agree == total else min(1.0, center + half)
    return lower, upper


def _gate_and_margin(gate: float, margin: float | None) -> tuple[float, float]:
    """Validated (gate, margin), margin defaulting to half of what the gate allows to change."""
    if isinstance(gate, bool) or not isinstance(gate, numbers.Real) or not 0 < gate < 1:
        raise ValueError(f"gate {gate!r} is invalid; use an agreement rate strictly between 0 and 1, e.g. 0.98")
    if margin is None:
        margin = (1 - gate) / 2
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not 0 < margin < 1:
        raise ValueError(f"margin {margin!r} is invalid; use an interval half-width strictly between 0 and 1, "
                         "e.g. 0.01 for +-1 point")
    return float(gate), float(margin)


def images_needed(gate: float, margin: float | None = None, confidence: float = 0.95) -> int:
    """How many held-out images make a gate meaningful.

    The smallest n for which a model agreeing on exactly `gate` of n images (the proportion taken as is,
    so n need not make gate*n whole) has a Wilson interval no wider than +-`margin`. The default margin is
    half of what the gate lets through, (1 - gate) / 2: for a 98% gate that is +-1 point, so a measured
    98% rules out 96%. A little more than the normal approximation's z^2 * gate * (1 - gate) / margin^2
    (753 for 0.98 at 95%): Wilson's interval is wider near 0 and 1, and it takes 792.
    The half-width falls strictly as n grows (for any gate in (0, 1)), so the search below is exact.
    """
    gate, margin = _gate_and_margin(gate, margin)
    z = _z(confidence)
    if _wilson(gate, 1, z)[1] <= margin:
        return 1
    low, high = 1, 2  # half-width(low) > margin; grow high until half-width(high) <= margin
    while _wilson(gate, high, z)[1] > margin:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        if _wilson(gate, mid, z)[1] <= margin:
            high = mid
        else:
            low = mid
    return high


def _percent(x: float) -> str:
    """0.98 -> '98%', 0.995 -> '99.5%', 0.9258 -> '92.6%'."""
    return f"{x * 100:.1f}".rstrip("0").rstrip(".") + "%"


def _points(x: float) -> str:
    """An interval half-width in percentage points: 0.01 -> '1 point', 0.0345 -> '3.5 points'."""
    text = f"{x * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text} point" if text == "1" else f"{text} points"


def too_few_warning(total: int, gate: float, confidence: float = 0.95) -> str | None:
    """One sentence when `total` held-out images are too few for `gate` to mean anything (fewer than
    `images_needed(gate)`), saying how wide the interval is and how many images would do; None when enough.

    The numbers are those of a model measured at exactly the gate: the width it would have, and the lowest
    true rate it could not be told apart from.
    """
    total = _count("total", total)
    if total <= 0:
        raise ValueError(f"total {total!r} is invalid; the gate needs at least 1 held-out image")
    gate, margin = _gate_and_margin(gate, None)
    needed = images_needed(gate, margin, confidence)
    if total >= needed:
        return None
    center, half = _wilson(gate, total, _z(confidence))
    lower = max(0.0, center - half)
    width = _points(half)
    width = f"just over ±{width}" if width == _points(margin) else f"about ±{width}"  # e.g. 780 images
    return (
        f"The gate was measured on {total} held-out images: its {_percent(confidence)} interval is "
        f"{width}, too wide to tell {_percent(gate)} from {_percent(lower)}; "
        f"about {needed} images would give ±{_points(margin)}."
    )


def tied_top(probs: np.ndarray) -> np.ndarray:
    """Rows (N,) whose two largest probabilities are exactly equal: argmax then picks the lower index by
    convention, not by the model, the mark of quantized outputs (uint8 softmax steps of 1/256)."""
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs has shape {probs.shape}; expected (N, classes)")
    if probs.shape[1] < 2:
        return np.zeros(probs.shape[0], dtype=bool)
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return top2[:, 0] == top2[:, 1]


@dataclass(frozen=True)
class Agreement:
    """Top-1 agreement of an artifact with the reference (trained) model on `total` held-out images.

    lower, upper: the 95% Wilson interval of the agreement rate. The changed answers split by who was
    right against the true labels: right_to_wrong (the artifact broke a correct answer: the costly kind),
    wrong_to_right, wrong_to_other_wrong (both wrong: a change that costs no accuracy). changed_ties:
    changed answers where the artifact's top two probabilities are exactly equal, i.e. decided by
    quantization rounding and argmax's tie rule rather than by the model.
    """

    total: int
    agree: int
    lower: float
    upper: float
    right_to_wrong: int
    wrong_to_right: int
    wrong_to_other_wrong: int
    changed_ties: int

    @property
    def rate(self) -> float:
        return self.agree / self.total

    @property
    def changed(self) -> int:
        return self.total - self.agree

    def to_dict(self) -> dict:
        """Plain Python numbers, ready for bundle.json."""
        floats = ("lower", "upper")
        out = {k: (float(v) if k in floats else int(v)) for k, v in asdict(self).items()}
        out["rate"] = float(self.rate)
        out["changed"] = int(self.changed)
        return out


def compare(reference_probs: np.ndarray, artifact_probs: np.ndarray, labels: np.ndarray) -> Agreement:
    """Compare top-1 answers (argmax) of the reference model and an artifact on the same images, against
    the true labels. reference_probs and artifact_probs: (N, C); labels: (N,) class indices."""
    reference = np.asarray(reference_probs)
    artifact = np.asarray(artifact_probs)
    labels = np.asarray(labels)
    if reference.ndim != 2 or reference.shape[0] == 0 or reference.shape[1] == 0:
        raise ValueError(f"reference_probs has shape {reference.shape}; expected (N, classes) with N, classes >= 1")
    if artifact.shape != reference.shape:
        raise ValueError(f"artifact_probs has shape {artifact.shape} but reference_probs has shape "
                         f"{reference.shape}; they must be the same (N, classes)")
    if labels.shape != (reference.shape[0],):
        raise ValueError(f"labels has shape {labels.shape}; expected ({reference.shape[0]},), one label per "
                         f"row of the probabilities {reference.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels have dtype {labels.dtype}; expected integer class indices")
    classes = reference.shape[1]
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"labels range from {labels.min()} to {labels.max()}; expected class indices from 0 "
                         f"to {classes - 1}")

    ref_top = reference.argmax(axis=1)
    art_top = artifact.argmax(axis=1)
    changed = ref_top != art_top
    ref_right = ref_top == labels
    art_right = art_top == labels
    total = int(len(labels))
    agree = total - int(changed.sum())
    lower, upper = wilson_interval(agree, total)
    return Agreement(
        total=total,
        agree=agree,
        lower=lower,
        upper=upper,
        right_to_wrong=int(np.sum(changed & ref_right)),
        wrong_to_right=int(np.sum(changed & art_right)),
        wrong_to_other_wrong=int(np.sum(changed & ~ref_right & ~art_right)),
        changed_ties=int(np.sum(changed & tied_top(artifact))),
    )


def estimated_agreement(reference_probs: np.ndarray, candidate_probs: np.ndarray) -> float:
    """Top-1 agreement to expect on other images of the same kind, smoother than counting changed answers.

    For each image, the reference's margin is the log-probability gap between its top two classes, and
    the candidate's perturbation is how much it moved that gap. An answer changes when a margin meets a
    perturbation that closes it; pairing every margin with every perturbation measured (instead of each
    with its own) estimates that rate from n**2 pairs, where counting changed answers on 100 images only
    resolves whole percents."""
    reference = np.asarray(reference_probs, dtype=np.float64)
    candidate = np.asarray(candidate_probs, dtype=np.float64)
    if reference.ndim != 2 or reference.shape != candidate.shape or reference.shape[1] < 2 or not len(reference):
        raise ValueError(f"reference_probs {reference.shape} and candidate_probs {candidate.shape} must be the "
                         "same non-empty (N, C) shape with at least 2 classes")
    rows = np.arange(len(reference))
    top = np.argsort(-reference, axis=1, kind="stable")[:, :2]
    tiny = 1e-12  # a probability of exactly 0 (a quantized output) has no logarithm

    def gap(probs):
        return np.log(probs[rows, top[:, 0]] + tiny) - np.log(probs[rows, top[:, 1]] + tiny)

    margins = gap(reference)
    moves = gap(candidate) - margins
    # sorted moves: for each margin, how many moves push the gap below zero (move < -margin)
    moves.sort()
    changed = np.searchsorted(moves, -margins, side="left")
    return float(1 - changed.sum() / (len(margins) * len(moves)))
