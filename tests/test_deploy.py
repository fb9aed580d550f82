"""`edgevision deploy`: the deploy folder (pruned bundle, wheel, pinned requirements, installer, unit), its
install.sh run for real (a new release that becomes current only after verify passes), and the same over
ssh to an sshd this test starts on localhost, to several hosts at once."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from edgevision.cli import main
from edgevision.deploy.folder import DeployConfig, DeployError, deploy_folder
from edgevision.deploy.pins import runtime_requirements
from edgevision.deploy.remote import Host, RemoteConfig, plan
from edgevision.devices.profiles import ProfileError, load_profile
from edgevision.runtime.bundle import BUNDLE_FILE, Bundle
from edgevision.runtime.golden import load_golden, verify_bundle

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _mark(folder: Path, name: str, passed: bool) -> None:
    meta = json.loads((folder / BUNDLE_FILE).read_text())
    meta["artifacts"][name]["metrics"] = {"passed": passed}
    (folder / BUNDLE_FILE).write_text(json.dumps(meta))


@pytest.fixture
def bundle_copy(golden_bundle, tmp_path) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(golden_bundle, folder)
    return folder


# --- the folder ---


def test_a_pi_deploy_folder_holds_what_the_pi_runs(bundle_copy, tmp_path):
    _mark(bundle_copy, "model_int8.tflite", passed=False)  # failed its gate at export: never deployed
    result = deploy_folder(bundle_copy, tmp_path / "pi", DeployConfig("raspberry-pi-5"))
    out = result.path
    # The profile's order (tflite:int8 first), without the failed artifact.
    assert result.artifacts == ["model_int8_signed.tflite", "model_fp32.tflite", "model.onnx"]
    bundle = Bundle.load(out / "bundle")
    assert list(bundle.artifacts) == result.artifacts and bundle.default_artifact == "model_int8_signed.tflite"
    for name in bundle.artifacts:
        bundle.verified_path(name)  # copied intact
    assert set(load_golden(bundle).probs) >= set(result.artifacts)
    assert all(r.passed for r in verify_bundle(out / "bundle", "all", threads=1, profile=None))
    assert sorted(p.name for p in (out / "bundle").iterdir()) == sorted(
        ["bundle.json", "golden.npz", "model_fp32.tflite", "model_int8_signed.tflite", "model.onnx"])

    # Bookworm's picamera2 is built against numpy 1: its Python gets numpy 1; Trixie's (3.13) numpy 2.
    assert (out / "requirements-py3.11.txt").read_text().splitlines() == [
        "numpy==1.26.4", "ml-dtypes==0.5.4", "opencv-python-headless==4.11.0.86", "ai-edge-litert==2.3.0",
        "onnxruntime==1.32.0"]
    assert (out / "requirements-py3.13.txt").read_text().splitlines()[:2] == [
        "numpy==2.4.6", "opencv-python-headless==5.0.0.93"]
    env = (out / "deploy.env").read_text()
    assert "PROFILE=raspberry-pi-5\n" in env and "TARGET_MACHINE=aarch64\n" in env and "SYSTEM_SITE_PACKAGES=1\n" in env
    assert "APT_PACKAGES='python3-venv python3-picamera2'" in env
    unit = (out / "edgevision.service").read_text()
    assert ("ExecStart=@PREFIX@/current/venv/bin/edgevision run @PREFIX@/current/bundle --source picamera2 "
            "--profile raspberry-pi-5") in unit and "User=@USER@" in unit and "Restart=always" in unit
    assert os.access(out / "install.sh", os.X_OK)
    info = json.loads((out / "deploy.json").read_text())
    assert info["engines"] == ["litert", "onnxruntime"] and info["machine"] == "aarch64"
    readme = (out / "README.md").read_text()
    assert "Raspberry Pi 5" in readme and "bash install.sh" in readme and "Expected speed" in readme


def test_the_wheel_carries_the_whole_package_and_its_command(tmp_path):
    from edgevision.deploy.wheel import build_wheel

    wheel = build_wheel(tmp_path)
    assert build_wheel(tmp_path / "again").read_bytes() == wheel.read_bytes()  # reproducible
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "edgevision = edgevision.cli:main" in archive.read(info).decode()
    for module in ("edgevision/cli.py", "edgevision/runtime/golden.py", "edgevision/deploy/install.sh",
                   "edgevision/devices/profiles/raspberry-pi-5.json", "edgevision/export/exporter.py"):
        assert module in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    code = "import edgevision.runtime.golden, edgevision.deploy.remote; print(edgevision.runtime.golden.GOLDEN_FILE)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path)
    assert shown.stdout.strip() == "golden.npz", shown.stderr


def test_jetson_orin_keeps_jetpacks_opencv_and_numpy_1():
    lines = runtime_requirements(load_profile("jetson-orin-nano"), "3.10", {"onnxruntime"})
    assert not any(line.startswith("opencv") for line in lines) and "numpy==1.26.4" in lines
    assert "onnxruntime==1.23.2" in lines  # the newest with Python 3.10 wheels
    assert runtime_requirements(load_profile("generic-x86-64"), "3.12", {"litert"}) == [
        "numpy==2.4.6", "opencv-python-headless==5.0.0.93", "ai-edge-litert==2.3.0"]
    assert runtime_requirements(load_profile("generic-x86-64"), "3.10", {"litert"})[0] == "numpy==2.2.6"


def test_bad_deploys_name_what_is_wrong(bundle_copy, tiny_bundle, tmp_path, capsys):
    with pytest.raises(ProfileError, match="Unknown device profile 'raspberry-pi-6'; choose one of generic-x86-64, "
                                           "jetson-nano, .* \\(did you mean 'raspberry-pi-5'\\?\\)"):
        deploy_folder(bundle_copy, tmp_path / "a", DeployConfig("raspberry-pi-6"))
    with pytest.raises(DeployError, match="--python-version '3.9' is not supported; choose one of 3.10, 3.11"):
        deploy_folder(bundle_copy, tmp_path / "a", DeployConfig("raspberry-pi-5", python_version="3.9"))
    with pytest.raises(DeployError, match="has no golden predictions, so the device could not verify it"):
        deploy_folder(tiny_bundle.folder, tmp_path / "a", DeployConfig("raspberry-pi-5"))
    for name in Bundle.load(bundle_copy).artifacts:
        _mark(bundle_copy, name, passed=False)
    with pytest.raises(DeployError, match=r"has no artifact profile jetson-nano can use: it has model_fp32.tflite "
                                          r"\(tflite:fp32, failed its gate\).*jetson-nano runs onnx:fp16"):
        deploy_folder(bundle_copy, tmp_path / "a", DeployConfig("jetson-nano"))
    assert not (tmp_path / "a").exists()
    (tmp_path / "taken").mkdir()
    assert main(["deploy", str(tiny_bundle.folder), "--profile", "generic-x86-64", "--out", str(tmp_path / "taken")]) == 2
    assert "no golden predictions" in capsys.readouterr().err
    assert main(["deploy", str(tiny_bundle.folder), "--profile", "generic-x86-64"]) == 2
    assert "--out DIR is required unless you deploy to a --host" in capsys.readouterr().err


def test_hosts_parse_and_bad_ones_are_named(tmp_path):
    assert Host.parse("pi@raspberrypi.local") == Host("raspberrypi.local", "pi", None)
    assert str(Host.parse("root@10.0.0.7:2222")) == "root@10.0.0.7:2222"
    assert Host.parse("[::1]:22").host == "::1"
    for bad in ("-oProxyCommand=x", "pi@", "a b", "pi@host:99999"):
        with pytest.raises(DeployError, match="Host"):
            Host.parse(bad)
    listing = tmp_path / "hosts"
    listing.write_text("# the lab\npi@cam1\n\npi@cam2:2200  # the spare\n")
    from edgevision.deploy.remote import read_hosts_file

    assert [str(h) for h in read_hosts_file(listing)] == ["pi@cam1", "pi@cam2:2200"]
    with pytest.raises(DeployError, match="service 'always' is invalid; choose auto, yes or no"):
        RemoteConfig(service="always")


def test_dry_run_prints_the_ssh_commands(bundle_copy, tmp_path, capsys):
    code = main(["deploy", str(bundle_copy), "--profile", "raspberry-pi-4", "--out", str(tmp_path / "d"),
                 "--host", "pi@cam1", "--host", "pi@cam2:2200", "--dry-run", "--ssh-option", "IdentityFile=/k"])
    out = capsys.readouterr().out
    assert code == 0 and "# pi@cam1\n" in out and "# pi@cam2:2200\n" in out
    assert ("ssh -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 "
            "-o IdentityFile=/k -p 2200 pi@cam2") in out
    assert "install.sh\" --service yes --keep 3" in out and "timeout -k 30 1800 bash" in out
    assert f"tar -C {tmp_path / 'd'} -cf - ." in out
    assert plan(tmp_path / "d", Host("cam"), RemoteConfig(service="no", apt=False))[2].count("--no-apt") == 1
    assert main(["deploy", str(bundle_copy), "--profile", "raspberry-pi-4", "--host", "pi@cam1", "--dry-run"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err


# --- install.sh, for real ---


@pytest.fixture(scope="session")
def python_bin(tmp_path_factory) -> Path:
    """A folder whose python3 is this interpreter's base Python (what install.sh finds on a device)."""
    folder = tmp_path_factory.mktemp("bin")
    (folder / "python3").symlink_to(getattr(sys, "_base_executable", sys.executable))
    return folder


