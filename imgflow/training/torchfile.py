"""PyTorch state dicts read without PyTorch: ``read_state_dict(path)`` -> {name: numpy array}.

Pretrained weights are often published only as a PyTorch ``.pth`` file; imgflow reads them into
Keras without making torch a dependency. It reads the legacy layout (``torch.save`` before 1.6, or
with ``_use_new_zipfile_serialization=False``), which published weights such as EfficientNet-Lite0's
use: four pickles (a magic number, protocol 1001, system info, then the object), a pickled list of
storage keys, then each storage in that order as an 8-byte little-endian element count and its raw
bytes. The object pickle refers to storages by persistent id ``("storage", type, key, location,
numel)`` and rebuilds tensors with ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)``. The unpickler here resolves only those names and ``collections.OrderedDict``: any
other global is refused, so a ``.pth`` file can never run code (``pickle``'s usual hazard).
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from imgflow.runtime.errors import ConfigError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = np.dtype(_STORAGE_DTYPES[name]).newbyteorder("<")


class _Tensor:
    """A tensor whose storage is read later: (storage key, element offset, shape, strides)."""

    def __init__(self, storage: tuple[str, np.dtype], offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.key, self.dtype = storage
        self.offset, self.size, self.stride = offset, tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> _Tensor:
    return _Tensor(storage, offset, size, stride)


class _Unpickler(pickle.Unpickler):
    def __init__(self, handle: IO[bytes], path: Path) -> None:
        super().__init__(handle)
        self.path = path
        self.storages: dict[str, tuple[np.dtype, int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise ConfigError(f"{self.path} is not a plain state dict of tensors: it refers to {module}.{name}, which imgflow will not load")

    def persistent_load(self, pid: Any) -> tuple[str, np.dtype]:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 5):
            raise ConfigError(f"{self.path}: unknown persistent reference {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(storage_type, _StorageType):
            raise ConfigError(f"{self.path}: storage {key} has an unknown type {storage_type!r}")
        self.storages[key] = (storage_type.dtype, int(numel))
        return key, storage_type.dtype


def _materialise(tensor: _Tensor, data: np.ndarray) -> np.ndarray:
    itemsize = data.dtype.itemsize
    needed = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride, strict=True)) + 1 if all(tensor.size) else 0
    if needed > data.size:
        raise ValueError(f"storage {tensor.key} holds {data.size} values, a tensor of shape {tensor.size} needs {needed}")
    view = np.lib.stride_tricks.as_strided(
        data[tensor.offset :], shape=tensor.size, strides=tuple(s * itemsize for s in tensor.stride), writeable=False
    )
    return np.ascontiguousarray(view).astype(data.dtype.newbyteorder("="), copy=False)


def _tensors(state: Any, storages: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    if not isinstance(state, dict):
        raise ConfigError(f"{path} holds a {type(state).__name__}, not a state dict (name -> tensor)")
    found = {}
    for name, value in state.items():
        if not isinstance(value, _Tensor):
            raise ConfigError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        found[str(name)] = _materialise(value, storages[value.key])
    return found


def _read_legacy(handle: IO[bytes], path: Path) -> dict[str, np.ndarray]:
    if pickle.load(handle) != LEGACY_MAGIC:
        raise ConfigError(f"{path} is not a PyTorch file (no magic number)")
    protocol = pickle.load(handle)
    if protocol != LEGACY_PROTOCOL:
        raise ConfigError(f"{path} is a PyTorch file of protocol {protocol}; imgflow reads {LEGACY_PROTOCOL}")
    pickle.load(handle)
    unpickler = _Unpickler(handle, path)
    state = unpickler.load()
    keys = _Unpickler(handle, path).load()
    storages = {}
    for key in keys:
        dtype, numel = unpickler.storages[str(key)]
        (count,) = struct.unpack("<q", handle.read(8))
        raw = handle.read(count * dtype.itemsize)
        if count != numel or len(raw) != count * dtype.itemsize:
            raise ConfigError(f"{path} is cut short or damaged: storage {key} should hold {numel} values")
        storages[str(key)] = np.frombuffer(raw, dtype=dtype)
    return _tensors(state, storages, path)


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of the PyTorch state dict in ``path``, by name, as numpy arrays in PyTorch's layout
    (NCHW / OIHW); ``ConfigError`` naming the file when it is not one or is damaged."""
    try:
        if zipfile.is_zipfile(path):
            raise ConfigError(
                f"{path} is in PyTorch's zip format; imgflow reads the legacy one that published weights use: "
                "re-save it with torch.save(state, path, _use_new_zipfile_serialization=False)"
            )
        with open(path, "rb") as handle:
            return _read_legacy(handle, path)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, ValueError) as error:
        raise ConfigError(f"{path} is not a readable PyTorch state dict: {error}") from None
