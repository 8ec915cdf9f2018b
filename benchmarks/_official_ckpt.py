"""Writing an official-format (torch.save zip) ONE-PEACE checkpoint as a stream, without holding its
tensors in memory (the ``convert`` part of ``bench_model.py``)."""

from __future__ import annotations

import ast
import collections
import io
import math
import os
import pickle
import zipfile
from typing import Any

from _bench import KEYS_FILE

_STORAGE = {"float32": "FloatStorage", "int64": "LongStorage", "bfloat16": "BFloat16Storage"}
_ITEMSIZE = {"float32": 4, "int64": 8, "bfloat16": 2}


class _StorageRef:
    """Pickled through persistent_id as ('storage', torch.<X>Storage, key, 'cpu', numel)."""

    def __init__(self, key: str, dtype: str, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef:
    """Pickles exactly as torch.save pickles a contiguous CPU tensor, without holding its data."""

    def __init__(self, key: str, dtype: str, shape: tuple[int, ...]):
        self.storage = _StorageRef(key, dtype, math.prod(shape))
        self.shape = tuple(shape)

    def __reduce_ex__(self, protocol: int):
        import torch

        stride, acc = [], 1
        for s in reversed(self.shape):
            stride.append(acc)
            acc *= s
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, self.shape, tuple(reversed(stride)), False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any):
        if isinstance(obj, _StorageRef):
            import torch

            return ("storage", getattr(torch, _STORAGE[obj.dtype]), obj.key, "cpu", obj.numel)
        return None


def read_layout(source: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) of an official state dict: from full-4b-keys.txt section A, or read
    from an existing official checkpoint (the tiny fixture) without loading its tensors."""
    if source == "4b":
        out, on = [], False
        for line in KEYS_FILE.read_text().splitlines():
            if line.startswith("######## "):
                on = line.startswith("######## A.")
                continue
            if not on or not line.strip() or line.startswith("#"):
                continue
            key, shape, kind = line.split("\t")
            dtype = "float32" if kind in ("param", "buffer:float32") else kind.split(":", 1)[1]
            out.append((key, tuple(ast.literal_eval(shape)), dtype))
        return out
    import torch

    from onepeace.checkpoints.safe_pickle import read_checkpoint

    state = read_checkpoint(source)["model"]
    return [(k, tuple(v.shape), "int64" if v.dtype == torch.int64 else "float32") for k, v in state.items()]


def write_official_checkpoint(path: str, layout, cfg: dict, seed: int = 0, values: dict | None = None,
                              chunk: int = 1 << 24) -> dict:
    """Write ``{"args": None, "cfg": cfg, "model": {...}}`` in torch.save's zip format, tensor by
    tensor (memory: one chunk). ``values`` (key -> tensor) gives exact contents (used by the
    self-test); otherwise floats are N(0, 0.02) and int64 buffers a small ramp."""
    import torch

    g = torch.Generator().manual_seed(seed)
    model = {}
    for i, (key, shape, dtype) in enumerate(layout):
        model[key] = _TensorRef(str(i), dtype, shape)
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({"args": None, "cfg": cfg, "model": model})
    total = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(_zinfo("archive/data.pkl"), buf.getvalue())
        zf.writestr(_zinfo("archive/byteorder"), b"little")
        for i, (key, shape, dtype) in enumerate(layout):
            n = math.prod(shape)
            with zf.open(_zinfo(f"archive/data/{i}"), "w", force_zip64=True) as f:
                if values is not None:
                    t = values[key].contiguous().reshape(-1)
                    f.write(t.view(torch.uint8).numpy().tobytes() if n else b"")
                else:
                    done = 0
                    while done < n:
                        m = min(chunk, n - done)
                        if dtype == "int64":
                            t = torch.arange(done, done + m, dtype=torch.int64) % 1000
                        else:
                            t = torch.empty(m, dtype=torch.float32).normal_(0.0, 0.02, generator=g)
                            if dtype == "bfloat16":
                                t = t.bfloat16()
                        f.write(memoryview(t.view(torch.uint8).numpy()))
                        done += m
            total += n * _ITEMSIZE[dtype]
        zf.writestr(_zinfo("archive/version"), b"3\n")
    return {"tensors": len(layout), "tensor_bytes": total}


def _zinfo(name: str) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    zi.compress_type = zipfile.ZIP_STORED
    return zi


def self_test_writer(tmpdir: str) -> dict:
    """Our stream writer and torch.save must give the same object through torch.load(weights_only)."""
    import torch

    g = torch.Generator().manual_seed(1)
    values = {
        "a.weight": torch.randn(3, 4, generator=g),
        "a.bias": torch.randn(4, generator=g),
        "scalar": torch.tensor(2.5),
        "rp_bucket": torch.randint(0, 100, (5, 5), generator=g),
        "big": torch.randn(70, 1000, generator=g),
        "empty": torch.zeros(0, 3),
    }
    cfg = {"task": {"patch_image_size": 256}, "model": {"encoder": {"audio_adapter": {
        "feature_encoder_spec": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"}}}}
    ref_path, our_path = os.path.join(tmpdir, "ref.pt"), os.path.join(tmpdir, "ours.pt")
    torch.save({"args": None, "cfg": cfg, "model": values}, ref_path)
    layout = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in values.items()]
    write_official_checkpoint(our_path, layout, cfg, values=values)
    a = torch.load(ref_path, weights_only=True)
    b = torch.load(our_path, weights_only=True)
    ok = a["cfg"] == b["cfg"] and a["args"] is None and b["args"] is None and list(a["model"]) == list(b["model"])
    for k in values:
        x, y = a["model"][k], b["model"][k]
        ok = ok and x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride() and torch.equal(x, y)
    # and the random-value path reads back as well
    write_official_checkpoint(our_path, layout, cfg, seed=3)
    c = torch.load(our_path, weights_only=True)
    ok = ok and all(tuple(c["model"][k].shape) == tuple(v.shape) and c["model"][k].dtype == v.dtype
                    for k, v in values.items())
    return {"identical_to_torch_save": bool(ok)}
