"""Inference engines: one interpreter or session per model file, built once, run on prepared batches.

An engine takes what `prepare()` produces, stacked: an (N, H, W, 3) uint8 RGB batch of raw 0-255 pixels,
and returns float32 probabilities of shape (N, classes). How that becomes the model's own input (type,
quantization, normalization outside the graph, channel order, NCHW) and how its output becomes
probabilities is decided once, when the engine opens, from the model's tensor details and the bundle's
ModelInterface (runtime/model_io.py), and checked against what bundle.json says.

The engines themselves are optional packages, imported here lazily, inside the function that opens a
model: a device installs only the one it uses. Engines are not thread-safe: use one per thread.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgevision.choices import choice_error
from edgevision.tflogs import quiet_litert

from .bundle import Artifact, BundleError, TensorSpec
from .model_io import EngineError, InputCodec, ModelInterface, OutputCodec, dequantize, quantize
from .onnx_int8 import EXACT_INT8_OPTION, signed_weights_saturate

__all__ = ["DEFAULT_ENGINE", "ENGINES", "Engine", "EngineError", "EngineUnavailableError", "LiteRTEngine",
           "OnnxEngine", "check_engine_name", "check_threads", "dequantize", "engine_available", "open_engine",
           "quantize", "resolve_engine", "usable_cpus"]

logger = logging.getLogger(__name__)

LITERT_EXTRA = "pip install 'edgevision[runtime]'"
ONNX_EXTRA = "pip install 'edgevision[onnx]'"
# Execution providers in order of preference: TensorRT and CUDA where they exist (Jetson), else CPU.
ONNX_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# Precisions of integer ONNX models: the CPU's QDQ form and the one TensorRT takes.
ONNX_INT8_PRECISIONS = ("int8", "int8_symmetric")
# LiteRT delegates known by name -> (shared library, how to install it). Any other value is a library path.
DELEGATES = {
    "edgetpu": ("libedgetpu.so.1", "install the Edge TPU runtime: `sudo apt install libedgetpu1-std` from "
                "Coral's apt repository (https://coral.ai/software/), and use a model compiled by edgetpu_compiler"),
    "gpu": ("libtensorflowlite_gpu_delegate.so", "build or install TensorFlow Lite's GPU delegate library"),
}


class EngineUnavailableError(ImportError):
    """The package an engine needs is not installed; the message names the extra to install."""


def usable_cpus() -> int:
    """CPU cores this process may run on (respects taskset / cgroup CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(threads: int | None) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None (use all cores), got {threads!r}")
    return int(threads)


def _check_spec(
    where: str, role: str, spec: TensorSpec, dtype: np.dtype, scale: float | None, zero_point: int | None
) -> None:
    """The model's own tensor details must agree with what bundle.json promises."""
    if spec.dtype != np.dtype(dtype).name:
        raise BundleError(
            f"{where}: bundle.json says the {role} is {spec.dtype}, the model's {role} is {np.dtype(dtype).name}"
        )
    if spec.scale is not None and scale and not np.isclose(spec.scale, scale, rtol=1e-6, atol=0.0):
        raise BundleError(f"{where}: bundle.json says the {role} scale is {spec.scale}, the model says {scale}")
    if spec.zero_point is not None and scale and int(spec.zero_point) != int(zero_point or 0):
        raise BundleError(
            f"{where}: bundle.json says the {role} zero-point is {spec.zero_point}, the model says {zero_point}"
        )


def _static_dim(value) -> int | None:
    return int(value) if isinstance(value, (int, np.integer)) and value > 0 else None


def _check_layout(where: str, shape: list, interface: ModelInterface) -> None:
    """The model's input must have 3 channels where the bundle's layout puts them."""
    if len(shape) == 4 and shape[interface.channels_axis] == 3:
        return
    other = "NCHW" if interface.layout == "NHWC" else "NHWC"
    if len(shape) == 4 and shape[3 if other == "NHWC" else 1] == 3:
        raise EngineError(f"{where} takes input of shape {shape}, which is {other}; bundle.json says "
                          f"{interface.layout}")
    expected = "(batch, height, width, 3)" if interface.layout == "NHWC" else "(batch, 3, height, width)"
    raise EngineError(f"{where} takes input of shape {shape}; expected {interface.layout} {expected}")


class Engine(ABC):
    """A loaded model. `run` takes an (N, H, W, 3) uint8 RGB batch and returns (N, C) float32 probabilities.

    Subclasses set `input_hw` ((height, width); None where the model leaves a dimension open) and
    `num_classes` (None where the model does not say) when they open, and implement `_run_batch`.
    """

    name: ClassVar[str] = ""
    formats: ClassVar[tuple[str, ...]] = ()

    path: Path
    input_hw: tuple[int | None, int | None]
    num_classes: int | None
    # Fixed batch size of the model file, or None when the batch dimension is dynamic.
    model_batch: int | None

    def run(self, batch: np.ndarray) -> np.ndarray:
        if not isinstance(batch, np.ndarray) or batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
            got = f"{batch.dtype} {tuple(batch.shape)}" if isinstance(batch, np.ndarray) else type(batch).__name__
            raise ValueError(f"Expected a uint8 batch of shape (N, H, W, 3), got {got}")
        height, width = self.input_hw
        if (height is not None and batch.shape[1] != height) or (width is not None and batch.shape[2] != width):
            raise ValueError(
                f"Batch images are {batch.shape[1]}x{batch.shape[2]}, the model takes {height}x{width}: "
                "prepare them with the bundle's preprocessing policy"
            )
        if len(batch) == 0:
            return np.zeros((0, self.num_classes or 0), np.float32)
        batch = np.ascontiguousarray(batch)
        fixed = self.model_batch
        if fixed is None or len(batch) == fixed:
            return self._run_batch(batch)
        # A model exported with a fixed batch size: run it chunk by chunk, padding the last chunk.
        outputs = []
        for start in range(0, len(batch), fixed):
            chunk = batch[start : start + fixed]
            count = len(chunk)
            if count < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - count, *chunk.shape[1:]), chunk.dtype)])
            outputs.append(self._run_batch(chunk)[:count])
        return np.concatenate(outputs)

    @property
    def input_conversion(self) -> str:
        """How pixels become the input tensor: "raw" (fed as they are), "cast" (to float), "normalize"
        (float, per-channel mean and std) or "quantize"; see runtime/model_io.py."""
        return self._encode.mode

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """The input tensor `run` feeds for a prepared batch (what the input conversion costs is measured
        on this)."""
        return self._encode(batch)

    @abstractmethod
    def _run_batch(self, batch: np.ndarray) -> np.ndarray: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def _litert_module():
    """The module holding Interpreter and load_delegate: ai-edge-litert, else tflite-runtime, else
    (heavy, last resort) tensorflow.lite."""
    try:
        from ai_edge_litert import interpreter

        return interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter

        return interpreter
    except ImportError:
        pass
    try:
        import tensorflow as tf
    except ImportError:
        raise EngineUnavailableError(
            "The LiteRT engine needs a TFLite interpreter and none is installed: "
            f"{LITERT_EXTRA} (ai-edge-litert; where it has no wheel, pip install tflite-runtime)"
        ) from None
    logger.warning("Running TFLite models with tensorflow.lite; %s is much lighter", LITERT_EXTRA)
    return _TfLiteShim(tf)


