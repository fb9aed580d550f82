"""What someone watching the live preview costs the camera loop.

    python -m edgevision.runtime.preview_bench BUNDLE [--frames 3000] [--repeats 3] [--threads 1] [--json]

The same generated source (a fresh 640x480 frame each time, as a camera hands out; noise, the costliest
picture to encode) runs through the loop as fast as it goes, without a preview and with one watched the
way the page watches it: an MJPEG client and an SSE client reading in threads of this process. Runs
alternate (off, on, on, off, ...) so drift in clock speed or load hits both alike. Prints the median fps
of each, their ratio, what the viewer received and the CPU. Give it frames for runs of several seconds each
(a tiny model needs 100000): a short run mostly measures the server and the viewer starting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import sys
import threading
import time
import urllib.request

from .classifier import Classifier
from .loop import LoopConfig, run_loop
from .preview import BOUNDARY, PreviewConfig
from .soak import GeneratedSource

CONNECT_TIMEOUT_S = 10.0


def cpu_model() -> tuple[str, bool]:
    """This machine's CPU model and whether it has AVX-512 VNNI (fast int8 dot products)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            text = cpuinfo.read()
    except OSError:  # not Linux
        return platform.processor() or platform.machine(), False
    model = re.search(r"^(?:model name|Model)\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    vnni = bool(flags and "avx512_vnni" in flags.group(1).split())
    return (model.group(1).strip() if model else platform.machine()), vnni


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Viewer:
    """What the page does: one /stream.mjpg and one /events connection to the preview at `port`, each read
    in a thread (connecting as soon as the server listens) until the server closes; counts what came."""

    def __init__(self, port: int):
        self.received = {"jpegs": 0, "events": 0}
        self.errors: list[str] = []
        self._run_over = threading.Event()  # a run shorter than connecting: stop trying, no error
        self._threads = [
            threading.Thread(target=self._read, args=(port, "/stream.mjpg", f"--{BOUNDARY}\r\n".encode(), "jpegs")),
            threading.Thread(target=self._read, args=(port, "/events", b"data: ", "events")),
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, port: int, path: str, marker: bytes, counter: str) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            try:
                response = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=CONNECT_TIMEOUT_S)
                break
            except OSError as error:
                if time.monotonic() > deadline:
                    self.errors.append(f"{path}: {error}")
                    return
                if self._run_over.wait(0.005):
                    return
        tail = b""  # a marker may straddle two reads; fewer bytes than a marker cannot hold a whole one
        with response:
            while chunk := response.read1(65536):
                data = tail + chunk
                self.received[counter] += data.count(marker)
                tail = data[-(len(marker) - 1):]

    def join(self) -> None:
        """Wait for both readers, once the run (and with it the server) is over."""
        self._run_over.set()
        for thread in self._threads:
            thread.join()


def loop_fps(classifier: Classifier, frames: int, watched: bool) -> tuple[float, dict | None]:
    """The loop's fps over `frames` generated frames, JSON lines to /dev/null as a service writes them;
    with `watched`, a preview and a Viewer on it (and what the viewer received)."""
    source = GeneratedSource(frames)
    with open(os.devnull, "w") as sink:
        if not watched:
            return run_loop(classifier, source, LoopConfig(handle_sigterm=False), out=sink).fps, None
        port = free_port()
        viewer = Viewer(port)
        try:
            summary = run_loop(classifier, source, LoopConfig(preview=PreviewConfig(port=port), handle_sigterm=False),
                               out=sink)
        finally:
            viewer.join()
    if viewer.errors:
        raise RuntimeError(f"the viewer could not watch the preview: {'; '.join(viewer.errors)}")
    return summary.fps, {**viewer.received, "seconds": summary.seconds}


def bench(bundle: str, frames: int = 3000, repeats: int = 3, threads: int | None = 1,
          artifact: str | None = None) -> dict:
    classifier = Classifier(bundle, artifact=artifact, threads=threads, profile=None)
    loop_fps(classifier, min(frames, 200), False)  # warm-up: first inferences, page faults
    runs: dict[bool, list[float]] = {False: [], True: []}
    received = []
    for repeat in range(repeats):
        for watched in ((False, True) if repeat % 2 == 0 else (True, False)):
            fps, viewer = loop_fps(classifier, frames, watched)
            runs[watched].append(fps)
            if viewer is not None:
                received.append(viewer)
    model, vnni = cpu_model()
    off, on = statistics.median(runs[False]), statistics.median(runs[True])
    return {
        "artifact": classifier.artifact_name, "engine": classifier.engine.name, "threads": threads,
        "frames": frames, "repeats": repeats, "cpu": model, "avx512_vnni": vnni, "cores": os.cpu_count(),
        "fps_without_preview": runs[False], "fps_with_preview": runs[True],
        "median_fps_without": off, "median_fps_with": on, "ratio": on / off if off else 0.0,
        "viewer": received,
    }


def _runs(values: list[float]) -> str:
    return ", ".join(f"{value:,.1f}" for value in values)


def format_figures(f: dict) -> str:
    seen = ", ".join(f"{v['jpegs']} JPEGs + {v['events']} events in {v['seconds']:.1f} s" for v in f["viewer"])
    if any(not v["jpegs"] or not v["events"] for v in f["viewer"]):
        seen += " -- a run ended before the viewer was served: its figure is not a watched one; use more --frames"
    return "\n".join([
        f"preview cost: {f['frames']:,} generated 640x480 frames x {f['repeats']} interleaved repeats, "
        f"{f['artifact']} ({f['engine']}, {f['threads']} thread(s))",
        f"cpu: {f['cpu']} ({f['cores']} cores), avx512_vnni: {'yes' if f['avx512_vnni'] else 'no'}",
        f"without preview: {f['median_fps_without']:,.1f} fps (runs {_runs(f['fps_without_preview'])})",
        f"with preview + 1 viewer: {f['median_fps_with']:,.1f} fps (runs {_runs(f['fps_with_preview'])})",
        f"ratio with/without: {f['ratio']:.3f} ({(1 - f['ratio']) * 100:+.1f}% cost)",
        f"the viewer received: {seen}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevision.runtime.preview_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", metavar="BUNDLE")
    parser.add_argument("--frames", type=int, default=3000, help="frames per run (default 3000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind, interleaved (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="engine threads (default 1)")
    parser.add_argument("--artifact", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.frames < 100:
        parser.error(f"--frames must be at least 100 (a run shorter than a few preview frames says nothing), "
                     f"got {args.frames}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    try:
        figures = bench(args.bundle, args.frames, args.repeats, args.threads, args.artifact)
    except (ValueError, ImportError, OSError) as error:  # a bad bundle or artifact, no engine, a busy port
        print(f"preview_bench: {error}", file=sys.stderr)
        return 2
    print(json.dumps(figures) if args.json else format_figures(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
