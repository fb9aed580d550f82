"""Mixed precision for int8 artifacts: when full int8 changes too many answers, keep the fewest ops in
float, counted from the input, until it agrees with the trained model on the search images.

    result = search_float_ops(quantize, agreement_of, ops_in_graph_order, target=0.98, max_bytes=cap)

`quantize(keep_float)` writes a model with those ops in float; `agreement_of(content)` is its top-1
agreement with the trained model on the search images (the run's validation images: never the held-out
ones, which the gate uses once, afterwards). The search tries full int8, then the first 1, 2, 4, 8, ...
ops in float until one passes, then bisects down to the fewest that pass.

Why ops from the input: an op's rounding error is carried and amplified by every op after it, and after
BatchNorm folding the first convolutions of a MobileNet carry large weights that nearly cancel on flat
image regions. Measured on an EfficientNet-Lite0 head model (2,000 held-out images): int8 weights in the
first depthwise convolution alone changed 3.8% of the answers; keeping the first 8 ops in float took the
held-out agreement from 94.5% to 98.6% for 10 KB more. Ranking ops by their own error instead (TFLite's
QuantizationDebugger) put the 1.2 MB top convolution fifth and ran into the size cap at 96%.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence


class PrecisionSearchError(RuntimeError):
    """No mix of int8 and float ops within the size cap reached the agreement target."""


@dataclass(frozen=True)
class SearchResult:
    """The chosen model: its bytes, the ops kept in float, its agreement on the search images, and every
    candidate tried (float ops, agreement, bytes) in the order tried."""

    content: bytes
    keep_float: tuple[str, ...]
    agreement: float
    tried: tuple[dict, ...] = field(default_factory=tuple)


# The number of search images at which the minimum margin was measured to suffice (below).
MARGIN_MEASURED_AT = 100


def search_target(gate: float, images: int, minimum_margin: float) -> float:
    """The agreement the search aims for on `images` search images so that the held-out gate is met: the gate
    plus `minimum_margin`, grown as 1 / sqrt(images) below MARGIN_MEASURED_AT images, at most 1.

    The search images decide the answer, so their estimate of the chosen candidate is optimistic (it is the
    first that looked good enough), and the fewer they are, the more. Measured on three models with 100 or
    500 validation images and 2,000 or more held-out ones: the chosen candidates lost 0.35 to 1.07 points
    between the two, and one 1.6 (which its gate refused; docs/measured.md). The estimate's error grows as
    1 / sqrt(images): at a 98% gate and a 1-point margin, 1.4 points at 50 images, 100% from 25 down."""
    if images < 1:
        raise ValueError(f"images {images!r} is invalid; the search needs at least one image")
    return min(1.0, gate + minimum_margin * max(1.0, (MARGIN_MEASURED_AT / images) ** 0.5))


# Where full int8 is already larger than the size cap (small models: per-channel scales and int32 biases
# weigh more; 0.33-0.39x fp32 for MobileNetV2 0.35 at 64 px), the float ops may still add this fraction.
GROWTH_OVER_FULL_INT8 = 0.05


def search_float_ops(quantize: Callable[[Sequence[str]], bytes], agreement_of: Callable[[bytes], float],
                     ops: Sequence[str], *, target: float, max_bytes: int) -> SearchResult:
    """The smallest k such that the first k of `ops` in float reach `target` agreement, if that model fits
    in `max_bytes`, or in GROWTH_OVER_FULL_INT8 more than full int8 where that is larger (see the module
    docstring). Deterministic for deterministic callables. Raises PrecisionSearchError naming every
    candidate tried when none passes."""
    if not 0 < target <= 1:
        raise ValueError(f"target {target!r} is invalid; use an agreement rate in (0, 1]")
    tried: list[dict] = []
    results: dict[int, tuple[bytes, float]] = {}

    def agrees(k: int) -> bool:
        if k not in results:
            content = quantize(tuple(ops[:k]))
            rate = float(agreement_of(content))
            results[k] = (content, rate)
            tried.append({"float_ops": k, "agreement": round(rate, 4), "bytes": len(content)})
        return results[k][1] >= target

    # Double the float ops until the agreement is reached, then bisect down to the fewest that reach it
    # (agreement grows about monotonically with them); the size is checked on that one, as it only grows.
    failed, k = -1, 0
    while not agrees(k):
        if k == len(ops):
            best = max(results, key=lambda n: results[n][1])
            raise PrecisionSearchError(
                f"no mix of int8 and float ops reached {target:.1%} agreement on the search images; tried "
                f"{_describe(tried)}; the best was {results[best][1]:.2%} with {best} ops in float")
        failed, k = k, min(max(1, 2 * k), len(ops))
    while k - failed > 1:
        middle = (failed + k) // 2
        if agrees(middle):
            k = middle
        else:
            failed = middle
    max_bytes = max(max_bytes, int(len(results[0][0]) * (1 + GROWTH_OVER_FULL_INT8)))
    if len(results[k][0]) > max_bytes:
        raise PrecisionSearchError(
            f"{target:.1%} agreement on the search images takes the first {k} ops in float, "
            f"{len(results[k][0]) / 1e6:.2f} MB, over the {max_bytes / 1e6:.2f} MB cap; tried {_describe(tried)}")
    return _result(results, k, ops, tried)


def _result(results: dict, k: int, ops: Sequence[str], tried: list[dict]) -> SearchResult:
    content, rate = results[k]
    return SearchResult(content, tuple(ops[:k]), rate, tuple(tried))


def _describe(tried: list[dict]) -> str:
    return ", ".join(f"{t['float_ops']} in float: {t['agreement']:.2%} ({t['bytes'] / 1e6:.2f} MB)" for t in tried)
