"""The device runtime: engines, Classifier, sources and the inference loop, on a tiny but real bundle.

Outputs are compared with the Keras model every artifact was made from, not just "it ran".
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import realish_image
from edgevision.devices.sources import (
    Frame,
    ImageFolderSource,
    Source,
    SourceError,
    VideoFileSource,
    open_source,
    redact,
)
from edgevision.runtime import classifier as classifier_module
from edgevision.runtime import engines
from edgevision.runtime.bundle import BundleError
from edgevision.runtime.classifier import Classifier, Prediction
from edgevision.runtime.engines import dequantize, open_engine, quantize, resolve_engine
from edgevision.runtime.loop import LoopSummary, run_loop
from edgevision.runtime.preprocess import prepare


def _prepared(images, policy, channel_order="bgr"):
    return np.stack([prepare(image, policy, channel_order) for image in images])


def _copy_bundle(tiny_bundle, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.folder, folder)
    return folder


def _edit_bundle_json(folder, edit):
    path = folder / "bundle.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# --- parity with the trained model ---


@pytest.mark.parametrize("artifact", ["tflite_fp32", "onnx_fp32"])
def test_fp32_artifacts_match_keras(tiny_bundle, realish_images, artifact):
    if artifact.startswith("onnx"):
        pytest.importorskip("onnxruntime", reason="the onnxruntime engine is an optional extra")
    clf = Classifier(tiny_bundle.folder, artifact=artifact, threads=1)
    batch = _prepared(realish_images, clf.policy)
    expected = tiny_bundle.reference(batch)
    assert len(set(expected.argmax(1))) >= 2, "the test pictures should not all get the same class"

    probs = clf.predict(batch)
    assert probs.dtype == np.float32 and probs.shape == (len(batch), 3)
    np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(probs.argmax(1), expected.argmax(1))

    for image, row in zip(realish_images, expected):
        prediction = clf.classify(image)  # a BGR frame of any size
        assert isinstance(prediction, Prediction)
        assert prediction.index == int(row.argmax())
        assert prediction.label == tiny_bundle.labels[prediction.index]
        assert prediction.score == pytest.approx(float(row.max()), abs=1e-5)
        assert prediction.top_k == [(prediction.label, prediction.score)]
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        assert clf.classify(rgb, channel_order="rgb").score == pytest.approx(prediction.score, abs=1e-6)


@pytest.mark.parametrize(("artifact", "conversion"), [("tflite_int8", "raw"), ("model_int8_signed.tflite", "quantize")])
def test_int8_artifacts_stay_close_to_keras(tiny_bundle, artifact, conversion):
    clf = Classifier(tiny_bundle.folder, artifact=artifact, threads=1)
    # uint8 input with scale 1 / zero-point 0 takes camera pixels as they are; int8 input is quantized.
    assert clf.engine.input_conversion == conversion
    rng = np.random.default_rng(11)
    batch = _prepared([realish_image(rng, 48, 64) for _ in range(40)], clf.policy)
    expected = tiny_bundle.reference(batch)
    probs = clf.predict(batch)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=0.03)  # dequantized probabilities
    assert np.abs(probs - expected).max() < 0.1
    assert (probs.argmax(1) == expected.argmax(1)).mean() >= 0.9


def test_fp32_engine_casts_pixels(tiny_bundle):
    assert Classifier(tiny_bundle.folder).engine.input_conversion == "cast"


def test_batch_size_changes_reuse_one_interpreter(tiny_bundle, realish_images):
    clf = Classifier(tiny_bundle.folder, threads=1)
    batch = _prepared(realish_images, clf.policy)
    expected = tiny_bundle.reference(batch)
    engine = clf.engine
    for size in (1, 5, 1, 10, 3):
        np.testing.assert_allclose(clf.predict(batch[:size]), expected[:size], atol=1e-5, rtol=0)
    assert clf.engine is engine
    assert clf.predict(batch[:0]).shape == (0, 3)


def test_predict_refuses_unprepared_input(tiny_bundle):
    clf = Classifier(tiny_bundle.folder)
    bad_inputs = (np.zeros((1, 64, 64, 3), np.uint8), np.zeros((32, 32, 3), np.uint8), np.zeros((1, 32, 32, 3), np.float32))
    for bad in bad_inputs:
        with pytest.raises(ValueError, match=r"\(N, 32, 32, 3\)"):
            clf.predict(bad)


def test_classify_file_matches_classify(tiny_bundle, realish_images, tmp_path):
    clf = Classifier(tiny_bundle.folder, top_k=3)
    path = tmp_path / "picture.png"
    cv2.imwrite(str(path), realish_images[4])  # PNG: lossless, so the same pixels come back
    from_file = clf.classify_file(path)
    assert from_file == clf.classify(realish_images[4])
    assert [label for label, _ in from_file.top_k] == sorted(clf.labels, key=dict(from_file.top_k).get, reverse=True)
    scores = [score for _, score in from_file.top_k]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_classifier_properties(tiny_bundle):
    clf = Classifier(tiny_bundle.folder)
    assert clf.labels == ["a", "b", "c"]
    assert clf.artifact.file == "model_fp32.tflite" and clf.artifact_name == "model_fp32.tflite"
    assert (clf.policy.height, clf.policy.width) == (32, 32)
    assert clf.engine.name == "litert"


# --- the bundle is verified before any engine sees a file ---


def _tamper(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize(
    ("damage", "message"),
    [(_tamper, "sha256"), (_truncate, "truncated"), (lambda path: path.unlink(), "missing")],
    ids=["tampered", "truncated", "missing"],
)
def test_damaged_model_file_refused_before_engine_opens_it(tiny_bundle, tmp_path, monkeypatch, damage, message):
    folder = _copy_bundle(tiny_bundle, tmp_path)
    damage(folder / "model_fp32.tflite")

    def must_not_open(*args, **kwargs):
        raise AssertionError("an engine was asked to open an unverified model file")

    monkeypatch.setattr(classifier_module, "open_engine", must_not_open)
    for name in engines.ENGINES:
        monkeypatch.setitem(engines.ENGINES, name, must_not_open)
    with pytest.raises(BundleError, match=message) as error:
        Classifier(folder)
    assert "model_fp32.tflite" in str(error.value)


def test_unknown_artifact_names_it_and_the_choices(tiny_bundle):
    with pytest.raises(BundleError, match=r"'tflite_fp64'.*tflite_fp32"):
        Classifier(tiny_bundle.folder, artifact="tflite_fp64")


def test_unknown_engine_names_it_and_the_choices(tiny_bundle):
    with pytest.raises(ValueError, match=r"'tensorflow'.*litert, onnxruntime"):
        Classifier(tiny_bundle.folder, engine="tensorflow")
    with pytest.raises(ValueError, match=r"'litrt'.*did you mean 'litert'"):
        Classifier(tiny_bundle.folder, engine="litrt")


def test_engine_that_cannot_read_the_format(tiny_bundle):
    with pytest.raises(ValueError, match=r"'onnxruntime' cannot read tflite"):
        Classifier(tiny_bundle.folder, engine="onnxruntime")
    bundle = Classifier(tiny_bundle.folder).bundle
    with pytest.raises(ValueError, match=r"'litert' cannot read onnx"):
        open_engine(tiny_bundle.folder / "model.onnx", bundle.artifact("onnx_fp32"), engine="litert")
    assert resolve_engine(bundle.artifact("onnx_fp32")) == "onnxruntime"
    assert resolve_engine(bundle.artifact("tflite_int8")) == "litert"


@pytest.mark.parametrize("top_k", [0, 4, -1, True, 1.5, "2"])
def test_bad_top_k_named(tiny_bundle, top_k):
    with pytest.raises(ValueError, match=rf"top_k {top_k!r}.*1 to 3"):
        Classifier(tiny_bundle.folder, top_k=top_k)


@pytest.mark.parametrize("threads", [0, -2, 1.5])
def test_bad_threads_named(tiny_bundle, threads):
    with pytest.raises(ValueError, match=rf"threads.*{threads!r}"):
        Classifier(tiny_bundle.folder, threads=threads)


def test_labels_that_do_not_match_the_model_are_refused(tiny_bundle, tmp_path):
    folder = _copy_bundle(tiny_bundle, tmp_path)
    _edit_bundle_json(folder, lambda data: data["labels"].append("d"))
    with pytest.raises(BundleError, match=r"outputs 3 classes but bundle.json has 4 labels"):
        Classifier(folder)


def test_tensor_types_that_do_not_match_the_model_are_refused(tiny_bundle, tmp_path):
    folder = _copy_bundle(tiny_bundle, tmp_path)

    def edit(data):
        data["artifacts"]["model_fp32.tflite"]["input"] = {"dtype": "uint8", "scale": 1.0, "zero_point": 0}
        data["artifacts"]["model_int8.tflite"]["output"]["scale"] = 0.5

    _edit_bundle_json(folder, edit)
    with pytest.raises(BundleError, match=r"input is uint8, the model's input is float32"):
        Classifier(folder)
    with pytest.raises(BundleError, match=r"output scale is 0.5"):
        Classifier(folder, artifact="tflite_int8")


def test_input_size_that_does_not_match_the_policy_is_refused(tiny_bundle, tmp_path):
    folder = _copy_bundle(tiny_bundle, tmp_path)
    _edit_bundle_json(folder, lambda data: [data[key].update(height=48, width=48) for key in ("preprocess", "input")])
    with pytest.raises(BundleError, match=r"takes 32x32 input.*48x48"):
        Classifier(folder)
    # Edited in one place only, bundle.json contradicts itself: refused before any model is opened.
    _edit_bundle_json(folder, lambda data: data["input"].update(height=32, channels=1))
    with pytest.raises(BundleError, match=r"bundle.json has 2 problem\(s\):\n  input.height is 32 \(int\); "
                                          r"expected preprocess.height \(48\)\n  input.channels is 1 \(int\); expected 3"):
        Classifier(folder)


def test_quantize_and_dequantize():
    pixels = np.array([0, 1, 127, 128, 255], np.uint8)
    np.testing.assert_array_equal(quantize(pixels, np.int8, 1.0, -128), [-128, -127, -1, 0, 127])
    np.testing.assert_array_equal(quantize(pixels, np.uint8, 2.0, 0), [0, 0, 64, 64, 128])  # rint: half to even
    np.testing.assert_array_equal(quantize(pixels, np.int8, 0.5, 0), [0, 2, 127, 127, 127])  # saturates
    np.testing.assert_allclose(dequantize(np.array([-128, 0, 127], np.int8), 1 / 256, -128), [0.0, 0.5, 255 / 256])


# --- sources ---


def _write_video(path, count=20, size=(64, 48), fourcc="MJPG"):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, size)
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path.suffix}"
    colours = []
    for i in range(count):
        colour = (int(i * 12) % 256, 255 - int(i * 12) % 256, 128)  # BGR, different for every frame
        writer.write(np.full((size[1], size[0], 3), colour, np.uint8))
        colours.append(colour)
    writer.release()
    return colours


@pytest.mark.parametrize(("name", "fourcc"), [("clip.avi", "MJPG"), ("clip.mp4", "mp4v")])
def test_video_file_source_yields_every_frame(tmp_path, name, fourcc):
    path = tmp_path / name
    colours = _write_video(path, fourcc=fourcc)
    with open_source(str(path)) as source:
        assert isinstance(source, VideoFileSource)
        assert source.fps == pytest.approx(10.0)
        frames = list(source)
        assert source.read() is None  # stays at the end
    assert not source.is_open
    assert [f.index for f in frames] == list(range(20))
    assert all(isinstance(f, Frame) and f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(a.timestamp <= b.timestamp for a, b in zip(frames, frames[1:]))
    for frame, colour in zip(frames, colours):  # BGR order survives the round trip
        np.testing.assert_allclose(frame.image.reshape(-1, 3).mean(0), colour, atol=8)


def test_image_folder_source_sorted_and_skips_unreadable(tmp_path, caplog):
    rng = np.random.default_rng(3)
    cv2.imwrite(str(tmp_path / "b.png"), realish_image(rng, 20, 30))
    cv2.imwrite(str(tmp_path / "a.jpg"), realish_image(rng, 40, 30))
    cv2.imwrite(str(tmp_path / "c.png"), realish_image(rng, 10, 10)[..., 0])  # greyscale
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING), open_source(str(tmp_path)) as source:
        assert isinstance(source, ImageFolderSource) and source.fps is None
        assert [p.name for p in source.files] == ["a.jpg", "b.png", "broken.jpg", "c.png"]
        frames = list(source)
    assert [f.image.shape for f in frames] == [(40, 30, 3), (20, 30, 3), (10, 10, 3)]
    assert [f.index for f in frames] == [0, 1, 2]
    assert "broken.jpg" in caplog.text


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(SourceError, match=r"has no images"):
        open_source(str(tmp_path))


def test_file_that_is_not_a_video_is_refused(tmp_path):
    path = tmp_path / "fake.mp4"
    path.write_text("hello, not a video")
    with pytest.raises(SourceError, match=r"fake.mp4.*not a video"):
        open_source(str(path))


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("missing_clip.mp4", r"'missing_clip.mp4'.*no such file.*camera index"),
        ("ftp://example.com/x", r"scheme 'ftp'.*rtsp://"),
        ("picamera2://x", r"'picamera2://x' needs a camera number.*accepted sources"),
        ("csi://front", r"'csi://front' needs a camera number"),
        ("", r"Empty source URI"),
    ],
)
def test_bad_uris_named_with_accepted_forms(uri, message):
    with pytest.raises(ValueError, match=message):
        open_source(uri)


def test_single_image_is_not_a_video(tmp_path):
    path = tmp_path / "one.png"
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"single image"):
        open_source(str(path))


def test_cameras_and_streams_that_cannot_open_are_named():
    with pytest.raises(SourceError, match=r"Camera '/dev/video987' not found"):
        open_source("/dev/video987")
    with pytest.raises(SourceError, match=r"Camera '87' could not be opened"):
        open_source("87")
    with pytest.raises(SourceError, match=r"Stream 'rtsp://user:\*\*\*@127.0.0.1:9/cam' could not be opened") as error:
        open_source("rtsp://user:secret@127.0.0.1:9/cam")  # nothing listens on port 9: refused at once
    assert "secret" not in str(error.value)
    assert redact("http://host/x") == "http://host/x"


def test_reading_a_closed_source_is_an_error(tmp_path):
    _write_video(tmp_path / "clip.avi", count=2)
    source = VideoFileSource(tmp_path / "clip.avi")
    with pytest.raises(SourceError, match=r"not open"):
        source.read()


# --- the loop ---


def test_run_loop_writes_one_json_line_per_frame(tiny_bundle, tmp_path):
    clf = Classifier(tiny_bundle.folder, threads=1)
    _write_video(tmp_path / "clip.avi", count=20, size=(96, 64))
    source = open_source(str(tmp_path / "clip.avi"))
    out = io.StringIO()
    summary = run_loop(clf, source, out=out)
    assert not source.is_open
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["frame"] for line in lines] == list(range(20))
    assert [line["position"] for line in lines] == list(range(20))  # the frame's number in the file
    for line in lines:
        assert set(line) == {"frame", "source", "position", "timestamp", "label", "score", "latency_ms", "age_ms"}
        assert line["source"] == str(tmp_path / "clip.avi")
        assert line["age_ms"] >= line["latency_ms"] * 0.9  # capture-to-result includes the inference
        assert line["label"] in clf.labels and 0.0 <= line["score"] <= 1.0 and line["latency_ms"] > 0
    assert isinstance(summary, LoopSummary) and summary.frames == 20
    assert sum(summary.labels.values()) == 20 and set(summary.labels) <= set(clf.labels)
    assert summary.fps > 0 and summary.seconds > 0
    assert 0 < summary.latency_ms_p50 <= summary.latency_ms_p95
    assert json.loads(json.dumps({"summary": summary.to_dict()}))["summary"]["frames"] == 20


def test_run_loop_max_frames_and_default_stdout(tiny_bundle, tmp_path, capsys):
    clf = Classifier(tiny_bundle.folder, threads=1)
    _write_video(tmp_path / "clip.avi", count=10)
    source = open_source(str(tmp_path / "clip.avi"))
    summary = run_loop(clf, source, max_frames=4)
    assert summary.frames == 4 and not source.is_open
    assert len(capsys.readouterr().out.splitlines()) == 4
    with pytest.raises(ValueError, match=r"max_frames.*0"):
        run_loop(clf, source, max_frames=0)


class _InterruptedSource(Source):
    """Three frames, then Ctrl-C."""

    def __init__(self):
        super().__init__("fake://interrupted")
        self.closed_count = 0
        self._sent = 0

    def _open(self):
        pass

    def _read(self):
        if self._sent == 3:
            raise KeyboardInterrupt
        self._sent += 1
        return np.full((40, 40, 3), 80 * self._sent, np.uint8), 1000.0 + self._sent

    def _close(self):
        self.closed_count += 1


def test_run_loop_ctrl_c_still_returns_summary_and_closes(tiny_bundle):
    source = _InterruptedSource()
    out = io.StringIO()
    summary = run_loop(Classifier(tiny_bundle.folder, threads=1), source, out=out)
    assert summary.frames == 3 and source.closed_count == 1 and summary.stopped_by == "interrupt"
    assert [json.loads(line)["timestamp"] for line in out.getvalue().splitlines()] == [1001.0, 1002.0, 1003.0]


def test_run_loop_quiet_and_empty(tiny_bundle, tmp_path):
    (tmp_path / "only.png").write_bytes(b"broken")
    summary = run_loop(Classifier(tiny_bundle.folder, threads=1), ImageFolderSource(tmp_path), out=None)
    assert summary.to_dict() == {
        "frames": 0, "seconds": summary.to_dict()["seconds"], "fps": 0.0,
        "latency_ms_p50": 0.0, "latency_ms_p95": 0.0, "labels": {}, "age_ms_p50": 0.0, "age_ms_p95": 0.0,
        "dropped": 0, "reconnects": 0, "bad_frames": 0, "failed_frames": 0, "stopped_by": "end",
    }  # fmt: skip


# --- artifact choice by device profile, delegates, execution providers ---


def test_profile_picks_the_artifact_threads_and_falls_back(tiny_bundle, tmp_path):
    pi = Classifier(tiny_bundle.folder, profile="raspberry-pi-4")
    assert pi.artifact_name == "model_int8.tflite" and pi.engine.threads == 4
    assert pi.selection == "profile raspberry-pi-4 prefers tflite:int8" and pi.profile.name == "raspberry-pi-4"
    assert Classifier(tiny_bundle.folder, profile="generic-x86-64").artifact_name == "model_fp32.tflite"
    assert Classifier(tiny_bundle.folder, profile="raspberry-pi-4", threads=1).engine.threads == 1  # args win
    assert Classifier(tiny_bundle.folder, profile="raspberry-pi-4", artifact="onnx_fp32").selection == "asked for"
    # An engine asked for narrows the choice to what it reads.
    assert Classifier(tiny_bundle.folder, profile="jetson-orin-nano", engine="litert").artifact_name == "model_int8.tflite"
    if engines.engine_available("onnxruntime"):
        jetson = Classifier(tiny_bundle.folder, profile="jetson-orin-nano")
        assert jetson.artifact_name == "model.onnx" and jetson.engine.providers[-1] == "CPUExecutionProvider"
    # An artifact that failed its parity gate at export is never chosen by a profile.
    folder = _copy_bundle(tiny_bundle, tmp_path)
    _edit_bundle_json(folder, lambda data: data["artifacts"]["model_int8.tflite"]["metrics"].update(passed=False))
    assert Classifier(folder, profile="raspberry-pi-4").artifact_name == "model_int8_signed.tflite"
    # No profile: the bundle's default, as before.
    assert Classifier(tiny_bundle.folder).selection == "bundle default"


def test_unknown_profile_is_named(tiny_bundle):
    with pytest.raises(ValueError, match=r"Unknown device profile 'pi9'; choose one of .*raspberry-pi-5"):
        Classifier(tiny_bundle.folder, profile="pi9")


def test_absent_delegate_fails_clearly(tiny_bundle):
    with pytest.raises(engines.EngineUnavailableError, match=r"'edgetpu'.*libedgetpu.so.1.*libedgetpu1-std"):
        Classifier(tiny_bundle.folder, delegate="edgetpu")
    with pytest.raises(engines.EngineUnavailableError, match=r"/nowhere/libdelegate.so"):
        Classifier(tiny_bundle.folder, delegate="/nowhere/libdelegate.so")


def test_onnxruntime_takes_providers_not_delegates(tiny_bundle):
    pytest.importorskip("onnxruntime", reason="the onnxruntime engine is an optional extra")
    with pytest.raises(ValueError, match=r"Delegate 'edgetpu' is a LiteRT option"):
        Classifier(tiny_bundle.folder, artifact="onnx_fp32", delegate="edgetpu")


def test_tensorrt_gets_its_precision_mode_and_an_engine_cache(tiny_bundle, monkeypatch, tmp_path):
    """Where TensorRT is present (Jetson), the session gets int8 mode for the signed symmetric QDQ model,
    fp16 mode only for an fp16 one, and an engine cache per model file in a folder that exists; the CPU's
    unsigned int8 form never goes to TensorRT; other providers are passed by name."""
    ort = pytest.importorskip("onnxruntime", reason="the onnxruntime engine is an optional extra")
    real_session, seen = ort.InferenceSession, []

    def recording_session(path, sess_options=None, providers=None):
        seen.append(providers)
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    classifier = Classifier(tiny_bundle.folder, profile="jetson-orin-nano", engine="onnxruntime")
    (name, options), cpu = seen[-1]
    artifact = classifier.artifact
    assert name == "TensorrtExecutionProvider" and cpu == "CPUExecutionProvider"
    assert options == {"trt_engine_cache_enable": True, "trt_int8_enable": False, "trt_fp16_enable": False,
                       "trt_engine_cache_path": str(tmp_path / "edgevision" / "tensorrt" / artifact.sha256[:16])}
    assert (tmp_path / "edgevision" / "tensorrt").is_dir()  # onnxruntime makes only the last level
    for precision, int8, fp16 in (("int8_symmetric", True, False), ("fp32", False, False), ("fp16", False, True)):
        chosen = engines.tensorrt_options(replace(artifact, precision=precision))
        assert (chosen["trt_int8_enable"], chosen["trt_fp16_enable"]) == (int8, fp16)
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    cpu_form = engines._session_providers(providers, replace(artifact, precision="int8"))
    assert cpu_form == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_delegate_is_loaded_once_and_handed_to_the_interpreter(tiny_bundle, monkeypatch):
    from ai_edge_litert import interpreter as litert

    loaded, handed = [], []

    class RecordingInterpreter(litert.Interpreter):
        def __init__(self, *args, experimental_delegates=None, **kwargs):
            handed.append(experimental_delegates)
            super().__init__(*args, **kwargs)  # the real CPU path: this machine has no accelerator

    fake = type("FakeLiteRT", (), {
        "Interpreter": RecordingInterpreter,
        "load_delegate": staticmethod(lambda library, options=None: loaded.append(library) or f"<{library}>"),
    })
    monkeypatch.setattr(engines, "_litert_module", lambda: fake)
    monkeypatch.setattr(engines, "_check_library", lambda library: None)  # as if libedgetpu were installed
    clf = Classifier(tiny_bundle.folder, artifact="tflite_int8", delegate="edgetpu")
    for _ in range(3):
        clf.classify(np.zeros((40, 40, 3), np.uint8))
    assert loaded == ["libedgetpu.so.1"] and handed == [["<libedgetpu.so.1>"]]
    assert clf.engine.delegate == "edgetpu"


# --- `edgevision run` options ---


def test_cli_run_prints_a_systemd_unit(tiny_bundle, capsys):
    from edgevision.cli import main

    assert main(["run", str(tiny_bundle.folder), "--source", "picamera2", "--profile", "raspberry-pi-5",
                 "--systemd-unit"]) == 0
    unit = capsys.readouterr().out
    assert f"run {tiny_bundle.folder} --source picamera2 --profile raspberry-pi-5" in unit
    assert "[Service]" in unit and "Restart=always" in unit


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--delegate", "edgetpu"], "libedgetpu.so.1"),
        (["--profile", "pi9"], "Unknown device profile 'pi9'"),
        (["--smoothing", "0"], "Smoothing alpha 0.0"),
        (["--threshold", "2"], "Confidence threshold 2.0"),
        (["--preview-port", "70000"], "Preview port 70000"),
        (["--read-timeout", "0"], "--read-timeout must be from 0 to 3600 seconds, got 0.0"),
        (["--read-timeout", "2500000"], "--read-timeout must be from 0 to 3600 seconds, got 2500000.0"),
        (["--display"], "--display cannot open a window"),
    ],
)
def test_cli_run_option_errors_are_one_line(tiny_bundle, tmp_path, capsys, monkeypatch, extra, message):
    from edgevision.cli import main

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    _write_video(tmp_path / "clip.avi", count=3)
    assert main(["run", str(tiny_bundle.folder), "--source", str(tmp_path / "clip.avi"), *extra]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgevision run: error: ") and message in lines[0], captured.err
    assert captured.out == ""


def test_cli_run_as_fast_as_possible_with_smoothing(tiny_bundle, tmp_path, capsys):
    from edgevision.cli import main

    _write_video(tmp_path / "clip.avi", count=30)  # 10 fps: 3 s if played in real time
    assert main(["run", str(tiny_bundle.folder), "--source", str(tmp_path / "clip.avi"), "--as-fast-as-possible",
                 "--smoothing", "0.5", "--top-k", "2", "--profile", "none", "--threads", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    summary = lines[-1]["summary"]
    assert summary["frames"] == 30 and summary["dropped"] == 0 and summary["seconds"] < 2.5
    assert all(len(line["top_k"]) == 2 for line in lines[:-1])


def test_a_folder_source_searches_subfolders_in_order_and_names_each_file(tiny_bundle, tmp_path, realish_images):
    for relative in ("b/2.png", "a/1.png", "a/deeper/3.jpg", "top.png", ".hidden/x.png", "a/.skip.png"):
        path = tmp_path / "test" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), realish_images[0])
    out = io.StringIO()
    run_loop(Classifier(tiny_bundle.folder, threads=1), open_source(str(tmp_path / "test")), out=out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    names = [str(Path(line["source"]).relative_to(tmp_path / "test")) for line in lines]
    assert names == ["top.png", "a/1.png", "a/deeper/3.jpg", "b/2.png"]  # a folder's files, then its subfolders
    assert all("position" not in line for line in lines)


def test_every_profile_preference_is_an_artifact_kind_a_bundle_can_have():
    """Profiles name artifacts as format:precision; each must be a kind export writes or import brings,
    and every profile must prefer at least one kind that export writes."""
    from edgevision.devices.profiles import load_profile, profile_names
    from edgevision.export.exporter import ARTIFACT_KINDS
    from edgevision.runtime.bundle import ARTIFACT_NAMES

    known = {f"{k.format}:{k.precision}" for k in ARTIFACT_NAMES.values()}
    exported = {f"{k.format}:{k.precision}" for k in ARTIFACT_KINDS.values()}
    for name in profile_names():
        preferences = load_profile(name).artifacts
        assert set(preferences) <= known, (name, sorted(set(preferences) - known))
        assert set(preferences) & exported, name
