"""The training benchmark compares what it claims to compare (its figures are in docs/measured.md)."""

import json

import pytest

from edgevision.train.bench import CLOTHES_AUGMENT, limited_data_settings, main


def test_limited_data_compares_transfer_with_scratch_on_valid_configs():
    settings = {s.name: s for s in limited_data_settings(96)}
    assert settings["efficientnet_lite0 head"].model.weights == "imagenet"
    assert settings["efficientnet_lite0 finetune"].model.mode == "finetune"
    assert settings["mobilenet_v2 scratch"].model.weights == "none"
    assert CLOTHES_AUGMENT.enabled and not CLOTHES_AUGMENT.vertical_flip


def test_throughput_times_the_training_path_with_and_without_augmentation(tmp_path):
    out = tmp_path / "figures.json"
    assert main(["throughput", "--alpha", "0.35", "--input-size", "32", "--batch-size", "8", "--steps", "2",
                 "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["images_timed"] == 16 and figures["devices"]
    assert figures["images_per_s"] > 0 and figures["images_per_s_augmented"] > 0
    expected = 1 - figures["images_per_s_augmented"] / figures["images_per_s"]
    assert abs(figures["augmentation_cost"] - expected) < 1e-3


def test_streaming_compares_threads_and_processes_and_refuses_another_decoder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["streaming", "--out", str(tmp_path), "--decoder", "threads,fork"])
    assert exit_info.value.code == 2
    assert "Unknown decoder(s) 'fork'; choose from threads, processes" in capsys.readouterr().err
    assert not (tmp_path / "photos").exists()  # refused before writing the photos
