"""`edgevision bench`: where the time of a camera loop goes, measured piece by piece on this machine.

Figures (all from one run, so ratios compare like with like):
- invoke: the engine alone on one prepared frame (mean);
- decode: the source's per-frame cost (OpenCV decoding the video file);
- preprocess: the one preprocessing path (crop, resize, BGR->RGB) on decoded frames (mean), plus the
  input conversion to the model's tensor (cast, normalization, quantization, NCHW), which runs inside invoke;
- loop: end-to-end fps of the real loop (JSON lines written to /dev/null) as fast as it goes, and its ratio
  to 1 / (invoke + decode + preprocess) -- what the loop's own threads, hand-offs and output cost;
- paced: the file played at a camera's frame rate: dropped frames and capture-to-result latency p95,
  against invoke + preprocess + 5 ms;
- a fresh runtime-only process: import-to-first-prediction time, peak resident memory after a short loop,
  and whether any of TensorFlow / Keras / JAX / torch got imported (they must not).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import numpy as np

from edgevision.devices.sources import VideoFileSource
from .capture import CaptureConfig
from .classifier import Classifier
from .loop import LoopConfig, run_loop
from .preprocess import prepare

HEAVY = ("tensorflow", "keras", "jax", "jaxlib", "torch")


@dataclass(frozen=True)
class BenchConfig:
    """frames: frames for the decode, preprocess and loop figures; invokes: engine runs for its mean;
    paced_fps / paced_frames: the camera-rate run; child: also measure a fresh process (memory, start-up)."""

    frames: int = 300
    invokes: int = 200
    paced_fps: float = 30.0
    paced_frames: int = 150
    child: bool = True

    def __post_init__(self) -> None:
        for name in ("frames", "invokes", "paced_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} {value!r} is invalid; use a positive integer")
        if not 0 < self.paced_fps <= 1000:
            raise ValueError(f"paced_fps {self.paced_fps!r} is invalid; use a number in (0, 1000]")


def _mean_ms(fn, runs: int, warmup: int = 5) -> float:
    """Mean, not median: the loop's fps is a mean too, so the two compare like with like."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs * 1000


def _decode_ms(video: str, frames: int) -> tuple[float, list[np.ndarray]]:
    """Per-frame cost of reading the file (reopened as often as needed), and up to 50 frames kept."""
    kept: list[np.ndarray] = []
    count, elapsed = 0, 0.0
    while count < frames:
        with VideoFileSource(video) as source:
            start = time.perf_counter()
            got = 0
            while count + got < frames and (frame := source.read()) is not None:
                got += 1
                if len(kept) < 50:
                    kept.append(frame.image)
            elapsed += time.perf_counter() - start
        if got == 0:
            raise ValueError(f"'{video}' has no frames to decode")
        count += got
    return elapsed / count * 1000, kept


def _loop(classifier: Classifier, video: str, config: LoopConfig):
    with open(os.devnull, "w") as sink:  # JSON lines are formatted and written, as in production
        return run_loop(classifier, VideoFileSource(video), config, out=sink)


CHILD = textwrap.dedent(
    """
    import time
    start = time.perf_counter()
    import json, sys
    from edgevision.devices.sources import open_source
    from edgevision.runtime.classifier import Classifier
    from edgevision.runtime.loop import LoopConfig, run_loop
    classifier = Classifier({bundle!r}, artifact={artifact!r}, engine={engine!r}, threads={threads!r})
    source = open_source({video!r})
    classifier.classify(source.read().image)
    first = time.perf_counter() - start
    first_cpu = time.process_time()  # CPU seconds of this process so far: less sensitive to a busy machine
    run_loop(classifier, source, LoopConfig(max_frames={frames!r}), out=None)
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
    print(json.dumps({{"first_prediction_s": first, "first_prediction_cpu_s": first_cpu,
                      "peak_rss_mb": peak / 1024, "heavy_modules": heavy}}))
    """
)


