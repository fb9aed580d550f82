"""The `edgevision` command: help, version, one-line errors for user mistakes, and `run` on a folder.

Help and error paths run the installed console script in a subprocess (what a user types); they must
stay light: `edgevision --help` and `edgevision run` never import TensorFlow or Keras.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import realish_image
from edgevision import __version__
from edgevision.cli import build_parser, main
from edgevision.devices.sources import ACCEPTED_FORMS
from edgevision.runtime.preprocess import PreprocessPolicy, load_and_prepare

SCRIPT = Path(sys.executable).with_name("edgevision")
SUBCOMMANDS = ("train", "export", "run", "demo")
HEAVY = ("tensorflow", "keras", "jax", "torch")


def _cli(*args: str, cwd: Path | None = None, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "edgevision.cli"]
    env = {"COLUMNS": "250", "TF_CPP_MIN_LOG_LEVEL": "3", **(os.environ if env is None else env)}
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def _squash(text: str) -> str:
    return " ".join(text.split())


def _subparsers() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    return {name: (helps[name], sub.description) for name, sub in action.choices.items()}


def _assert_one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"edgevision {command}: error: "), lines[0]
    assert result.stdout == ""
    return lines[0]


# --- help and version ---


def test_top_level_help_lists_every_subcommand_with_its_help():
    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    out = _squash(result.stdout)
    assert out.startswith("usage: edgevision")
    subparsers = _subparsers()
    assert set(SUBCOMMANDS) <= set(subparsers)
    for name, (help_text, description) in subparsers.items():
        assert help_text, f"{name} has no help text"
        assert description, f"{name} has no description"
        assert re.search(rf"\b{name}\s+{re.escape(_squash(help_text))}", out), (name, out)
    assert "--version" in out and "--verbose" in out


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_each_subcommand_help_has_a_description(command):
    result = _cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: edgevision {command}")
    _, description = _subparsers()[command]
    assert description and len(description) > 40
    assert _squash(description) in _squash(result.stdout)


def test_train_help_lists_the_backbone_and_mode_choices():
    from edgevision.train.model import BACKBONES, TRANSFER_MODES

    out = _squash(_cli("train", "--help").stdout)
    assert "{" + ",".join(sorted(BACKBONES)) + "}" in out
    assert "{" + ",".join(TRANSFER_MODES) + "}" in out and "--out OUT" in out


def test_version():
    result = _cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"edgevision {__version__}"


def test_no_subcommand_is_a_usage_error():
    result = _cli()
    assert result.returncode == 2
    assert "usage: edgevision" in result.stderr and "required" in result.stderr


def test_help_and_argument_errors_do_not_import_the_training_stack(tmp_path):
    code = textwrap.dedent(
        f"""
        import json, sys
        from edgevision.cli import main
        codes = []
        for argv in (["--help"], ["run", "--help"], ["export", "--help"]):
            try:
                main(argv)
            except SystemExit as done:
                codes.append(done.code)
        codes.append(main(["run", "/nonexistent-bundle", "--source", "0"]))
        codes.append(main(["train", "/nonexistent-photos", "--out", "run"]))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print(json.dumps({{"codes": codes, "heavy": heavy}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0, 0, 0, 2, 2]
    assert report["heavy"] == []
    assert "/nonexistent-photos' does not exist" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("user_level", [None, "0", "3"])
def test_the_tensorflow_log_level_defaults_to_2_and_a_users_value_wins(monkeypatch, capsys, user_level):
    if user_level is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", user_level)
    assert main(["run", "/nonexistent-bundle", "--source", "0"]) == 2
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == (user_level or "2")


# What TensorFlow 2.21 prints while it loads on a CPU with AVX-512 VNNI, whatever TF_CPP_MIN_LOG_LEVEL says.
TF_START_UP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1795989653.509512    3028 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. "
    "To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n"
)


def test_tensorflow_start_up_lines_are_held_to_the_log_level():
    from edgevision.tflogs import kept_lines

    warning = "W0000 00:00:1795989655.739305    3028 cpu_feature_guard.cc:227] a warning\n"
    python = "/x/site-packages/tensorflow/__init__.py:7: DeprecationWarning: something\n"
    text = TF_START_UP + warning + python + TF_START_UP
    notice = TF_START_UP.splitlines(keepends=True)[0]
    assert kept_lines(text, 0) == text
    assert kept_lines(text, 1) == notice + warning + python + notice
    assert kept_lines(text, 2) == python  # absl's notice goes when no record is left under it
    assert kept_lines("plain line\n", 3) == "plain line\n"


def test_importing_tensorflow_from_the_command_line_prints_no_start_up_lines():
    code = textwrap.dedent(
        """
        import os
        from edgevision.tflogs import quiet_tensorflow
        quiet_tensorflow()  # what main() does first
        import tensorflow
        print(os.environ["TF_CPP_MIN_LOG_LEVEL"])
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
    assert "absl" not in result.stderr and not re.search(r"^[IW]\d{4} ", result.stderr, re.M), result.stderr


def test_tensorflow_retracing_hints_are_dropped_unless_asked_for():
    code = textwrap.dedent(
        """
        import logging
        from edgevision.tflogs import quiet_tensorflow
        quiet_tensorflow()
        logging.basicConfig(format="%(name)s %(message)s")
        log = logging.getLogger("tensorflow")
        log.warning("5 out of the last 17 calls to <function f> triggered tf.function retracing. Tracing is expensive")
        log.warning("another warning")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert quiet.stderr.strip() == "tensorflow another warning", quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert "retracing" in loud.stderr and "another warning" in loud.stderr


# --- one-line errors for user mistakes ---


def test_train_on_a_missing_folder(tmp_path):
    result = _cli("train", "/nonexistent", "--out", "x", cwd=tmp_path)
    line = _assert_one_line_error(result, "train")
    assert "/nonexistent" in line and "does not exist" in line
    assert not (tmp_path / "x").exists()
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_an_existing_out_folder_before_loading_data(tmp_path):
    (tmp_path / "run").mkdir()
    result = _cli("train", "/nonexistent", "--out", "run", cwd=tmp_path)
    line = _assert_one_line_error(result, "train")
    assert "'run' already exists" in line and "--overwrite" in line


def test_train_never_overwrites_the_photos_it_trains_on(tmp_path):
    photo = tmp_path / "photos" / "cat" / "1.png"
    photo.parent.mkdir(parents=True)
    photo.write_bytes(b"not really a png")
    result = _cli("train", "photos", "--out", ".", "--overwrite", cwd=tmp_path)
    line = _assert_one_line_error(result, "train")
    assert "is or contains the input 'photos'" in line
    assert photo.read_bytes() == b"not really a png"


def test_train_with_an_unknown_backbone_is_an_argparse_choice_error(tmp_path):
    result = _cli("train", str(tmp_path), "--out", "x", "--backbone", "bad", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "argument --backbone: invalid choice: 'bad'" in result.stderr
    assert "mobilenet_v2" in result.stderr
    assert result.stderr.startswith("usage: edgevision train")


def test_train_with_a_bad_alpha_names_it_without_traceback(tmp_path):
    result = _cli("train", "/nonexistent", "--out", "x", "--alpha", "0.3", cwd=tmp_path)
    line = _assert_one_line_error(result, "train")
    assert "alpha 0.3" in line and "0.35" in line


def test_train_with_no_decode_threads_names_the_value_without_traceback(tmp_path):
    result = _cli("train", "/nonexistent", "--out", "x", "--workers", "0", cwd=tmp_path)
    line = _assert_one_line_error(result, "train")
    assert "workers must be a positive integer or None (one per core), got 0" in line


@pytest.mark.timeout(240)
def test_train_whose_imagenet_weights_cannot_be_downloaded_names_the_offline_alternatives(tmp_path):
    # The defaults (mobilenet_v2, --weights imagenet) download from Keras' server. An empty Keras cache and a
    # proxy that refuses connections make the download fail for real, on any machine, within seconds.
    rng = np.random.default_rng(2)
    for label in ("a", "b"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(tmp_path / "photos" / label / f"{i}.png"), realish_image(rng, 40, 40))
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "https_proxy", "http_proxy")}
    env.update(KERAS_HOME=str(tmp_path / "keras-cache"), https_proxy="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9")
    result = _cli("train", "photos", "--out", "run", "--epochs", "1", "--quiet", cwd=tmp_path, env=env, timeout=200)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edgevision train: error: Could not download the ImageNet weights of mobilenet_v2 (")
    for alternative in ("--backbone efficientnet_lite0", "--weights FILE", "--mode scratch --weights none"):
        assert alternative in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.train").exists()  # nothing left behind


def test_run_with_a_missing_bundle_names_the_folder():
    result = _cli("run", "/nonexistent", "--source", "0")
    line = _assert_one_line_error(result, "run")
    assert "'/nonexistent'" in line


def test_export_of_a_missing_run_names_the_folder(tmp_path):
    result = _cli("export", "/nonexistent", "--out", str(tmp_path / "bundle"))
    line = _assert_one_line_error(result, "export")
    assert "'/nonexistent'" in line
    assert list(tmp_path.iterdir()) == []


# --- run with a real bundle ---


@pytest.fixture(scope="module")
def picture_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(5)
    for i, (h, w) in enumerate([(48, 64), (32, 32), (120, 90)]):
        cv2.imwrite(str(folder / f"img{i}.png"), realish_image(rng, h, w))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_run_with_an_unknown_source_lists_accepted_forms(tiny_bundle, capsys):
    assert main(["run", str(tiny_bundle.folder), "--source", "nonsense://x"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgevision run: error: ")
    assert "'nonsense'" in lines[0]
    for form in ACCEPTED_FORMS:
        assert form in lines[0]


def test_run_with_a_missing_source_path_lists_accepted_forms(tiny_bundle, tmp_path, capsys):
    missing = str(tmp_path / "no-such-clip.mp4")
    assert main(["run", str(tiny_bundle.folder), "--source", missing]) == 2
    err = capsys.readouterr().err
    assert repr(missing) in err and "accepted sources:" in err and "Traceback" not in err


@pytest.mark.parametrize("frames", ["0", "-3"])
def test_run_refuses_a_non_positive_frame_limit(tiny_bundle, picture_folder, capsys, frames):
    assert main(["run", str(tiny_bundle.folder), "--source", str(picture_folder), "--max-frames", frames]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"--max-frames must be at least 1, got {frames}" in captured.err


def test_run_on_a_folder_prints_frame_lines_and_a_summary(tiny_bundle, picture_folder):
    """The console script end to end on a device-style call; the labels are the Keras model's, and the
    run imports no training stack."""
    code = textwrap.dedent(
        f"""
        import sys
        from edgevision.cli import main
        code = main(["run", {str(tiny_bundle.folder)!r}, "--source", {str(picture_folder)!r},
                     "--max-frames", "2", "--threads", "1"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print("HEAVY", heavy, file=sys.stderr)
        sys.exit(code)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stderr, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3, result.stdout
    records = [json.loads(line) for line in lines]
    frames, summary = records[:2], records[2]
    assert set(summary) == {"summary"}
    assert summary["summary"]["frames"] == 2
    assert sum(summary["summary"]["labels"].values()) == 2
    assert [f["frame"] for f in frames] == [0, 1]

    policy = PreprocessPolicy(32, 32)
    files = sorted(picture_folder.glob("*.png"))[:2]
    expected = tiny_bundle.reference(np.stack([load_and_prepare(f, policy) for f in files]))
    for record, row in zip(frames, expected):
        assert set(record) >= {"frame", "timestamp", "label", "score", "latency_ms"}
        assert record["label"] == tiny_bundle.labels[int(row.argmax())]
        assert record["score"] == pytest.approx(float(row.max()), abs=1e-3)
        assert record["latency_ms"] > 0


def test_run_without_a_frame_limit_stops_at_the_end_of_the_folder(tiny_bundle, picture_folder, capsys):
    assert main(["run", str(tiny_bundle.folder), "--source", str(picture_folder)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4  # three pictures (the .txt is not one) + summary
    assert json.loads(lines[-1])["summary"]["frames"] == 3
