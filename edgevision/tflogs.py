"""Keep TensorFlow's C++ start-up lines off the command line's stderr unless the user asked for them.

`TF_CPP_MIN_LOG_LEVEL` quiets TensorFlow's C++ logging, but not the lines its libraries print while
they load, before absl's logging is initialised: on CPUs with AVX-512 VNNI, BF16 or AMX, TensorFlow
2.21 prints "oneDNN custom operations are on" (and absl's "All log messages before
absl::InitializeLog()" notice) on every import, twice, whatever the variable says. `quiet_tensorflow`
holds what the process writes to stderr while `tensorflow` is being imported, then passes on every
line except absl records below `TF_CPP_MIN_LOG_LEVEL` (and absl's notice when no record is left). A
level the user set wins: `TF_CPP_MIN_LOG_LEVEL=0` shows everything.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import importlib.util
import os
import re
import sys
import tempfile
import threading

DEFAULT_LEVEL = "2"  # INFO and WARNING records hidden; errors shown
# absl's record prefix: severity letter, MMDD, time (before absl is initialised, "00:00:" and the seconds
# since 1970), thread id, file:line]
_RECORD = re.compile(r"^([IWEF])\d{4} \d+:\d+:\d+(?:\.\d+)?\s+\d+ [^\s\]]+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
# One redirection of the process's stdout/stderr at a time, whoever makes it (export/tflite.py too).
STDIO_REDIRECT_LOCK = threading.RLock()
_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def quiet_tensorflow() -> None:
    """Default TF_CPP_MIN_LOG_LEVEL to 2 and filter TensorFlow's import-time lines by it (once per process);
    at level 1 and above (the default included), TensorFlow's Python-side retracing hints go too."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_LEVEL)
    tf_logger = logging.getLogger("tensorflow")  # the logger tf.get_logger() returns, made ahead of the import
    if _level() >= 1 and not any(isinstance(f, _NoRetracingHint) for f in tf_logger.filters):
        tf_logger.addFilter(_NoRetracingHint())
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietImport())


class _NoRetracingHint(logging.Filter):
    """Drops "... triggered tf.function retracing": a hint for whoever writes the TensorFlow code (Keras'
    predict on batches of several sizes), printed mid-export to users who can do nothing about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def kept_lines(text: str, level: int) -> str:
    """`text` without absl records below `level`, and without absl's notice when no record is kept."""
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not ((m := _RECORD.match(line)) and _SEVERITY[m.group(1)] < level)]
    if not any(_RECORD.match(line) for line in kept):
        kept = [line for line in kept if line.rstrip("\r\n") != _NOTICE]
    return "".join(kept)


def _level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:  # TensorFlow reads an unparsable value as 0
        return 0


@contextlib.contextmanager
def held_stderr(keep):
    """Hold what is written to file descriptor 2 (C++ and Python alike) and pass on `keep(text)`. One
    thread at a time: two interleaved redirections would restore each other's descriptors."""
    with STDIO_REDIRECT_LOCK:
        yield from _held_stderr(keep)


def _held_stderr(keep):
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            sys.stderr.write(keep(held.read().decode(errors="replace")))
            sys.stderr.flush()


def _filtered_stderr():
    return held_stderr(lambda text: kept_lines(text, _level()))


# LiteRT announces its default CPU delegate on every interpreter it builds; it has no setting to stop it.
_LITERT_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def quiet_litert():
    """Hold stderr while a LiteRT interpreter is built and drop its delegate notice (shown at
    TF_CPP_MIN_LOG_LEVEL=0, like TensorFlow's own INFO lines)."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() == "0":
        return contextlib.nullcontext()
    return held_stderr(lambda text: "".join(line for line in text.splitlines(keepends=True)
                                            if line.rstrip("\r\n") != _LITERT_NOTICE))


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` the usual way, then executes it with stderr filtered; removes itself after."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # as an ordinary import leaves them
        with _filtered_stderr():
            self._loader.exec_module(module)
