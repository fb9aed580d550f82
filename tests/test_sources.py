"""Hardware sources tested with fakes of the libraries they call, device profiles, and file frame skipping.

The picamera2 fake follows picamera2's documented API (Picamera2(camera_num), global_camera_info(),
create_video_configuration(main=, lores=, controls=, buffer_count=), align_configuration, configure, start,
capture_array("lores") giving an I420 array of shape (h * 3 / 2, w), stop, close). The Jetson fake stands
in for cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER).
"""

from __future__ import annotations

import logging
import re
import sys
import time
import types

import cv2
import numpy as np
import pytest

from edgevision.devices import jetson
from edgevision.devices.jetson import JetsonCsiSource, argus_pipeline
from edgevision.devices.picamera import PiCamera2Source
from edgevision.devices.profiles import ProfileError, detect_profile, load_profile, profile_names
from edgevision.devices.sources import SourceError, SourceOptions, VideoFileSource, lowres_size, open_source, source_for
from edgevision.runtime.capture import CaptureConfig, LatestFrameFeed

COLOUR = (40, 160, 220)  # BGR


class FakePicamera2:
    """picamera2.Picamera2 as documented, with a scripted camera behind it."""

    cameras = [{"Model": "imx708", "Location": 2, "Num": 0}]
    instances: list["FakePicamera2"] = []
    fail_after: int | None = None  # capture_array raises after this many frames (the cable was pulled)
    fail_opens = 0  # the next N Picamera2() calls fail (camera still gone)

    def __init__(self, camera_num=None):
        if FakePicamera2.fail_opens > 0:
            FakePicamera2.fail_opens -= 1
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        self.camera_num = camera_num
        self.config = None
        self.started = False
        self.closed = False
        self.captured = 0
        FakePicamera2.instances.append(self)

    @staticmethod
    def global_camera_info():
        return list(FakePicamera2.cameras)

    def create_video_configuration(self, main={}, lores=None, raw=None, transform=None, colour_space=None,
                                   buffer_count=6, controls={}, display="main", encode="main", queue=True):
        return {"use_case": "video", "main": {"format": "XBGR8888", **main}, "lores": dict(lores),
                "buffer_count": buffer_count, "controls": dict(controls)}

    def align_configuration(self, config):
        # libcamera wants YUV420 widths in multiples of 32 (the fake mimics it for lores only)
        width, height = config["lores"]["size"]
        config["lores"]["size"] = (width + 31) // 32 * 32, height

    def configure(self, config):
        assert config["lores"]["format"] == "YUV420"
        self.config = config

    def start(self):
        self.started = True

    def capture_array(self, name="main"):
        assert self.started and name == "lores"
        if FakePicamera2.fail_after is not None and self.captured >= FakePicamera2.fail_after:
            raise RuntimeError("Camera frontend has timed out!")
        self.captured += 1
        width, height = self.config["lores"]["size"]
        bgr = np.full((height, width, 3), COLOUR, np.uint8)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)

    def stop(self):
        self.started = False

    def close(self):
        self.closed = True


@pytest.fixture
def fake_picamera2(monkeypatch):
    FakePicamera2.instances = []
    FakePicamera2.fail_after = None
    FakePicamera2.fail_opens = 0
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return FakePicamera2


def test_lowres_size_keeps_aspect_and_covers_the_model():
    assert lowres_size((1280, 720), (224, 224)) == (400, 224)
    assert lowres_size((640, 480), (96, 96)) == (128, 96)
    assert lowres_size((640, 480), None) == (640, 480)
    assert lowres_size((320, 240), (480, 480)) == (320, 240)  # never upscales
    for camera, model in (((1536, 864), (224, 224)), ((1920, 1080), (96, 128))):
        width, height = lowres_size(camera, model)
        assert width % 2 == 0 and height % 2 == 0 and width >= model[1] and height >= model[0]
        assert abs(width / height - camera[0] / camera[1]) < 0.02


