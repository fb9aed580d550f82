"""Hostile but realistic inputs: a bundle.json edited wrong or mangled, random bytes as model files, random
bytes and odd real pictures through the one decoder. Each gets a clear error (or a correct answer),
never a traceback of another kind, a crash or a hang. Property-based where the space is large."""

from __future__ import annotations

import copy
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgevision.runtime.bundle import BUNDLE_FILE, MAX_BUNDLE_JSON_BYTES, Bundle, BundleError
from edgevision.runtime.preprocess import ImageDecodeError, PreprocessPolicy, decode_image, prepare

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.folder, folder)
    return folder


def _load_edited(folder: Path, edit) -> Bundle:
    data = json.loads((folder / BUNDLE_FILE).read_text())
    edit(data)
    (folder / BUNDLE_FILE).write_text(json.dumps(data))
    return Bundle.load(folder)


# --- bundle.json: the cases that used to end in tracebacks or silent nonsense ---


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(artifacts=list(d["artifacts"].values())),
     r"artifacts is \[.* \(list\); expected an object of at least one artifact by name"),
    (lambda d: d["artifacts"]["model_fp32.tflite"].update(metrics="passed"),
     r"artifacts\['model_fp32\.tflite'\].metrics is 'passed' \(str\); expected an object"),
    (lambda d: d.update(labels="abc"), r"labels is 'abc' \(str\); expected a list of at least 2 class names"),
    (lambda d: d["artifacts"].update({"model_fp32.tflite": "model_fp32.tflite"}),
     r"artifacts\['model_fp32\.tflite'\] is 'model_fp32.tflite' \(str\); expected an object"),
    (lambda d: d["artifacts"]["model_fp32.tflite"].update(bytes=str(d["artifacts"]["model_fp32.tflite"]["bytes"])),
     r"artifacts\['model_fp32\.tflite'\].bytes is '\d+' \(str\); expected the file size as an integer"),
    (lambda d: d["input"].update(width=64), r"input.width is 64 \(int\); expected preprocess.width \(32\)"),
    (lambda d: d.update(labels=["a", "b", "a"]), r"labels is \['a', 'b', 'a'\] \(list\); expected no repeated name"),
    (lambda d: d["artifacts"]["model_fp32.tflite"].update(file="../../etc/passwd"),
     r"artifacts\['model_fp32\.tflite'\].file is '../../etc/passwd' \(str\); expected a plain file name"),
    (lambda d: d.update(default_artifact="nope"), r"default_artifact is 'nope' \(str\); expected one of the artifacts"),
])
def test_each_malformed_field_is_one_clear_line(bundle_copy, edit, message):
    with pytest.raises(BundleError, match=message):
        _load_edited(bundle_copy, edit)


def test_several_problems_are_listed_together(bundle_copy):
    def edit(data):
        data["labels"] = "ab"
        data["artifacts"]["model.onnx"]["sha256"] = "XYZ"
        data["artifacts"]["model.onnx"]["format"] = "pt"

    with pytest.raises(BundleError) as caught:
        _load_edited(bundle_copy, edit)
    lines = str(caught.value).splitlines()
    assert lines[0] == "bundle.json has 3 problem(s):"
    assert any("model.onnx'].format is 'pt'" in line and "one of tflite, onnx" in line for line in lines)
    assert any("model.onnx'].sha256 is 'XYZ'" in line and "64 lowercase hex digits" in line for line in lines)


def test_deep_nesting_and_huge_files_are_refused_without_reading_them_whole(bundle_copy):
    (bundle_copy / BUNDLE_FILE).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(BundleError, match="nested too deeply"):
        Bundle.load(bundle_copy)
    with open(bundle_copy / BUNDLE_FILE, "wb") as handle:
        handle.truncate(MAX_BUNDLE_JSON_BYTES + 1)
    with pytest.raises(BundleError, match="a bundle.json is far smaller"):
        Bundle.load(bundle_copy)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(value, prefix=()):
    """Every key path in a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_bundle_json_is_loaded_or_refused_never_a_traceback(tiny_bundle, data):
    original = json.loads((tiny_bundle.folder / BUNDLE_FILE).read_text())
    mutated = copy.deepcopy(original)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(mutated) if p]
        path = data.draw(st.sampled_from(paths))
        parent = mutated
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(_json_values)
    try:
        bundle = Bundle.from_dict(mutated, folder=tiny_bundle.folder)
    except BundleError:
        return
    # Accepted: it must still be usable as far as bundle.json goes (the files' checks raise BundleError).
    for name in bundle.artifacts:
        try:
            bundle.verified_path(name)
        except BundleError:
            pass


# --- random bytes as model files (with bundle.json re-sealed to match), in a child process: a crash
# in an engine's parser would end the test run, not only this test ---

FUZZ_CHILD = r"""
import json, random, shutil, sys
from pathlib import Path
import numpy as np
from edgevision.runtime.bundle import BUNDLE_FILE, BundleError, file_sha256
from edgevision.runtime.classifier import Classifier
from edgevision.runtime.engines import EngineError

