"""What every source is: the Source base class (open / read / close, bad frames skipped and counted),
CaptureSource for sources read through cv2.VideoCapture, the Frame they deliver, SourceOptions and
SourceError. devices/sources.py (cameras, files, streams, folders), picamera.py and jetson.py build on
this module; none of them imports another.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from .imagefile import ImageDecodeError, to_colour_uint8

logger = logging.getLogger("edgevision.devices.sources")

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


class CaptureSource(Source):
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
