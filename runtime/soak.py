"""Soak: run the camera loop on many generated frames and watch the process for growth.

    python -m edgevision.runtime.soak BUNDLE [--frames 100000] [--bad-every 1000] [--threads 1]

A generated source hands the loop a fresh 640x480 picture per frame (as a camera does), with a frame that
is not a picture every `--bad-every` frames (it must be skipped, never end the run). The command prints
resident memory, threads and open file descriptors at the start, at each tenth of the run and at the
end, and the loop's summary, as text or `--json`. Linux only (it reads /proc/self).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time

import numpy as np

from edgevision.devices.source_base import Source


def process_figures() -> dict:
    """Resident memory (kB), threads and open file descriptors of this process."""
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return {"rss_kb": rss, "threads": threading.active_count(), "os_threads": len(os.listdir("/proc/self/task")),
            "fds": len(os.listdir("/proc/self/fd"))}


class GeneratedSource(Source):
    """`count` fresh frames of `size` (height, width), a broken one (float pixels) every `bad_every`;
    samples process_figures() at `checkpoints`."""

    def __init__(self, count: int, size=(480, 640), bad_every: int | None = None, checkpoints=()):
        super().__init__("generated://soak")
        self.count, self.bad_every = count, bad_every
        self.checkpoints = set(checkpoints)
        self.samples: dict[int, dict] = {}
        self._served = 0
        self._base = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)

    def _open(self) -> None:
        pass

    def _read(self):
        if self._served >= self.count:
            return None
        if self._served in self.checkpoints:
            self.samples[self._served] = process_figures()
        self._served += 1
        if self.bad_every and self._served % self.bad_every == 0:
            return self._base.astype(np.float32), time.time()  # not a picture: the source skips it
        image = self._base.copy()
        image[0, 0, 0] = self._served & 255
        return image, time.time()


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def soak(bundle: str, frames: int = 100_000, bad_every: int | None = 1000, threads: int | None = 1,
         artifact: str | None = None) -> dict:
    from .classifier import Classifier
    from .loop import LoopConfig, run_loop

    classifier = Classifier(bundle, artifact=artifact, threads=threads, profile=None)
    checkpoints = sorted({0, *(frames * k // 10 for k in range(1, 10)), frames - 1})
    source = GeneratedSource(frames, bad_every=bad_every, checkpoints=checkpoints)
    started = process_figures()
    summary = run_loop(classifier, source, LoopConfig(), out=_Discard())
    ended = process_figures()
    samples = [{"frame": k, **v} for k, v in sorted(source.samples.items())]
    after_warmup = [s for s in samples if s["frame"] >= frames // 10] or samples
    return {
        "frames_generated": frames, "bad_every": bad_every, "artifact": classifier.artifact_name,
        "engine": classifier.engine.name, "machine": platform.machine(), "python": platform.python_version(),
        "summary": summary.to_dict(), "start": started, "end": ended, "samples": samples,
        "rss_growth_kb_after_warmup": after_warmup[-1]["rss_kb"] - after_warmup[0]["rss_kb"],
        "thread_growth": ended["os_threads"] - started["os_threads"], "fd_growth": ended["fds"] - started["fds"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevision.runtime.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", metavar="BUNDLE")
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--bad-every", type=int, default=1000, help="a broken frame every N frames (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--artifact", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.frames < 10:
        parser.error(f"--frames must be at least 10, got {args.frames}")
    figures = soak(args.bundle, args.frames, args.bad_every or None, args.threads, args.artifact)
    if args.json:
        print(json.dumps(figures))
        return 0
    s = figures["summary"]
    print(f"soak: {figures['frames_generated']:,} generated 640x480 frames through {figures['artifact']} "
          f"({figures['engine']}, {args.threads} thread(s), {figures['machine']}, Python {figures['python']})")
    print(f"classified {s['frames']:,}, skipped {s['bad_frames']:,} bad frames, {s['failed_frames']} failed, "
          f"{s['fps']:,.0f} fps, stopped by {s['stopped_by']}")
    for sample in figures["samples"]:
        print(f"  frame {sample['frame']:>9,}: rss {sample['rss_kb'] / 1024:7.1f} MB, threads {sample['os_threads']}, "
              f"fds {sample['fds']}")
    print(f"resident memory after the first tenth: {figures['rss_growth_kb_after_warmup'] / 1024:+.1f} MB; "
          f"threads {figures['thread_growth']:+d}, file descriptors {figures['fd_growth']:+d} over the run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