class _TfLiteShim:
    """tensorflow.lite laid out like ai_edge_litert.interpreter (Interpreter and load_delegate side by side)."""

    def __init__(self, tf):
        self.Interpreter = tf.lite.Interpreter
        self.load_delegate = tf.lite.experimental.load_delegate


def _check_library(library: str) -> None:
    """OSError naming the problem when the dynamic loader cannot load `library`."""
    import ctypes

    ctypes.CDLL(library)


def load_litert_delegate(delegate: str, module=None):
    """Load a LiteRT delegate by name (see DELEGATES) or library path; EngineUnavailableError saying what to
    install when the library is absent, so a missing accelerator never silently becomes a slow CPU run."""
    library, hint = DELEGATES.get(delegate, (delegate, "check the delegate library path"))
    module = module or _litert_module()
    try:
        # Try the shared library first: LiteRT's Delegate object, when its library is missing, prints an
        # AttributeError from its __del__ at exit after the real error.
        _check_library(library)
        return module.load_delegate(library)
    except (ValueError, OSError, RuntimeError) as error:
        known = ", ".join(DELEGATES)
        raise EngineUnavailableError(
            f"LiteRT delegate {delegate!r} could not be loaded from {library!r} ({error}); {hint}. "
            f"Known delegates: {known}, or pass a library path"
        ) from None


