"""Building models from presets or configs, on any device (``meta`` included)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .config import ModelConfig, get_preset
from .errors import ConfigError
from .modalities.base import deferred_init
from .model.onepeace import OnePeace

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


def create_model(
    name_or_config: str | ModelConfig | dict[str, Any],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    init: bool = True,
    **overrides: Any,
) -> OnePeace:
    """Build a model from a preset name (``onepeace.list_presets()``) or a config.

    On ``device="meta"`` no memory is allocated (useful for counting parameters or for loading
    weights with ``assign=True``). ``init=False`` skips the official init (weights to be loaded),
    and leaves the embedding tables uninitialised rather than drawing torch's default init for them.
    """
    if isinstance(name_or_config, str):
        config = get_preset(name_or_config, **overrides)
    elif isinstance(name_or_config, dict):
        config = ModelConfig.from_dict({**name_or_config, **overrides})
    else:
        config = name_or_config.replace(**overrides) if overrides else name_or_config
    dt = resolve_dtype(dtype)
    device = torch.device(device)
    skip_module_init = not init or device.type == "meta"  # values to be loaded, or none at all
    with torch.device(device), (deferred_init() if skip_module_init else contextlib.nullcontext()):
        model = OnePeace(config)
    if init and device.type != "meta":
        model.reset_parameters()
    if dt is not None:
        model.to(dt)
    return model.eval()
