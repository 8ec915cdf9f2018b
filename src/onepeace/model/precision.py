"""Which precision to run a model in: ``fp32``, ``bf16``, ``fp16``, ``int8``, or ``auto``.

``auto`` looks at the device: on CUDA bf16 where the GPU supports it (else fp32); on the CPU bf16
only where the CPU computes it natively (``avx512_bf16`` or AMX-BF16 on x86, the ``bf16`` feature
on Arm), else int8 where the CPU has int8 dot-product instructions (VNNI: ``avx512_vnni``,
``avx_vnni``, ``amx_int8``), else fp32. CPUs without native bf16 emulate it at a fraction of their
fp32 speed, so bf16 is never picked there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..errors import ConfigError

#: every value ``dtype=`` / ``--dtype`` accepts when running a model
RUNTIME_DTYPES = ("auto", "fp32", "bf16", "fp16", "int8")

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """'fp32'/'bf16'/'fp16' (and their long names) or a torch dtype; anything else is an error."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16")
    return _DTYPES[key]


@dataclass(frozen=True)
class CpuFeatures:
    """What the CPU computes natively, from its feature flags."""

    native_bf16: bool
    int8_dot: bool
    flags: tuple[str, ...] = ()


_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16 / AMX-BF16, Arm FEAT_BF16
_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # x86 VNNI / AMX-INT8 (the x86 quantised kernels)


def features_from_flags(flags: set[str] | list[str] | tuple[str, ...]) -> CpuFeatures:
    flags = set(flags)
    return CpuFeatures(native_bf16=any(f in flags for f in _BF16_FLAGS),
                       int8_dot=any(f in flags for f in _INT8_FLAGS),
                       flags=tuple(sorted(f for f in flags if f in _BF16_FLAGS + _INT8_FLAGS)))


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """The CPU's features, read once per process from ``/proc/cpuinfo`` (``flags`` on x86,
    ``Features`` on Arm). Where that file is missing (macOS, Windows) nothing native is assumed."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    flags.update(value.split())
                    break
    except OSError:
        pass
    return features_from_flags(flags)


def x86_int8_kernels() -> bool:
    """Whether this PyTorch build has the x86 int8 kernels (FBGEMM / oneDNN) that int8 runs on."""
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm", "onednn"))


def _cuda_bf16(device: torch.device) -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def choose(device: str | torch.device = "cpu", features: CpuFeatures | None = None) -> str:
    """The precision ``auto`` stands for on ``device``: ``"bf16"``, ``"int8"`` or ``"fp32"``."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if _cuda_bf16(device) else "fp32"
    if device.type != "cpu":
        return "fp32"
    feats = cpu_features() if features is None else features
    if feats.native_bf16:
        return "bf16"
    if feats.int8_dot and x86_int8_kernels():
        return "int8"
    return "fp32"


def resolve_runtime(dtype: torch.dtype | str | None, device: str | torch.device = "cpu") -> str | torch.dtype | None:
    """A ``dtype=`` argument of :meth:`OnePeace.from_pretrained` as what to load: ``None`` (as
    stored), a torch float dtype, or ``"int8"`` (fp32 weights whose linear layers are then
    quantised). ``"auto"`` is resolved with :func:`choose`."""
    if isinstance(dtype, str):
        key = dtype.strip().lower()
        if key == "auto":
            key = choose(device)
        if key == "int8":
            if torch.device(device).type != "cpu":
                raise ConfigError(f"dtype 'int8' runs on the CPU only (device {device!s}); use bf16 or fp32 there")
            return "int8"
        dtype = key
    try:
        return resolve_dtype(dtype)
    except ConfigError:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(RUNTIME_DTYPES)}") from None


__all__ = ["RUNTIME_DTYPES", "CpuFeatures", "choose", "cpu_features", "features_from_flags", "resolve_dtype",
           "resolve_runtime", "x86_int8_kernels"]
