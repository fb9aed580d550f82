"""Decoder processes for streamed training batches.

Decoding in threads of the training process shares one GIL with the fit loop: the Python parts of each
picture (file checks, header parsing, crop arithmetic) serialise, so on many cores streamed training
stays far below training from memory however many threads decode. A `DecodePool` decodes in separate
processes instead, each with its own GIL:

- started with "spawn", never "fork": the training process runs JAX / CUDA / TensorFlow threads, and a
  forked copy of it can deadlock on a lock one of them held;
- each process gets the split's paths and the preprocessing policy once, when it starts, then decodes
  chunks of a batch (a few dozen pictures) straight into a shared-memory buffer the parent owns, and
  sends back only the positions it used and the corrupt files it met, never the pixels;
- the parent copies the finished rows out of shared memory into the batch it returns, so the buffer is
  reused and a returned batch is never overwritten.

This module imports only the standard library, numpy and the runtime: the worker processes import it
(and the `edgevision.train` package around it), and must not load Keras or an ML framework.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from edgevision.runtime.preprocess import ImageDecodeError, PreprocessPolicy, load_and_prepare

__all__ = ["DECODERS", "DecodePool", "chunk_rows", "decode_replacing", "default_stream_decoders", "resolve_decoder"]

DECODERS = ("auto", "threads", "processes")
# "auto" decodes in processes from this many usable cores: below it threads scale about linearly and
# the processes' start (a second or two) is not worth it.
PROCESSES_FROM_CORES = 8
# Streaming into training on a 16-core H200 host (`python -m edgevision.train.bench streaming
# --train-workers ...`): decoder threads peaked at 8 (2,873 images/s; 16 gave 1,708: the GIL), processes at
# 12 (5,873-6,422; 16 gave 3,605): the training process's own threads need the remaining cores.
MAX_STREAM_THREADS = 8
MAX_CHUNK = 32  # pictures per request to a process: small enough that one batch spreads over many cores
HEAVY_MODULES = ("keras", "jax", "jaxlib", "tensorflow", "torch")


def resolve_decoder(decoder: str, cores: int) -> str:
    """"threads" or "processes" for `decoder` ("auto" picks by the number of usable cores)."""
    if decoder not in DECODERS:
        raise ValueError(f"Unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    if decoder != "auto":
        return decoder
    return "processes" if cores >= PROCESSES_FROM_CORES else "threads"


def default_stream_decoders(decoder: str, cores: int) -> int:
    """Decoders for streaming into training when none is asked for: threads, one per core up to
    MAX_STREAM_THREADS; processes, three per four cores (the rest are the training process's)."""
    if resolve_decoder(decoder, cores) == "threads":
        return max(1, min(cores, MAX_STREAM_THREADS))
    return max(1, cores - cores // 4)


def chunk_rows(batch_size: int, processes: int) -> int:
    """Pictures per request: a batch spread over every process, at most MAX_CHUNK a request."""
    return max(1, min(MAX_CHUNK, -(-batch_size // processes)))


def decode_replacing(paths: Sequence[str], position: int, policy: PreprocessPolicy, out: np.ndarray,
                     known_corrupt: Callable[[int], bool], found: Callable[[int, str], None]) -> int | None:
    """Decode `paths[position]` into `out`; when that file is corrupt, the next usable file of the split
    instead (wrapping around). Returns the position decoded, None when no file of the split decodes.
    `known_corrupt(i)` skips files already found corrupt; `found(i, reason)` is told of new ones."""
    count = len(paths)
    for step in range(count):
        candidate = (position + step) % count
        if known_corrupt(candidate):
            continue
        try:
            out[...] = load_and_prepare(paths[candidate], policy)
        except ImageDecodeError as error:
            found(candidate, f"not a decodable image: {error}")
            continue
        except OSError as error:
            found(candidate, f"could not read the file: {error.strerror or error}")
            continue
        return candidate
    return None


# ----------------------------------------------------------------------------------------------------
# In each worker process

@dataclass
class _Worker:
    paths: list[str]
    policy: PreprocessPolicy
    memory: SharedMemory
    slots: np.ndarray  # (slots, rows, H, W, 3) uint8 over `memory`
    corrupt: dict[int, str]  # found by this process: decoded at most once here


_worker: _Worker | None = None


def _start_worker(paths: list[str], policy: PreprocessPolicy, memory_name: str, shape: tuple[int, ...]) -> None:
    import signal

    import cv2

    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's: it closes the pool in order
    cv2.setNumThreads(1)  # the processes are the parallelism; OpenCV's own threads would oversubscribe
    memory = SharedMemory(name=memory_name)
    _worker = _Worker(paths, policy, memory, np.ndarray(shape, np.uint8, buffer=memory.buf), {})
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A parent killed outright (SIGKILL, OOM) cannot shut the pool down: its children leave by themselves."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _decode_chunk(slot: int, positions: list[int]) -> tuple[list[int], list[tuple[int, str]]]:
    """Decode `positions` into rows 0.. of `slot`: (positions used, -1 when nothing of the split decodes;
    corrupt files newly found as (position, reason))."""
    worker, found = _worker, []

    def record(position: int, reason: str) -> None:
        worker.corrupt[position] = reason
        found.append((position, reason))

    used = []
    for row, position in enumerate(positions):
        decoded = decode_replacing(worker.paths, position, worker.policy, worker.slots[slot, row],
                                   worker.corrupt.__contains__, record)
        if decoded is None:
            return used + [-1] * (len(positions) - row), found
        used.append(decoded)
    return used, found


def _describe_worker() -> dict:
    import cv2

    return {"pid": os.getpid(), "opencv_threads": cv2.getNumThreads(),
            "heavy_modules": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY_MODULES)}


# ----------------------------------------------------------------------------------------------------
# In the training process

def _shut_down(executor: ProcessPoolExecutor, memory: SharedMemory) -> None:
    executor.shutdown(wait=True, cancel_futures=True)
    memory.unlink()
    try:
        memory.close()
    except BufferError:  # a view still in use in another thread: the mapping goes with its last reference
        pass


class DecodePool:
    """`processes` decoder processes for the files `paths`, started on first use; `close()` (or leaving a
    `with` block) stops them and removes the shared memory. Several threads may call `decode` at once."""

    def __init__(self, paths: Sequence[str], policy: PreprocessPolicy, processes: int, rows: int):
        if isinstance(processes, bool) or not isinstance(processes, (int, np.integer)) or processes < 1:
            raise ValueError(f"processes must be a positive integer, got {processes!r}")
        self.paths, self.policy, self.processes, self.rows = list(paths), policy, int(processes), int(rows)
        self.slot_count = 2 * self.processes  # one request decoding and one waiting in each process
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._memory: SharedMemory | None = None
        self._slots: np.ndarray | None = None
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._finalizer: weakref.finalize | None = None
        self._closed = False

    @property
    def memory_name(self) -> str | None:
        """The shared-memory segment's name (None before the pool's first use)."""
        return None if self._memory is None else self._memory.name

    def _start(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("This decode pool is closed")
            if self._executor is not None:
                return
            shape = (self.slot_count, self.rows, self.policy.height, self.policy.width, 3)
            memory = SharedMemory(create=True, size=int(np.prod(shape)))
            try:
                executor = ProcessPoolExecutor(self.processes, mp_context=get_context("spawn"),
                                               initializer=_start_worker,
                                               initargs=(self.paths, self.policy, memory.name, shape))
            except BaseException:
                memory.unlink()
                memory.close()
                raise
            self._memory, self._executor = memory, executor
            self._slots = np.ndarray(shape, np.uint8, buffer=memory.buf)
            for slot in range(self.slot_count):
                self._free.put(slot)
            # Also at interpreter exit, and when a pool nobody closed is collected.
            self._finalizer = weakref.finalize(self, _shut_down, executor, memory)

    def describe_worker(self) -> dict:
        """One worker process's pid, OpenCV thread count and the ML frameworks it has loaded (none)."""
        self._start()
        return self._executor.submit(_describe_worker).result()

    def decode(self, positions: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Decode the files at `positions` into `out` (len(positions), H, W, 3) uint8: (positions used,
        -1 where no file of the split decodes; corrupt files found as (position, reason))."""
        self._start()
        positions = np.asarray(positions, dtype=np.int64)
        used, found = np.empty(len(positions), np.int64), []
        pending: deque[tuple[int, list[int], int, Future]] = deque()
        try:
            for start in range(0, len(positions), self.rows):
                # Block for a free slot only while holding none: a thread waiting with slots of its own
                # (whose results it has not collected) could deadlock with another doing the same.
                slot = self._take_slot(wait=not pending)
                while slot is None:
                    self._collect(pending.popleft(), out, used, found)
                    slot = self._take_slot(wait=not pending)
                chunk = positions[start : start + self.rows].tolist()
                pending.append((start, chunk, slot, self._submit(slot, chunk)))
            while pending:
                self._collect(pending.popleft(), out, used, found)
        finally:
            for _, _, slot, future in pending:  # after an error: a slot is free once its process is done with it
                self._release(slot, future)
        return used, found

    def _take_slot(self, wait: bool) -> int | None:
        while True:
            try:
                return self._free.get(timeout=0.5) if wait else self._free.get_nowait()
            except queue.Empty:
                if not wait:
                    return None
                if self._closed:
                    raise RuntimeError("This decode pool is closed") from None

    def _submit(self, slot: int, chunk: list[int]) -> Future:
        try:
            return self._executor.submit(_decode_chunk, slot, chunk)
        except BrokenProcessPool as error:
            self._free.put(slot)
            raise self._ended(chunk, error) from error
        except BaseException:
            self._free.put(slot)
            raise

    def _ended(self, chunk: list[int], error: BrokenProcessPool) -> RuntimeError:
        return RuntimeError(
            f"A decoder process ended while decoding {len(chunk)} file(s) from {self.paths[chunk[0]]} ({error}). "
            "If it printed an error about the 'bootstrapping phase', call train() under "
            "`if __name__ == '__main__':` in the script; otherwise try decoder='threads'")

    def _release(self, slot: int, future: Future) -> None:
        future.add_done_callback(lambda _: self._free.put(slot))

    def _collect(self, item: tuple[int, list[int], int, Future], out: np.ndarray, used: np.ndarray,
                 found: list) -> None:
        start, chunk, slot, future = item
        try:
            try:
                chunk_used, chunk_found = future.result()
            except BrokenProcessPool as error:
                raise self._ended(chunk, error) from error
            slots = self._slots
            if slots is None:
                raise RuntimeError("This decode pool is closed")
            stop = start + len(chunk_used)
            out[start:stop] = slots[slot, : len(chunk_used)]
            used[start:stop] = chunk_used
            found.extend(chunk_found)
        finally:
            self._release(slot, future)

    def close(self) -> None:
        """Stop the processes (after the chunks they are decoding) and remove the shared memory."""
        with self._lock:
            self._closed = True
            finalizer, self._slots = self._finalizer, None  # no view left: the mapping can close
        if finalizer is not None:
            finalizer()  # runs _shut_down once, however often close is called

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