def test_picamera2_delivers_bgr_from_a_lores_stream_at_model_size(fake_picamera2):
    options = SourceOptions(model_size=(224, 224), camera_size=(1280, 720), camera_fps=25)
    with open_source("picamera2", options) as source:
        assert isinstance(source, PiCamera2Source) and source.live and source.fps == 25.0
        camera = fake_picamera2.instances[0]
        assert camera.camera_num == 0
        assert camera.config["main"]["size"] == (1280, 720)
        assert camera.config["controls"] == {"FrameRate": 25}
        assert source.size == (416, 224)  # 400 aligned up to 416 by align_configuration
        frames = [source.read() for _ in range(3)]
    assert camera.closed and not camera.started
    assert [f.index for f in frames] == [0, 1, 2]
    for frame in frames:
        assert frame.image.shape == (224, 416, 3) and frame.image.dtype == np.uint8
        np.testing.assert_allclose(frame.image.reshape(-1, 3).mean(0), COLOUR, atol=3)


def test_picamera2_errors_name_the_problem(fake_picamera2, monkeypatch):
    with pytest.raises(SourceError, match=r"no CSI camera number 1 \(cameras found: imx708\)"):
        open_source("picamera2://1")
    fake_picamera2.fail_opens = 1
    with pytest.raises(SourceError, match=r"in use by another process"):
        open_source("picamera2")
    monkeypatch.setitem(sys.modules, "picamera2", None)  # not installed
    with pytest.raises(SourceError, match=r"apt install python3-picamera2"):
        open_source("picamera2")


def test_a_camera_that_disappears_is_reopened_with_backoff(fake_picamera2, caplog):
    fake_picamera2.fail_after = 5
    source = open_source("picamera2", SourceOptions(model_size=(32, 32)))
    fake_picamera2.fail_opens = 2  # the camera is still gone for the first two reopen attempts
    config = CaptureConfig(backoff_s=0.02, backoff_max_s=0.05)
    with caplog.at_level(logging.WARNING), LatestFrameFeed(source, config) as feed:
        indices = []
        deadline = time.monotonic() + 10
        while len(indices) < 12 and time.monotonic() < deadline:
            indices.append(feed.next().index)
    assert len(indices) == 12
    assert indices == sorted(indices) and len(set(indices)) == 12  # never a frame twice, never older
    assert feed.reconnects >= 2
    assert len(fake_picamera2.instances) >= 3 and all(c.closed for c in fake_picamera2.instances)
    assert "Camera frontend has timed out" in caplog.text and "reopening in" in caplog.text
    assert "reopened" in caplog.text


class FakeGstCapture:
    """cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER) on a Jetson: BGR frames of the pipeline's output size."""

    opened: list[tuple[str, int]] = []

    def __init__(self, pipeline, api):
        FakeGstCapture.opened.append((pipeline, api))
        scaled = re.search(r"nvvidconv.*?width=(\d+), height=(\d+)", pipeline)
        self.size = int(scaled.group(1)), int(scaled.group(2))
        self.released = False

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return True

    def get(self, prop):
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def grab(self):
        return True

    def retrieve(self):
        width, height = self.size
        return True, np.full((height, width, 3), COLOUR, np.uint8)

    def release(self):
        self.released = True


def test_jetson_csi_builds_an_argus_pipeline_read_through_gstreamer(monkeypatch):
    FakeGstCapture.opened = []
    monkeypatch.setattr(jetson, "opencv_has_gstreamer", lambda: True)
    monkeypatch.setattr(jetson.cv2, "VideoCapture", FakeGstCapture)
    options = SourceOptions(model_size=(224, 224), camera_size=(1920, 1080), camera_fps=30)
    with open_source("csi://1", options) as source:
        assert isinstance(source, JetsonCsiSource) and source.live and source.fps == 30.0
        frame = source.read()
    pipeline, api = FakeGstCapture.opened[0]
    assert api == cv2.CAP_GSTREAMER
    assert pipeline.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=1920, height=1080")
    assert "framerate=30/1" in pipeline and "nvvidconv flip-method=0" in pipeline
    assert "width=400, height=224, format=BGRx" in pipeline
    assert pipeline.endswith("appsink drop=true max-buffers=1 sync=false")  # newest buffer only
    assert frame.image.shape == (224, 400, 3)


