"""Jetson CSI cameras (`csi://N`) through Argus: a GStreamer pipeline read by cv2.VideoCapture.

nvarguscamerasrc captures in NVMM memory, nvvidconv scales (on the VIC, not the CPU) to just above the
model's input, and appsink keeps a single buffer and drops the rest, so a slow model never reads an
old frame. Needs an OpenCV built with GStreamer: JetPack's system OpenCV (`python3-opencv`), not the
pip wheel.
"""

from __future__ import annotations

import re

import cv2

from .source_base import CaptureSource, SourceError, SourceOptions, lowres_size


def opencv_has_gstreamer() -> bool:
    match = re.search(r"GStreamer:\s*(\S+)", cv2.getBuildInformation())
    return bool(match) and match.group(1).upper() != "NO"


def argus_pipeline(sensor_id: int, camera_size: tuple[int, int], fps: int, out_size: tuple[int, int],
                   flip_method: int = 0) -> str:
    """The GStreamer pipeline string for CSI sensor `sensor_id`, delivering BGR at out_size (width, height)."""
    (width, height), (out_w, out_h) = camera_size, out_size
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width={width}, height={height}, framerate={fps}/1, format=NV12 ! "
        f"nvvidconv flip-method={flip_method} ! video/x-raw, width={out_w}, height={out_h}, format=BGRx ! "
        "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )


class JetsonCsiSource(CaptureSource):
    """`csi://N`: Jetson CSI camera N (Argus), scaled in hardware near the model's size."""

    live = True

    def __init__(self, uri: str, sensor_id: int = 0, options: SourceOptions | None = None):
        super().__init__(uri)
        self.sensor_id = sensor_id
        self.options = options or SourceOptions()
        self.size = lowres_size(self.options.camera_size, self.options.model_size)
        self.pipeline = argus_pipeline(sensor_id, self.options.camera_size, self.options.camera_fps, self.size,
                                       int(self.options.extra.get("flip_method", 0)))

    def _create_capture(self) -> cv2.VideoCapture:
        if not opencv_has_gstreamer():
            raise SourceError(
                f"Camera {self.uri!r} needs OpenCV built with GStreamer, and this one is not "
                "(pip's opencv-python wheels never are): on a Jetson use JetPack's system OpenCV "
                "(`sudo apt install python3-opencv`, venv with --system-site-packages, pip uninstall opencv-python-headless)"
            )
        return cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)

    def _open_failed(self) -> str:
        return (
            f"Camera {self.uri!r} could not be opened through Argus: no sensor {self.sensor_id}, camera busy, or "
            "nvargus-daemon not running (`sudo systemctl restart nvargus-daemon`). Pipeline: " + self.pipeline
        )

    def _open(self) -> None:
        super()._open()
        self.fps = float(self.options.camera_fps)
