"""`edgevision import`: classifiers made elsewhere become bundles that give the same answers through the
runtime as when run by hand, with what the file says read and used, and bad input refused before anything
is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgevision.runtime.bundle import Bundle, BundleError
from edgevision.runtime.classifier import Classifier
from edgevision.runtime.golden import verify_bundle
from edgevision.runtime.importer import ImportOptions, ModelImportError, import_model
from edgevision.runtime.model_io import ModelInterface, Normalization

from conftest import realish_image
from tflite_metadata import with_metadata

LABELS = ["cat", "dog", "bird", "fish"]
H, W = 64, 128  # non-square on purpose


def _keras_model(height: int, width: int, softmax: bool, seed: int = 3):
    """A small CNN that takes normalized input (no normalization in the graph)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((height, width, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(len(LABELS), activation="softmax" if softmax else None)(x)
    return keras.Model(inputs, x)


def _photos(folder: Path, count: int = 6) -> list[Path]:
    """Pictures at exactly the model's aspect ratio (2:1), so preparing them is a plain resize by hand too."""
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"photo{i}.png"
        cv2.imwrite(str(path), realish_image(rng, 2 * H, 2 * W))
        paths.append(path)
    return paths


def _by_hand(path: Path) -> np.ndarray:
    """A photo resized to the model's size, RGB float: what a user feeding the model by hand does."""
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (W, H), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def nchw_onnx(tmp_path_factory) -> tuple[Path, object]:
    """A Keras model converted to NCHW ONNX (tf2onnx, inputs_as_nchw), normalization outside the graph
    ((pixel - 127.5) / 127.5), a 64x128 input and logits out."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf2onnx

    model = _keras_model(H, W, softmax=False)
    signature = [tf.TensorSpec((None, H, W, 3), tf.float32, name="image")]

    @tf.function(input_signature=signature)
    def forward(image):
        return model(image, training=False)

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=signature, opset=17, inputs_as_nchw=["image:0"])
    path = tmp_path_factory.mktemp("onnx") / "classifier.onnx"
    path.write_bytes(proto.SerializeToString())
    return path, model


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("\n".join(LABELS) + "\n")
    return path


def test_nchw_onnx_with_outside_normalization_gives_the_answers_it_gives_by_hand(nchw_onnx, labels_file, tmp_path):
    import onnxruntime as ort

    path, keras_model = nchw_onnx
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert list(session.get_inputs()[0].shape)[1:] == [3, H, W]
    result = import_model(path, tmp_path / "bundle", ImportOptions(labels=labels_file, mean=(127.5,), std=(127.5,)))
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.schema_version == 2 and bundle.labels == LABELS
    assert (bundle.preprocess.height, bundle.preprocess.width) == (H, W)
    assert bundle.interface == ModelInterface("NCHW", "RGB", Normalization(127.5, 127.5), "logits")
    assert result.notes[0].startswith("output: logits")
    classifier = Classifier(tmp_path / "bundle")
    for photo in _photos(tmp_path / "photos"):
        normalized = (_by_hand(photo) - 127.5) / 127.5
        logits = session.run(None, {session.get_inputs()[0].name: normalized.transpose(2, 0, 1)[None]})[0]
        expected = _softmax(logits)[0]
        np.testing.assert_allclose(classifier.scores(cv2.imread(str(photo))), expected, atol=1e-5)
        # ... and the same as the Keras model it came from
        np.testing.assert_allclose(_softmax(np.asarray(keras_model(normalized[None]))), expected[None], atol=1e-4)
        prediction = classifier.classify_file(photo)
        assert prediction.label == LABELS[int(expected.argmax())]
    assert all(r.passed for r in verify_bundle(tmp_path / "bundle"))


def test_bgr_models_get_their_channels_reversed(nchw_onnx, labels_file, tmp_path):
    import onnxruntime as ort

    path, _ = nchw_onnx
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    import_model(path, tmp_path / "bundle", ImportOptions(labels=labels_file, mean=(100, 110, 120), std=(50, 60, 70),
                                                          channel_order="bgr"))
    classifier = Classifier(tmp_path / "bundle")
    photo = _photos(tmp_path / "photos", 1)[0]
    bgr = _by_hand(photo)[..., ::-1]
    normalized = (bgr - np.float32([100, 110, 120])) / np.float32([50, 60, 70])
    logits = session.run(None, {session.get_inputs()[0].name: normalized.transpose(2, 0, 1)[None]})[0]
    np.testing.assert_allclose(classifier.classify_file(photo).score, _softmax(logits)[0].max(), atol=1e-5)


@pytest.fixture(scope="module")
def metadata_tflite(tmp_path_factory) -> tuple[Path, object]:
    """A float TFLite classifier (probabilities out, input in [-1, 1]) carrying TFLite Model Metadata as
    Model Maker writes it: normalization 127.5 / 127.5, RGB, labels packed in the file."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    model = _keras_model(H, W, softmax=True, seed=4)
    content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    path = tmp_path_factory.mktemp("tflite") / "classifier.tflite"
    path.write_bytes(with_metadata(content, [127.5] * 3, [127.5] * 3, LABELS))
    return path, model


def test_tflite_metadata_supplies_labels_and_normalization(metadata_tflite, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    path, keras_model = metadata_tflite
    import_model(path, tmp_path / "bundle")  # no flags: everything comes from the file
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.labels == LABELS
    assert bundle.interface == ModelInterface("NHWC", "RGB", Normalization(127.5, 127.5), "probabilities")
    assert bundle.provenance["imported"]["read_from_file"]["tflite_metadata"]["labels_file"] == "labels.txt"
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    classifier = Classifier(tmp_path / "bundle")
    for photo in _photos(tmp_path / "photos"):
        normalized = (_by_hand(photo)[None] - 127.5) / 127.5
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], normalized)
        interpreter.invoke()
        expected = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
        np.testing.assert_allclose(classifier.scores(cv2.imread(str(photo))), expected, atol=1e-5)
        np.testing.assert_allclose(np.asarray(keras_model(normalized))[0], expected, atol=1e-4)


def test_quantized_tflite_takes_pixels_as_they_are(tmp_path):
    """A full-integer model with uint8 input (scale 1/127.5, zero-point 127: the float model's [-1, 1])
    is fed raw pixels, as TFLite's own image classifiers feed it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    model = _keras_model(H, W, softmax=True, seed=5)
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(16):
            yield [(realish_image(rng, H, W)[None].astype(np.float32) - 127.5) / 127.5]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.uint8
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": the pixels are the input
        warnings.simplefilter("ignore", UserWarning)
        content = converter.convert()
    path = tmp_path / "quantized.tflite"
    path.write_bytes(with_metadata(content, [127.5] * 3, [127.5] * 3, LABELS))
    import_model(path, tmp_path / "bundle")
    classifier = Classifier(tmp_path / "bundle")
    assert classifier.artifact.precision == "int8" and classifier.engine.input_conversion == "raw"
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    out = interpreter.get_output_details()[0]
    scale, zero = out["quantization"]
    for photo in _photos(tmp_path / "photos", 3):
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], _by_hand(photo).astype(np.uint8)[None])
        interpreter.invoke()
        expected = (interpreter.get_tensor(out["index"])[0].astype(np.float32) - zero) * scale
        np.testing.assert_allclose(classifier.classify_file(photo).score, expected.max(), atol=1e-6)


def _onnx_model(path: Path, outputs: int = 1, output_shape=("N", 4), input_shape=("N", 3, H, W),
                metadata: dict | None = None, input_type: int | None = None) -> Path:
    """A small ONNX graph written with onnx.helper: NCHW float input -> Conv -> pooling -> Gemm (logits)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    conv_w = numpy_helper.from_array(rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32), "conv_w")
    head_w = numpy_helper.from_array(rng.normal(0, 0.5, (6, 4)).astype(np.float32), "head_w")
    nodes = [helper.make_node("Conv", ["image", "conv_w"], ["conv"], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "head_w"], ["logits"])]
    graph_outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(output_shape))]
    if output_shape != ("N", 4):
        nodes[-1] = helper.make_node("Gemm", ["flat", "head_w"], ["scores"])
        nodes.append(helper.make_node("Reshape", ["scores", "shape"], ["logits"]))
    initializers = [conv_w, head_w]
    if output_shape != ("N", 4):
        initializers.append(numpy_helper.from_array(np.array([-1, 4, 1, 1], np.int64), "shape"))
    if outputs == 2:
        nodes.append(helper.make_node("Identity", ["flat"], ["features"]))
        graph_outputs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 6]))
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info(
        "image", input_type or TensorProto.FLOAT, list(input_shape))], graph_outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())
    return path


