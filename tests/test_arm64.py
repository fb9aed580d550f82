"""The bundle on 64-bit Arm: benchmarks/arm64/check.sh deploys it for a Raspberry Pi, installs it with
the aarch64 wheels into Python 3.11 of an arm64 Debian Bookworm userland under qemu, and runs `edgevision
verify` there. Needs root, qemu-user-static and debootstrap (.ci/run installs them) and the network to
Debian's mirror the first time (the userland is cached) and to PyPI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "arm64" / "check.sh"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not shutil.which("debootstrap"):
        return "needs debootstrap"
    if not (Path("/usr/libexec/qemu-binfmt/aarch64-binfmt-P").exists() or shutil.which("qemu-aarch64-static")):
        return "needs qemu-user-static"
    return None


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_bundle_verifies_on_arm64_under_emulation(golden_bundle):
    if _missing():
        pytest.skip(f"{_missing()} (.ci/run installs what this needs)")
    edgevision = Path(sys.executable).with_name("edgevision")
    done = subprocess.run(["bash", str(SCRIPT), str(golden_bundle), "raspberry-pi-5"], capture_output=True,
                          text=True, timeout=1400, env={**os.environ, "EDGEVISION": str(edgevision)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"arm64: Python 3\.11\.\d+ aarch64 \(Debian Bookworm", out)
    # The Pi profile's artifacts of the tiny bundle, each compared on both machines.
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| model")}
    assert set(rows) == {"model_int8.tflite", "model_int8_signed.tflite", "model_fp32.tflite", "model.onnx"}
    for name, row in rows.items():
        x86, arm = row.split(" | ")[2:4]
        assert x86.endswith("-> pass") and arm.strip(" |").endswith("-> pass"), row
    for name in ("model_fp32.tflite", "model.onnx"):  # float: every label equal on Arm
        assert "32/32 equal" in rows[name].split(" | ")[3]
    assert "arm64: every artifact reproduces the export machine's answers" in out
    assert "emulated: not device times" in out


@pytest.mark.slow
def test_jetson_runtime_resolves_for_python_3_10_on_aarch64(golden_bundle, tmp_path):
    """JetPack 6 ships Python 3.10 on aarch64: every pinned requirement has a wheel there (from PyPI)."""
    from edgevision.deploy.folder import DeployConfig, deploy_folder

    result = deploy_folder(golden_bundle, tmp_path / "orin", DeployConfig("jetson-orin-nano", wheels=True))
    wheels = sorted(p.name for p in (result.path / "wheels").glob("*.whl"))
    assert result.python_version == "3.10" and result.wheels == len(wheels)
    for prefix in ("numpy-1.26.4-cp310", "onnxruntime-1.23.2-cp310", "ai_edge_litert-2.3.0-cp310"):
        assert any(w.startswith(prefix) and "aarch64" in w for w in wheels), (prefix, wheels)
    assert not any(w.startswith("opencv") for w in wheels)  # JetPack's OpenCV (GStreamer) is used instead
