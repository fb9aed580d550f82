"""ONNX int8 models whose answers do not depend on the x86 CPU they run on.

`edgevision export` writes ONNX int8 with unsigned activations and signed weights (u8s8): onnxruntime's
fastest integer kernels on CPUs with int8 dot products (AVX-512 VNNI or AVX-VNNI on x86, Arm's NEON).
On x86 CPUs without them, onnxruntime multiplies u8 by s8 with VPMADDUBSW, whose 16-bit sum of two
products saturates (255 * 127 * 2 > 32767): the same file then gives other answers there. On the demo's
model under an emulated Haswell, 94.7% of the held-out answers agreed with the trained model instead of
the 98.6% that its gate measured on a VNNI CPU.

On such a CPU the engine rewrites the weights on load: q + 128 with zero point 128 is the same number
as q with zero point 0, and onnxruntime's u8u8 kernels, which widen to 16 bits before multiplying,
compute it without saturation. The answers are then identical, bit for bit, to a VNNI CPU's, only slower.
The rewrite needs the `onnx` package (in `edgevision[onnx]`); it is imported only on those CPUs.
"""

from __future__ import annotations

import logging
import platform
import re

import numpy as np

logger = logging.getLogger(__name__)

X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")


def _cpuid_features() -> dict:
    """numpy's view of this CPU's features, read with CPUID (so an emulated CPU reports its own)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy 1
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return dict(__cpu_features__)


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            found = re.search(r"^flags\s*:\s*(.+)$", cpuinfo.read(), re.M)
    except OSError:
        return set()
    return set(found.group(1).split()) if found else set()


def signed_weights_saturate(machine: str | None = None, features: dict | None = None,
                            flags: set[str] | None = None) -> bool:
    """Whether onnxruntime's u8 x s8 kernels can saturate here: an x86 CPU with neither AVX-512 VNNI
    (numpy reads it with CPUID) nor AVX-VNNI (numpy does not report it; Linux's /proc/cpuinfo does).
    Where neither can be read, the answer is yes: the rewrite is exact everywhere, it only costs speed."""
    machine = (machine or platform.machine()).lower()
    if machine not in X86_MACHINES:
        return False
    features = _cpuid_features() if features is None else features
    flags = _cpuinfo_flags() if flags is None else flags
    return not (features.get("AVX512VNNI") or "avx_vnni" in flags)


def unsigned_weights(content: bytes) -> tuple[bytes, int]:
    """The model with every signed int8 constant of a DequantizeLinear (weights, and their zero points)
    moved to uint8: q + 128 with zero point + 128, the same real values. Returns the new model and how
    many tensors changed (0: `content` is returned as it is)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(content)
    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    changed = 0
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        values, zero_point = initializers.get(node.input[0]), initializers.get(node.input[2])
        if values is None or zero_point is None or values.data_type != onnx.TensorProto.INT8:
            continue
        for tensor in (values, zero_point):
            shifted = numpy_helper.to_array(tensor).astype(np.int16) + 128
            tensor.CopyFrom(numpy_helper.from_array(shifted.astype(np.uint8), tensor.name))
        changed += 1
    return (proto.SerializeToString(), changed) if changed else (content, 0)
