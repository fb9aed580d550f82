"""Camera and picture sources, chosen by URI (the source is a URI, as in jetson-inference).

    with open_source("0") as source:           # or "/dev/video0", "clip.mp4", "rtsp://...", "photos/"
        for frame in source:                    # Frame(image=BGR uint8 HxWx3, index, timestamp)
            ...

Every source delivers OpenCV's BGR uint8 pictures; `read()` returns None at the end of a finite source
(a video file, a folder) and raises SourceError when a live source (camera, stream) stops delivering.
This module touches hardware only: it imports the standard library, numpy and OpenCV, nothing else.
The base classes (Source, CaptureSource, Frame, SourceOptions, SourceError) are in source_base.py and
are importable from here too.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from .imagefile import IMAGE_EXTENSIONS, ImageDecodeError, read_image
from .source_base import (  # noqa: F401 (re-exported: the sources' public vocabulary)
    STREAM_OPEN_TIMEOUT_MS,
    STREAM_READ_TIMEOUT_MS,
    CaptureSource,
    Frame,
    Source,
    SourceError,
    SourceOptions,
    lowres_size,
    redact,
)

logger = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
ACCEPTED_FORMS = (
    "a camera index ('0') or V4L2 device ('/dev/video0')",
    "a video file",
    "a folder of images",
    "an rtsp://, http:// or https:// stream URL",
    "'picamera2' or 'picamera2://N' (Raspberry Pi CSI camera)",
    "'csi://N' (Jetson CSI camera through Argus)",
)


def _accepted() -> str:
    return "accepted sources: " + "; ".join(ACCEPTED_FORMS)


class CameraSource(CaptureSource):
    """A local camera: an index (0, 1, ...) or a V4L2 device path (/dev/video0), through OpenCV."""

    live = True

    def __init__(self, uri: str, device: int | str):
        super().__init__(uri)
        self.device = device

    def _create_capture(self) -> cv2.VideoCapture:
        if isinstance(self.device, str) and not os.path.exists(self.device):
            raise SourceError(f"Camera '{self.device}' not found: no such device. {self._devices_present()}")
        api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        return cv2.VideoCapture(self.device, api)

    def _open(self) -> None:
        super()._open()
        # V4L2 queues 4 buffers by default; the capture thread drains it anyway, one keeps it minimal.
        self._capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)

    def _open_failed(self) -> str:
        return (
            f"Camera {self.uri!r} could not be opened: not found, busy (in use by another process) "
            f"or no permission (on Linux: is the user in the 'video' group?). {self._devices_present()}"
        )

    @staticmethod
    def _devices_present() -> str:
        if not sys.platform.startswith("linux"):
            return ""
        devices = sorted(glob.glob("/dev/video*"), key=lambda p: int(re.sub(r"\D", "", p) or 0))
        return f"Video devices present: {', '.join(devices)}" if devices else "No /dev/video* devices are present."


class VideoFileSource(CaptureSource):
    """A video file (anything OpenCV's FFmpeg backend decodes); finite: read() returns None at its end."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(os.fspath(path))
        self.path = Path(path)

    def _create_capture(self) -> cv2.VideoCapture:
        if not self.path.is_file():
            raise SourceError(f"Video file '{self.path}' does not exist")
        return cv2.VideoCapture(str(self.path), cv2.CAP_ANY)

    def _open_failed(self) -> str:
        return f"'{self.path}' is not a video file OpenCV can decode (or it is corrupt)"

    def _where(self) -> tuple[str | None, int | None]:
        # The capture's position is the next frame to read: the one just read is the one before it.
        position = self._capture.get(cv2.CAP_PROP_POS_FRAMES) if self._capture is not None else None
        return str(self.path), (int(position) - 1 if position and position > 0 else None)


class StreamSource(CaptureSource):
    """A network stream (rtsp://, http://, https://, including MJPEG over HTTP) through OpenCV's FFmpeg
    backend. A stream that sends nothing for read_timeout_ms counts as stalled: read() raises SourceError."""

    live = True

    def __init__(self, uri: str, open_timeout_ms: int = STREAM_OPEN_TIMEOUT_MS,
                 read_timeout_ms: int = STREAM_READ_TIMEOUT_MS):
        super().__init__(uri)
        self.open_timeout_ms = open_timeout_ms
        self.read_timeout_ms = read_timeout_ms

    def _create_capture(self) -> cv2.VideoCapture:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.open_timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_ms,
        ]  # fmt: skip
        return cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, params)

    def _open_failed(self) -> str:
        return (
            f"Stream {redact(self.uri)!r} could not be opened within {self.open_timeout_ms / 1000:g} s: "
            "unreachable, wrong path or credentials, or a format FFmpeg cannot read"
        )


