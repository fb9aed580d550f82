"""ONNX int8 models whose answers do not depend on the x86 CPU they run on.

`edgevision export` writes ONNX int8 with unsigned activations and signed weights (u8s8): onnxruntime's
fastest integer kernels on CPUs with int8 dot products (AVX-512 VNNI on x86, Arm's NEON). On x86 CPUs
without them, onnxruntime multiplies u8 by s8 with VPMADDUBSW, whose 16-bit sum of two products
saturates (255 * 127 * 2 > 32767): the same file then gives other answers there. On the demo's model under
an emulated Haswell, 94.68% of the held-out answers agreed with the trained model instead of the 98.64%
its gate measured on a VNNI CPU.

On such a CPU the engine turns on onnxruntime's `session.x64quantprecision`, which moves the weights to
uint8 when it loads the model (q + 128 with zero point 128: the same numbers) and runs its u8u8 kernels,
which widen to 16 bits before multiplying: the answers are then identical, bit for bit, to a VNNI CPU's,
only slower. The option is not turned on everywhere because onnxruntime applies it on every x86 CPU with
AVX2, VNNI ones included, where it took EfficientNet-Lite0's int8 from 6.8 to 10.9 ms.
"""

from __future__ import annotations

import platform

X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
# onnxruntime's session option that runs u8s8 models on its u8u8 kernels (x86 only).
EXACT_INT8_OPTION = "session.x64quantprecision"


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


def signed_weights_saturate(machine: str | None = None, features: dict | None = None) -> bool:
    """Whether onnxruntime's u8 x s8 kernels can saturate here: an x86 CPU without AVX-512 VNNI (or
    AVX-VNNI, where numpy reports it). Where the features cannot be read, the answer is yes: the exact
    kernels give the same answers everywhere, they only cost speed."""
    machine = (machine or platform.machine()).lower()
    if machine not in X86_MACHINES:
        return False
    features = _cpuid_features() if features is None else features
    return not (features.get("AVX512VNNI") or features.get("AVXVNNI"))