def test_jetson_csi_without_gstreamer_opencv_says_what_to_install():
    if jetson.opencv_has_gstreamer():
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(SourceError, match=r"'csi://0' needs OpenCV built with GStreamer.*python3-opencv"):
        open_source("csi://0")


def test_argus_pipeline_flip():
    assert "flip-method=2" in argus_pipeline(0, (1280, 720), 60, (224, 224), flip_method=2)
    source = source_for("csi://0", SourceOptions(extra={"flip_method": 2}))
    assert "flip-method=2" in source.pipeline


def test_video_file_skip_grabs_without_decoding(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    for i in range(10):
        writer.write(np.full((24, 32, 3), i * 25, np.uint8))
    writer.release()
    with VideoFileSource(path) as source:
        assert source.read().index == 0
        assert source.skip(4) == 4
        frame = source.read()
        assert frame.index == 5
        assert abs(float(frame.image.mean()) - 125) < 4  # really frame 5
        assert source.skip(100) == 4
        assert source.read() is None


def test_source_options_are_checked():
    with pytest.raises(ValueError, match=r"model_size \(0, 32\)"):
        SourceOptions(model_size=(0, 32))
    with pytest.raises(ValueError, match=r"read_timeout_ms 0"):
        SourceOptions(read_timeout_ms=0)


# --- device profiles ---


def test_every_profile_loads_and_is_complete():
    names = profile_names()
    assert set(names) == {"raspberry-pi-4", "raspberry-pi-5", "jetson-nano", "jetson-orin-nano", "generic-x86-64"}
    for name in names:
        profile = load_profile(name)
        assert profile.name == name and profile.artifacts
        assert profile.platform.machine in ("aarch64", "x86_64") and profile.platform.python in ("3.10", "3.11")
        # Every profile states what is known about its speed: published figures with a source, or "unknown".
        for figure in profile.expected_speed["published"]:
            assert figure["source"].startswith("https://") and figure["figure"] and figure["model"]
        assert profile.expected_speed["ours"]
        assert profile.threads is None or profile.threads >= 1
        unit = profile.systemd_unit("/srv/bundle")
        assert f"--profile {name}" in unit and "Restart=always" in unit and "KillSignal=SIGTERM" in unit
        assert f"--source {profile.camera.source}" in unit
    assert load_profile("raspberry-pi-4").camera.source == "picamera2"
    assert load_profile("raspberry-pi-4").setup.system_site_packages  # apt's picamera2 must be importable
    assert load_profile("jetson-orin-nano").setup.system_opencv  # JetPack's OpenCV has GStreamer for csi://
    assert load_profile("jetson-orin-nano").onnx_providers[0] == "TensorrtExecutionProvider"
    assert "After=network-online.target nvargus-daemon.service" in load_profile("jetson-nano").systemd_unit("/b")


@pytest.mark.parametrize(
    ("machine", "model", "expected"),
    [
        ("aarch64", "Raspberry Pi 4 Model B Rev 1.4", "raspberry-pi-4"),
        ("aarch64", "Raspberry Pi 5 Model B Rev 1.0", "raspberry-pi-5"),
        ("aarch64", "NVIDIA Jetson Nano Developer Kit", "jetson-nano"),
        ("aarch64", "NVIDIA Jetson Orin Nano Developer Kit", "jetson-orin-nano"),
        ("x86_64", "", "generic-x86-64"),
        ("aarch64", "Some other board", None),
    ],
)
def test_profile_detection(machine, model, expected):
    profile = detect_profile(machine, model)
    assert (profile.name if profile else None) == expected


def test_unknown_profile_names_the_choices():
    with pytest.raises(ProfileError, match=r"'raspberry-pi-3'.*generic-x86-64.*did you mean 'raspberry-pi-[45]'"):
        load_profile("raspberry-pi-3")
