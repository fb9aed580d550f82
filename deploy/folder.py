"""`edgevision deploy`: a self-contained folder that installs a bundle on one kind of device.

    deploy/
      bundle/                   only the artifacts the profile uses that passed their gate, + golden set
      edgevision-*.whl          this edgevision's code (wheel.py)
      requirements-pyX.Y.txt    the pinned runtime for each Python the device may have (pins.py)
      wheels/                   with --wheels: every requirement for the device's platform, to install offline
      install.sh, deploy.env    the installer (install.sh) and its settings for this profile
      edgevision.service        the systemd unit, filled in by install.sh
      deploy.json, README.md    what this folder is, for tools and for people

Copying it to a device and running it is remote.py's part.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgevision.runtime.atomic import atomic_directory, refuse_inputs
from edgevision.runtime.bundle import Bundle
from edgevision.runtime.engines import DEFAULT_ENGINE

from edgevision.devices.profiles import DeviceProfile, load_profile

from .pins import SUPPORTED_PYTHONS, numpy_major, runtime_requirements
from .wheel import build_wheel

SERVICE_NAME = "edgevision"
INSTALLER = Path(__file__).with_name("install.sh")
# manylinux tags a device's pip accepts (glibc 2.28 or newer: Debian 10+, Ubuntu 20.04+, Raspberry Pi OS).
MANYLINUX = ("manylinux2014", "manylinux_2_17", "manylinux_2_24", "manylinux_2_27", "manylinux_2_28")


class DeployError(ValueError):
    """A bundle or profile that cannot make a deploy folder, or a failed deploy."""


@dataclass(frozen=True)
class DeployConfig:
    """profile: a device profile name. python_version: the device's Python (default: the profile's OS
    image's). wheels: download every requirement for the device's platform, to install offline.
    source: the camera source the service reads (default: the profile's)."""

    profile: str
    python_version: str | None = None
    wheels: bool = False
    source: str | None = None
    overwrite: bool = False


@dataclass
class DeployFolder:
    path: Path
    profile: str
    python_version: str
    artifacts: list[str]
    default_artifact: str
    wheels: int = 0
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


def usable_artifacts(bundle: Bundle, profile: DeviceProfile) -> list[str]:
    """Artifacts of the bundle the profile runs (in the profile's order of preference) that did not fail
    their parity gate."""
    chosen = []
    for preference in profile.artifacts:
        fmt, precision = preference.split(":")
        for name, artifact in bundle.artifacts.items():
            if (artifact.format, artifact.precision) == (fmt, precision) and artifact.metrics.get("passed") is not False:
                if name not in chosen:
                    chosen.append(name)
    return chosen


def _pruned_bundle(bundle: Bundle, keep: list[str], folder: Path) -> None:
    """Copy the kept artifacts and the golden file (checked against bundle.json first), and write a
    bundle.json that lists only them, with the profile's first choice as default."""
    folder.mkdir()
    for name in keep:
        shutil.copy2(bundle.verified_path(name), folder / bundle.artifacts[name].file)
    shutil.copy2(bundle.folder / bundle.golden["file"], folder / bundle.golden["file"])
    report = bundle.folder / "report.md"
    if report.is_file():
        shutil.copy2(report, folder / "report.md")
    golden = {**bundle.golden, "artifacts": [n for n in bundle.golden.get("artifacts", []) if n in keep]}
    replace(bundle, artifacts={name: bundle.artifacts[name] for name in keep}, default_artifact=keep[0],
            golden=golden, folder=folder).write()


def pip_platforms(machine: str) -> list[str]:
    return [f"{tag}_{machine}" for tag in MANYLINUX]


def download_wheels(requirements: Path, dest: Path, machine: str, python: str) -> int:
    """pip download every requirement as a binary wheel for the device's platform and Python."""
    command = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
               "--python-version", python, "--implementation", "cp", "-d", str(dest), "-r", str(requirements)]
    for platform_tag in pip_platforms(machine):
        command += ["--platform", platform_tag]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(line for line in done.stderr.splitlines() if "is ignored" not in line)[-1500:]
        raise DeployError(f"Downloading the wheels for Python {python} on {machine} failed:\n{tail}")
    return len(list(dest.glob("*.whl")))


def _deploy_env(profile: DeviceProfile, python: str) -> str:
    values = {
        "PROFILE": profile.name, "TARGET_MACHINE": profile.platform.machine, "TARGET_PYTHON": python,
        "APT_PACKAGES": " ".join(profile.setup.apt), "SYSTEM_SITE_PACKAGES": "1" if profile.setup.system_site_packages else "0",
        "SERVICE_NAME": SERVICE_NAME,
    }
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())


