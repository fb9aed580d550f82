"""Parity-gate statistics (export/agreement.py): the Wilson interval against an independent computation
and published values, how many held-out images a gate needs, the warning when there are too few, and
the split of changed top-1 answers against the true labels. numpy only, no TensorFlow."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgevision.export.agreement import (
    Agreement,
    compare,
    images_needed,
    tied_top,
    too_few_warning,
    wilson_interval,
)

Z95 = 1.959963984540054


def wilson_by_hand(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's interval written out as the roots of (p - phat)^2 = z^2 p (1 - p) / n, solved with the
    quadratic formula: a different route from the module's center +- half-width form."""
    phat = k / n
    a = 1 + z * z / n
    b = -(2 * phat + z * z / n)
    c = phat * phat
    root = math.sqrt(max(b * b - 4 * a * c, 0.0))
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


def half_width_by_hand(p: float, n: int, z: float = Z95) -> float:
    """Half of the distance between the two quadratic roots, for a proportion p that need not be k/n."""
    return z * math.sqrt(z * z + 4 * n * p * (1 - p)) / (2 * (n + z * z))


# --- wilson_interval ---


@pytest.mark.parametrize("k, n", [(98, 100), (1, 2), (7, 13), (450, 500), (999, 1000)])
def test_wilson_matches_the_quadratic_solution(k, n):
    assert wilson_interval(k, n) == pytest.approx(wilson_by_hand(k, n), abs=1e-12)


def test_wilson_98_of_100():
    lower, upper = wilson_interval(98, 100)
    assert lower == pytest.approx(0.9300, abs=5e-5)
    assert upper == pytest.approx(0.9945, abs=5e-5)