source, work = Path(sys.argv[1]), Path(sys.argv[2])
rng, outcomes = random.Random(0), {}
for trial in range(60):
    mode = ("random", "truncated", "flipped")[trial % 3]
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work)
    meta = json.loads((work / BUNDLE_FILE).read_text())
    name = rng.choice(sorted(meta["artifacts"]))
    path = work / meta["artifacts"][name]["file"]
    data = bytearray(path.read_bytes())
    if mode == "random":
        data = bytearray(rng.randbytes(rng.choice([0, 1, 8, 64, 4096, len(data)])))
    elif mode == "truncated":
        data = data[: rng.randrange(len(data))]
    else:
        for _ in range(rng.choice([1, 8, 64])):
            data[rng.randrange(len(data))] = rng.randrange(256)
    path.write_bytes(bytes(data))
    meta["artifacts"][name].update(sha256=file_sha256(path), bytes=len(data))
    (work / BUNDLE_FILE).write_text(json.dumps(meta))
    try:
        Classifier(work, artifact=name, threads=1, profile=None).classify(np.zeros((40, 40, 3), np.uint8))
        outcome = "ran"
    except (BundleError, EngineError) as refused:
        outcome = type(refused).__name__
    outcomes[f"{mode}:{outcome}"] = outcomes.get(f"{mode}:{outcome}", 0) + 1
print(json.dumps(outcomes))
"""


def test_random_bytes_as_model_files_are_refused_by_the_engine_never_a_crash(tiny_bundle, tmp_path):
    done = subprocess.run([sys.executable, "-c", FUZZ_CHILD, str(tiny_bundle.folder), str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    assert sum(outcomes.values()) == 60
    # Random and truncated files never load; a few flipped bytes may land in weights and still run.
    assert not any(key in outcomes for key in ("random:ran", "truncated:ran")), outcomes
    assert outcomes.get("random:EngineError") == 20, outcomes


# --- the one decoder: random bytes, and odd but real pictures ---


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096) | st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"RIFF\x00\x00\x00\x00WEBP"]).flatmap(
    lambda magic: st.binary(max_size=2048).map(lambda rest: magic + rest)))
def test_random_bytes_never_escape_the_decoder_as_anything_but_a_decode_error(data):
    try:
        image = decode_image(data, "fuzz.bin")
    except ImageDecodeError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def _encode(image: np.ndarray, fmt: str, orientation: int | None) -> bytes:
    if fmt == "jpeg" and orientation is not None:
        from PIL import Image

        buffer = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(image if image.ndim == 2 else image[:, :, :3]).save(buffer, "JPEG", exif=exif.tobytes())
        return buffer.getvalue()
    ok, encoded = cv2.imencode({"jpeg": ".jpg", "png": ".png", "bmp": ".bmp", "webp": ".webp"}[fmt], image)
    assert ok
    return encoded.tobytes()


@settings(max_examples=120, deadline=None)
@given(height=st.integers(1, 300), width=st.integers(1, 300), channels=st.sampled_from([1, 3, 4]),
       depth=st.sampled_from(["uint8", "uint16"]), fmt=st.sampled_from(["jpeg", "png", "bmp", "webp"]),
       orientation=st.none() | st.integers(1, 8), seed=st.integers(0, 2**16),
       policy=st.sampled_from([PreprocessPolicy(32, 32), PreprocessPolicy(24, 40, "squash", "area")]))
def test_real_pictures_of_any_size_mode_depth_and_orientation_decode_and_prepare(height, width, channels, depth, fmt,
                                                                                  orientation, seed, policy):
    if depth == "uint16" and fmt != "png":
        depth = "uint8"  # only PNG keeps 16 bits
    if fmt == "jpeg" and channels == 4:
        channels = 3
    shape = (height, width) if channels == 1 else (height, width, channels)
    high = 65536 if depth == "uint16" else 256
    image = np.random.default_rng(seed).integers(0, high, shape).astype(depth)
    if orientation is not None and fmt == "jpeg":
        image = image.astype(np.uint8)
    decoded = decode_image(_encode(image, fmt, orientation if fmt == "jpeg" else None), f"x.{fmt}")
    rotated = orientation in (5, 6, 7, 8) and fmt == "jpeg"
    assert decoded.dtype == np.uint8 and decoded.shape == ((width, height, 3) if rotated else (height, width, 3))
    prepared = prepare(decoded, policy)
    assert prepared.dtype == np.uint8 and prepared.shape == (policy.height, policy.width, 3)
