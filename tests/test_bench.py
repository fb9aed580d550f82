"""`edgevision bench` prints the figures it promises, measured with the runtime alone (a command that
prints numbers; nothing here asserts a speed)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from conftest import realish_image
from edgevision.cli import main
from edgevision.runtime.bench import BenchConfig, format_figures

FIGURES = {
    "artifact", "engine", "threads", "cpus", "frame_size", "invoke_ms", "decode_ms", "preprocess_ms", "convert_ms",
    "input_conversion",
    "preprocess_over_invoke", "ideal_fps", "loop_fps", "loop_frames", "loop_ratio", "paced_fps", "paced_frames",
    "paced_dropped", "paced_age_ms_p50", "paced_age_ms_p95", "paced_age_target_ms", "first_prediction_s",
    "first_prediction_cpu_s",
    "peak_rss_mb", "heavy_modules",
}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "clip.avi"
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (160, 120))
    for _ in range(20):
        writer.write(realish_image(rng, 120, 160))
    writer.release()
    return path


def test_bench_json_has_every_figure(tiny_bundle, clip, capsys):
    args = ["bench", str(tiny_bundle.folder), "--source", str(clip), "--threads", "1", "--frames", "40",
            "--invokes", "20", "--paced-frames", "10", "--json"]
    assert main(args) == 0
    figures = json.loads(capsys.readouterr().out)
    assert set(figures) == FIGURES
    assert figures["artifact"] == "model_fp32.tflite" and figures["engine"] == "litert" and figures["threads"] == 1
    assert figures["frame_size"] == "160x120"
    for key in ("invoke_ms", "decode_ms", "preprocess_ms", "loop_fps", "paced_age_ms_p95", "peak_rss_mb",
                "first_prediction_s"):
        assert figures[key] > 0, key
    assert figures["loop_frames"] == 20  # the loop reads the clip once: all of its 20 frames
    assert figures["ideal_fps"] == pytest.approx(
        1000 / (figures["invoke_ms"] + figures["decode_ms"] + figures["preprocess_ms"]))
    assert figures["loop_ratio"] == pytest.approx(figures["loop_fps"] / figures["ideal_fps"])
    assert figures["paced_frames"] + figures["paced_dropped"] <= 20
    assert figures["heavy_modules"] == []  # the runtime process imported no training stack


def test_bench_table_and_bad_input(tiny_bundle, clip, capsys, tmp_path):
    args = ["bench", str(tiny_bundle.folder), "--source", str(clip), "--artifact", "model_int8.tflite", "--threads",
            "1", "--frames", "10", "--invokes", "10", "--paced-frames", "5", "--no-child"]
    assert main(args) == 0
    table = capsys.readouterr().out
    for row in ("invoke alone", "decode per frame", "preprocess per frame", "loop, as fast as possible",
                "paced at 30 fps: dropped", "capture-to-result p50 / p95"):
        assert row in table
    assert "model_int8.tflite / litert / 1" in table and "peak RSS" not in table
    assert main(["bench", str(tiny_bundle.folder), "--source", str(tmp_path)]) == 2
    assert "is not a video file" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"frames 0"):
        BenchConfig(frames=0)


def test_format_figures_reads_like_the_documented_table():
    figures = {"artifact": "a", "engine": "litert", "threads": 2, "cpus": 2, "frame_size": "640x480",
               "invoke_ms": 10.0, "decode_ms": 2.0, "preprocess_ms": 0.5, "convert_ms": 0.1,
               "input_conversion": "normalize", "preprocess_over_invoke": 0.06,
               "ideal_fps": 80.0, "loop_fps": 76.0, "loop_frames": 300, "loop_ratio": 0.95, "paced_fps": 30.0,
               "paced_frames": 150, "paced_dropped": 0, "paced_age_ms_p50": 12.0, "paced_age_ms_p95": 13.5,
               "paced_age_target_ms": 15.5}
    table = format_figures(figures)
    assert "76.0 fps = 0.95x of that (300 frames)" in table and "0.50 ms + input conversion (normalize) 0.10 ms = 6.0% of invoke" in table
    assert "0 of 150" in table and "target <= 15.50" in table
