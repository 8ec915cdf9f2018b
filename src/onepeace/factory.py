"""Building models from presets or configs, on any device (``meta`` included)."""

from __future__ import annotations

import contextlib
import os
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


#: the model whose processors :func:`get_processor` gives when no model is named (the official one)
DEFAULT_PROCESSOR_MODEL = "one-peace-4b"


def _config_of(model: Any) -> ModelConfig:
    """The config of an ``OnePeace``, a ``ModelConfig``, a preset name, or a model directory / hub id."""
    from .config import list_presets

    if model is None:
        return get_preset(DEFAULT_PROCESSOR_MODEL)
    if isinstance(model, OnePeace):
        return model.config
    if isinstance(model, ModelConfig):
        return model
    if isinstance(model, str) and model in list_presets():
        return get_preset(model)
    if isinstance(model, (str, os.PathLike)):
        from .checkpoints.format import load_config

        return load_config(model)
    raise ConfigError(f"model must be an OnePeace, a ModelConfig, a preset name ({', '.join(list_presets())}) or a "
                      f"model directory / hub id, got {type(model).__name__}")


def get_processor(modality: str | None = None, model: Any = None) -> Any:
    """The preprocessing of ``model`` (an ``OnePeace``, a preset name, a model directory or hub id;
    default: the official ONE-PEACE's): for one ``modality`` its processor (``proc(items)`` -> the
    batch ``model.encode`` takes), or with ``modality=None`` all of them (``.get("image")``).
    A loaded model's are ``model.processor``; this reads only a directory's ``config.json``."""
    if isinstance(model, OnePeace):
        procs = model.processor
    else:
        from .modalities import Processor

        procs = Processor(_config_of(model))
    return procs if modality is None else procs.get(modality)


def get_tokenizer(model: Any = None) -> Any:
    """The text tokenizer of ``model`` (see :func:`get_processor`; default: the official 70-token
    one): ``tok(["a dog"])["tokens"]`` (LongTensor [N, L], right-padded), ``tok.encode(text)`` (ids,
    cut to the limit, ``</s>`` ended), ``tok.count(text)``, ``tok.decode(ids)``."""
    return get_processor("text", model)
