"""Camera and picture sources, chosen by URI (the source is a URI, as in jetson-inference).

    with open_source("0") as source:           # or "/dev/video0", "clip.mp4", "rtsp://...", "photos/"
        for frame in source:                    # Frame(image=BGR uint8 HxWx3, index, timestamp)
            ...

Every source delivers OpenCV's BGR uint8 pictures; `read()` returns None at the end of a finite source
(a video file, a folder) and raises SourceError when a live source (camera, stream) stops delivering.
This module touches hardware only: it imports the standard library, numpy and OpenCV, nothing else.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from .imagefile import IMAGE_EXTENSIONS, ImageDecodeError, read_image, to_colour_uint8

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
# How long an unreachable network stream may hold up open() and read() before it counts as failed.
STREAM_OPEN_TIMEOUT_MS = 10_000
STREAM_READ_TIMEOUT_MS = 10_000


class SourceError(RuntimeError):
    """A source that cannot be opened or stopped delivering frames; the message names it."""


@dataclass(frozen=True)
class SourceOptions:
    """How to open a source. model_size (height, width) lets cameras that can scale in hardware
    (picamera2's low-res stream, the Jetson's nvvidconv) deliver pictures near the model's size;
    camera_size (width, height) and camera_fps ask a CSI camera for that sensor mode."""

    model_size: tuple[int, int] | None = None
    camera_size: tuple[int, int] = (1280, 720)
    camera_fps: int = 30
    open_timeout_ms: int = STREAM_OPEN_TIMEOUT_MS
    read_timeout_ms: int = STREAM_READ_TIMEOUT_MS
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_size is not None and (
            len(self.model_size) != 2 or not all(isinstance(v, int) and v > 0 for v in self.model_size)
        ):
            raise ValueError(f"model_size {self.model_size!r} is invalid; use (height, width) positive integers")
        if len(self.camera_size) != 2 or not all(isinstance(v, int) and v > 0 for v in self.camera_size):
            raise ValueError(f"camera_size {self.camera_size!r} is invalid; use (width, height) positive integers")
        for name in ("camera_fps", "open_timeout_ms", "read_timeout_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} {value!r} is invalid; use a positive integer")


def lowres_size(camera_size: tuple[int, int], model_size: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) of the smallest even-sized picture with the camera's aspect ratio that still covers
    the model's input, so hardware scaling does the heavy resize and the one preprocessing path only crops
    and makes a small final resize (the crop policy is kept: nothing is squashed by the camera)."""
    width, height = camera_size
    if model_size is None:
        return width, height
    model_h, model_w = model_size
    scale = max(model_w / width, model_h / height)
    if scale >= 1:
        return width, height
    return min(width, 2 * math.ceil(width * scale / 2)), min(height, 2 * math.ceil(height * scale / 2))


@dataclass
class Frame:
    image: np.ndarray  # BGR uint8, (H, W, 3)
    index: int  # 0, 1, 2, ... in delivery order
    timestamp: float  # time.time() when the frame was captured
    file: str | None = None  # the image or video file it came from (folders and files; None for live sources)
    position: int | None = None  # the frame's number in a video file (skipped frames included)


def _accepted() -> str:
    return "accepted sources: " + "; ".join(ACCEPTED_FORMS)


def redact(uri: str) -> str:
    """A URI safe to print: the password of rtsp://user:password@host is replaced by ***."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _picture(image, name: str) -> np.ndarray:
    """A delivered frame as uint8 (H, W, 3) BGR; ImageDecodeError for anything that is not a picture."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        shape = getattr(image, "shape", None)
        raise ImageDecodeError(f"{name}: a frame must be a non-empty (H, W) or (H, W, C) array, got "
                               f"{type(image).__name__} {shape}")
    return to_colour_uint8(image, "bgr", name)


class Source(ABC):
    """A context manager delivering Frames. Subclasses implement `_open`, `_read` and `_close`.

    `uri` is what the source was opened from; `fps` is the nominal frame rate (None when unknown).
    `live` sources (cameras, streams) deliver at their own pace and raise SourceError when they stop;
    finite ones (files, folders) are read on demand and end with None. Iterating a source reads it to
    its end.
    """

    live = False

    def __init__(self, uri: str):
        self.uri = uri
        self.fps: float | None = None
        self._index = 0
        self._opened = False
        # Frames the source delivered that are not pictures (wrong type, shape or size): skipped, counted.
        self.bad_frames = 0

    @property
    def is_open(self) -> bool:
        return self._opened

    def open(self) -> "Source":
        """Open the source (idempotent); raises SourceError naming it when it cannot be opened."""
        if not self._opened:
            self._open()
            self._opened = True
        return self

    def read(self) -> Frame | None:
        """The next frame, or None at the end of a finite source."""
        if not self._opened:
            raise SourceError(f"{self!r} is not open: call open() or use it in a with block")
        while True:
            captured = self._read()
            if captured is None:
                return None
            image, timestamp = captured
            try:
                file, position = self._where()
                frame = Frame(image=_picture(image, type(self).__name__), index=self._index, timestamp=timestamp,
                              file=file, position=position)
            except ImageDecodeError as bad:  # one bad frame must not end a run that lasts months
                self.bad_frames += 1
                if self.bad_frames == 1 or self.bad_frames % 1000 == 0:
                    logger.warning("%r: skipped a frame that is not a picture (%d so far): %s", self, self.bad_frames, bad)
                continue
            self._index += 1
            return frame

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._close()

    def __enter__(self) -> "Source":
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __iter__(self):
        while (frame := self.read()) is not None:
            yield frame

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self.uri)!r})"

    # --- for subclasses ---
    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _read(self) -> tuple[np.ndarray, float] | None: ...

    def _close(self) -> None:
        pass

    def _where(self) -> tuple[str | None, int | None]:
        """(file, position) of the frame `_read` just returned; (None, None) for live sources."""
        return None, None


class _CaptureSource(Source):
    """A source read through cv2.VideoCapture."""

    def __init__(self, uri: str):
        super().__init__(uri)
        self._capture: cv2.VideoCapture | None = None

    @abstractmethod
    def _create_capture(self) -> cv2.VideoCapture: ...

    @abstractmethod
    def _open_failed(self) -> str: ...

    def _open(self) -> None:
        capture = self._create_capture()
        if not capture.isOpened():
            capture.release()
            raise SourceError(self._open_failed())
        self._capture = capture
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else None

    def _read(self) -> tuple[np.ndarray, float] | None:
        # grab() takes the frame from the device; the timestamp is taken then, before decoding.
        if self._capture.grab():
            timestamp = time.time()
            ok, image = self._capture.retrieve()
            if ok and image is not None and image.size:
                return image, timestamp
        if self.live:
            raise SourceError(f"{self!r} stopped delivering frames (disconnected, or the stream ended)")
        return None

    def _close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def skip(self, count: int) -> int:
        """Pass over `count` frames without decoding them (grab() only); returns how many were skipped.
        Frame indices keep counting, so a skipped frame's index is never reused."""
        if not self._opened:
            raise SourceError(f"{self!r} is not open: call open() or use it in a with block")
        skipped = 0
        while skipped < count and self._capture.grab():
            skipped += 1
        self._index += skipped
        return skipped


class CameraSource(_CaptureSource):
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


class VideoFileSource(_CaptureSource):
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


class StreamSource(_CaptureSource):
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
