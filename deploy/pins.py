"""The runtime's pinned requirements for a device: versions whose wheels exist for x86-64 and aarch64
and that `edgevision verify` has passed with (the arm64 check, docs/measured.md "Measured: on 64-bit Arm",
installs exactly these).

Two numpy lines: numpy 2 everywhere it can be; numpy 1 where the venv shares the system's packages and
the OS built them against numpy 1 (Raspberry Pi OS Bookworm's picamera2, JetPack 6's OpenCV), because a
module compiled for numpy 1 fails to import under numpy 2.
"""

from __future__ import annotations

from edgevision.devices.profiles import DeviceProfile

# Each file is for one Python, so versions are chosen here rather than by environment markers (which
# `pip download --python-version` would judge by the downloading machine's Python).
NUMPY2 = {"3.10": ("numpy==2.2.6",), "newer": ("numpy==2.4.6",)}
NUMPY1 = {"any": ("numpy==1.26.4", "ml-dtypes==0.5.4")}  # ml-dtypes (LiteRT's) 0.6 needs numpy 2
OPENCV = {1: "opencv-python-headless==4.11.0.86", 2: "opencv-python-headless==5.0.0.93"}
ENGINES = {
    "litert": {"any": ("ai-edge-litert==2.3.0",)},
    "onnxruntime": {"3.10": ("onnxruntime==1.23.2",), "newer": ("onnxruntime==1.32.0",)},  # 1.24+ needs 3.11
}


def _for(python: str, pins: dict) -> tuple[str, ...]:
    return pins.get(python) or pins.get("any") or pins["newer"]
SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def numpy_major(profile: DeviceProfile, python: str) -> int:
    """1 when the venv shares system packages built against apt's numpy 1 on this Python, else 2."""
    apt = profile.setup.apt_numpy.get(python)
    if profile.setup.system_site_packages and apt is not None and apt.split(".")[0] == "1":
        return 1
    return 2


def runtime_requirements(profile: DeviceProfile, python: str, engines: set[str] | list[str]) -> list[str]:
    """requirements.txt lines for the runtime on `profile` with this Python and these engines."""
    if python not in SUPPORTED_PYTHONS:
        raise ValueError(f"Python {python!r} is not supported on devices; choose one of {', '.join(SUPPORTED_PYTHONS)}")
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise ValueError(f"Unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
    major = numpy_major(profile, python)
    if major == 1 and python not in ("3.10", "3.11", "3.12"):
        raise ValueError(f"numpy 1 has no wheels for Python {python}")
    lines = list(_for(python, NUMPY1 if major == 1 else NUMPY2))
    if not profile.setup.system_opencv:
        lines.append(OPENCV[major])
    for engine in sorted(engines):
        lines.extend(_for(python, ENGINES[engine]))
    return lines
