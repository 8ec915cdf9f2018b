"""ONNX export: one graph per modality branch, run by onnxruntime.

``OUT_DIR/<modality>.onnx`` takes that modality's processed batch (the keys its processor
returns that its adapter reads, e.g. ``tokens``; ``pixels``; ``waveform`` and ``padding_mask``)
and returns ``embedding`` (the L2-normalised retrieval embedding, [batch, dim]) and ``features``
(the final token features, [batch, tokens, dim]). The batch axis and every axis whose size depends
on the input (text and audio lengths) are dynamic. ``OUT_DIR/export.json`` records the graphs'
inputs and outputs and the parity measured against PyTorch when they were written.

The graphs are traced with PyTorch's TorchScript-based exporter (``torch.onnx.export(...,
dynamo=False)``): the torch.export-based default of recent PyTorch stops at the model's
data-dependent branches (a batch without padding skips the padding mask). The traces are made on
examples that include padding, so the exported graph always applies the mask, which changes
nothing where there is no padding.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints.fingerprint import model_fingerprint, model_name
from ..errors import ConfigError, InputError, OnePeaceError

#: the outputs of every exported graph, in order
ONNX_OUTPUTS = ("embedding", "features")
#: parity required of a fresh export against PyTorch (fp32, max abs difference of the embeddings)
PARITY_ATOL = 1e-4
OPSET = 18


class _Branch(nn.Module):
    """One modality's path: processed tensors -> (normalised embedding, final features)."""

    def __init__(self, model: nn.Module, name: str, keys: Sequence[str]):
        super().__init__()
        self.model, self.name, self.keys = model, name, tuple(keys)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.encode(**{self.name: dict(zip(self.keys, inputs))})
        feats = out.features[self.name]
        return F.normalize(self.model.proj[self.name](feats[:, 0]), dim=-1), feats


def _examples(name: str, model: nn.Module) -> tuple[list[Any], list[Any]]:
    """Two example batches of ``name`` with different sizes (and padding where the modality pads):
    the export traces the first, and axes whose size differs between them are made dynamic."""
    adapter = model.adapters[name]
    own = getattr(adapter, "export_examples", None)
    if callable(own):
        return own()
    rng = np.random.default_rng(0)
    if name == "text":
        return (["a photo of a dog", "a small brown dog runs on the green grass in the park"],
                ["a cat", "two birds", "a red car parked by the river near an old stone bridge at night"])
    if name == "image":
        from PIL import Image

        def img(h: int, w: int):
            return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

        return [img(48, 64), img(80, 40)], [img(64, 64), img(30, 90), img(50, 50)]
    if name == "audio":
        sr = adapter.options.sample_rate

        def wave(seconds: float):
            return (0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32)

        return [wave(1.6), wave(2.3)], [wave(1.2), wave(3.1), wave(2.0)]
    others = ",".join(m for m in model.proj if m != name)
    raise ConfigError(f"the {name} branch cannot be exported yet: its modality class has no export_examples() "
                      f"(two lists of raw inputs of different sizes to trace with); export the others with "
                      f"--modalities {others}")


@contextlib.contextmanager
def _exportable(model: nn.Module) -> Iterator[None]:
    """Swap, for the trace only, layers whose ONNX form needs a static size for the same maths
    written with static sizes: the audio conv stem's im2col ``unfold`` becomes the ``Conv1d`` it
    stands for."""
    from ..modalities.audio import ConvStem

    def stem_forward(self: ConvStem, wave: torch.Tensor) -> torch.Tensor:
        x = wave.unsqueeze(1)  # B, 1, S
        for conv, norm in zip(self.convs, self.norms):
            x = F.gelu(norm(conv(x).transpose(1, 2))).transpose(1, 2)
        return x.transpose(1, 2)  # B, T, C

    swapped = []
    for m in model.modules():
        if isinstance(m, ConvStem) and hasattr(m, "convs") and hasattr(m, "norms"):
            m.forward = stem_forward.__get__(m)
            swapped.append(m)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward


def _inputs(batch: dict[str, torch.Tensor], keys: Sequence[str]) -> dict[str, np.ndarray]:
    return {k: batch[k].numpy() for k in keys}


