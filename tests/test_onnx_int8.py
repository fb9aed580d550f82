"""ONNX int8 answers that do not depend on the x86 CPU (runtime/onnx_int8.py).

onnxruntime's u8 x s8 kernels saturate on x86 CPUs without int8 dot products; the engine then moves the
weights to uint8 on load. The CPUs are told apart by what the program sees through CPUID, so an emulated
Haswell (AVX2, no VNNI; qemu-user, which CI installs for the arm64 check) shows both behaviours on any
x86-64 machine."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgevision.runtime.bundle import Artifact
from edgevision.runtime.engines import OnnxEngine
from edgevision.runtime.onnx_int8 import signed_weights_saturate, unsigned_weights

from conftest import TINY_SIZE, realish_image, write_tiny_onnx

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
    assert signed_weights_saturate("x86_64", {"AVX512VNNI": True}, set()) is False
    assert signed_weights_saturate("x86_64", {"AVX512VNNI": False}, {"avx2", "avx_vnni"}) is False
    assert signed_weights_saturate("x86_64", {"AVX2": True, "AVX512VNNI": False}, {"avx2"}) is True
    assert signed_weights_saturate("AMD64", {}, set()) is True  # nothing readable: rewrite, which is exact
    assert signed_weights_saturate("aarch64", {}, set()) is False  # Arm's kernels do not saturate


def test_unsigned_weights_are_the_same_numbers(tmp_path):
    import onnx
    from onnx import numpy_helper

    content = saturating_model(tmp_path / "m.onnx").read_bytes()
    rewritten, changed = unsigned_weights(content)
    assert changed == 1
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(content).graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(rewritten).graph.initializer}
    assert after["w"].dtype == np.uint8 and after["w_zero"].dtype == np.uint8
    real = lambda q, z: (q.astype(np.int32) - z.astype(np.int32)) * 0.01  # noqa: E731
    np.testing.assert_array_equal(real(after["w"], after["w_zero"]), real(before["w"], before["w_zero"]))
    assert after["x_zero"].dtype == np.uint8 and after["x_zero"] == before["x_zero"]  # activations untouched
    assert unsigned_weights(rewritten) == (rewritten, 0)  # nothing signed left


def test_engine_computes_int8_exactly_on_this_cpu(tmp_path):
    path = saturating_model(tmp_path / "m.onnx")
    engine = OnnxEngine(path, Artifact.from_file(path, "onnx", "int8"), threads=1)
    result = engine.run(np.full((1, SIDE, SIDE, 3), 255, np.uint8))
    np.testing.assert_allclose(result, [[EXACT, EXACT]], rtol=1e-6)
    assert engine.unsigned_weights == (1 if signed_weights_saturate() else 0)
    # A float model is never rewritten.
    fp32 = OnnxEngine(path, Artifact.from_file(path, "onnx", "fp32"), threads=1)
    assert fp32.unsigned_weights == 0


def test_engine_on_a_saturating_cpu_rewrites_warns_without_onnx_and_refuses_a_broken_file(tmp_path, monkeypatch,
                                                                                          caplog):
    import edgevision.runtime.engines as engines
    from edgevision.runtime.engines import EngineError

    monkeypatch.setattr(engines, "signed_weights_saturate", lambda: True)
    path = saturating_model(tmp_path / "m.onnx")
    artifact = Artifact.from_file(path, "onnx", "int8")
    assert OnnxEngine(path, artifact, threads=1).unsigned_weights == 1
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(path.read_bytes()[:200])
    with pytest.raises(EngineError, match="broken.onnx"):
        OnnxEngine(broken, Artifact.from_file(broken, "onnx", "int8"), threads=1)
    monkeypatch.setitem(sys.modules, "onnx", None)  # not installed
    with caplog.at_level("WARNING"):
        assert OnnxEngine(path, artifact, threads=1).unsigned_weights == 0
    assert "install the onnx package" in caplog.text and "m.onnx" in caplog.text


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
print(json.dumps({"raw": raw.tolist(), "engine": engine.run(x).tolist(), "rewritten": engine.unsigned_weights,
                  "tiny_rewritten": tiny_engine.unsigned_weights}))
"""


def _qemu_x86() -> str | None:
    return shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64" or _qemu_x86() is None,
                    reason="needs an x86-64 host with qemu-user-static (.ci/run installs it)")
def test_same_answers_on_an_emulated_cpu_without_vnni(tiny_bundle, tmp_path):
    """Under an emulated Haswell, onnxruntime itself saturates on the constructed model, the engine does
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
    np.testing.assert_allclose(seen["engine"], [[EXACT, EXACT]], rtol=1e-6)
    assert seen["rewritten"] == 1 and seen["tiny_rewritten"] >= 2  # conv and head weights
    np.testing.assert_array_equal(np.load(tmp_path / "emulated.npy"), here)