@pytest.fixture(scope="session")
def x86_deploy(golden_bundle, tmp_path_factory) -> Path:
    """A generic-x86-64 deploy folder with its wheels, for this machine's Python (downloads once)."""
    if os.uname().machine != "x86_64":
        pytest.skip("the install tests deploy the generic-x86-64 profile")
    out = tmp_path_factory.mktemp("deploy") / "x86"
    deploy_folder(golden_bundle, out, DeployConfig("generic-x86-64", python_version=PYTHON, wheels=True))
    return out


def _install(folder: Path, prefix: Path, python_bin: Path, *args: str, env: dict | None = None
             ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{python_bin}:{os.environ['PATH']}", "HOME": str(prefix.parent), **(env or {})}
    return subprocess.run(["bash", str(folder / "install.sh"), "--prefix", str(prefix), *args], env=env,
                          capture_output=True, text=True, timeout=600)


def _fake_systemd(folder: Path) -> dict:
    """A systemctl that logs its calls and reports the state written in `state`; the env that points
    install.sh at it (a running systemd, its unit folder)."""
    (folder / "run").mkdir(parents=True)
    (folder / "units").mkdir()
    (folder / "state").write_text("active\n")
    script = folder / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> {folder}/calls\n'
                      f'[ "$1" = is-active ] && {{ cat {folder}/state; [ "$(cat {folder}/state)" = active ]; exit; }}\n'
                      'exit 0\n')
    script.chmod(0o755)
    return {"EDGEVISION_SYSTEMD_RUN": str(folder / "run"), "EDGEVISION_UNIT_DIR": str(folder / "units"),
            "EDGEVISION_SYSTEMCTL": str(script)}


