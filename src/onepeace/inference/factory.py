"""Building models from presets or configs, on any device (``meta`` included), and their processors.

:func:`create_model` returns the public :class:`onepeace.OnePeace` (built with
:meth:`~onepeace.model.onepeace.OnePeaceNetwork.build`); :func:`get_processor` and
:func:`get_tokenizer` give a model's preprocessing without loading its weights.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..checkpoints.format import load_config
from ..config import ModelConfig, get_preset, list_presets
from ..errors import ConfigError
from ..modalities import Processor
from ..model.onepeace import OnePeaceNetwork
from .onepeace import OnePeace

#: the model whose processors :func:`get_processor` gives when no model is named (the official one)
DEFAULT_PROCESSOR_MODEL = "one-peace-4b"


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
    return OnePeace.build(config, device=device, dtype=dtype, init=init)


def _config_of(model: Any) -> ModelConfig:
    """The config of a model, a ``ModelConfig``, a preset name, or a model directory / hub id."""
    if model is None:
        return get_preset(DEFAULT_PROCESSOR_MODEL)
    if isinstance(model, OnePeaceNetwork):
        return model.config
    if isinstance(model, ModelConfig):
        return model
    if isinstance(model, str) and model in list_presets():
        return get_preset(model)
    if isinstance(model, (str, os.PathLike)):
        return load_config(model)
    raise ConfigError(f"model must be an OnePeace, a ModelConfig, a preset name ({', '.join(list_presets())}) or a "
                      f"model directory / hub id, got {type(model).__name__}")


def get_processor(modality: str | None = None, model: Any = None) -> Any:
    """The preprocessing of ``model`` (an ``OnePeace``, a preset name, a model directory or hub id;
    default: the official ONE-PEACE's): for one ``modality`` its processor (``proc(items)`` -> the
    batch ``model.encode`` takes), or with ``modality=None`` all of them (``.get("image")``).
    A loaded model's are ``model.processor``; this reads only a directory's ``config.json``."""
    procs = model.processor if isinstance(model, OnePeaceNetwork) else Processor(_config_of(model))
    return procs if modality is None else procs.get(modality)


def get_tokenizer(model: Any = None) -> Any:
    """The text tokenizer of ``model`` (see :func:`get_processor`; default: the official 70-token
    one): ``tok(["a dog"])["tokens"]`` (LongTensor [N, L], right-padded), ``tok.encode(text)`` (ids,
    cut to the limit, ``</s>`` ended), ``tok.count(text)``, ``tok.decode(ids)``."""
    return get_processor("text", model)


__all__ = ["DEFAULT_PROCESSOR_MODEL", "create_model", "get_processor", "get_tokenizer"]
