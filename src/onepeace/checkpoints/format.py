"""Our checkpoint format: ``config.json`` + ``model.safetensors`` (or shards plus an index).

Writing streams tensor by tensor into the file (the header is computed from shapes first), so a
conversion never holds more than one tensor; reading builds the model on the ``meta`` device and
reads each tensor straight into its final buffer, so loading costs about the weight bytes once.
Every file is written to a temporary name and renamed into place (atomic).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from ..model.onepeace import OnePeaceNetwork
from ..model.precision import resolve_dtype
from ..outputs import (  # noqa: F401  (the names of a model directory's files, re-exported here)
    CARD_NAME,
    CONFIG_NAME,
    INDEX_NAME,
    WEIGHTS_NAME,
    is_model_card,
    is_model_file,
    model_files,
    staged_dir,
)
from .resolve import resolve_model

_ST_DTYPES = {
    torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


@dataclass
class TensorSpec:
    """A tensor to write: its name, shape, dtype, and a function producing its values."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def _atomic_path(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


def write_safetensors(path: str, specs: list[TensorSpec], metadata: dict[str, str] | None = None) -> None:
    """Stream ``specs`` into one safetensors file at ``path`` (atomically)."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for s in specs:
        header[s.name] = {"dtype": _ST_DTYPES[s.dtype], "shape": list(s.shape),
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = _atomic_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for s in specs:
                t = s.produce()
                if tuple(t.shape) != tuple(s.shape):
                    raise CheckpointError(f"tensor {s.name}: expected shape {s.shape}, got {tuple(t.shape)}")
                t = t.detach().to("cpu", s.dtype).contiguous()
                f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_header(path: str) -> tuple[dict, int]:
    """(header dict without metadata, byte offset of the data section)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 * 1024**2:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"cannot read safetensors file {path}: {e}") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def read_tensors(path: str, want: Callable[[str, tuple, torch.dtype], torch.dtype | None]) -> Iterable[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for each tensor of a safetensors file, read into fresh memory.

    ``want(name, shape, file_dtype)`` returns the dtype to produce (or None to skip the tensor).
    """
    header, start = read_header(path)
    with open(path, "rb", buffering=0) as f:
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            fdt = _ST_NAMES.get(info["dtype"])
            if fdt is None:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
            shape = tuple(info["shape"])
            target = want(name, shape, fdt)
            if target is None:
                continue
            b0, b1 = info["data_offsets"]
            t = torch.empty(shape, dtype=fdt)
            if b1 > b0:
                f.seek(start + b0)
                buf = memoryview(t.reshape(-1).view(torch.uint8).numpy())
                if f.readinto(buf) != b1 - b0:
                    raise CheckpointError(f"{path} is truncated (tensor {name})")
            yield name, t if target == fdt else t.to(target)


def write_checkpoint_dir(path: str, config: ModelConfig, specs: list[TensorSpec],
                         max_shard_bytes: int = 4 * 1024**3, *, overwrite: bool = False,
                         inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """config.json + weights (sharded above ``max_shard_bytes``) as a new directory ``path``.

    A non-empty ``path`` is refused unless ``overwrite``, and then only if it holds a model
    (never other files, nor one of ``inputs``); the new model is written beside it and swapped in
    when complete, so a crash leaves the old or the new model whole (:mod:`onepeace.outputs`).
    """
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    if len(shards) == 1:
        names = [WEIGHTS_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    with staged_dir(path, overwrite, owned=model_files(path), inputs=inputs, what="model") as tmp:
        for name, shard in zip(names, shards):
            write_safetensors(os.path.join(tmp, name), shard)
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(s.nbytes for s in specs)},
                     "weight_map": {s.name: n for n, shard in zip(names, shards) for s in shard}}
            write_text_atomic(os.path.join(tmp, INDEX_NAME), json.dumps(index, indent=1))
        write_text_atomic(os.path.join(tmp, CONFIG_NAME), config.to_json())


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary name, then rename it into place."""
    tmp = _atomic_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary name, then rename it into place."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_png_atomic(path: str, array) -> None:
    """Save a numpy array (e.g. a map of class ids) as a PNG, atomically."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def weight_files(path: str) -> list[str]:
    index = os.path.join(path, INDEX_NAME)
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(path, n) for n in files]
    single = os.path.join(path, WEIGHTS_NAME)
    if not os.path.exists(single):
        raise CheckpointError(f"{path} has no {WEIGHTS_NAME} (nor {INDEX_NAME}); is it an onepeace model directory?")
    return [single]


def load_config(path: str | os.PathLike, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                local_files_only: bool | None = None) -> ModelConfig:
    """The config of the model directory ``path``, or of a Hugging Face Hub id ``org/name[@rev]``
    (see :func:`onepeace.checkpoints.hub.resolve_model`)."""
    path = resolve_model(path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    cfg_path = os.path.join(path, CONFIG_NAME)
    if os.path.isfile(path):
        if os.path.basename(path) == CONFIG_NAME or path.endswith(".safetensors"):
            raise CheckpointError(f"{path} is a file of a model directory: give the directory, "
                                  f"{os.path.dirname(path) or '.'}")
        raise CheckpointError(
            f"{path} is a file, not an onepeace model directory; an official checkpoint (.pt/.pkl) "
            f"must be converted first: onepeace convert {path} DST_DIR --dict dict.txt"
        )
    if not os.path.isdir(path):
        raise CheckpointError(f"model directory not found: {path}")
    if not os.path.exists(cfg_path):
        raise CheckpointError(
            f"{path} has no {CONFIG_NAME}. Official .pt checkpoints must be converted first: "
            f"onepeace convert SRC.pt DST_DIR --dict dict.txt"
        )
    try:
        with open(cfg_path, encoding="utf-8") as f:
            return ModelConfig.from_dict(json.load(f))
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"invalid {cfg_path}: {e}") from None


def load_pretrained(path: str | os.PathLike, *, dtype=None, device="cpu", revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
                    model_class: type[OnePeaceNetwork] = OnePeaceNetwork):
    """Build a ``model_class`` on ``meta`` and read every weight straight into place. ``path`` is a
    model directory or a Hugging Face Hub id ``org/name[@rev]`` (snapshotted into the Hub cache, see
    :func:`onepeace.checkpoints.hub.resolve_model`). ``model_class`` is the class to build: the bare
    network by default; :meth:`onepeace.OnePeace.from_pretrained` passes the public class (this
    module sits below the inference layer and never imports it)."""
    given = os.fspath(path)
    path = resolve_model(given, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    config = load_config(path)
    model = model_class.build(config, device="meta", init=False)
    expected = {k: v for k, v in model.state_dict().items()}
    target = resolve_dtype(dtype)
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []

    def want(name: str, shape: tuple, fdt: torch.dtype) -> torch.dtype | None:
        if name not in expected:
            unexpected.append(name)
            return None
        if tuple(expected[name].shape) != shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {shape} but the config builds {tuple(expected[name].shape)}"
            )
        return (target or fdt) if fdt.is_floating_point else fdt

    for file in weight_files(path):
        for name, t in read_tensors(file, want):
            state[name] = t.to(device) if str(device) != "cpu" else t
    missing = sorted(set(expected) - set(state))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match config.json; missing {missing[:10]}"
            f"{'...' if len(missing) > 10 else ''}, unexpected {sorted(unexpected)[:10]}"
        )
    model.load_state_dict(state, assign=True)
    # where the weights came from: search indexes fingerprint these files (onepeace.search);
    # name_or_path is what a user would pass again: the directory or the Hub id as given
    model.source_dir, model.name_or_path = path, given
    return model.eval()


def save_pretrained(model, path: str | os.PathLike, *, dtype=None, max_shard_bytes: int = 4 * 1024**3,
                    overwrite: bool = False) -> None:
    """Save ``model`` as a new directory ``path``; an existing model there is replaced only with
    ``overwrite=True`` (atomically, see :func:`write_checkpoint_dir`). An int8 model is refused
    (its weights are quantised for this CPU; save the fp32 model and load it with ``dtype="int8"``)."""
    if getattr(model, "int8", False):
        raise ConfigError("an int8 model cannot be saved: save the fp32 model and load it with dtype='int8'")
    target = resolve_dtype(dtype)
    specs = []
    for name, t in model.state_dict().items():
        dt = target if (target is not None and t.is_floating_point()) else t.dtype
        specs.append(TensorSpec(name, tuple(t.shape), dt, (lambda t=t: t)))
    write_checkpoint_dir(os.fspath(path), model.config, specs, max_shard_bytes, overwrite=overwrite)


__all__ = ["TensorSpec", "is_model_card", "is_model_file", "load_pretrained", "model_files", "save_pretrained",
           "write_checkpoint_dir"]