def _readme(profile: DeviceProfile, info: dict) -> str:
    speed = profile.expected_speed
    published = "".join(f"- {p['figure']}: {p['model']} on {p['board']} ({p['source']})\n"
                        for p in speed.get("published", []))
    notes = "".join(f"- {note}\n" for note in profile.setup.notes)
    return f"""# edgevision for {profile.title}

Made by `edgevision deploy` {info['created']} for profile `{profile.name}` ({profile.platform.os}, Python
{info['python_version']}, {profile.platform.machine}).

Artifacts: {', '.join(info['artifacts'])} (`edgevision run` uses {info['default_artifact']}).

## Install on the device

    bash install.sh                      # into ~/edgevision; --prefix DIR for elsewhere
    bash install.sh --service yes        # also install and start the systemd service (root or passwordless sudo)

install.sh makes a new release (its own venv and bundle), runs `edgevision verify` on it, and only then
points ~/edgevision/current at it and restarts the service: a failed install leaves the previous one
running. {'The wheels/ folder holds every package, so no network is needed.' if info['wheels'] else
'Packages come from PyPI (deploy with --wheels to carry them).'}

Apt packages: {', '.join(profile.setup.apt) or 'none'}.
{notes}
## Run and check

    ~/edgevision/current/venv/bin/edgevision verify ~/edgevision/current/bundle --artifact all
    ~/edgevision/current/venv/bin/edgevision run ~/edgevision/current/bundle --source {info['source']}
    journalctl -u {SERVICE_NAME} -f      # the service's JSON lines

Camera: {profile.camera.notes}

## Expected speed

{published or ''}Ours: {speed.get('ours', 'unknown')}.
"""


def deploy_folder(bundle_dir: str | os.PathLike, out_dir: str | os.PathLike, config: DeployConfig) -> DeployFolder:
    """Write the deploy folder for `config.profile`; raises DeployError (or ProfileError, BundleError)
    naming what is wrong before anything is written."""
    started = time.perf_counter()
    profile = load_profile(config.profile)
    python = config.python_version or profile.platform.python
    if python not in SUPPORTED_PYTHONS:
        raise DeployError(f"--python-version {python!r} is not supported; choose one of {', '.join(SUPPORTED_PYTHONS)}")
    bundle = Bundle.load(bundle_dir)
    keep = usable_artifacts(bundle, profile)
    if not keep:
        have = ", ".join(f"{n} ({a.format}:{a.precision}{', failed its gate' if a.metrics.get('passed') is False else ''})"
                         for n, a in bundle.artifacts.items())
        raise DeployError(f"Bundle '{bundle_dir}' has no artifact profile {profile.name} can use: it has {have}; "
                          f"{profile.name} runs {', '.join(profile.artifacts)} (export with --formats to add one)")
    if not bundle.golden:
        raise DeployError(f"Bundle '{bundle_dir}' has no golden predictions, so the device could not verify it; "
                          "export it again with this edgevision")
    from edgevision.runtime.golden import load_golden

    unanswered = [name for name in keep if name not in load_golden(bundle).probs]
    if unanswered:
        raise DeployError(f"Bundle '{bundle_dir}': the golden set has no answers for {', '.join(unanswered)}, so the "
                          "device could not verify them; export the bundle again")
    try:
        numpy_major(profile, python)
        pythons = [p for p in SUPPORTED_PYTHONS if numpy_major(profile, p) == 2 or p in ("3.10", "3.11", "3.12")]
        engines = {DEFAULT_ENGINE[bundle.artifacts[name].format] for name in keep}
        requirements = {p: runtime_requirements(profile, p, engines) for p in pythons}
    except ValueError as bad:
        raise DeployError(str(bad)) from None
    out_dir = Path(out_dir)
    refuse_inputs(out_dir, [bundle_dir])
    if out_dir.exists() and not config.overwrite:
        raise DeployError(f"Deploy folder '{out_dir}' exists; pass --overwrite to replace it")
    source = config.source or profile.camera.source
    info = {
        "profile": profile.name, "python_version": python, "machine": profile.platform.machine,
        "artifacts": keep, "default_artifact": keep[0], "engines": sorted(engines), "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bundle": str(Path(bundle_dir).resolve()),
        "wheels": bool(config.wheels),
    }
    with atomic_directory(out_dir, overwrite=config.overwrite, inputs=[bundle_dir]) as staging:
        _pruned_bundle(bundle, keep, staging / "bundle")
        wheel = build_wheel(staging)
        info["edgevision_wheel"] = wheel.name
        for p, lines in requirements.items():
            (staging / f"requirements-py{p}.txt").write_text("\n".join(lines) + "\n")
        count = 0
        if config.wheels:
            (staging / "wheels").mkdir()
            count = download_wheels(staging / f"requirements-py{python}.txt", staging / "wheels",
                                    profile.platform.machine, python)
        shutil.copy2(INSTALLER, staging / "install.sh")
        (staging / "install.sh").chmod(0o755)
        (staging / "deploy.env").write_text(_deploy_env(profile, python))
        unit = profile.systemd_unit("@PREFIX@/current/bundle", source, venv="@PREFIX@/current/venv", user="@USER@")
        (staging / f"{SERVICE_NAME}.service").write_text(unit)
        (staging / "deploy.json").write_text(json.dumps(info, indent=2) + "\n")
        (staging / "README.md").write_text(_readme(profile, info))
    return DeployFolder(path=out_dir, profile=profile.name, python_version=python, artifacts=keep,
                        default_artifact=keep[0], wheels=count, seconds=time.perf_counter() - started, info=info)
