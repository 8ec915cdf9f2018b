"""Which model built an index: a cheap, stable fingerprint of a model's files (or weights).

A model loaded from a directory (``OnePeace.from_pretrained``) is fingerprinted from its files:
sha256 over ``config.json`` and, per weight file, its name, size, safetensors header (names,
dtypes, shapes, offsets) and 64 evenly spaced 4 KiB samples of its data (two trainings of one
architecture differ there). That reads at most about 256 KiB per file, however large the model,
and does not depend on the dtype it was loaded in (an index built in fp32 can be queried in bf16).
A model that was never saved (built in Python) is fingerprinted from its config and a strided
sample of its weights.

A model with a LoRA adapter merged in (:mod:`onepeace.checkpoints.adapter`) is the base model's
fingerprint combined with the adapter's (sha256 of its config and weight files): still independent
of the dtype it runs in, and another fingerprint than the base's, so an index built with an adapted
model refuses the bare base and the reverse. Its name is ``BASE+adapter ADAPTER_DIR``.
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
#: how an adapted model's name joins its base's and its adapter directory's: ``BASE+adapter DIR``
ADAPTER_JOIN = "+adapter "
#: the files of an adapter directory that decide the merged weights (hashed whole: a few MB)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
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


def adapter_fingerprint(path: str | os.PathLike) -> str:
    """sha256 hex digest of an adapter directory's config and weights (what the merge depends on)."""
    path = os.fspath(path)
    h = hashlib.sha256(b"onepeace-adapter-files-v1\0")
    try:
        for name in ADAPTER_FILES:
            with open(os.path.join(path, name), "rb") as f:
                h.update(f"\0{name}\0".encode())
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    except OSError as e:
        raise CheckpointError(f"cannot fingerprint the adapter in {path}: {e.strerror or e}") from None
    return h.hexdigest()


def adapted_fingerprint(base: str, adapter: str) -> str:
    """The fingerprint of the base model ``base`` (a fingerprint) with the adapter ``adapter`` merged."""
    return hashlib.sha256(f"onepeace-adapted-v1\0{base}\0{adapter}".encode()).hexdigest()


def weights_fingerprint(model: Any) -> str:
    """The fingerprint of ``model``'s weights as they are in memory (its files aside)."""
    return _weights_fingerprint(model)


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


def model_fingerprint(model: Any, adapter: str | os.PathLike | None = None) -> str:
    """The fingerprint of a model (``OnePeace``) or of a model directory (a path); ``adapter``: of
    that directory with the adapter directory ``adapter`` merged in (see the module)."""
    if isinstance(model, (str, os.PathLike)):
        fp = fingerprint_dir(model)
        return adapted_fingerprint(fp, adapter_fingerprint(adapter)) if adapter is not None else fp
    merged = getattr(model, "adapter_fingerprint", None)
    if merged and getattr(model, "source_dir", None):  # its files are the base's: combine
        return adapted_fingerprint(_base_fingerprint(model), merged)
    return _base_fingerprint(model)


def _base_fingerprint(model: Any) -> str:
    """The fingerprint of ``model``'s files (cached per directory), or of its weights when it has none."""
    source = getattr(model, "source_dir", None)
    if source and os.path.isdir(source):
        cached = getattr(model, "_search_fingerprint", None)
        if cached and cached[0] == source:
            return cached[1]
        fp = fingerprint_dir(source)
        model._search_fingerprint = (source, fp)
        return fp
    return _weights_fingerprint(model)


def model_name(model: Any, adapter: str | os.PathLike | None = None) -> str:
    """What to call a model in an index and in errors: its path (or hub id) when it has one, and
    ``BASE+adapter DIR`` with an adapter (``adapter``, or the one merged into ``model``)."""
    adapter = adapter if adapter is not None else getattr(model, "adapter_dir", None)
    name = _base_name(model)
    if adapter is None or name == IN_MEMORY:  # a model never saved is known by its weights alone
        return name
    return f"{name}{ADAPTER_JOIN}{os.path.abspath(adapter)}"


def split_adapted_name(name: str) -> tuple[str, str | None]:
    """``(base, adapter directory or None)`` of a name :func:`model_name` gave (an index's record)."""
    base, sep, adapter = name.rpartition(ADAPTER_JOIN)
    return (base, adapter) if sep and base and adapter else (name, None)


def _base_name(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        model = os.fspath(model)
        return os.path.abspath(model) if os.path.isdir(model) else model
    name = getattr(model, "name_or_path", None) or getattr(model, "source_dir", None)
    if not name:
        return IN_MEMORY
    name = os.fspath(name)
    return os.path.abspath(name) if os.path.isdir(name) else name  # a hub id stays as it is
