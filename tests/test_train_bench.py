"""The training benchmark compares what it claims to compare (its figures are in the README)."""

from edgevision.train.bench import CLOTHES_AUGMENT, limited_data_settings


def test_limited_data_compares_transfer_with_scratch_on_valid_configs():
    settings = {s.name: s for s in limited_data_settings(96)}
    assert settings["efficientnet_lite0 head"].model.weights == "imagenet"
    assert settings["efficientnet_lite0 finetune"].model.mode == "finetune"
    assert settings["mobilenet_v2 scratch"].model.weights == "none"
    assert CLOTHES_AUGMENT.enabled and not CLOTHES_AUGMENT.vertical_flip
