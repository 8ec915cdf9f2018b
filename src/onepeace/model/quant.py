"""int8 inference on the CPU: the encoder's linear layers as dynamically quantised int8 GEMMs.

Weights are quantised once, per output channel (symmetric int8); activations are quantised per
call (per tensor, from their observed range) inside PyTorch's ``quantized::linear_dynamic``.
Everything else (embeddings, the audio stem, attention, norms, the projections and heads) stays in
fp32, so the embeddings keep their fp32 shape and scale. The encoder holds almost all of the
multiply-adds, which is where int8 pays.

The weights are packed for oneDNN where PyTorch has it (its int8 kernels use VNNI / AMX and were
the fastest measured, see ``benchmarks/bench_int8.py``), else for the default x86 engine (FBGEMM).
Activations use the full 8 bits where the CPU has int8 dot-product instructions (VNNI, AMX): they
accumulate u8 x s8 products in 32 bits. Without them the kernels multiply-add pairs into 16 bits,
which can saturate, so activations keep PyTorch's default 7-bit range there (``reduce_range``).
On the base model's stress weights full 8 bits raise the worst cosine against fp32 from 0.982 to
0.995 (text) at the same speed.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as _DynamicLinear

from ..errors import ConfigError
from . import precision


class Int8Linear(_DynamicLinear):
    """``torch.ao``'s dynamic int8 linear with the activation range chosen per CPU (see the module)."""

    reduce_range: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=self.reduce_range)
        return y.to(x.dtype)

    def _get_name(self) -> str:
        return "Int8Linear"


@contextlib.contextmanager
def _engine(name: str) -> Iterator[None]:
    """The quantised engine that packs the weights, for this block only (a process-wide setting)."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantise ``model``'s encoder linear layers in place to int8 (dynamic, per-channel
    weights) and return it. ``model`` must be an fp32 model on the CPU."""
    if getattr(model, "int8", False):
        return model
    if model.device.type != "cpu":
        raise ConfigError(f"int8 inference runs on the CPU only; the model is on {model.device}")
    if model.dtype != torch.float32:
        raise ConfigError(f"int8 quantisation starts from fp32 weights; the model is {model.dtype}")
    quantize_linears(model.encoder)
    model.int8 = True
    return model.eval()


def quantize_linears(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` (in place) with an :class:`Int8Linear`."""
    if not precision.x86_int8_kernels():
        raise ConfigError("this PyTorch build has no x86 int8 kernels (FBGEMM / oneDNN); use fp32 or bf16")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    engines = torch.backends.quantized.supported_engines
    engine = "onednn" if "onednn" in engines else "x86" if "x86" in engines else "fbgemm"
    with warnings.catch_warnings(), _engine(engine):  # the eager API announces its move to torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*", category=UserWarning)
        quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                         mapping={nn.Linear: Int8Linear}, inplace=True)
    full_range = engine == "onednn" and precision.cpu_features().int8_dot  # read now (tests patch it)
    for m in module.modules():
        if isinstance(m, Int8Linear):
            m.reduce_range = not full_range
    return module


def is_int8(model: nn.Module) -> bool:
    return bool(getattr(model, "int8", False))


__all__ = ["Int8Linear", "is_int8", "quantize_int8", "quantize_linears"]
