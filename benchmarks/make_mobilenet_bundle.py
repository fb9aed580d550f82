"""Make the bundle and video that `edgevision bench` is measured on (README "Measured: runtime").

MobileNetV2 1.0 at 224x224 (Rescaling -> MobileNetV2 without ImageNet weights -> Dense softmax, 10
classes): the speed of a network does not depend on its weights. Artifacts: fp32 and full-int8 (uint8 I/O)
TFLite, fp32 and static int8 (QDQ) ONNX, made with the exporter's own converters and int8-calibrated on
real photos (scikit-learn's sample images, cropped and flipped) through the runtime's preprocessing.
Also writes a 640x480 30 fps mp4 panning over those photos. Needs the export extra (TensorFlow).

    python benchmarks/make_mobilenet_bundle.py OUT_DIR
    edgevision bench OUT_DIR/bundle --source OUT_DIR/pan640x480.mp4 --artifact tflite_int8
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [cv2.cvtColor(image, cv2.COLOR_RGB2BGR) for image in load_sample_images().images]


def calibration_images(policy, count: int = 64) -> np.ndarray:
    from edgevision.runtime.preprocess import prepare

    rng = np.random.default_rng(0)
    pictures, out = photos(), []
    for i in range(count):
        picture = pictures[i % len(pictures)]
        h, w = picture.shape[:2]
        size = int(rng.integers(min(h, w) // 3, min(h, w)))
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crop = picture[top : top + size, left : left + size]
        out.append(prepare(crop[:, ::-1] if i % 2 else crop, policy, "bgr"))
    return np.stack(out)


def write_pan_video(path: Path, frames: int = 300, size=(640, 480), fps: int = 30) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    pictures = photos()
    for i in range(frames):
        picture = pictures[(i // 150) % len(pictures)]
        h, w = picture.shape[:2]
        scale = size[1] * 1.25 / h
        big = cv2.resize(picture, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
        x = int((big.shape[1] - size[0]) * (i % 150) / 149)
        writer.write(np.ascontiguousarray(big[: size[1], x : x + size[0]]))
    writer.release()
    return path


def tensor_spec(content: bytes, role: str):
    from ai_edge_litert.interpreter import Interpreter

    from edgevision.runtime.bundle import TensorSpec

    interpreter = Interpreter(model_content=content)
    details = (interpreter.get_input_details() if role == "input" else interpreter.get_output_details())[0]
    scale, zero_point = details["quantization"]
    dtype = np.dtype(details["dtype"]).name
    return TensorSpec(dtype, float(scale), int(zero_point)) if scale else TensorSpec(dtype)


def main(out: Path) -> None:
    import keras

    from edgevision.export.onnx import to_onnx_fp32, to_onnx_int8
    from edgevision.export.tflite import to_tflite_fp32, to_tflite_int8
    from edgevision.runtime.bundle import Artifact, Bundle, TensorSpec, file_sha256
    from edgevision.runtime.preprocess import PreprocessPolicy

    bundle_dir = out / "bundle"
    bundle_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((224, 224, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    backbone = keras.applications.MobileNetV2(alpha=1.0, input_shape=(224, 224, 3), include_top=False,
                                              weights=None, pooling="avg")
    outputs = keras.layers.Dense(10, activation="softmax")(backbone(x))
    model = keras.Model(inputs, outputs)
    policy = PreprocessPolicy(224, 224, "center_crop", "linear")
    images = calibration_images(policy)

    made = {}
    fp32 = to_tflite_fp32(model)
    made["tflite_fp32"] = ("model_fp32.tflite", "tflite", "fp32", fp32, tensor_spec(fp32, "input"),
                           tensor_spec(fp32, "output"))
    int8 = to_tflite_int8(model, images, "uint8")
    made["tflite_int8"] = ("model_int8.tflite", "tflite", "int8", int8, tensor_spec(int8, "input"),
                           tensor_spec(int8, "output"))
    onnx_fp32 = to_onnx_fp32(model)
    made["onnx_fp32"] = ("model.onnx", "onnx", "fp32", onnx_fp32, TensorSpec("float32"), TensorSpec("float32"))
    made["onnx_int8"] = ("model_int8.onnx", "onnx", "int8", to_onnx_int8(onnx_fp32, images),
                         TensorSpec("float32"), TensorSpec("float32"))
    artifacts = {}
    for name, (file, fmt, precision, content, input_spec, output_spec) in made.items():
        (bundle_dir / file).write_bytes(content)
        artifacts[name] = Artifact(file=file, format=fmt, precision=precision, sha256=file_sha256(bundle_dir / file),
                                   bytes=len(content), input=input_spec, output=output_spec)
    bundle = Bundle(labels=[f"class{i}" for i in range(10)], preprocess=policy, artifacts=artifacts,
                    default_artifact="tflite_fp32",
                    provenance={"made_by": "benchmarks/make_mobilenet_bundle.py", "backbone": "mobilenet_v2",
                                "alpha": 1.0, "weights": "random (speed only)"})
    (bundle_dir / "bundle.json").write_text(json.dumps(bundle.to_dict(), indent=2))
    video = write_pan_video(out / "pan640x480.mp4")
    print(f"wrote {bundle_dir} ({', '.join(artifacts)}) and {video}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/make_mobilenet_bundle.py OUT_DIR")
    main(Path(sys.argv[1]))