@pytest.mark.slow
def test_install_verifies_before_it_switches_and_keeps_the_old_release_on_failure(
        x86_deploy, golden_bundle, python_bin, tmp_path):
    prefix = tmp_path / "device" / "edgevision"
    systemd = _fake_systemd(tmp_path / "systemd")
    first = _install(x86_deploy, prefix, python_bin, "--service", "yes", env=systemd)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "verify: 4 of 4 artifacts reproduce the export machine's answers" in first.stdout
    assert "service edgevision: active" in first.stdout and first.stderr == ""
    calls = (tmp_path / "systemd" / "calls").read_text().splitlines()
    assert calls == ["daemon-reload", "enable edgevision.service", "restart edgevision.service",
                     "is-active edgevision.service"]
    installed_unit = (tmp_path / "systemd" / "units" / "edgevision.service").read_text()
    assert f"ExecStart={prefix}/current/venv/bin/edgevision run {prefix}/current/bundle --source 0" in installed_unit
    current = (prefix / "current").resolve()
    assert current.parent == prefix / "releases"
    # The installed runtime has no training stack, and verifies on its own.
    venv_python = prefix / "current" / "venv" / "bin" / "python"
    check = subprocess.run([str(venv_python), "-c", "import importlib.util as u; print(u.find_spec('tensorflow'))"],
                           capture_output=True, text=True)
    assert check.stdout.strip() == "None"
    again = subprocess.run([str(prefix / "current/venv/bin/edgevision"), "verify", str(prefix / "current/bundle"),
                            "--artifact", "all"], capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    unit = (prefix / "current" / "edgevision.service").read_text()
    assert f"ExecStart={prefix}/current/venv/bin/edgevision run {prefix}/current/bundle --source 0" in unit

    # A deploy whose golden answers this machine cannot reproduce: refused, the first release stays current.
    wrong = tmp_path / "wrong"
    shutil.copytree(golden_bundle, wrong)
    from test_golden import _rewrite_answers

    _rewrite_answers(wrong, "model_fp32.tflite", lambda p: p[:, ::-1])
    bad = deploy_folder(wrong, tmp_path / "bad", DeployConfig("generic-x86-64", python_version=PYTHON)).path
    shutil.copytree(x86_deploy / "wheels", bad / "wheels")
    second = _install(bad, prefix, python_bin, "--service", "no")
    assert second.returncode == 5, second.stdout + second.stderr
    assert "model_fp32.tflite (fp32, litert): labels equal" in second.stdout and "-> FAIL" in second.stdout
    assert "verify failed" in second.stderr and "the previous release stays current" in second.stderr
    assert (prefix / "current").resolve() == current and len(list((prefix / "releases").iterdir())) == 1

    # A release that verifies but whose service does not come up (a camera fault): the previous one is put
    # back, with its unit, and restarted.
    (tmp_path / "systemd" / "state").write_text("failed\n")
    third = _install(x86_deploy, prefix, python_bin, "--service", "yes", env=systemd)
    assert third.returncode == 6, third.stdout + third.stderr
    assert "edgevision.service was failed with the new release" in third.stderr
    assert f"back on releases/{current.name}" in third.stderr
    assert (prefix / "current").resolve() == current and len(list((prefix / "releases").iterdir())) == 1
    assert (tmp_path / "systemd" / "units" / "edgevision.service").read_text() == installed_unit
    assert (tmp_path / "systemd" / "calls").read_text().splitlines()[-2:] == ["daemon-reload",
                                                                            "restart edgevision.service"]

    # --service yes where systemd does not run: refused before the switch.
    fourth = _install(x86_deploy, prefix, python_bin, "--service", "yes",
                      env={"EDGEVISION_SYSTEMD_RUN": str(tmp_path / "no-systemd")})
    assert fourth.returncode == 6 and "systemd is not running" in fourth.stderr
    assert (prefix / "current").resolve() == current and len(list((prefix / "releases").iterdir())) == 1


def test_install_refuses_a_device_it_was_not_made_for(golden_bundle, python_bin, tmp_path):
    folder = deploy_folder(golden_bundle, tmp_path / "pi", DeployConfig("raspberry-pi-4")).path
    done = _install(folder, tmp_path / "p", python_bin)
    if os.uname().machine == "aarch64":
        pytest.skip("this machine is what a Pi is")
    assert done.returncode == 3
    assert f"this device is {os.uname().machine}; this deploy folder was made for aarch64" in done.stderr
    for args, message in ((["--service", "sometimes"], "--service must be auto, yes or no, got 'sometimes'"),
                          (["--keep", "00"], "--keep must be a positive number, got '00'"),
                          (["--prefix", str(tmp_path / "my device")], "may hold only letters, digits and . _ / + -"),
                          (["--prefix", "relative/dir"], "--prefix must be an absolute folder (or start with ~/)")):
        bad = _install(folder, tmp_path / "p", python_bin, *args)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)


