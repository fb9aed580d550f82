"""ONNX int8 answers that do not depend on the x86 CPU (runtime/onnx_int8.py).

onnxruntime's u8 x s8 kernels saturate on x86 CPUs without int8 dot products; the engine then runs int8
models on onnxruntime's exact u8u8 kernels. The CPUs are told apart by what the program sees through
CPUID, so an emulated Haswell (AVX2, no VNNI; qemu-user, which CI installs for the arm64 check) shows
both behaviours on any x86-64 machine."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_SIZE, realish_image, write_tiny_onnx
from edgevision.runtime.bundle import Artifact
from edgevision.runtime.engines import OnnxEngine
from edgevision.runtime.onnx_int8 import signed_weights_saturate

SIDE = 2  # the constructed model's input: 2 x 2 x 3 = 12 pixels
# Every pixel 255 (uint8 255 with scale 1) times every weight 127: a pair of products is 64,770, past the
# 32,767 that VPMADDUBSW's 16-bit sums hold.
EXACT = 255.0 * 127 * SIDE * SIDE * 3 * 0.01


def saturating_model(path: Path) -> Path:
    """image (1, 2, 2, 3) float -> uint8 (scale 1) -> MatMul with int8 weights 127 (scale 0.01) -> (1, 2)."""
    from onnx import TensorProto, helper, numpy_helper

    features = SIDE * SIDE * 3
    constants = {
        "shape": np.array([1, features], np.int64),
        "x_scale": np.array(1.0, np.float32), "x_zero": np.array(0, np.uint8),
        "w": np.full((features, 2), 127, np.int8),
        "w_scale": np.array([0.01, 0.01], np.float32), "w_zero": np.zeros(2, np.int8),
    }
    node = helper.make_node
    graph = helper.make_graph(
        [node("Reshape", ["image", "shape"], ["flat"]),
         node("QuantizeLinear", ["flat", "x_scale", "x_zero"], ["q"]),
         node("DequantizeLinear", ["q", "x_scale", "x_zero"], ["x"]),
         node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["weights"], axis=1),
         node("MatMul", ["x", "weights"], ["probs"])],
        "saturating",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, SIDE, SIDE, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path.write_bytes(proto.SerializeToString())
    return path


def test_which_cpus_saturate():
    assert signed_weights_saturate("x86_64", {"AVX2": True, "AVX512VNNI": True}) is False
    assert signed_weights_saturate("x86_64", {"AVX2": True, "AVXVNNI": True}) is False
    assert signed_weights_saturate("x86_64", {"AVX2": True, "AVX512F": True, "AVX512VNNI": False}) is True
    assert signed_weights_saturate("AMD64", {}) is True  # nothing readable: the exact kernels
    assert signed_weights_saturate("aarch64", {}) is False  # Arm's kernels do not saturate


@pytest.mark.parametrize("saturates", [True, False])
def test_engine_computes_int8_exactly_whatever_it_decides_about_the_cpu(tmp_path, monkeypatch, saturates):
    """With the exact kernels or without them (where this CPU has VNNI, or is Arm), the constructed model
    gives the exact sum; the option is asked for only where the CPU needs it, and only for int8 files."""
    import edgevision.runtime.engines as engines

    monkeypatch.setattr(engines, "signed_weights_saturate", lambda: saturates)
    path = saturating_model(tmp_path / "m.onnx")
    engine = OnnxEngine(path, Artifact.from_file(path, "onnx", "int8"), threads=1)
    assert engine.exact_int8_kernels is saturates
    if saturates or not signed_weights_saturate():
        result = engine.run(np.full((1, SIDE, SIDE, 3), 255, np.uint8))
        np.testing.assert_allclose(result, [[EXACT, EXACT]], rtol=1e-6)
    assert OnnxEngine(path, Artifact.from_file(path, "onnx", "fp32"), threads=1).exact_int8_kernels is False


EMULATED = r"""
import json, sys
import numpy as np, onnxruntime as ort
from edgevision.runtime.bundle import Artifact
from edgevision.runtime.engines import OnnxEngine
saturating, tiny, images = sys.argv[1:4]
x = np.full((1, 2, 2, 3), 255, np.uint8)
raw = ort.InferenceSession(saturating, providers=["CPUExecutionProvider"]).run(None, {"image": x.astype(np.float32)})[0]
engine = OnnxEngine(saturating, Artifact.from_file(saturating, "onnx", "int8"), threads=1)
tiny_engine = OnnxEngine(tiny, Artifact.from_file(tiny, "onnx", "int8"), threads=1)
np.save(sys.argv[4], tiny_engine.run(np.load(images)))
print(json.dumps({"raw": raw.tolist(), "engine": engine.run(x).tolist(), "exact": engine.exact_int8_kernels}))
"""


def _qemu_x86() -> str | None:
    return shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64" or _qemu_x86() is None,
                    reason="needs an x86-64 host with qemu-user-static (.ci/run installs it)")
def test_same_answers_on_an_emulated_cpu_without_vnni(tiny_bundle, tmp_path):
    """Under an emulated Haswell, onnxruntime alone saturates on the constructed model, the engine does
    not, and an exported int8 model gives the engine the same answers, bit for bit, as on this CPU."""
    from edgevision.export.onnx import to_onnx_int8

    rng = np.random.default_rng(3)
    images = np.stack([realish_image(rng, TINY_SIZE, TINY_SIZE) for _ in range(24)])
    write_tiny_onnx(tiny_bundle.keras_model, tmp_path / "fp32.onnx")
    tiny = tmp_path / "int8.onnx"
    tiny.write_bytes(to_onnx_int8((tmp_path / "fp32.onnx").read_bytes(), images[:16]))
    np.save(tmp_path / "images.npy", images)
    here = OnnxEngine(tiny, Artifact.from_file(tiny, "onnx", "int8"), threads=1).run(images)

    saturating = saturating_model(tmp_path / "saturating.onnx")
    done = subprocess.run(
        [_qemu_x86(), "-cpu", "Haswell", sys.executable, "-c", EMULATED, str(saturating), str(tiny),
         str(tmp_path / "images.npy"), str(tmp_path / "emulated.npy")],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["raw"][0][0] < 0.6 * EXACT  # onnxruntime alone saturates on this CPU: the test can fail
    assert seen["exact"] is True
    np.testing.assert_allclose(seen["engine"], [[EXACT, EXACT]], rtol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "emulated.npy"), here)