class LiteRTEngine(Engine):
    """TFLite models through the LiteRT interpreter (XNNPACK on CPU)."""

    name = "litert"
    formats = ("tflite",)

    def __init__(self, path: str | os.PathLike, artifact: Artifact, threads: int | None = None,
                 delegate: str | None = None, interface: ModelInterface = ModelInterface()):
        threads = check_threads(threads)
        self.path = Path(path)
        self.artifact = artifact
        # The interpreter's own default is a single thread; None means all the cores we may use.
        self.threads = threads if threads is not None else usable_cpus()
        self.delegate = delegate
        module = _litert_module()
        where = f"'{self.path}'"
        # Without a delegate the interpreter applies XNNPACK itself, with num_threads threads.
        delegates = [load_litert_delegate(delegate, module)] if delegate else None
        try:
            with quiet_litert():
                self._interpreter = module.Interpreter(
                    model_path=str(self.path), num_threads=self.threads, experimental_delegates=delegates
                )
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise EngineError(f"LiteRT could not load {where}: {error}") from None
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(
                f"{where} has {len(inputs)} inputs and {len(outputs)} outputs; a classifier has one of each"
            )
        inp, out = inputs[0], outputs[0]
        shape = [int(d) for d in inp["shape"]]
        signature = [int(d) for d in inp.get("shape_signature", inp["shape"])]
        _check_layout(where, shape, interface)
        self._input_index = inp["index"]
        self._output_index = out["index"]
        self.input_hw = tuple(_static_dim(d) for d in interface.input_hw(shape))
        self.model_batch = None if signature[0] == -1 else shape[0]
        self._current_batch = shape[0]
        if len(out["shape"]) != 2:
            raise EngineError(f"{where} produces output of shape {list(out['shape'])}; expected (batch, classes)")
        self.num_classes = _static_dim(out["shape"][-1])
        in_scale, in_zero = inp["quantization"]
        out_scale, out_zero = out["quantization"]
        _check_spec(where, "input", artifact.input, inp["dtype"], in_scale, in_zero)
        _check_spec(where, "output", artifact.output, out["dtype"], out_scale, out_zero)
        self._encode = InputCodec(inp["dtype"], in_scale, in_zero, interface, where)
        self._decode = OutputCodec(out["dtype"], out_scale, out_zero, interface, where)

    def _run_batch(self, batch: np.ndarray) -> np.ndarray:
        interpreter = self._interpreter
        tensor = self._encode(batch)
        if len(batch) != self._current_batch:
            # Only when the batch size changes (the camera loop always sends 1): re-plan once, reuse after.
            interpreter.resize_tensor_input(self._input_index, list(tensor.shape))
            interpreter.allocate_tensors()
            self._current_batch = len(batch)
        interpreter.set_tensor(self._input_index, tensor)
        interpreter.invoke()
        return self._decode(interpreter.get_tensor(self._output_index))


_ONNX_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def tensorrt_options(artifact: Artifact) -> dict:
    """onnxruntime's TensorRT provider options for this artifact. TensorRT builds its engine on the first
    run (minutes on a Jetson), so engines are cached per model file (the folder is made here: onnxruntime
    makes only its last level, and without it the session falls back to CUDA or the CPU). A signed
    symmetric QDQ model needs TensorRT's int8 mode to keep its quantization; an fp16 model its fp16 mode.
    An fp32 model runs in fp32 (fp16 mode would change the answers that its parity gate measured)."""
    options = {"trt_int8_enable": artifact.precision == "int8_symmetric", "trt_fp16_enable": artifact.precision == "fp16"}
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgevision" / "tensorrt"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        logger.warning("TensorRT engines will not be cached (%s): each start builds the engine again", error)
        return options
    return {**options, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache / artifact.sha256[:16])}


def _session_providers(providers: list[str], artifact: Artifact) -> list:
    """What InferenceSession gets: TensorRT with its options; without TensorRT for the CPU's unsigned int8
    QDQ form (precision "int8"), which TensorRT does not take (its form is "int8_symmetric")."""
    chosen = []
    for provider in providers:
        if provider != "TensorrtExecutionProvider":
            chosen.append(provider)
        elif artifact.precision != "int8":
            chosen.append((provider, tensorrt_options(artifact)))
    return chosen


