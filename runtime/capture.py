"""Frame feeds: how the inference loop gets its next frame from a source.

- Live sources (cameras, streams) deliver at their own pace whether anyone reads or not. A capture
  thread reads them and keeps only the newest frame: no queue, so a slow model is always handed the
  newest frame there is at the moment it asks, and the frames it had no time for are counted as dropped.
  When the source fails (camera unplugged, stream cut or stalled past its read timeout), the thread
  closes it, logs, and reopens it with exponential backoff; the loop just waits for the next frame.
- Finite sources (video files, folders) are read on demand in the consumer's thread: no thread competes
  with inference for the cores and no frame is decoded that nobody will use. In real-time mode a file is
  played at its own frame rate like a camera: frames whose time passed while the model was busy are
  skipped with grab() (no decoding), and a fast model waits for the next frame's time.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
import time
from dataclasses import dataclass

from edgevision.devices.source_base import Frame, Source, SourceError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptureConfig:
    """realtime: play finite sources at their frame rate (fps, else the file's own) instead of reading every
    frame as fast as the model goes. reconnect: reopen a failed live source (backoff from backoff_s,
    doubling up to backoff_max_s) instead of ending."""

    realtime: bool = False
    fps: float | None = None
    reconnect: bool = True
    backoff_s: float = 0.5
    backoff_max_s: float = 10.0

    def __post_init__(self) -> None:
        if self.fps is not None and not (isinstance(self.fps, (int, float)) and 0 < self.fps <= 1000):
            raise ValueError(f"fps {self.fps!r} is invalid; use a number in (0, 1000] or None (the source's own)")
        if not 0 < self.backoff_s <= self.backoff_max_s:
            raise ValueError(
                f"backoff_s {self.backoff_s!r} and backoff_max_s {self.backoff_max_s!r} are invalid; "
                "use 0 < backoff_s <= backoff_max_s"
            )


class FrameFeed(ABC):
    """next() -> the frame to classify now, or None once the source has ended or the feed was stopped."""

    def __init__(self, source: Source):
        self.source = source
        self.dropped = 0  # frames the source delivered that were never classified
        self.reconnects = 0

    @abstractmethod
    def next(self) -> Frame | None: ...

    def stop(self) -> None:
        """Stop delivering and close the source (idempotent)."""
        self.source.close()

    def __enter__(self) -> "FrameFeed":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


class SequentialFeed(FrameFeed):
    """Every frame of a finite source, in order, decoded when asked for."""

    def next(self) -> Frame | None:
        return self.source.read()


class RealtimeFileFeed(FrameFeed):
    """A finite source played at `fps` as if a camera delivered it; decodes only the frames it hands out.

    Frame i "arrives" at start + i / fps; its timestamp is that moment, so the loop's capture-to-result
    latency means what it means for a camera."""

    def __init__(self, source: Source, fps: float):
        super().__init__(source)
        self.fps = float(fps)
        self._stopped = threading.Event()
        self._start: float | None = None  # perf_counter at frame 0
        self._wall_start = 0.0
        self._next = 0  # index of the next frame the file would give

    def next(self) -> Frame | None:
        if self._start is None:
            self._start, self._wall_start = time.perf_counter(), time.time()
        due = int((time.perf_counter() - self._start) * self.fps)  # the newest frame that has arrived
        if due < self._next:  # the model is ahead of the camera: wait for the next frame to arrive
            due = self._next
            if self._stopped.wait(max(0.0, self._start + due / self.fps - time.perf_counter())):
                return None
        if due > self._next:
            self.dropped += self._skip(due - self._next)
        frame = self.source.read()
        if frame is None:
            return None
        self._next = frame.index + 1
        frame.timestamp = self._wall_start + frame.index / self.fps
        return frame

    def _skip(self, count: int) -> int:
        skip = getattr(self.source, "skip", None)
        if skip is not None:
            return skip(count)  # grab() without decoding
        skipped = 0
        while skipped < count and self.source.read() is not None:
            skipped += 1
        return skipped

    def stop(self) -> None:
        self._stopped.set()
        super().stop()


class LatestFrameFeed(FrameFeed):
    """A live source read by a capture thread that keeps only the newest frame.

    The thread owns the source while it runs (it reads, closes and reopens it), so a camera is never
    released under a read in progress."""

    def __init__(self, source: Source, config: CaptureConfig = CaptureConfig()):
        super().__init__(source)
        self.config = config
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._capture, name=f"capture {source!r}", daemon=True)
        self._thread.start()

    def _capture(self) -> None:
        source, config = self.source, self.config
        backoff = config.backoff_s
        try:
            while not self._stopped.is_set():
                try:
                    if not source.is_open:
                        source.open()
                        self.reconnects += 1
                        logger.warning("%r reopened (reconnection %d)", source, self.reconnects)
                        backoff = config.backoff_s
                    frame = source.read()
                except Exception as error:  # SourceError, or whatever a camera library raises: never crash
                    if not config.reconnect or self._stopped.is_set():
                        self._error = error if isinstance(error, SourceError) else SourceError(f"{source!r}: {error}")
                        break
                    logger.warning("%r failed (%s); reopening in %.1f s", source, error, backoff)
                    source.close()
                    if self._stopped.wait(backoff):
                        break
                    backoff = min(backoff * 2, config.backoff_max_s)
                    continue
                if frame is None:  # a live source that ends (rare: a stream with an end)
                    break
                with self._cond:
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest = frame
                    self._cond.notify_all()
        finally:
            source.close()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def next(self) -> Frame | None:
        with self._cond:
            # Short waits so Ctrl-C and SIGTERM (raised in this, the main thread) are seen at once.
            while self._latest is None and not self._ended:
                self._cond.wait(0.1)
            frame, self._latest = self._latest, None
        if frame is None and self._error is not None:
            raise self._error
        return frame

    def stop(self, timeout: float = 2.0) -> None:
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()
        # A read blocked inside the capture library ends by the source's own read timeout; the daemon
        # thread then closes the source itself. Never release a capture another thread is reading.
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("%r: capture thread still inside a read; it will close the source when it returns",
                           self.source)


def open_feed(source: Source, config: CaptureConfig = CaptureConfig()) -> FrameFeed:
    """The feed for a source: a newest-frame capture thread for live sources, on-demand reads otherwise."""
    source.open()
    if source.live:
        return LatestFrameFeed(source, config)
    fps = config.fps or source.fps
    if config.realtime and fps:
        return RealtimeFileFeed(source, fps)
    return SequentialFeed(source)
