"""Which model built an index: a cheap, stable fingerprint of a model's files (or weights).

A model loaded from a directory (``OnePeace.from_pretrained``) is fingerprinted from its files:
sha256 over ``config.json`` and, per weight file, its name, size, safetensors header (names,
dtypes, shapes, offsets) and 64 evenly spaced 4 KiB samples of its data (two trainings of one
architecture differ there). That reads at most about 256 KiB per file, however large the model,
and does not depend on the dtype it was loaded in (an index built in fp32 can be queried in bf16).
A model that was never saved (built in Python) is fingerprinted from its config and a strided
sample of its weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any

from ..errors import CheckpointError
from .format import CONFIG_NAME, weight_files

IN_MEMORY = "<in-memory model>"
_SAMPLES, _CHUNK = 64, 4096


def fingerprint_dir(path: str | os.PathLike) -> str:
    """sha256 hex digest of a model directory's config.json, weight headers and weight samples."""
    path = os.fspath(path)
    h = hashlib.sha256(b"onepeace-model-files-v2\0")
    try:
        with open(os.path.join(path, CONFIG_NAME), "rb") as f:
            h.update(f.read())
        for file in weight_files(path):
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > 100 * 1024**2:
                    raise CheckpointError(f"{file}: safetensors header too large")
                header = f.read(n)
                size = os.fstat(f.fileno()).st_size
                h.update(f"\0{os.path.basename(file)}\0{size}\0".encode())
                h.update(header)
                start, data = 8 + n, size - 8 - n
                if data <= _SAMPLES * _CHUNK:  # a small model: all of its data
                    h.update(f.read(data))
                    continue
                for i in range(_SAMPLES):
                    f.seek(start + (data - _CHUNK) * i // (_SAMPLES - 1))
                    h.update(f.read(_CHUNK))
    except (OSError, struct.error) as e:
        raise CheckpointError(f"cannot fingerprint the model in {path}: {e}") from None
    return h.hexdigest()


def _weights_fingerprint(model: Any) -> str:
    """Config + every tensor's name, shape, dtype and 64 strided values (a model never saved)."""
    import torch

    h = hashlib.sha256(b"onepeace-model-weights-v1\0")
    h.update(json.dumps(json.loads(model.config.to_json()), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 64)
        sample = flat[::step][:64].to("cpu", torch.float32).contiguous()
        h.update(f"\0{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: Any) -> str:
    """The fingerprint of a model (``OnePeace``) or of a model directory (a path)."""
    if isinstance(model, (str, os.PathLike)):
        return fingerprint_dir(model)
    source = getattr(model, "source_dir", None)
    if source and os.path.isdir(source):
        cached = getattr(model, "_search_fingerprint", None)
        if cached and cached[0] == source:
            return cached[1]
        fp = fingerprint_dir(source)
        model._search_fingerprint = (source, fp)
        return fp
    return _weights_fingerprint(model)


def model_name(model: Any) -> str:
    """What to call a model in an index and in errors: its path (or hub id) when it has one."""
    if isinstance(model, (str, os.PathLike)):
        model = os.fspath(model)
        return os.path.abspath(model) if os.path.isdir(model) else model
    name = getattr(model, "name_or_path", None) or getattr(model, "source_dir", None)
    if not name:
        return IN_MEMORY
    name = os.fspath(name)
    return os.path.abspath(name) if os.path.isdir(name) else name  # a hub id stays as it is
