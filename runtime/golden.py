"""Golden predictions: a few held-out inputs at model size with each artifact's answers on the export
machine, stored in the bundle, replayed on a device by `edgevision verify`.

The file (golden.npz, numpy only, no pickles) holds `images` (N, H, W, 3) uint8 RGB, already prepared,
so a device feeds exactly the export machine's pixels and only the engine can differ; `labels`, the
true classes; and per artifact its probabilities (N, classes) float32 under the artifact's name. The
bundle.json entry carries its size and sha256 like an artifact's.

Engines on different CPUs do not give bit-identical answers: other instruction sets sum in another
order, and TensorRT may compute fp32 layers in TF32, so each float precision allows every image a small
probability difference. int8 differs more: kernels for other CPUs round intermediate values differently,
and on the few images near a decision boundary one step of rounding moves the answer (MobileNetV2 demo,
x86-64 with AVX-512 VNNI against arm64: 29 of 32 images within 0.01, the other three 0.06 to 0.30 apart,
in both directions from the fp32 answer). So a quantized artifact passes when most images agree closely.
Wrong input quantization, a broken model or a broken engine move most images by tenths and fail either
way.
"""

from __future__ import annotations

import os
import platform
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .bundle import Bundle, BundleError, file_sha256

GOLDEN_FILE = "golden.npz"


@dataclass(frozen=True)
class Tolerance:
    """An image agrees when no class probability differs by more than `prob_diff`; the artifact passes
    when at least `share` of the images agree."""

    prob_diff: float
    share: float = 1.0

    def describe(self) -> str:
        every = "every image" if self.share >= 1 else f"{self.share:.0%} of images"
        return f"{every} within {self.prob_diff:g}"


# Per artifact precision (see the module docstring for why quantized ones allow a few outliers).
TOLERANCES = {"fp32": Tolerance(2e-3), "fp16": Tolerance(1e-2), "dynamic_int8": Tolerance(5e-2, 0.8),
              "int8": Tolerance(5e-2, 0.8)}
MAX_GOLDEN_BYTES = 64 << 20  # a golden file this big is not one export wrote


@dataclass(frozen=True)
class GoldenSet:
    images: np.ndarray  # (N, H, W, 3) uint8, prepared
    labels: np.ndarray  # (N,) true classes
    probs: dict[str, np.ndarray]  # artifact name -> (N, classes) float32 on the export machine


def computed_on() -> dict:
    """Where the golden answers were computed: the machine and the engines' versions."""
    versions = {}
    for module, name in (("ai_edge_litert", "ai-edge-litert"), ("onnxruntime", "onnxruntime")):
        try:
            versions[name] = __import__(module).__version__
        except (ImportError, AttributeError):
            pass
    return {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
            "numpy": np.__version__, **versions}


def golden_entry(folder: Path, artifacts: list[str], computed_on: dict) -> dict:
    """bundle.json's `golden` entry for the golden file written in `folder`."""
    path = folder / GOLDEN_FILE
    with np.load(path, allow_pickle=False) as data:
        count = int(len(data["images"]))
    return {"file": GOLDEN_FILE, "sha256": file_sha256(path), "bytes": path.stat().st_size, "images": count,
            "artifacts": list(artifacts), "computed_on": computed_on}


def write_golden(folder: Path, images: np.ndarray, labels: np.ndarray, probs: dict[str, np.ndarray]) -> Path:
    path = folder / GOLDEN_FILE
    with open(path, "wb") as handle:
        np.savez_compressed(handle, images=images, labels=labels.astype(np.int64),
                            **{name: p.astype(np.float32) for name, p in probs.items()})
    return path