def _child(classifier: Classifier, bundle: str, video: str, frames: int) -> dict:
    code = CHILD.format(bundle=bundle, artifact=classifier.artifact_name, engine=classifier.engine.name,
                        threads=getattr(classifier.engine, "threads", None), video=video, frames=frames,
                        heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"the runtime-only child process failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_bench(classifier: Classifier, video: str, config: BenchConfig = BenchConfig(),
              bundle: str | None = None) -> dict:
    """Measure `classifier` on the video file `video`; returns the figures (see the module docstring)."""
    figures: dict = {"artifact": classifier.artifact_name, "engine": classifier.engine.name,
                     "threads": getattr(classifier.engine, "threads", None), "cpus": os.cpu_count()}
    policy = classifier.policy

    def components() -> tuple[float, float, float, float, list[np.ndarray]]:
        decode_ms, frames = _decode_ms(video, min(config.frames, 300))
        # The same frames the loop sees: a model's speed can depend on its input (denormal floats).
        prepared = [prepare(frame, policy, "bgr")[None] for frame in frames]
        turn = iter(range(10**9))
        invoke_ms = _mean_ms(lambda: classifier.engine.run(prepared[next(turn) % len(prepared)]), config.invokes)
        cycle = iter(range(10**9))
        preprocess_ms = _mean_ms(lambda: prepare(frames[next(cycle) % len(frames)], policy, "bgr"),
                                 max(100, config.invokes))
        convert_ms = _mean_ms(lambda: classifier.engine.encode(prepared[next(cycle) % len(prepared)]),
                              max(100, config.invokes))
        return invoke_ms, decode_ms, preprocess_ms, convert_ms, frames

    # The pieces are measured right before and right after the loop and averaged, so a machine whose load
    # changes during the run skews the loop's ratio as little as possible.
    before = components()
    fast = _loop(classifier, video, LoopConfig(max_frames=config.frames))
    after = components()
    frames = before[4]
    figures["frame_size"] = f"{frames[0].shape[1]}x{frames[0].shape[0]}"
    for i, key in enumerate(("invoke_ms", "decode_ms", "preprocess_ms", "convert_ms")):
        figures[key] = (before[i] + after[i]) / 2
    figures["input_conversion"] = classifier.engine.input_conversion
    figures["preprocess_over_invoke"] = (figures["preprocess_ms"] + figures["convert_ms"]) / figures["invoke_ms"]
    budget_ms = figures["invoke_ms"] + figures["decode_ms"] + figures["preprocess_ms"]
    figures["ideal_fps"] = 1000.0 / budget_ms
    figures["loop_fps"] = fast.fps
    figures["loop_frames"] = fast.frames
    figures["loop_ratio"] = fast.fps / figures["ideal_fps"]

    paced_config = LoopConfig(max_frames=config.paced_frames,
                              capture=CaptureConfig(realtime=True, fps=config.paced_fps))
    paced = _loop(classifier, video, paced_config)
    figures["paced_fps"] = config.paced_fps
    figures["paced_frames"] = paced.frames
    figures["paced_dropped"] = paced.dropped
    figures["paced_age_ms_p50"] = paced.age_ms_p50
    figures["paced_age_ms_p95"] = paced.age_ms_p95
    figures["paced_age_target_ms"] = figures["invoke_ms"] + figures["preprocess_ms"] + 5.0
    if config.child and bundle is not None:
        child = _child(classifier, bundle, video, min(config.frames, 100))
        figures.update(child)
    return figures


def format_figures(f: dict) -> str:
    """The figures as an aligned, human-readable table."""
    rows = [
        ("artifact / engine / threads", f"{f['artifact']} / {f['engine']} / {f['threads']} ({f['cpus']} CPUs)"),
        ("source frames", f["frame_size"]),
        ("invoke alone", f"{f['invoke_ms']:.2f} ms"),
        ("decode per frame", f"{f['decode_ms']:.2f} ms"),
        ("preprocess per frame", f"{f['preprocess_ms']:.2f} ms + input conversion ({f['input_conversion']}) "
         f"{f['convert_ms']:.2f} ms = {f['preprocess_over_invoke']:.1%} of invoke"),
        ("1 / (invoke + decode + preprocess)", f"{f['ideal_fps']:.1f} fps"),
        ("loop, as fast as possible", f"{f['loop_fps']:.1f} fps = {f['loop_ratio']:.2f}x of that ({f['loop_frames']} frames)"),
        (f"paced at {f['paced_fps']:g} fps: dropped", f"{f['paced_dropped']} of {f['paced_frames'] + f['paced_dropped']}"),
        ("paced: capture-to-result p50 / p95",
         f"{f['paced_age_ms_p50']:.2f} / {f['paced_age_ms_p95']:.2f} ms (target <= {f['paced_age_target_ms']:.2f})"),
    ]
    if "first_prediction_s" in f:
        rows += [
            ("runtime process: import to first prediction",
             f"{f['first_prediction_s']:.3f} s wall, {f['first_prediction_cpu_s']:.3f} s CPU"),
            ("runtime process: peak RSS", f"{f['peak_rss_mb']:.1f} MB"),
            ("runtime process: heavy modules imported", ", ".join(f["heavy_modules"]) or "none"),
        ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
