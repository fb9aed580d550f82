"""The Classifier: a bundle's model, opened once, fed through the one preprocessing path.

    clf = Classifier("bundle/", top_k=3)
    prediction = clf.classify(frame)            # an OpenCV BGR frame of any size
    prediction.label, prediction.score, prediction.top_k

The artifact's bytes are checked against bundle.json (size and sha256) before any engine parses them.
Which artifact and engine: the ones asked for, else the first of the device profile's preferences that
the bundle has (and that passed its parity gate, with its engine installed), else the bundle's default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from edgevision.devices.profiles import DeviceProfile, detect_profile, load_profile

from .bundle import Artifact, Bundle, BundleError
from .engines import ENGINES, Engine, engine_available, open_engine, resolve_engine
from .preprocess import PreprocessPolicy, load_and_prepare, prepare


def resolve_profile(profile: DeviceProfile | str | None) -> DeviceProfile | None:
    """A profile, a profile name, "auto" (this machine's profile, or None when unknown) or None."""
    if profile is None or isinstance(profile, DeviceProfile):
        return profile
    if profile == "auto":
        return detect_profile()
    return load_profile(profile)


def choose_artifact(bundle: Bundle, profile: DeviceProfile | None, engine: str | None = None) -> tuple[str, str]:
    """(artifact name, why): the profile's first preference the bundle can serve, else the bundle default.

    An artifact is eligible when it did not fail its parity gate at export, the engine asked for (or its
    format's default engine) can read it, and that engine is installed."""
    if profile is not None:
        for preference in profile.artifacts:
            fmt, precision = preference.split(":")
            for name, art in bundle.artifacts.items():
                if art.format != fmt or art.precision != precision or art.metrics.get("passed") is False:
                    continue
                if engine is not None and (engine not in ENGINES or fmt not in ENGINES[engine].formats):
                    continue
                if engine_available(resolve_engine(art, engine)):
                    return name, f"profile {profile.name} prefers {preference}"
    return bundle.default_artifact, "bundle default"


def artifact_names(bundle: Bundle, which: str | None, profile: DeviceProfile | None,
                   engine: str | None = None) -> list[str]:
    """The artifacts a command works on: one name, "all", or None for the one `run` would pick here."""
    if which == "all":
        return list(bundle.artifacts)
    if which:
        return [bundle.artifact_key(which)]  # BundleError naming the bundle's artifacts
    return [choose_artifact(bundle, profile, engine)[0]]


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float
    # The best classes, best first: [(label, score), ...], top_k long.
    top_k: list[tuple[str, float]]


class Classifier:
    """Classify pictures with one artifact of a bundle.

    bundle: a loaded Bundle or its folder. artifact: the artifact's name in bundle.json (default: the
    bundle's default artifact). engine: "litert" or "onnxruntime" (default: the one for the artifact's
    format). threads: CPU threads for the engine (default: the profile's, else all usable cores). top_k:
    how many classes each Prediction lists. profile: a DeviceProfile, its name, or "auto" (detect this
    machine); it picks the artifact when none is given, the threads, delegate and onnxruntime providers.
    delegate: a LiteRT delegate ("edgetpu", "gpu" or a library path); refused clearly when absent.
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike,
        artifact: str | None = None,
        engine: str | None = None,
        threads: int | None = None,
        top_k: int = 1,
        *,
        profile: DeviceProfile | str | None = None,
        delegate: str | None = None,
    ):
        if not isinstance(bundle, Bundle):
            bundle = Bundle.load(bundle)
        self._bundle = bundle
        self._profile = resolve_profile(profile)
        if artifact:
            # BundleError naming the bundle's artifacts; a kind name (tflite_int8) becomes its key
            self._artifact_name, self.selection = bundle.artifact_key(artifact), "asked for"
        else:
            self._artifact_name, self.selection = choose_artifact(bundle, self._profile, engine)
        self._artifact = bundle.artifact(self._artifact_name)
        n_labels = len(bundle.labels)
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= n_labels:
            raise ValueError(f"top_k {top_k!r} is invalid; use an integer from 1 to {n_labels} (the number of labels)")
        self._top_k = int(top_k)
        engine_name = resolve_engine(self._artifact, engine)  # ValueError naming a bad engine, before any I/O
        path = bundle.verified_path(self._artifact_name)  # size + sha256, before an engine parses the file
        if self._profile is not None:
            threads = threads if threads is not None else self._profile.threads
            delegate = delegate or (self._profile.delegate if engine_name == "litert" else None)
        providers = self._profile.onnx_providers if self._profile is not None else None
        self._engine = open_engine(path, self._artifact, engine_name, threads, delegate=delegate,
                                   providers=providers or None, interface=bundle.interface)
        policy = bundle.preprocess
        height, width = self._engine.input_hw
        if (height is not None and height != policy.height) or (width is not None and width != policy.width):
            raise BundleError(
                f"'{path}' takes {height}x{width} input but bundle.json's preprocessing makes "
                f"{policy.height}x{policy.width}"
            )
        classes = self._engine.num_classes
        if classes is not None and classes != n_labels:
            raise BundleError(f"'{path}' outputs {classes} classes but bundle.json has {n_labels} labels")

    @property
    def bundle(self) -> Bundle:
        return self._bundle

    @property
    def labels(self) -> list[str]:
        return list(self._bundle.labels)

    @property
    def artifact(self) -> Artifact:
        return self._artifact

    @property
    def artifact_name(self) -> str:
        return self._artifact_name

    @property
    def policy(self) -> PreprocessPolicy:
        return self._bundle.preprocess

    @property
    def profile(self) -> DeviceProfile | None:
        return self._profile

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def top_k(self) -> int:
        return self._top_k

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) float32 for an already-prepared (N, H, W, 3) uint8 RGB batch."""
        policy = self.policy
        if (
            not isinstance(images, np.ndarray)
            or images.dtype != np.uint8
            or images.ndim != 4
            or images.shape[1:] != (policy.height, policy.width, 3)
        ):
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
            raise ValueError(
                f"predict() takes prepared uint8 batches of shape (N, {policy.height}, {policy.width}, 3), got {got}; "
                "use classify() for pictures of any size"
            )
        return self._engine.run(images)

    def classify(self, frame: np.ndarray, channel_order: str = "bgr") -> Prediction:
        """Classify one picture of any size: an OpenCV frame ("bgr", the default) or an RGB array ("rgb")."""
        return self._prediction(self.scores(frame, channel_order))

    def scores(self, frame: np.ndarray, channel_order: str = "bgr") -> np.ndarray:
        """Class probabilities (classes,) float32 for one picture of any size (what classify() ranks)."""
        return self.predict(prepare(frame, self.policy, channel_order)[None])[0]

    def prediction(self, probs: np.ndarray) -> Prediction:
        """The Prediction (label, score, top_k) for a probability vector, e.g. smoothed scores."""
        return self._prediction(probs)

    def classify_file(self, path: str | os.PathLike) -> Prediction:
        """Classify an image file (JPEG, PNG, BMP, WebP)."""
        return self._prediction(self.predict(load_and_prepare(path, self.policy)[None])[0])

    def _prediction(self, probs: np.ndarray) -> Prediction:
        if self._top_k == 1:
            order = [int(probs.argmax())]  # the per-frame common case: no sort
        else:
            order = np.argsort(-probs, kind="stable")[: self._top_k]  # ties: the lower index first, as argmax
        labels = self._bundle.labels
        top = [(labels[i], float(probs[i])) for i in order]
        return Prediction(label=top[0][0], index=int(order[0]), score=top[0][1], top_k=top)

    def __repr__(self) -> str:
        return (
            f"Classifier(artifact={self._artifact_name!r}, engine={self._engine.name!r}, "
            f"labels={len(self._bundle.labels)})"
        )
