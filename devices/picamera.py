"""Raspberry Pi CSI cameras through picamera2 (libcamera).

The camera's ISP scales in hardware: a low-resolution ("lores") YUV420 stream sized just above the
model's input is captured, so the CPU never touches full-size frames. The lores stream keeps the
sensor's aspect ratio (see sources.lowres_size) and the one preprocessing path does the crop.
picamera2 ships with Raspberry Pi OS (`sudo apt install python3-picamera2`); it is imported only when
the source opens.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from .source_base import Source, SourceError, SourceOptions, lowres_size

INSTALL_HINT = (
    "picamera2 is not installed: on Raspberry Pi OS run `sudo apt install python3-picamera2` and create the "
    "virtual environment with --system-site-packages so it can see it"
)


def _picamera2_class():
    try:
        from picamera2 import Picamera2
    except ImportError:
        raise SourceError(INSTALL_HINT) from None
    return Picamera2


class PiCamera2Source(Source):
    """`picamera2` / `picamera2://N`: CSI camera N, delivered as BGR frames from the lores stream."""

    live = True

    def __init__(self, uri: str, camera_num: int = 0, options: SourceOptions | None = None):
        super().__init__(uri)
        self.camera_num = camera_num
        self.options = options or SourceOptions()
        self.size: tuple[int, int] | None = None  # (width, height) of the delivered frames
        self._camera = None

    def _open(self) -> None:
        Picamera2 = _picamera2_class()
        cameras = Picamera2.global_camera_info()
        if self.camera_num >= len(cameras):
            found = ", ".join(str(c.get("Model", "?")) for c in cameras) or "none"
            raise SourceError(
                f"Camera {self.uri!r}: no CSI camera number {self.camera_num} (cameras found: {found}); "
                "check the ribbon cable and `rpicam-hello --list-cameras`"
            )
        options = self.options
        lores = lowres_size(options.camera_size, options.model_size)
        try:
            camera = Picamera2(camera_num=self.camera_num)
        except (RuntimeError, IndexError) as error:  # busy: another process holds the camera
            raise SourceError(f"Camera {self.uri!r} could not be opened (in use by another process?): {error}") from None
        try:
            config = camera.create_video_configuration(
                main={"size": tuple(options.camera_size)},
                lores={"size": lores, "format": "YUV420"},  # lores must be YUV on a Pi 4
                controls={"FrameRate": options.camera_fps},
                buffer_count=2,  # a slow model must not be handed an old queued buffer
            )
            camera.align_configuration(config)
            camera.configure(config)
            camera.start()
        except Exception as error:  # libcamera raises RuntimeError and friends; close before reporting
            camera.close()
            raise SourceError(f"Camera {self.uri!r} could not be configured: {error}") from None
        self.size = tuple(config["lores"]["size"])
        self.fps = float(options.camera_fps)
        self._camera = camera

    def _read(self) -> tuple[np.ndarray, float] | None:
        try:
            yuv = self._camera.capture_array("lores")
        except Exception as error:  # the camera vanished or libcamera failed
            raise SourceError(f"Camera {self.uri!r} stopped delivering frames: {error}") from None
        timestamp = time.time()
        width, height = self.size
        # I420 planes: height rows of Y then height/2 rows of U and V; rows may be padded past width.
        yuv = np.ascontiguousarray(yuv[: height * 3 // 2, :width])
        return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420), timestamp

    def _close(self) -> None:
        if self._camera is not None:
            try:
                self._camera.stop()
            finally:
                self._camera.close()
                self._camera = None
