"""Make the bundle and video that `edgevision bench` is measured on (docs/measured.md, "Measured: runtime").

MobileNetV2 1.0 at 224x224 (Rescaling -> MobileNetV2 without ImageNet weights -> Dense softmax, 10
classes): the speed of a network does not depend on its weights. Artifacts: fp32 and full-int8 (uint8 I/O)
TFLite, fp32 and static int8 (QDQ) ONNX, made with the exporter's own converters and int8-calibrated on
real photos (scikit-learn's sample images, cropped and flipped) through the runtime's preprocessing.
Also writes a 640x480 30 fps mp4 panning over those photos. Needs the export extra (TensorFlow).

    python benchmarks/make_mobilenet_bundle.py OUT_DIR
    edgevision bench OUT_DIR/bundle --source OUT_DIR/pan640x480.mp4 --artifact tflite_int8
"""

from __future__ import annotations

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


def main(out: Path) -> None:
    import keras

    from edgevision.export.onnx import to_onnx_fp32, to_onnx_int8
    from edgevision.export.tflite import to_tflite_fp32, to_tflite_int8
    from edgevision.runtime.bundle import ARTIFACT_NAMES, Artifact, Bundle
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

    onnx_fp32 = to_onnx_fp32(model)
    made = {"tflite_fp32": to_tflite_fp32(model), "tflite_int8": to_tflite_int8(model, images, "uint8"),
            "onnx_fp32": onnx_fp32, "onnx_int8": to_onnx_int8(onnx_fp32, images)}
    artifacts = {}
    for kind, content in made.items():
        fmt, precision, file = ARTIFACT_NAMES[kind]
        (bundle_dir / file).write_bytes(content)
        artifacts[file] = Artifact.from_file(bundle_dir / file, fmt, precision)
    Bundle(labels=[f"class{i}" for i in range(10)], preprocess=policy, artifacts=artifacts,
           default_artifact="model_fp32.tflite",
           provenance={"made_by": "benchmarks/make_mobilenet_bundle.py", "backbone": "mobilenet_v2",
                       "alpha": 1.0, "weights": "random (speed only)"}).write(bundle_dir)
    video = write_pan_video(out / "pan640x480.mp4")
    print(f"wrote {bundle_dir} ({', '.join(artifacts)}) and {video}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/make_mobilenet_bundle.py OUT_DIR")
    main(Path(sys.argv[1]))