# --- over ssh, to an sshd on localhost ---


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalSSHD:
    """sshd on 127.0.0.1 with a throwaway host key and client key, for root (the CI user)."""

    def __init__(self, folder: Path, extra: str = "", client: Path | None = None):
        self.folder, self.port = folder, _free_port()
        for key in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
        self.client = client or folder / "client"
        shutil.copy(f"{self.client}.pub", folder / "authorized_keys")
        (folder / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host'}\n"
            f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPasswordAuthentication no\n"
            f"KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
            f"PidFile {folder / 'sshd.pid'}\n{extra}")
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        self.process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(folder / "sshd_config")],
                                        stderr=subprocess.PIPE)
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not start: {self.process.stderr.read().decode()}")

    def options(self) -> list[str]:
        args = []
        for option in (f"IdentityFile={self.client}", "StrictHostKeyChecking=no",
                       "UserKnownHostsFile=/dev/null", "LogLevel=ERROR"):
            args += ["--ssh-option", option]
        return args

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory, python_bin):
    if not Path("/usr/sbin/sshd").exists() or os.geteuid() != 0:
        pytest.skip("needs openssh-server's sshd and root (CI installs it: .ci/run)")
    # The device's PATH, set after the login shell's startup files (which may put another python3 first).
    path = 'ForceCommand env PATH={}:/usr/bin:/bin bash --norc -c "$SSH_ORIGINAL_COMMAND"\n'
    daemons = [LocalSSHD(tmp_path_factory.mktemp("sshd"), path.format(python_bin))]
    # A second "device" whose python3 is 3.9: the deploy must stop before copying anything.
    old = tmp_path_factory.mktemp("oldpython")
    (old / "python3").write_text("#!/bin/sh\necho '3.9 x86_64'\n")
    (old / "python3").chmod(0o755)
    daemons.append(LocalSSHD(tmp_path_factory.mktemp("sshd_old"), path.format(old),
                             client=daemons[0].client))
    yield daemons
    for daemon in daemons:
        daemon.stop()