def _require_runtime() -> None:
    missing = []
    for mod in ("onnx", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise OnePeaceError(f"ONNX export needs {' and '.join(missing)}: pip install 'onepeace[export]'")


def session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for an exported graph."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])


def export_branch(model: nn.Module, name: str, path: str | os.PathLike, opset: int = OPSET) -> dict[str, Any]:
    """Write ``name``'s graph to ``path``; returns its description with the parity measured on
    both example batches (max abs difference of the embeddings against PyTorch)."""
    proc = model.processor.get(name)
    first, second = (proc(list(items)) for items in _examples(name, model))
    keys = [k for k in model.adapters[name].input_keys if k in first]
    if not keys:
        raise ConfigError(f"the {name} processor returns none of the keys its adapter reads {model.adapters[name].input_keys}")
    axes: dict[str, dict[int, str]] = {}
    for k in keys:
        a, b = first[k], second[k]
        axes[k] = {0: "batch"}
        axes[k].update({d: f"{k}_length" if d == 1 else f"{k}_dim{d}" for d in range(1, a.dim())
                        if a.shape[d] != b.shape[d]})
    axes["embedding"] = {0: "batch"}
    axes["features"] = {0: "batch", 1: "tokens"}
    branch = _Branch(model, name, keys).eval()
    with _exportable(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python-side checks, the legacy exporter's notice
        try:
            torch.onnx.export(branch, tuple(first[k] for k in keys), os.fspath(path), input_names=keys,
                              output_names=list(ONNX_OUTPUTS), dynamic_axes=axes, opset_version=opset,
                              dynamo=False, do_constant_folding=True)
        except (RuntimeError, TypeError, ValueError) as e:  # the exporter's messages carry whole graphs
            first_line = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise OnePeaceError(f"could not export the {name} branch to ONNX: {first_line[:300]}") from None
    sess = session(path)
    diffs = []
    for batch in (first, second):
        got = sess.run(["embedding"], _inputs(batch, keys))[0]
        with torch.no_grad():
            ref = model.embed_batch(name, {k: batch[k] for k in keys}).float().numpy()
        diffs.append(float(np.abs(got - ref).max()))
    if max(diffs) > PARITY_ATOL:
        raise OnePeaceError(f"the exported {name} graph differs from PyTorch by {max(diffs):.2e} "
                            f"(more than {PARITY_ATOL:g}); please report this")
    return {"file": os.path.basename(os.fspath(path)),
            "inputs": {k: {"dtype": str(first[k].dtype).removeprefix("torch."),
                           "shape": [axes[k].get(d, int(first[k].shape[d])) for d in range(first[k].dim())]}
                       for k in keys},
            "outputs": list(ONNX_OUTPUTS), "max_abs_diff": max(diffs)}


def export_onnx(model: nn.Module | str | os.PathLike, out_dir: str | os.PathLike, *,
                modalities: Sequence[str] | None = None, force: bool = False, opset: int = OPSET) -> dict[str, Any]:
    """Export each branch of ``model`` (an :class:`~onepeace.OnePeace` or a model directory / Hub
    id) to ``out_dir/<modality>.onnx``; the directory appears whole or not at all, and an existing
    one is replaced only with ``force=True``. Returns what ``out_dir/export.json`` records."""
    from ..outputs import check_output_dir, staged_dir

    _require_runtime()
    owned = lambda e: e.endswith(".onnx") or e.endswith(".onnx.data") or e == "export.json"  # noqa: E731
    check_output_dir(out_dir, force, owned=owned, what="onnx export")
    if not isinstance(model, nn.Module):
        from ..inference import OnePeace

        model = OnePeace.from_pretrained(model, dtype="fp32")
    if getattr(model, "int8", False):
        raise ConfigError("an int8 model cannot be exported: export the fp32 model")
    if not model.proj:
        raise ConfigError("this model has no embedding projections (a classification or vision-branch "
                          "checkpoint); ONNX export covers embedding models")
    names = list(model.proj) if modalities is None else list(modalities)
    unknown = [m for m in names if m not in model.proj]
    if unknown or not names:
        raise InputError(f"--modalities {','.join(names)}: this model embeds {','.join(model.proj)}")
    if model.dtype != torch.float32 or model.device.type != "cpu":
        raise ConfigError(f"ONNX export starts from an fp32 model on the CPU, this one is {model.dtype} on "
                          f"{model.device}: load it with dtype='fp32'")
    was = model.training
    model.eval()
    # the model as an index records it: its name (with "+adapter DIR" when one was merged in) and fingerprint
    record: dict[str, Any] = {"model": getattr(model, "name_or_path", None), "name": model_name(model),
                              "fingerprint": model_fingerprint(model), "opset": opset,
                              "torch": torch.__version__, "parity_atol": PARITY_ATOL, "graphs": {}}
    try:
        with staged_dir(out_dir, force, owned=owned, what="onnx export") as tmp:
            for name in names:
                record["graphs"][name] = export_branch(model, name, os.path.join(tmp, f"{name}.onnx"), opset)
            with open(os.path.join(tmp, "export.json"), "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2)
    finally:
        model.train(was)
    return record


__all__ = ["ONNX_OUTPUTS", "PARITY_ATOL", "export_branch", "export_onnx", "session"]