class OnnxEngine(Engine):
    """ONNX models through onnxruntime: TensorRT or CUDA execution providers where present, else CPU.

    ONNX has no quantization parameters on graph inputs and outputs: an integer input or output uses the
    scale and zero-point that bundle.json gives (QDQ models keep float32 inputs and outputs). On an x86
    CPU without int8 dot products an int8 model runs on onnxruntime's exact (u8u8) kernels, so that it gives
    the same answers as anywhere else (see onnx_int8; `exact_int8_kernels` says whether it does).
    """

    name = "onnxruntime"
    formats = ("onnx",)

    def __init__(self, path: str | os.PathLike, artifact: Artifact, threads: int | None = None,
                 delegate: str | None = None, providers: tuple[str, ...] | None = None,
                 interface: ModelInterface = ModelInterface()):
        threads = check_threads(threads)
        self.path = Path(path)
        self.artifact = artifact
        self.threads = threads
        if delegate:
            raise ValueError(
                f"Delegate {delegate!r} is a LiteRT option; onnxruntime uses execution providers (a device "
                "profile's onnx_providers) instead"
            )
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineUnavailableError(f"The onnxruntime engine is not installed: {ONNX_EXTRA}") from None
        where = f"'{self.path}'"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default, one per physical core
        available = ort.get_available_providers()
        wanted = providers or ONNX_PROVIDERS
        # Providers the profile asks for that this onnxruntime build lacks are skipped (CPU always remains).
        self.providers = [p for p in wanted if p in available] or list(available)
        # On x86 CPUs without VNNI, int8 runs on onnxruntime's non-saturating kernels (see onnx_int8); the
        # option touches only what runs on the CPU, so it also holds where some nodes fall back to it.
        self.exact_int8_kernels = artifact.precision in ONNX_INT8_PRECISIONS and signed_weights_saturate()
        if self.exact_int8_kernels:
            options.add_session_config_entry(EXACT_INT8_OPTION, "1")
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options,
                                                 providers=_session_providers(self.providers, artifact))
        except Exception as error:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise EngineError(f"onnxruntime could not load {where}: {error}") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(
                f"{where} has {len(inputs)} inputs and {len(outputs)} outputs; a classifier has one of each"
            )
        inp, out = inputs[0], outputs[0]
        if inp.type not in _ONNX_TYPES or out.type not in _ONNX_TYPES:
            raise EngineError(f"{where}: unsupported tensor types {inp.type} -> {out.type}")
        shape = list(inp.shape)
        _check_layout(where, shape, interface)
        self._input_name = inp.name
        self._output_name = out.name
        self.input_hw = tuple(_static_dim(d) for d in interface.input_hw(shape))
        self.model_batch = _static_dim(shape[0])
        if len(out.shape) != 2:
            raise EngineError(f"{where} produces output of shape {list(out.shape)}; expected (batch, classes)")
        self.num_classes = _static_dim(out.shape[-1])
        in_dtype, out_dtype = np.dtype(_ONNX_TYPES[inp.type]), np.dtype(_ONNX_TYPES[out.type])
        _check_spec(where, "input", artifact.input, in_dtype, None, None)
        _check_spec(where, "output", artifact.output, out_dtype, None, None)
        self._encode = InputCodec(in_dtype, artifact.input.scale, artifact.input.zero_point, interface, where)
        self._decode = OutputCodec(out_dtype, artifact.output.scale, artifact.output.zero_point, interface, where)

    def _run_batch(self, batch: np.ndarray) -> np.ndarray:
        result = self._session.run([self._output_name], {self._input_name: self._encode(batch)})[0]
        return self._decode(result)


ENGINES: dict[str, type[Engine]] = {"litert": LiteRTEngine, "onnxruntime": OnnxEngine}
DEFAULT_ENGINE = {"tflite": "litert", "onnx": "onnxruntime"}


def check_engine_name(engine: str) -> None:
    """ValueError naming the engines (and the closest one) for a name that is not one of them."""
    if engine not in ENGINES:
        raise choice_error("engine", engine, ENGINES)


def resolve_engine(artifact: Artifact, engine: str | None = None) -> str:
    """The engine name for an artifact: the given one after checking it can read the format, else the
    default for the artifact's format."""
    if engine is None:
        return DEFAULT_ENGINE[artifact.format]
    check_engine_name(engine)
    if artifact.format not in ENGINES[engine].formats:
        raise ValueError(
            f"Engine {engine!r} cannot read {artifact.format} models ({artifact.file}); "
            f"use {DEFAULT_ENGINE[artifact.format]!r} or pick an artifact in "
            f"{', '.join(ENGINES[engine].formats)} format"
        )
    return engine


def engine_available(name: str) -> bool:
    """Whether the package engine `name` needs is importable (without importing it)."""
    import importlib.util

    if name == "onnxruntime":
        return importlib.util.find_spec("onnxruntime") is not None
    return any(importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "tflite_runtime", "tensorflow"))


def open_engine(
    path: str | os.PathLike, artifact: Artifact, engine: str | None = None, threads: int | None = None,
    *, delegate: str | None = None, providers: tuple[str, ...] | None = None,
    interface: ModelInterface = ModelInterface(),
) -> Engine:
    """Open a model file once. `path` must already be verified (Bundle.verified_path). delegate: a LiteRT
    delegate (DELEGATES name or library path); providers: onnxruntime execution providers, best first;
    interface: how the model takes its input and gives its output (the bundle's)."""
    name = resolve_engine(artifact, engine)
    options = {"providers": providers} if name == "onnxruntime" else {}
    return ENGINES[name](path, artifact, threads, delegate=delegate, interface=interface, **options)
