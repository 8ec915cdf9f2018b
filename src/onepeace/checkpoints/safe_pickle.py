"""Reading official (fairseq / torch.save) checkpoints without ever running code from them.

The pickle is read by a restricted unpickler: tensors are rebuilt lazily from the zip entries (one
at a time, so a 15 GB checkpoint streams), configuration objects from ``omegaconf``, ``fairseq``,
``argparse`` and the like become inert stand-ins that only record their state, and any other
global (functions, ``eval``, ``os.system``, code objects...) is refused with a
:class:`CheckpointError`. Nothing from the file is ever imported or called.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}
_DTYPE_NAMES = {
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "double", "float", "half", "long", "int", "short",
}
#: modules whose globals become inert stand-ins (configuration and bookkeeping objects)
_STUB_MODULE_ROOTS = ("omegaconf", "fairseq", "one_peace", "argparse", "typing", "enum", "hydra", "pathlib")
_SAFE_BUILTINS = {"int", "float", "str", "bool", "list", "dict", "tuple", "set", "frozenset",
                  "bytes", "bytearray", "complex", "slice"}


class Stub:
    """An inert stand-in for a class named in a pickle; records constructor args and state."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:
        obj = object.__new__(cls)
        object.__setattr__(obj, "_args", args)
        object.__setattr__(obj, "_state", None)
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "_state", state)

    def __repr__(self) -> str:
        return f"<stub {self.qualname}>"


_stub_classes: dict[str, type] = {}


def _stub(module: str, name: str) -> type:
    q = f"{module}.{name}"
    if q not in _stub_classes:
        _stub_classes[q] = type(name, (Stub,), {"qualname": q})
    return _stub_classes[q]


class LazyTensor:
    """A tensor still inside the checkpoint file: shape and dtype known, data read on ``load()``."""

    def __init__(self, source: Any, dtype: torch.dtype, offset: int, size: tuple, stride: tuple):
        self.source, self.dtype, self.offset = source, dtype, offset
        self.shape, self.stride = torch.Size(size), tuple(stride)

    def numel(self) -> int:
        return self.shape.numel()

    def load(self) -> torch.Tensor:
        src = self.source
        if isinstance(src, torch.UntypedStorage):
            base = torch.empty(0, dtype=self.dtype).set_(src)
        else:
            base = src.read(self.dtype)
        t = base.as_strided(self.shape, self.stride, self.offset)
        if t.numel() != base.numel() or not t.is_contiguous():
            t = t.clone()
        return t


class _ZipStorage:
    def __init__(self, archive: zipfile.ZipFile, entry: str):
        self.archive, self.entry = archive, entry

    def read(self, dtype: torch.dtype) -> torch.Tensor:
        with self.archive.open(self.entry) as f:
            data = bytearray(f.read())
        if not data:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(data, dtype=dtype)


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_: Any, **__: Any) -> LazyTensor:
    if isinstance(storage, tuple):  # (source, dtype) from persistent_load
        source, dtype = storage
    elif isinstance(storage, torch.storage.TypedStorage):
        source, dtype = storage._untyped_storage, storage.dtype
    else:
        raise CheckpointError(f"unexpected tensor storage {type(storage).__name__} in checkpoint")
    return LazyTensor(source, dtype, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_: Any, **__: Any) -> Any:
    return data


def _load_storage_bytes(b: bytes) -> Any:
    # plain-pickled storages carry a torch.save'd blob; read it with torch's weights-only loader
    return torch.load(io.BytesIO(b), weights_only=True)


def _np_scalar(dtype: Any, data: bytes = b"") -> Any:
    return np.frombuffer(data, dtype=dtype)[0]


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    # protocol-2 object creation; only ever for inert stand-ins and plain containers
    if isinstance(cls, type) and issubclass(cls, Stub):
        return cls()
    if cls in (dict, list, set, tuple, OrderedDict):
        return cls() if state is None else cls(state)
    raise CheckpointError(f"refusing to reconstruct {cls!r} from a checkpoint")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("collections", "defaultdict"): lambda *args: {},  # its factory is never called: a plain dict
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("torch", "Size"): torch.Size,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: str, archive: zipfile.ZipFile | None, prefix: str):
        super().__init__(file)
        self.path, self.archive, self.prefix = path, archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol-2 (Python 2) names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstructor
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return ("storage-type", _STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPE_NAMES:
            return getattr(torch, name)
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(__builtins__, name) if not isinstance(__builtins__, dict) else __builtins__[name]
        if module.split(".")[0] in _STUB_MODULE_ROOTS:
            return _stub(module, name)
        raise CheckpointError(
            f"refusing to load {self.path}: it references {module}.{name}, which could run code. "
            "onepeace reads only tensors and plain configuration from checkpoints; if you trust "
            "this file, re-save its state dict with torch.save(state_dict) first"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage") or self.archive is None:
            raise CheckpointError(f"{self.path}: unsupported persistent id in pickle")
        storage_type, key = pid[1], pid[2]
        dtype = storage_type[1] if isinstance(storage_type, tuple) else torch.uint8
        return (_ZipStorage(self.archive, f"{self.prefix}data/{key}"), dtype)


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The unpickled checkpoint object, with :class:`LazyTensor` in place of every tensor."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if zipfile.is_zipfile(path):
            archive = zipfile.ZipFile(path)
            pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not pkl:
                raise CheckpointError(f"{path} is a zip file but not a torch checkpoint (no data.pkl)")
            prefix = pkl[0][: -len("data.pkl")]
            with archive.open(pkl[0]) as f:
                return _Unpickler(io.BytesIO(f.read()), path, archive, prefix).load()
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if not head or head[0] != 0x80:
                raise CheckpointError(f"{path} is not a pickle or torch checkpoint")
            return _Unpickler(f, path, None, "").load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None


def to_plain(obj: Any, _depth: int = 0) -> Any:
    """OmegaConf / argparse stand-ins -> plain dicts, lists and scalars."""
    if _depth > 100:
        return None
    if isinstance(obj, Stub):
        state = obj._state
        if isinstance(state, dict):
            if "_content" in state:
                return to_plain(state["_content"], _depth + 1)
            if "_val" in state:
                return to_plain(state["_val"], _depth + 1)
            return {k: to_plain(v, _depth + 1) for k, v in state.items() if not k.startswith("_")}
        if obj._args:
            return to_plain(obj._args[0], _depth + 1)
        return None
    if isinstance(obj, dict):
        return {k: to_plain(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, _depth + 1) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