def test_ultralytics_metadata_gives_labels_size_and_scaling(tmp_path):
    """Ultralytics' classify export: names and imgsz in the ONNX metadata, input scaled to 0-1, and here
    an input size left open, which imgsz fills."""
    import onnxruntime as ort

    path = _onnx_model(tmp_path / "yolo-cls.onnx", input_shape=("N", 3, "H", "W"),
                       metadata={"author": "Ultralytics", "names": str(dict(enumerate(LABELS))),
                                 "imgsz": f"[{H}, {W}]", "task": "classify"})
    import_model(path, tmp_path / "bundle")
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.labels == LABELS and (bundle.preprocess.height, bundle.preprocess.width) == (H, W)
    assert bundle.interface.normalization == Normalization(0.0, 255.0) and bundle.interface.output == "logits"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    photo = _photos(tmp_path / "photos", 1)[0]
    logits = session.run(None, {"image": (_by_hand(photo) / 255.0).transpose(2, 0, 1)[None]})[0]
    np.testing.assert_allclose(Classifier(bundle).classify_file(photo).score, _softmax(logits)[0].max(), atol=1e-5)


def test_the_cli_imports_and_run_evaluate_verify_accept_the_bundle(nchw_onnx, labels_file, tmp_path):
    path, _ = nchw_onnx
    bundle = tmp_path / "bundle"
    cli = [sys.executable, "-m", "edgevision.cli"]
    done = subprocess.run(cli + ["import", str(path), "--out", str(bundle), "--labels", str(labels_file),
                                 "--mean", "127.5", "--std", "127.5"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "NCHW" in done.stdout and "logits out" in done.stdout and done.stderr == ""
    photos = tmp_path / "test"
    for label in LABELS[:2]:
        _photos(photos / label, 2)
    verify = subprocess.run(cli + ["verify", str(bundle)], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and "-> pass" in verify.stdout, verify.stdout + verify.stderr
    evaluate = subprocess.run(cli + ["evaluate", str(bundle), str(photos), "--json"], capture_output=True, text=True,
                              timeout=120)
    assert evaluate.returncode == 0, evaluate.stderr
    assert json.loads(evaluate.stdout)["artifacts"][0]["images"] == 4
    run = subprocess.run(cli + ["run", str(bundle), "--source", str(photos)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    frames = [line for line in lines if "label" in line]
    assert len(frames) == 4 and all(line["label"] in LABELS for line in frames)
    assert lines[-1]["summary"]["frames"] == 4


def test_an_imported_bundle_deploys(metadata_tflite, tmp_path):
    """deploy keeps an imported artifact (it has no parity gate that failed) and its golden set, and the
    deployed bundle verifies."""
    from edgevision.deploy.folder import DeployConfig, deploy_folder

    import_model(metadata_tflite[0], tmp_path / "bundle")
    result = deploy_folder(tmp_path / "bundle", tmp_path / "deploy", DeployConfig("generic-x86-64"))
    assert result.artifacts == ["model_fp32.tflite"]
    deployed = Bundle.load(tmp_path / "deploy" / "bundle")
    assert deployed.interface == Bundle.load(tmp_path / "bundle").interface
    assert all(r.passed for r in verify_bundle(deployed))


# ---------------------------------------------------------------- bad input: one clear line, nothing written


def _refused(model: Path, out: Path, options: ImportOptions, *needles: str) -> None:
    with pytest.raises(ModelImportError) as raised:
        import_model(model, out, options)
    message = str(raised.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    assert not out.exists() and not any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir())


def test_bad_models_are_refused(tmp_path, labels_file):
    out = tmp_path / "bundle"
    opts = ImportOptions(labels=labels_file, mean=(0,), std=(255,))
    _refused(_onnx_model(tmp_path / "two.onnx", outputs=2), out, opts, "2 output(s)", "one of each")
    _refused(_onnx_model(tmp_path / "map.onnx", output_shape=("N", 4, 1, 1)), out, opts, "(batch, classes)")
    (tmp_path / "model.pt").write_bytes(b"x")
    _refused(tmp_path / "model.pt", out, opts, "not a .tflite or .onnx file")
    (tmp_path / "junk.tflite").write_bytes(os.urandom(2000))
    _refused(tmp_path / "junk.tflite", out, opts, "junk.tflite", "TFLite")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    _refused(tmp_path / "junk.onnx", out, opts, "not an ONNX model")
    _refused(tmp_path / "missing.onnx", out, opts, "does not exist")
    _refused(_onnx_model(tmp_path / "gray.onnx", input_shape=("N", 1, H, W)), out, opts, "1-channel")
    _refused(_onnx_model(tmp_path / "open.onnx", input_shape=("N", 3, "H", "W")), out, opts, "--input-size")


def test_labels_that_do_not_fit_are_refused(tmp_path, metadata_tflite, labels_file):
    out = tmp_path / "bundle"
    model = _onnx_model(tmp_path / "m.onnx")
    three = tmp_path / "three.txt"
    three.write_text("a\nb\nc\n")
    _refused(model, out, ImportOptions(labels=three, mean=(0,), std=(1,)), "3 names", "outputs 4 classes")
    _refused(model, out, ImportOptions(mean=(0,), std=(1,)), "does not carry its labels", "--labels FILE")
    other = tmp_path / "other.txt"
    other.write_text("w\nx\ny\nz\n")
    _refused(metadata_tflite[0], out, ImportOptions(labels=other), "contradicts the labels", "cat")


def test_flags_that_contradict_the_file_are_refused(tmp_path, metadata_tflite, nchw_onnx, labels_file):
    out = tmp_path / "bundle"
    tflite, (onnx_path, _) = metadata_tflite[0], nchw_onnx
    _refused(tflite, out, ImportOptions(mean=(0,), std=(255,)), "contradicts", "mean 127.5")
    _refused(tflite, out, ImportOptions(layout="nchw"), "--layout nchw contradicts")
    _refused(tflite, out, ImportOptions(input_size=(224, 224)), "--input-size 224x224 contradicts", f"{H}x{W}")
    _refused(tflite, out, ImportOptions(channel_order="bgr"), "--channel-order bgr contradicts")
    _refused(tflite, out, ImportOptions(output="logits", precision="int8"), "--precision int8 contradicts")
    base = dict(labels=labels_file, mean=(127.5,), std=(127.5,))
    _refused(onnx_path, out, ImportOptions(**base, output="probabilities"), "--output probabilities contradicts")
    _refused(onnx_path, out, ImportOptions(labels=labels_file), "does not say how pixels are normalized")
    _refused(onnx_path, out, ImportOptions(labels=labels_file, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
             "pixels in 0-1", "multiply both by 255")
    _refused(onnx_path, out, ImportOptions(labels=labels_file, mean=(127.5,)), "--mean and --std go together")


def test_the_cli_prints_one_line_and_exits_2(tmp_path, labels_file):
    model = _onnx_model(tmp_path / "m.onnx")
    done = subprocess.run([sys.executable, "-m", "edgevision.cli", "import", str(model), "--out", str(tmp_path / "b"),
                           "--labels", str(labels_file)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("edgevision import: error: ")
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------- the bundle schema


def test_version_1_bundles_still_load(golden_bundle):
    data = json.loads((golden_bundle / "bundle.json").read_text())
    data["schema_version"] = 1
    for key in ("output",):
        data.pop(key, None)
    bundle = Bundle.from_dict(data, folder=golden_bundle)
    assert bundle.interface == ModelInterface()
    assert all(r.passed for r in verify_bundle(bundle))


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["input"].update(layout="NCWH"), "input.layout is 'NCWH'"),
    (lambda d: d.update(normalization={"mean": [1, 2], "std": [1]}), "normalization.mean is [1, 2]"),
    (lambda d: d.update(normalization={"mean": [0], "std": [0]}), "normalization.std is [0]"),
    (lambda d: d.update(normalization="outside"), "normalization is 'outside'"),
    (lambda d: d.update(output="scores"), "output is 'scores'"),
    (lambda d: d.update(schema_version=3), "Unsupported bundle schema version 3"),
])
def test_bad_interfaces_in_bundle_json_are_named(golden_bundle, change, needle):
    data = json.loads((golden_bundle / "bundle.json").read_text())
    change(data)
    with pytest.raises(BundleError) as raised:
        Bundle.from_dict(data)
    assert needle in str(raised.value)


def test_a_damaged_tflite_file_is_an_error_not_a_crash(metadata_tflite):
    from edgevision.runtime.tflite_file import TFLiteFileError, read_tflite

    content = metadata_tflite[0].read_bytes()
    assert read_tflite(content).model_metadata.labels == LABELS
    rng = np.random.default_rng(0)
    for cut in sorted(rng.integers(8, len(content), 40)):
        try:
            read_tflite(content[:cut])
        except TFLiteFileError as bad:
            assert "TFLite" in str(bad) or "truncated" in str(bad)
    for _ in range(40):  # flipped bytes: an error or a (different) reading, never an exception of another kind
        damaged = bytearray(content)
        for at in rng.integers(0, len(content), 8):
            damaged[at] ^= 0xFF
        try:
            read_tflite(bytes(damaged))
        except TFLiteFileError:
            pass