def load_golden(bundle: Bundle) -> GoldenSet:
    """The bundle's golden set, checked against bundle.json (size, sha256, shapes) before it is parsed."""
    entry = bundle.golden
    if not entry:
        raise BundleError("This bundle has no golden predictions (exported by an older edgevision): export it "
                          "again to verify it on a device")
    if not isinstance(entry, dict):
        raise BundleError(f"bundle.json's golden entry is malformed: {entry!r}")
    if bundle.folder is None:
        raise BundleError("This bundle was not loaded from a folder; it has no golden file to read")
    path = bundle.folder / str(entry.get("file", ""))
    if os.path.basename(str(entry.get("file", ""))) != entry.get("file") or not path.is_file():
        raise BundleError(f"Golden file '{path}' is missing")
    size = path.stat().st_size
    if size != entry.get("bytes") or size > MAX_GOLDEN_BYTES:
        raise BundleError(f"Golden file '{path}' is {size} bytes, bundle.json says {entry.get('bytes')}")
    if file_sha256(path) != entry.get("sha256"):
        raise BundleError(f"Golden file '{path}' does not match its sha256 in bundle.json: modified or corrupt")
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
            probs = {name: data[name] for name in data.files if name not in ("images", "labels")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as bad:
        raise BundleError(f"Golden file '{path}' cannot be read: {bad}") from None
    policy = bundle.preprocess
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (policy.height, policy.width, 3) \
            or len(images) == 0:
        raise BundleError(f"Golden file '{path}' holds {images.dtype} images of shape {images.shape}; the bundle "
                          f"takes uint8 (N, {policy.height}, {policy.width}, 3) with N >= 1")
    if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
        raise BundleError(f"Golden file '{path}' holds {labels.dtype} labels of shape {labels.shape}; expected "
                          f"{len(images)} integer labels")
    for name, p in probs.items():
        if p.dtype != np.float32 or p.shape != (len(images), len(bundle.labels)):
            raise BundleError(f"Golden file '{path}': the answers of {name!r} are {p.dtype} of shape {p.shape}, "
                              f"expected float32 ({len(images)}, {len(bundle.labels)})")
    return GoldenSet(images=images, labels=labels, probs=probs)


def golden_probs(classifier, images: np.ndarray) -> np.ndarray:
    """Probabilities one image at a time: how the camera loop runs, and how export and verify both compute
    them (a batch may take other kernels than batch 1)."""
    return np.concatenate([classifier.predict(images[i : i + 1]) for i in range(len(images))])


@dataclass
class VerifyResult:
    artifact: str
    precision: str
    engine: str | None
    tolerance: Tolerance
    images: int = 0
    labels_equal: int = 0
    # Images whose every class probability is within tolerance.prob_diff of the export machine's.
    within: int = 0
    max_prob_diff: float | None = None
    passed: bool = False
    seconds: float = 0.0
    # Why the artifact was not compared (engine missing, file damaged); None when it ran.
    error: str | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        head = f"{self.artifact} ({self.precision}{', ' + self.engine if self.engine else ''})"
        if self.error:
            return f"{head}: FAIL: {self.error}"
        verdict = "pass" if self.passed else "FAIL"
        return (f"{head}: labels equal {self.labels_equal}/{self.images}, max prob diff {self.max_prob_diff:.1e}, "
                f"{self.within}/{self.images} within {self.tolerance.prob_diff:g} (needs "
                f"{'all' if self.tolerance.share >= 1 else format(self.tolerance.share, '.0%')}) -> {verdict}")


def compare_answers(device: np.ndarray, reference: np.ndarray, tolerance: Tolerance) -> dict:
    """Labels equal, the largest probability difference, how many images are within the tolerance, and
    whether enough are. An engine that outputs NaN or infinity on any image fails, however few."""
    finite = np.isfinite(device).all(axis=1)
    per_image = np.abs(device.astype(np.float64) - reference.astype(np.float64)).max(axis=1)
    within = int(((per_image <= tolerance.prob_diff) & finite).sum())
    return {
        "labels_equal": int(((device.argmax(axis=1) == reference.argmax(axis=1)) & finite).sum()),
        "max_prob_diff": float(per_image.max()) if len(per_image) else float("nan"),  # NaN if any is
        "within": within,
        "passed": bool(len(per_image) > 0 and finite.all()
                       and within >= np.ceil(tolerance.share * len(per_image) - 1e-9)),
    }


def verify_artifact(bundle: Bundle, name: str, golden: GoldenSet, *, engine: str | None = None,
                    threads: int | None = None, tolerance: Tolerance | None = None, profile=None) -> VerifyResult:
    """Replay the golden images through one artifact with this machine's engine and compare."""
    from .classifier import Classifier
    from .engines import EngineError, EngineUnavailableError

    artifact = bundle.artifact(name)
    tol = tolerance or TOLERANCES.get(artifact.precision, TOLERANCES["int8"])
    result = VerifyResult(artifact=name, precision=artifact.precision, engine=None, tolerance=tol)
    reference = golden.probs.get(name)
    if reference is None:
        result.error = "the golden file has no answers for this artifact"
        return result
    started = time.perf_counter()
    try:
        classifier = Classifier(bundle, artifact=name, engine=engine, threads=threads, profile=profile)
    except (EngineUnavailableError, EngineError, BundleError, ValueError) as error:
        result.error = str(error)
        return result
    result.engine = classifier.engine.name
    try:
        probs = golden_probs(classifier, golden.images)
    except (EngineError, RuntimeError, ValueError) as error:
        result.error = f"the engine failed on the golden images: {error}"
        return result
    result.images = len(probs)
    for key, value in compare_answers(probs, reference, tol).items():
        setattr(result, key, value)
    result.seconds = time.perf_counter() - started
    per_image = np.abs(probs - reference).max(axis=1)
    result.details = {"worst_image": int(per_image.argmax()),
                      "true_label_accuracy": float((probs.argmax(axis=1) == golden.labels).mean())}
    return result


def verify_bundle(bundle: Bundle | str | os.PathLike, artifacts: str | None = None, *, engine: str | None = None,
                  threads: int | None = None, tolerance: float | None = None, profile=None) -> list[VerifyResult]:
    """Verify `artifacts` of a bundle on this machine: one name, "all", or None for the one the device
    would run (the profile's choice, else the bundle's default). tolerance: a probability difference
    every image must stay within, instead of the per-precision TOLERANCES."""
    from .classifier import artifact_names, resolve_profile

    from .engines import check_engine_name, check_threads

    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    golden = load_golden(bundle)
    profile = resolve_profile(profile)
    if engine is not None:  # a bad argument, not a failed artifact
        check_engine_name(engine)
    check_threads(threads)
    if tolerance is not None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance <= 1:
            raise ValueError(f"tolerance {tolerance!r} is invalid; use a probability difference in (0, 1]")
        tolerance = Tolerance(float(tolerance))
    names = artifact_names(bundle, artifacts, profile, engine)
    return [verify_artifact(bundle, name, golden, engine=engine, threads=threads, tolerance=tolerance,
                            profile=profile) for name in names]
