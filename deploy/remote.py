"""Deploy a deploy folder to devices over ssh: check the host, copy the folder, run its install.sh (which
verifies the bundle before switching to it and restarting the service), and report what each device said.

Only ssh and tar are needed on the device; ssh runs with BatchMode, so a host that would ask for a
password fails at once instead of waiting for someone to type it. Several hosts deploy in parallel,
each with its own result line. Beyond a handful of devices, hand the deploy folder to a fleet tool
(e.g. an Ansible play that copies it and runs install.sh) rather than this loop.
"""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import tarfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .folder import DeployError

# install.sh's exit statuses -> what they mean (see install.sh).
INSTALL_EXITS = {2: "bad install.sh options", 3: "the device cannot run it", 4: "the install failed",
                 5: "verify failed on the device", 6: "the service could not be installed or started",
                 124: "the install took too long"}
_HOST = re.compile(r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?$")


@dataclass(frozen=True)
class Host:
    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Host":
        """user@host, host, user@host:port, or [ipv6]:port."""
        match = _HOST.match(text.strip())
        if not match or text.strip().startswith("-"):
            raise DeployError(f"Host {text!r} is not [user@]host[:port]")
        port = int(match["port"]) if match["port"] else None
        if port is not None and not 1 <= port <= 65535:
            raise DeployError(f"Host {text!r} has port {port}; use 1-65535")
        return cls(host=match["host"].strip("[]"), user=match["user"], port=port)

    def __str__(self) -> str:
        name = f"{self.user}@{self.host}" if self.user else self.host
        return f"{name}:{self.port}" if self.port else name


def read_hosts_file(path: str | Path) -> list[Host]:
    """One host per line; blank lines and # comments are skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise DeployError(f"Cannot read the hosts file '{path}': {err.strerror}") from None
    return [Host.parse(line.split("#", 1)[0]) for line in lines if line.split("#", 1)[0].strip()]


@dataclass(frozen=True)
class RemoteConfig:
    """prefix: install folder on the device (default ~/edgevision). service: auto, yes or no (see
    install.sh). apt: install the profile's apt packages. ssh_options: extra `-o` options for ssh."""

    prefix: str | None = None
    service: str = "yes"
    apt: bool = True
    pip_index_url: str | None = None
    keep: int = 3
    ssh_options: tuple[str, ...] = ()
    connect_timeout: int = 10
    parallel: int = 8
    # The install step's limit, enforced on the device too (`timeout`), so an install cut off here
    # cannot go on to switch releases there after the host was reported as failed.
    install_timeout: float = 1800.0

    def __post_init__(self) -> None:
        if self.service not in ("auto", "yes", "no"):
            raise DeployError(f"service {self.service!r} is invalid; choose auto, yes or no")
        if self.parallel < 1:
            raise DeployError(f"parallel must be at least 1, got {self.parallel}")
        if self.keep < 1:
            raise DeployError(f"keep must be at least 1 release, got {self.keep}")
        if not self.install_timeout > 0:
            raise DeployError(f"install timeout must be positive seconds, got {self.install_timeout}")


@dataclass
class HostResult:
    host: str
    ok: bool
    step: str  # the last step reached: check, copy, install, done
    message: str
    output: str = ""  # what install.sh printed on the device
    seconds: float = 0.0
    steps: dict = field(default_factory=dict)  # step -> seconds

    def line(self) -> str:
        return f"{self.host}: {'ok' if self.ok else 'FAIL'}: {self.message} ({self.seconds:.0f} s)"


def ssh_command(host: Host, config: RemoteConfig, remote: str) -> list[str]:
    # Keep-alives: a device that drops off the network mid-install is noticed within a minute.
    command = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={config.connect_timeout}",
               "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
    for option in config.ssh_options:
        command += ["-o", option]
    if host.port:
        command += ["-p", str(host.port)]
    return [*command, f"{host.user}@{host.host}" if host.user else host.host, remote]


# Printed by the check: Python version and machine, or NOPYTHON.
# A 32-bit Python on a 64-bit kernel reports the kernel's machine: say "32-bit" instead.
_CHECK = ("command -v python3 >/dev/null 2>&1 && python3 -c 'import platform, struct, sys; "
          "print(\"%d.%d %s\" % (sys.version_info[0], sys.version_info[1], platform.machine() "
          "if struct.calcsize(\"P\") == 8 else \"32-bit\"))' || echo NOPYTHON")


def _install_command(stage: str, config: RemoteConfig) -> str:
    args = ["--service", config.service, "--keep", str(config.keep)]
    if config.prefix:
        args += ["--prefix", config.prefix]
    if not config.apt:
        args.append("--no-apt")
    if config.pip_index_url:
        args += ["--pip-index-url", config.pip_index_url]
    quoted = " ".join(shlex.quote(a) for a in args)
    # The staged copy goes whatever install.sh decides; its exit status is the deploy's.
    limit = int(config.install_timeout)
    return (f'timeout -k 30 {limit} bash "$HOME/{stage}/install.sh" {quoted}; rc=$?; rm -rf "$HOME/{stage}"; '
            f'[ $rc = 124 ] && echo "install: error: stopped after {limit} s" >&2; exit $rc')


def _tar_bytes(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


def plan(folder: Path, host: Host, config: RemoteConfig, stage: str = ".edgevision-deploy/ID") -> list[str]:
    """The commands a deploy to `host` runs, as shell lines (what --dry-run prints)."""
    copy = ssh_command(host, config, f'rm -rf "$HOME/{stage}" && mkdir -p "$HOME/{stage}" && tar -C "$HOME/{stage}" -xf -')
    return [
        shlex.join(ssh_command(host, config, _CHECK)),
        f"tar -C {shlex.quote(str(folder))} -cf - . | {shlex.join(copy)}",
        shlex.join(ssh_command(host, config, _install_command(stage, config))),
    ]


def _run(command: list[str], timeout: float, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, input=data, capture_output=True, timeout=timeout)


def _last_line(text: bytes) -> str:
    lines = [line for line in text.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def deploy_host(folder: Path, host: Host, config: RemoteConfig, machine: str, tarball: bytes) -> HostResult:
    """Check, copy and install on one host. Never raises: the result says what happened."""
    started = time.perf_counter()
    result = HostResult(host=str(host), ok=False, step="check", message="")

    def timed(step: str, command: list[str], timeout: float, data: bytes | None = None):
        result.step = step
        begin = time.perf_counter()
        try:
            return _run(command, timeout, data)
        finally:
            result.steps[step] = round(time.perf_counter() - begin, 1)

    try:
        done = timed("check", ssh_command(host, config, _CHECK), config.connect_timeout + 30)
        if done.returncode == 255:
            result.message = f"cannot reach the host over ssh: {_last_line(done.stderr)}"
        elif done.returncode != 0:
            result.message = f"the check command failed (exit {done.returncode}): {_last_line(done.stderr)}"
        elif _last_line(done.stdout) == "NOPYTHON":
            result.message = "the host has no python3; edgevision needs Python 3.10 or newer"
        else:
            version, _, arch = _last_line(done.stdout).partition(" ")
            major, minor = (int(v) for v in version.split("."))
            if (major, minor) < (3, 10):
                result.message = f"the host has Python {version}; edgevision needs Python 3.10 or newer"
            elif arch == "32-bit":
                result.message = f"the host's python3 is a 32-bit build; this deploy folder is for 64-bit {machine}"
            elif arch != machine:
                result.message = f"the host is {arch}; this deploy folder is for {machine}"
            else:
                stage = f".edgevision-deploy/{uuid.uuid4().hex[:12]}"
                copy = ssh_command(host, config, f'rm -rf "$HOME/{stage}" && mkdir -p "$HOME/{stage}" && '
                                                 f'tar -C "$HOME/{stage}" -xf -')
                done = timed("copy", copy, 600, tarball)
                if done.returncode != 0:
                    result.message = f"copying the deploy folder failed: {_last_line(done.stderr)}"
                else:
                    done = timed("install", ssh_command(host, config, _install_command(stage, config)),
                                 config.install_timeout + 60)
                    result.output = (done.stdout + done.stderr).decode(errors="replace")
                    if done.returncode == 0:
                        result.ok, result.step = True, "done"
                        verified = [line for line in result.output.splitlines() if line.startswith("verify:")]
                        result.message = verified[-1] if verified else "installed"
                    else:
                        why = INSTALL_EXITS.get(done.returncode, f"exit {done.returncode}")
                        result.message = f"{why}: {_last_line(done.stderr or done.stdout)}"
    except subprocess.TimeoutExpired as late:
        result.message = f"the {result.step} step took longer than {late.timeout:.0f} s"
    except (ValueError, OSError) as err:
        result.message = f"{result.step} failed: {err}"
    result.seconds = time.perf_counter() - started
    return result


def deploy_hosts(folder: str | Path, hosts: list[Host], config: RemoteConfig, machine: str,
                 on_result=None) -> list[HostResult]:
    """Deploy `folder` to every host, `config.parallel` at a time; results in the order of `hosts`."""
    folder = Path(folder)
    if not hosts:
        raise DeployError("No hosts to deploy to")
    hosts = list(dict.fromkeys(hosts))  # the same host named twice deploys once
    tarball = _tar_bytes(folder)

    def one(host: Host) -> HostResult:
        outcome = deploy_host(folder, host, config, machine, tarball)
        if on_result is not None:
            on_result(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=min(config.parallel, len(hosts))) as pool:
        return list(pool.map(one, hosts))
