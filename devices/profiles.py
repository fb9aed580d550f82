"""Device profiles: what to run on each kind of device, as data (one JSON file per device in profiles/).

A profile says which artifacts to prefer ("format:precision", best first), the engine threads, an
optional LiteRT delegate, the onnxruntime execution providers, the camera to use and at what size,
the OS image and Python it targets and how `edgevision deploy` sets it up, published speed figures with
their sources, and how to run `edgevision run` as a systemd service.
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgevision.choices import choice_error

PROFILE_DIR = Path(__file__).with_name("profiles")
# Read to tell one board from another; absent on ordinary PCs.
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


class ProfileError(ValueError):
    """An unknown profile name or a malformed profile file."""


@dataclass(frozen=True)
class CameraSettings:
    source: str
    camera_size: tuple[int, int]
    fps: int
    notes: str = ""


@dataclass(frozen=True)
class PlatformSpec:
    """The device's OS image as deploy targets it: CPU architecture and the Python it ships."""

    machine: str
    python: str
    os: str = ""


@dataclass(frozen=True)
class SetupSpec:
    """How a deploy folder's install.sh prepares the device (see deploy/)."""

    apt: tuple[str, ...] = ()
    # The venv sees the system's packages (apt's picamera2, JetPack's OpenCV with GStreamer).
    system_site_packages: bool = False
    # numpy version apt ships, per Python version of the OS: system packages are built against it, so
    # the venv keeps the same major version.
    apt_numpy: dict = field(default_factory=dict)
    # Use the system's OpenCV (with GStreamer) instead of the opencv-python-headless wheel.
    system_opencv: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    title: str
    artifacts: tuple[str, ...]  # "format:precision", best first
    threads: int | None
    camera: CameraSettings
    delegate: str | None = None
    onnx_providers: tuple[str, ...] = ()
    platform: PlatformSpec = PlatformSpec("x86_64", "3.11")
    setup: SetupSpec = SetupSpec()
    # Published speed figures for these networks on this board, each with its source, and ours.
    expected_speed: dict = field(default_factory=dict)
    service_after: tuple[str, ...] = ()
    service_groups: tuple[str, ...] = ()
    match: dict = field(default_factory=dict)
    notes: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> "DeviceProfile":
        try:
            camera = data["camera"]
            profile = cls(
                name=data["name"], title=data["title"], artifacts=tuple(data["artifacts"]),
                threads=data["threads"], delegate=data.get("delegate"),
                camera=CameraSettings(camera["source"], tuple(camera["camera_size"]), int(camera["fps"]),
                                      camera.get("notes", "")),
                onnx_providers=tuple(data.get("onnx_providers", ())),
                platform=PlatformSpec(**data["platform"]),
                setup=SetupSpec(**{**data.get("setup", {}), "apt": tuple(data.get("setup", {}).get("apt", ())),
                                   "notes": tuple(data.get("setup", {}).get("notes", ()))}),
                expected_speed=dict(data.get("expected_speed", {})),
                service_after=tuple(data.get("service", {}).get("after", ())),
                service_groups=tuple(data.get("service", {}).get("groups", ())),
                match=dict(data.get("match", {})), notes=data.get("notes", ""),
            )
        except (KeyError, TypeError) as bad:
            raise ProfileError(f"Device profile {data.get('name', '?')!r} is malformed: {bad!r}") from None
        for entry in profile.artifacts:
            if entry.count(":") != 1:
                raise ProfileError(f"Profile {profile.name!r}: artifact preference {entry!r} is not 'format:precision'")
        return profile

    def matches(self, machine: str, model: str) -> bool:
        machines = [m.lower() for m in self.match.get("machine", [])]
        if machines and machine.lower() not in machines:
            return False
        if any(word in model for word in self.match.get("model_excludes", [])):
            return False
        wanted = self.match.get("model_contains", [])
        return any(word in model for word in wanted) if wanted else not model

    def systemd_unit(self, bundle: str, source: str | None = None, *, venv: str = "/opt/edgevision-venv",
                     user: str = "edgevision") -> str:
        """A systemd service running `edgevision run` for this device: restarted if it ever exits, stopped
        with SIGTERM (the loop then prints its summary), its JSON lines in the journal."""
        after = " ".join(["network-online.target", *self.service_after])
        groups = " ".join(self.service_groups)
        source = source or self.camera.source
        command = " ".join(systemd_quote(arg) for arg in (
            f"{venv}/bin/edgevision", "run", bundle, "--source", source, "--profile", self.name))
        return "\n".join([
            "[Unit]",
            f"Description=edgevision camera classifier ({self.title})",
            f"After={after}",
            "Wants=network-online.target",
            "",
            "[Service]",
            f"User={user}",
            *([f"SupplementaryGroups={groups}"] if groups else []),
            f"ExecStart={command}",
            "Restart=always",
            "RestartSec=5",
            "KillSignal=SIGTERM",
            "TimeoutStopSec=10",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ])


def systemd_quote(arg: str) -> str:
    """One argument of an ExecStart= line as systemd reads it back: `%` and `$` doubled (systemd expands
    specifiers and variables), double quotes around anything with a space, quote or backslash."""
    escaped = str(arg).replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9._/:@+=,~-]+", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(name: str) -> DeviceProfile:
    """The profile called `name` (a file in devices/profiles/); ProfileError naming the choices otherwise."""
    names = profile_names()
    if name not in names:
        raise choice_error("device profile", name, names, ProfileError)
    return DeviceProfile.from_dict(json.loads((PROFILE_DIR / f"{name}.json").read_text()))


def _device_model() -> str:
    try:
        return DEVICE_TREE_MODEL.read_bytes().rstrip(b"\0").decode(errors="replace").strip()
    except OSError:
        return ""


def detect_profile(machine: str | None = None, model: str | None = None) -> DeviceProfile | None:
    """The profile of the machine this runs on (by CPU architecture and board model), or None."""
    machine = platform.machine() if machine is None else machine
    model = _device_model() if model is None else model
    for name in profile_names():
        profile = load_profile(name)
        if profile.matches(machine, model):
            return profile
    return None