@pytest.mark.slow
def test_deploy_over_ssh_to_several_hosts_in_parallel(sshd, golden_bundle, tmp_path, capsys):
    good, old = sshd
    prefix = tmp_path / "remote" / "edgevision"
    staged = Path.home() / ".edgevision-deploy"  # where the devices (this machine's root) get the copies
    staged_before = set(staged.iterdir()) if staged.exists() else set()
    hosts = tmp_path / "hosts"
    hosts.write_text(f"root@localhost:{good.port}\nroot@127.0.0.1:{_free_port()}  # nobody listens\n")
    code = main(["deploy", str(golden_bundle), "--profile", "generic-x86-64", "--wheels", "--python-version", PYTHON,
                 "--host", f"root@127.0.0.1:{good.port}", "--hosts-file", str(hosts), "--host",
                 f"root@127.0.0.1:{old.port}", "--prefix", str(prefix), "--service", "no", *good.options()])
    out = capsys.readouterr().out
    assert code == 1, out  # two hosts failed
    lines = {line.split(": ", 1)[0]: line for line in out.splitlines() if ": ok: " in line or ": FAIL: " in line}
    assert "ok: verify: 4 of 4 artifacts reproduce" in lines[f"root@127.0.0.1:{good.port}"]
    assert "ok: verify: 4 of 4 artifacts reproduce" in lines[f"root@localhost:{good.port}"]
    unreachable = next(v for k, v in lines.items() if k not in (f"root@127.0.0.1:{good.port}",
                                                                f"root@localhost:{good.port}",
                                                                f"root@127.0.0.1:{old.port}"))
    assert "FAIL: cannot reach the host over ssh" in unreachable
    assert "FAIL: the host has Python 3.9; edgevision needs Python 3.10 or newer" in lines[f"root@127.0.0.1:{old.port}"]
    assert "deploy: 2 of 4 hosts ok" in out
    # What the devices reported is printed, and the release they made is current and verifies.
    assert out.count("install: current -> releases/") == 2 and "model_int8.tflite (int8, litert): labels equal 32/32" in out
    assert len(list((prefix / "releases").iterdir())) == 2
    check = subprocess.run([str(prefix / "current/venv/bin/edgevision"), "verify", str(prefix / "current/bundle")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert (set(staged.iterdir()) if staged.exists() else set()) == staged_before  # the copies are gone