@pytest.mark.parametrize("k, n, lower, upper", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Stat Med 17:857: the
    # worked examples, score method without continuity correction.
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_published_values(k, n, lower, upper):
    assert wilson_interval(k, n) == pytest.approx((lower, upper), abs=5e-5)


@pytest.mark.parametrize("confidence, z", [(0.90, 1.6448536269514722), (0.95, Z95), (0.99, 2.5758293035489004)])
def test_wilson_confidence_levels(confidence, z):
    assert wilson_interval(30, 40, confidence) == pytest.approx(wilson_by_hand(30, 40, z), abs=1e-9)


def test_wilson_wider_at_higher_confidence():
    (l90, u90), (l99, u99) = wilson_interval(30, 40, 0.90), wilson_interval(30, 40, 0.99)
    assert l99 < l90 and u99 > u90


@pytest.mark.parametrize("n", [1, 5, 90, 10_000])
def test_wilson_edges_stay_in_unit_interval_and_keep_width(n):
    lower0, upper0 = wilson_interval(0, n)
    lowern, uppern = wilson_interval(n, n)
    assert lower0 == 0.0 and 0.0 < upper0 <= 1.0
    assert uppern == 1.0 and 0.0 <= lowern < 1.0
    assert upper0 == pytest.approx(1 - lowern, abs=1e-12)  # symmetric
    assert upper0 == pytest.approx(Z95**2 / (n + Z95**2), abs=1e-12)  # closed form at 0/n


@pytest.mark.parametrize("agree, total, match", [
    (0, 0, r"total 0 is invalid"),
    (1, -3, r"total -3 is invalid"),
    (11, 10, r"agree 11 is invalid.*0 to total \(10\)"),
    (-1, 10, r"agree -1 is invalid"),
    (9.5, 10, r"agree 9.5 is invalid.*whole number"),
])
def test_wilson_rejects_bad_counts(agree, total, match):
    with pytest.raises(ValueError, match=match):
        wilson_interval(agree, total)


@pytest.mark.parametrize("confidence", [0, 1, 1.5, -0.2, 95])
def test_wilson_rejects_bad_confidence(confidence):
    with pytest.raises(ValueError, match=rf"confidence {confidence!r} is invalid.*between 0 and 1"):
        wilson_interval(5, 10, confidence)


def test_wilson_accepts_numpy_integers():
    assert wilson_interval(np.int64(98), np.int64(100)) == pytest.approx(wilson_by_hand(98, 100), abs=1e-12)


# --- images_needed ---


@pytest.mark.parametrize("gate, margin", [(0.98, None), (0.98, 0.01), (0.95, None), (0.99, 0.002), (0.5, 0.05)])
def test_images_needed_is_the_smallest_n(gate, margin):
    target = (1 - gate) / 2 if margin is None else margin
    n = images_needed(gate, margin)
    assert half_width_by_hand(gate, n) <= target
    assert half_width_by_hand(gate, n - 1) > target


def test_images_needed_for_a_98_percent_gate():
    n = images_needed(0.98)
    assert n == images_needed(0.98, 0.01)  # default margin is +-1 point
    # More than the normal approximation's z^2 p (1 - p) / m^2 (753), but not wildly more.
    assert 753 < n < 850
    assert n == 792


def test_images_needed_falls_as_margin_widens():
    margins = [0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
    counts = [images_needed(0.98, m) for m in margins]
    assert counts == sorted(counts, reverse=True)
    assert len(set(counts)) == len(counts)


def test_images_needed_rises_with_confidence():
    assert images_needed(0.98, 0.01, 0.90) < images_needed(0.98, 0.01, 0.95) < images_needed(0.98, 0.01, 0.99)


@pytest.mark.parametrize("gate, margin, match", [
    (1.0, None, r"gate 1.0 is invalid"),
    (0.0, 0.01, r"gate 0.0 is invalid"),
    (98, None, r"gate 98 is invalid.*e.g. 0.98"),
    (0.98, 0.0, r"margin 0.0 is invalid"),
    (0.98, -0.01, r"margin -0.01 is invalid"),
])
def test_images_needed_rejects_bad_input(gate, margin, match):
    with pytest.raises(ValueError, match=match):
        images_needed(gate, margin)


# --- too_few_warning ---


def test_no_warning_with_enough_images():
    needed = images_needed(0.98)
    assert too_few_warning(needed, 0.98) is None
    assert too_few_warning(100_000, 0.98) is None


def test_warning_with_too_few_images():
    message = too_few_warning(90, 0.98)
    assert message is not None
    assert "90 held-out images" in message
    assert f"{images_needed(0.98)} images" in message
    half = half_width_by_hand(0.98, 90)
    assert f"±{half * 100:.1f} points" in message  # 3.4 points
    assert "±1 point;" not in message and "±1 point." in message  # what the needed images would give
    n, z = 90, Z95
    lower = (2 * n * 0.98 + z * z) / (2 * (n + z * z)) - half  # 92.6%: what a measured 98% cannot rule out
    assert f"tell 98% from {lower * 100:.1f}%" in message


def test_warning_one_image_short():
    needed = images_needed(0.98)
    message = too_few_warning(needed - 1, 0.98)
    assert message is not None and f"{needed - 1} held-out images" in message and f"{needed} images" in message
    # One image short, the width rounds to the target: the message must not read "about ±1 point ... ±1 point".
    assert "interval is just over ±1 point," in message


def test_warning_rejects_empty_set():
    with pytest.raises(ValueError, match=r"total 0 is invalid"):
        too_few_warning(0, 0.98)


# --- compare ---


def _rows(*tops: int, classes: int = 3) -> np.ndarray:
    """Probabilities whose argmax is each given class."""
    probs = np.full((len(tops), classes), 0.1 / (classes - 1))
    probs[np.arange(len(tops)), tops] = 0.9
    return probs


def test_compare_splits_changed_answers():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    reference = _rows(0, 1, 2, 0, 2, 0, 1, 1)  # right, right, right, right, wrong, wrong, wrong, right
    artifact = _rows(0, 1, 2, 1, 1, 1, 1, 1)
    # row 3: reference right (0), artifact wrong (1): right_to_wrong, decided by a tie (below)
    # row 4: reference wrong (2), artifact right (1): wrong_to_right
    # row 5: reference wrong (0), artifact wrong (1), label 2: wrong_to_other_wrong
    # row 6: both say 1 (wrong): agreement, even though both are wrong
    artifact[3] = [0.0, 0.5, 0.5]  # uint8-style tie between classes 1 and 2; argmax picks 1
    result = compare(reference, artifact, labels)
    assert isinstance(result, Agreement)
    assert (result.total, result.agree, result.changed) == (8, 5, 3)
    assert result.rate == pytest.approx(5 / 8)
    assert (result.right_to_wrong, result.wrong_to_right, result.wrong_to_other_wrong) == (1, 1, 1)
    assert result.changed_ties == 1
    assert (result.lower, result.upper) == pytest.approx(wilson_by_hand(5, 8), abs=1e-12)


def test_ties_on_unchanged_answers_are_not_counted():
    labels = np.array([0, 1, 2])
    reference = _rows(0, 1, 1)
    artifact = np.array([
        [0.5, 0.5, 0.0],  # tie, argmax 0: agrees with the reference, not counted
        [0.25, 0.375, 0.375],  # tie, argmax 1: agrees, not counted
        [0.1, 0.2, 0.7],  # changed (1 -> 2) with a clear winner: wrong_to_right, not a tie
    ])
    result = compare(reference, artifact, labels)
    assert (result.agree, result.changed, result.changed_ties, result.wrong_to_right) == (2, 1, 0, 1)


def test_all_agree():
    labels = np.array([0, 1, 2, 2])
    probs = _rows(0, 1, 2, 1)
    result = compare(probs, probs.astype(np.float32), labels)
    assert (result.agree, result.changed, result.right_to_wrong, result.wrong_to_right,
            result.wrong_to_other_wrong, result.changed_ties) == (4, 0, 0, 0, 0, 0)
    assert result.upper == 1.0 and result.lower == pytest.approx(wilson_by_hand(4, 4)[0], abs=1e-12)


def test_uint8_softmax_ties_are_found():
    """A uint8 softmax (scale 1/256) rounds close probabilities onto the same step."""
    true_probs = np.array([[0.4990, 0.5010, 0.0], [0.2, 0.7, 0.1], [0.3330, 0.3336, 0.3334]])
    quantized = np.round(true_probs * 256) / 256
    assert tied_top(quantized).tolist() == [True, False, True]
    assert tied_top(true_probs).tolist() == [False, False, False]


def test_tied_top_single_class_and_bad_shape():
    assert tied_top(np.ones((3, 1))).tolist() == [False, False, False]
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        tied_top(np.ones(4))


def test_to_dict_is_plain_python():
    labels = np.array([0, 1, 2, 0])
    result = compare(_rows(0, 1, 2, 0).astype(np.float32), _rows(0, 1, 1, 0).astype(np.float16), labels)
    d = result.to_dict()
    assert d == {
        "total": 4, "agree": 3, "lower": pytest.approx(wilson_by_hand(3, 4)[0]),
        "upper": pytest.approx(wilson_by_hand(3, 4)[1]), "right_to_wrong": 1, "wrong_to_right": 0,
        "wrong_to_other_wrong": 0, "changed_ties": 0, "rate": 0.75, "changed": 1,
    }
    assert all(type(v) in (int, float) for v in d.values()), {k: type(v) for k, v in d.items()}


def test_to_dict_converts_numpy_numbers():
    """An Agreement built from numpy scalars (float32 bounds included) still serializes to plain JSON numbers."""
    result = Agreement(total=np.int64(10), agree=np.int32(9), lower=np.float32(0.5959), upper=np.float32(0.9821),
                       right_to_wrong=np.int64(1), wrong_to_right=np.int64(0), wrong_to_other_wrong=np.int64(0),
                       changed_ties=np.int64(1))
    d = result.to_dict()
    assert [type(d[k]) for k in ("total", "agree", "changed", "right_to_wrong", "changed_ties")] == [int] * 5
    assert [type(d[k]) for k in ("lower", "upper", "rate")] == [float] * 3
    assert d["lower"] == pytest.approx(0.5959, abs=1e-6) and d["rate"] == pytest.approx(0.9)
    json.dumps(d)


def test_agreement_is_frozen():
    result = compare(_rows(0), _rows(0), np.array([0]))
    with pytest.raises(AttributeError):
        result.agree = 0


@pytest.mark.parametrize("reference, artifact, labels, match", [
    (np.ones((4, 3)), np.ones((4, 2)), np.zeros(4, int), r"artifact_probs has shape \(4, 2\).*\(4, 3\)"),
    (np.ones((4, 3)), np.ones((5, 3)), np.zeros(4, int), r"artifact_probs has shape \(5, 3\)"),
    (np.ones(4), np.ones(4), np.zeros(4, int), r"reference_probs has shape \(4,\)"),
    (np.ones((0, 3)), np.ones((0, 3)), np.zeros(0, int), r"reference_probs has shape \(0, 3\)"),
    (np.ones((4, 3)), np.ones((4, 3)), np.zeros(3, int), r"labels has shape \(3,\); expected \(4,\)"),
    (np.ones((4, 3)), np.ones((4, 3)), np.zeros((4, 1), int), r"labels has shape \(4, 1\)"),
    (np.ones((4, 3)), np.ones((4, 3)), np.zeros(4), r"labels have dtype float64"),
    (np.ones((4, 3)), np.ones((4, 3)), np.array([0, 1, 3, 0]), r"labels range from 0 to 3.*0 to 2"),
    (np.ones((4, 3)), np.ones((4, 3)), np.array([0, -1, 2, 0]), r"labels range from -1 to 2"),
])
def test_compare_rejects_bad_input(reference, artifact, labels, match):
    with pytest.raises(ValueError, match=match):
        compare(reference, artifact, labels)


# --- estimated_agreement ---------------------------------------------------------------------------


def test_estimated_agreement_pairs_every_margin_with_every_perturbation():
    from edgevision.export.agreement import estimated_agreement

    reference = np.array([[0.7, 0.3], [0.6, 0.4], [0.9, 0.1]])
    assert estimated_agreement(reference, reference) == 1.0
    # Image 0 flips (its gap moves by log(3/7) - log(7/3) = -1.69); that move would also close image 1's
    # gap (log 1.5 = 0.41) but not image 2's (log 9 = 2.20): 2 of the 9 (margin, move) pairs change.
    candidate = np.array([[0.3, 0.7], [0.6, 0.4], [0.9, 0.1]])
    assert estimated_agreement(reference, candidate) == pytest.approx(7 / 9)
    # A move that narrows image 0's gap without closing it (-0.65) changes no answer there, but would close
    # image 1's smaller one: counting says 100%, the estimate 8/9.
    narrowed = np.array([[0.55, 0.45], [0.6, 0.4], [0.9, 0.1]])
    assert np.all(narrowed.argmax(1) == reference.argmax(1))
    assert estimated_agreement(reference, narrowed) == pytest.approx(8 / 9)
    with pytest.raises(ValueError, match=r"\(3, 2\) and candidate_probs \(2, 2\)"):
        estimated_agreement(reference, candidate[:2])
