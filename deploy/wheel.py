"""A wheel of the installed edgevision, built from its own modules, so a deploy folder carries the exact
code the bundle was checked with (no PyPI release or source checkout needed on the device).

The wheel is pure Python (py3-none-any) and declares no dependencies: install.sh installs the pinned
runtime requirements next to it (pins.py), so the device never pulls training packages.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import zipfile
from pathlib import Path

# Every subpackage goes in: each imports its heavy dependencies lazily, so the device needs only the
# runtime's, and the CLI's other commands say what is missing instead of failing to import.
PACKAGES = ("edgevision", "edgevision.runtime", "edgevision.devices", "edgevision.deploy", "edgevision.export",
            "edgevision.train")
DATA_SUFFIXES = (".py", ".json", ".sh")
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # the same code makes the same wheel bytes


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _package_files() -> list[tuple[str, Path]]:
    """(path inside the wheel, file on disk) for every module and data file of PACKAGES."""
    files = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"Cannot locate the package {package}; is edgevision installed?")
        root = Path(next(iter(spec.submodule_search_locations)))
        prefix = package.replace(".", "/")
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if (path.is_file() and path.suffix in DATA_SUFFIXES and "__pycache__" not in relative.parts
                    and (len(relative.parts) == 1 or relative.parts[0] == "profiles")):
                files.append((f"{prefix}/{relative.as_posix()}", path))
    return files


def build_wheel(dest: str | Path) -> Path:
    """Write edgevision-VERSION-py3-none-any.whl into `dest` and return its path."""
    dist = importlib.metadata.distribution("edgevision")
    version = dist.version
    info = f"edgevision-{version}.dist-info"
    metadata = "\n".join([
        "Metadata-Version: 2.1", "Name: edgevision", f"Version: {version}",
        f"Summary: {dist.metadata['Summary']}", f"Requires-Python: {dist.metadata['Requires-Python']}", "",
    ])
    members = [(name, path.read_bytes()) for name, path in _package_files()]
    members += [
        (f"{info}/METADATA", metadata.encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: edgevision deploy\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{info}/entry_points.txt", (dist.read_text("entry_points.txt") or "").encode()),
    ]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in members) + f"{info}/RECORD,,\n"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"edgevision-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        for name, data in [*members, (f"{info}/RECORD", record.encode())]:
            entry = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(entry, data)
    return path
