"""A device install needs no training stack: runtime/, devices/ and deploy/ work with TensorFlow, Keras, JAX
and torch made unimportable, the layering (devices <- runtime <- deploy, train/export) holds in the source, and
one decoder (devices/imagefile.py) reads every image file."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import realish_image

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "jax", "jaxlib", "torch", "tf_keras")

CHILD = textwrap.dedent(
    r"""
    import importlib, json, pkgutil, sys

    HEAVY = {heavy!r}

    class BlockHeavy:
        # A machine without the training stack: importing any of these fails, as it would there.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ImportError(f"{{name}} is blocked: a device install does not have it")
            return None

    sys.meta_path.insert(0, BlockHeavy())

    def import_all(package_name):
        package = importlib.import_module(package_name)
        names = [package_name]
        for info in pkgutil.walk_packages(package.__path__, package_name + "."):
            importlib.import_module(info.name)
            names.append(info.name)
        return names

    report = {{}}
    report["devices_modules"] = import_all("edgevision.devices")
    # devices/ is the lowest layer: importing it pulls in none of the other three.
    report["after_devices"] = sorted(
        m for m in sys.modules if m.startswith(("edgevision.runtime", "edgevision.train", "edgevision.export"))
    )
    report["runtime_modules"] = import_all("edgevision.runtime")
    report["deploy_modules"] = import_all("edgevision.deploy")

    import numpy as np
    from edgevision.runtime.classifier import Classifier

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    report["predictions"] = {{}}
    for artifact in {artifacts!r}:
        prediction = Classifier({folder!r}, artifact=artifact, threads=1).classify(frame)
        report["predictions"][artifact] = [prediction.label, prediction.score]
    report["heavy_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    print(json.dumps(report))
    """
)


def test_runtime_and_devices_work_without_the_training_stack(tiny_bundle):
    pytest.importorskip("onnxruntime", reason="the runtime check covers the ONNX engine too")
    artifacts = ["tflite_fp32", "tflite_int8", "onnx_fp32"]
    code = CHILD.format(heavy=HEAVY, artifacts=artifacts, folder=str(tiny_bundle.folder))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, f"the runtime needed something it must not:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy_loaded"] == []
    assert report["after_devices"] == [], "devices/ imported another layer"
    assert "edgevision.devices.sources" in report["devices_modules"]
    for module in ("engines", "classifier", "loop", "bundle", "preprocess", "golden"):
        assert f"edgevision.runtime.{module}" in report["runtime_modules"]
    assert "edgevision.deploy.remote" in report["deploy_modules"]
    assert set(report["predictions"]) == set(artifacts)
    for label, score in report["predictions"].values():
        assert label in tiny_bundle.labels and 0.0 < score <= 1.0


# --- the same rules, read from the source (fast, and names the offending line) ---

LAYERS = {"devices": "devices", "runtime": "runtime", "deploy": "deploy", "train": "train", "export": "export"}
# What each device-side folder may never import, anywhere (lazily or not).
NEVER = {
    "devices": ("edgevision.runtime", "edgevision.train", "edgevision.export"),
    "runtime": ("edgevision.train", "edgevision.export", "edgevision.deploy"),
    "deploy": ("edgevision.train", "edgevision.export"),
    "train": ("edgevision.export", "edgevision.deploy"),
    "export": ("edgevision.deploy",),
}
# What export may take from train: the run-folder format, nothing of training itself.
EXPORT_FROM_TRAIN = ("edgevision.train.run_dir",)


def _imports(tree: ast.AST, package: str):
    """(lineno, absolute module name, at_module_level) for every import in a module of `package`."""

    def visit(node, top_level):
        for child in ast.iter_child_nodes(node):
            inside = top_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield child.lineno, alias.name, top_level
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against edgevision.<package>
                    parts = ["edgevision", package][: max(0, 2 - (child.level - 1))]
                    base = ".".join(parts + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                yield child.lineno, base, top_level
            yield from visit(child, inside)

    yield from visit(tree, True)


@pytest.mark.parametrize("package", ["devices", "runtime", "deploy", "train", "export"])
def test_imports_follow_the_layers(package):
    offences = []
    for path in sorted((ROOT / LAYERS[package]).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for lineno, name, top_level in _imports(tree, package):
            where = f"{path.relative_to(ROOT)}:{lineno} imports {name}"
            if top_level and name.split(".")[0] in HEAVY and package in ("devices", "runtime", "deploy"):
                offences.append(f"{where} at module level (import it lazily, inside the function)")
            if name.startswith(NEVER[package]):
                offences.append(f"{where}, a layer above {package}/")
            if package == "export" and name.startswith("edgevision.train") and name not in EXPORT_FROM_TRAIN:
                offences.append(f"{where}: export takes only the run-folder format from train ({EXPORT_FROM_TRAIN[0]})")
            if package == "devices" and name.split(".")[0] in ("ai_edge_litert", "tflite_runtime", "onnxruntime"):
                offences.append(f"{where}: engines belong to runtime/")
    assert not offences, "\n".join(offences)


# The one decoder: every image file is read by devices/imagefile.py, so training, export, classify_file
# and the image-folder source cannot disagree about a picture (EXIF orientation, alpha, 16-bit, limits).
DECODER = "devices/imagefile.py"
CV2_FILE_DECODERS = ("imread", "imdecode", "imreadmulti", "imreadWithMetadata", "imdecodeWithMetadata",
                     "imreadanimation", "imdecodeanimation")
CODE_FOLDERS = ("devices", "runtime", "train", "export", "edgevision", "benchmarks")


def _decoder_offences(tree: ast.AST, where: str):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in CV2_FILE_DECODERS
                and isinstance(node.value, ast.Name) and node.value.id == "cv2"):
            yield f"{where}:{node.lineno} calls cv2.{node.attr}; read image files with read_image ({DECODER})"
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "IMAGE_EXTENSIONS" for t in targets):
            yield f"{where}:{node.lineno} defines IMAGE_EXTENSIONS; import the one in {DECODER}"


def test_one_decoder_reads_every_image_file():
    offences = []
    for folder in CODE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            if where != DECODER:
                offences.extend(_decoder_offences(ast.parse(path.read_text(), filename=where), where))
    assert not offences, "\n".join(offences)


def test_the_run_command_imports_neither_training_nor_export(tiny_bundle, tmp_path):
    """`edgevision run` builds only its own parser: the training and export code (and what fills their
    choices) stays unimported, on success and on a user error alike."""
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(pictures / f"{i}.png"), realish_image(rng, 40, 40))
    code = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from edgevision.cli import main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ok = main(["run", {str(tiny_bundle.folder)!r}, "--source", {str(pictures)!r}, "--max-frames", "2"])
            bad = main(["run", {str(tmp_path / "missing")!r}, "--source", {str(pictures)!r}])
        loaded = sorted(m for m in sys.modules if m.startswith(("edgevision.train", "edgevision.export", "keras",
                                                                "tensorflow")))
        print(json.dumps({{"ok": ok, "bad": bad, "loaded": loaded}}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["ok"], report["bad"]) == (0, 2)
    assert report["loaded"] == []


def test_the_camera_modules_build_on_the_source_base_alone():
    """sources.py opens picamera.py and jetson.py lazily; they take their base classes from
    source_base.py, so no two source modules import each other."""
    for name in ("picamera", "jetson", "source_base"):
        path = ROOT / "devices" / f"{name}.py"
        imported = {module for _, module, _ in _imports(ast.parse(path.read_text()), "devices")}
        assert "edgevision.devices.sources" not in imported, f"devices/{name}.py imports sources.py"