class ImageFolderSource(Source):
    """The image files of a folder and its subfolders (a test set laid out in class folders), in sorted
    order: a folder's own files, then each subfolder's, by name; hidden files and folders are ignored. Finite.

    Each file is read by the one decoder (imagefile.read_image), as training and `classify_file` read
    it, EXIF orientation included; files it refuses are skipped with a warning that says why.
    """

    def __init__(self, folder: str | os.PathLike):
        super().__init__(os.fspath(folder))
        self.folder = Path(folder)
        self.files: list[Path] = []
        self._next = 0
        self._current: str | None = None

    def _open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"Image folder '{self.folder}' does not exist")
        self.files = []
        for current, dirs, names in os.walk(self.folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            self.files += [Path(current) / name for name in sorted(names)
                           if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS]
        if not self.files:
            raise SourceError(f"Folder '{self.folder}' has no images ({', '.join(IMAGE_EXTENSIONS)})")
        self._next = 0

    def _read(self) -> tuple[np.ndarray, float] | None:
        while self._next < len(self.files):
            path = self.files[self._next]
            self._next += 1
            try:
                image = read_image(path, "bgr")
                self._current = str(path)
                return image, time.time()
            except (ImageDecodeError, OSError) as error:
                logger.warning("Skipping a file the decoder refused: %s", error)  # the error names it
        return None

    def _where(self) -> tuple[str | None, int | None]:
        return self._current, None


def open_source(uri: str | int | os.PathLike, options: SourceOptions | None = None) -> Source:
    """Open a source by URI and return it, opened (use it as a context manager to close it).

    "0", "1", ... or "/dev/videoN": a camera through V4L2; "rtsp://", "http://", "https://": a network
    stream; "picamera2" or "picamera2://N": a Raspberry Pi CSI camera; "csi://N": a Jetson CSI camera;
    an existing folder: its images; an existing file: a video. A number always means a camera.
    """
    source = source_for(uri, options)
    source.open()
    return source


def source_for(uri: str | int | os.PathLike, options: SourceOptions | None = None) -> Source:
    """The Source for a URI, not yet opened (see open_source for the forms)."""
    if isinstance(uri, bool) or not isinstance(uri, (str, int, os.PathLike)):
        raise TypeError(f"A source URI is a string, got {type(uri).__name__}")
    text = str(uri) if isinstance(uri, int) else os.fspath(uri)
    return _source_for(text, options or SourceOptions())


def _source_for(uri: str, options: SourceOptions) -> Source:
    if not uri.strip():
        raise ValueError(f"Empty source URI; {_accepted()}")
    if uri.isdigit():
        return CameraSource(uri, int(uri))
    if re.fullmatch(r"/dev/video\d+", uri):
        return CameraSource(uri, uri)
    lowered = uri.lower()
    if lowered == "picamera2" or lowered.startswith(("picamera2://", "csi://")):
        number = uri.split("://", 1)[1] if "://" in uri else "0"
        if not number.isdigit():
            raise ValueError(f"Camera source {uri!r} needs a camera number after '://', e.g. 'csi://0'; {_accepted()}")
        if lowered.startswith("csi://"):
            from .jetson import JetsonCsiSource  # GStreamer pipeline; needs OpenCV built with GStreamer

            return JetsonCsiSource(uri, int(number), options)
        from .picamera import PiCamera2Source  # imports picamera2 only when opened

        return PiCamera2Source(uri, int(number), options)
    if "://" in uri:
        scheme = uri.split("://", 1)[0].lower()
        if scheme in STREAM_SCHEMES:
            return StreamSource(uri, options.open_timeout_ms, options.read_timeout_ms)
        raise ValueError(f"Unsupported URL scheme {scheme!r} in source {redact(uri)!r}; {_accepted()}")
    path = Path(uri)
    if path.is_dir():
        return ImageFolderSource(path)
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            raise ValueError(
                f"Source {uri!r} is a single image, not a video; put it in a folder and pass the folder "
                f"(or classify it as a file); {_accepted()}"
            )
        return VideoFileSource(path)
    raise ValueError(f"Unknown source {uri!r}: no such file or folder, and not a camera or stream URL; {_accepted()}")
