"""LoRA adapters (``onepeace adapt``'s output): read, check against their base model, merge.

An adapter directory holds ``adapter_config.json`` (peft's ``LoraConfig``),
``adapter_model.safetensors`` (peft's state dict of the LoRA weights, keys relative to the
network) and ``onepeace_adapter.json`` (the card: format ``onepeace-lora/1``, the base model's
fingerprint and name, modalities, targets, rank...), plus a README and ``metrics.json`` for people.

:func:`load_adapter` checks that the model is the adapter's base (by fingerprint, see
:mod:`onepeace.checkpoints.fingerprint`), injects the LoRA layers with peft's low-level API
(``inject_adapter_in_model`` + ``set_peft_model_state_dict``), and by default merges them:
``W += scale * B @ A`` in every adapted ``nn.Linear``, whose peft wrapper is then replaced by the
plain layer again. The result is a plain network whose fast paths (packed batches, int8
quantisation, bf16, ``compile_layers``, ONNX export) run the adapted weights with nothing of peft
left. :meth:`onepeace.OnePeace.from_pretrained` (``adapter=``) merges in fp32 and only then casts to
the requested dtype or quantises to int8. :func:`merge_adapter` writes the merged model as a full
model directory.

peft is an optional extra (``pip install 'onepeace[adapt]'``), imported only when an adapter is
loaded; a model with merged weights runs without it.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import CheckpointError, ConfigError, MissingDependencyError
from ..model.onepeace import OnePeaceNetwork
from ..outputs import check_output_dir, model_files
from . import format as _format
from .fingerprint import adapter_fingerprint, model_fingerprint, model_name, weights_fingerprint

FORMAT = "onepeace-lora/1"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CARD_FILE = "onepeace_adapter.json"
#: the files an adapter directory must hold (README.md and metrics.json are for people)
REQUIRED = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)
_FLOAT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def require_peft() -> Any:
    """The ``peft`` module, or one line saying how to install it (the ``adapt`` extra)."""
    try:
        import peft
    except ImportError:
        raise MissingDependencyError("LoRA adapters need peft, which is not installed: "
                                     "pip install 'onepeace[adapt]'") from None
    return peft


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {_one_line(e)}") from None


def _check_weights_file(path: str) -> None:
    """The safetensors header parses and the data it describes is all there."""
    header, start = _format.read_header(path)
    try:
        end = max((int(info["data_offsets"][1]) for info in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise CheckpointError(f"{path} is corrupt: its safetensors header is malformed") from None
    size = os.path.getsize(path)
    if not header:
        raise CheckpointError(f"{path} holds no tensors")
    if start + end > size:
        raise CheckpointError(f"{path} is truncated ({size} bytes, its header describes {start + end})")


def read_adapter_card(path: str | os.PathLike) -> dict[str, Any]:
    """The card (``onepeace_adapter.json``) of the adapter directory ``path``, after checking that
    the directory holds an adapter: its files present, the card's format ``onepeace-lora/1`` with a
    base fingerprint, the config valid JSON, the weights a whole safetensors file. Anything wrong is
    one :class:`~onepeace.errors.CheckpointError` line naming it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"adapter directory not found: {path}")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is a file, not an adapter directory (give the folder `onepeace adapt --out` wrote)")
    missing = [name for name in REQUIRED if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise CheckpointError(f"{path} is not an onepeace adapter directory: it lacks {', '.join(missing)} "
                              "(`onepeace adapt --out DIR` writes one)")
    card = _read_json(os.path.join(path, CARD_FILE), "the adapter card")
    if not isinstance(card, dict):
        raise CheckpointError(f"{os.path.join(path, CARD_FILE)}: the adapter card is not a JSON object")
    if card.get("format") != FORMAT:
        raise CheckpointError(f"{os.path.join(path, CARD_FILE)}: format {card.get('format')!r}, not {FORMAT!r} "
                              "(written by another version of onepeace?)")
    if not isinstance(card.get("base_fingerprint"), str) or not card["base_fingerprint"]:
        raise CheckpointError(f"{os.path.join(path, CARD_FILE)}: no base_fingerprint (which model it adapts)")
    config = _read_json(os.path.join(path, CONFIG_FILE), "the LoRA config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{os.path.join(path, CONFIG_FILE)}: the LoRA config is not a JSON object")
    _check_weights_file(os.path.join(path, WEIGHTS_FILE))
    return card


def check_base(model: Any, path: str | os.PathLike, card: dict[str, Any] | None = None) -> None:
    """Refuse, in one line naming both, a ``model`` that is not the base the adapter ``path`` was
    trained on. The fingerprint of the model's files is compared, or that of its weights (an
    adapter trained on a model built in Python, then saved, fits the saved model too)."""
    card = card if card is not None else read_adapter_card(path)
    want = card["base_fingerprint"]
    have = model_fingerprint(model)
    if have == want:
        return
    if not getattr(model, "adapter_fingerprint", None) and weights_fingerprint(model) == want:
        return
    raise CheckpointError(f"adapter {os.fspath(path)} was trained on {card.get('base_name') or '?'} "
                          f"(fingerprint {want[:12]}), not on {model_name(model)} (fingerprint {have[:12]})")


def _lora_config(peft: Any, path: str) -> Any:
    try:
        config = peft.LoraConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - peft reports a bad config with several types
        raise CheckpointError(f"{os.path.join(path, CONFIG_FILE)}: not a LoRA config peft can read: {_one_line(e)}") from None
    if str(getattr(config, "peft_type", "")).rsplit(".", 1)[-1].upper() != "LORA":
        raise CheckpointError(f"{os.path.join(path, CONFIG_FILE)}: peft type {config.peft_type}, not LORA")
    if config.modules_to_save:
        raise CheckpointError(f"{os.path.join(path, CONFIG_FILE)}: modules_to_save {config.modules_to_save} "
                              "(whole copies of modules) are not supported; onepeace adapters hold LoRA weights only")
    return config


def _lora_state(path: str, device: torch.device) -> dict[str, torch.Tensor]:
    file = os.path.join(path, WEIGHTS_FILE)
    try:
        state = load_file(file, device=str(device))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{file} is corrupt: {_one_line(e)}") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _inject(peft: Any, model: nn.Module, config: Any, state: dict[str, torch.Tensor], path: str) -> None:
    try:
        peft.inject_adapter_in_model(config, model)
    except ValueError as e:  # a target module the model lacks
        raise CheckpointError(f"adapter {path} does not fit this model: {_one_line(e)}") from None
    result = peft.set_peft_model_state_dict(model, state)
    unexpected = sorted(getattr(result, "unexpected_keys", []) or [])
    lora_missing = sorted(k for k in getattr(result, "missing_keys", []) or [] if ".lora_" in k)
    if unexpected or lora_missing:
        raise CheckpointError(f"adapter {path} does not fit this model: weights the model has no place for "
                              f"{unexpected[:3]}, LoRA weights the file lacks {lora_missing[:3]}")


def _tuner_layers(peft: Any, model: nn.Module) -> list[tuple[str, nn.Module]]:
    base = peft.tuners.tuners_utils.BaseTunerLayer
    return [(name, m) for name, m in model.named_modules() if isinstance(m, base)]


def merge_lora_layers(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer of ``model`` into its base ``nn.Linear`` and put the plain layer back
    in its place (no peft module nor attribute left); returns ``model``."""
    peft = require_peft()
    for name, layer in _tuner_layers(peft, model):
        try:
            layer.merge(safe_merge=True)
        except ValueError as e:  # NaN or inf in the merged weights
            raise CheckpointError(f"merging the LoRA weights of {name}: {_one_line(e)}") from None
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.get_base_layer())
    if "peft_config" in model.__dict__:
        del model.__dict__["peft_config"]
    return model


def load_adapter(model: Any, path: str | os.PathLike, *, merge: bool = True) -> Any:
    """Put the LoRA adapter in the directory ``path`` on ``model`` (in place; returns it).

    ``model`` must be the adapter's base (one line naming both models and fingerprints otherwise).
    ``merge=True`` (the default) adds each LoRA delta to its base weight and removes the LoRA
    wrappers: a plain network, as fast as the base, that needs no peft to run. ``merge=False`` keeps
    peft's LoRA layers (only their weights trainable, as peft leaves them). Merge into fp32
    weights: in bf16/fp16 the sum is rounded to the lower precision
    (:meth:`onepeace.OnePeace.from_pretrained` with ``adapter=`` loads fp32, merges, then casts).
    The model then records ``adapter_dir`` and ``adapter_fingerprint``: its fingerprint and name
    (``BASE+adapter DIR``) are those of the adapted model, so an index built with it refuses the base.
    """
    path = os.fspath(path)
    if getattr(model, "int8", False):
        raise ConfigError("an adapter is merged into fp32 weights before int8 quantisation: load it with "
                          "OnePeace.from_pretrained(path, adapter=DIR, dtype='int8')")
    if getattr(model, "adapter_dir", None):
        raise ConfigError(f"this model already carries the adapter {model.adapter_dir}; load the base model again "
                          "to put another one on it")
    card = read_adapter_card(path)
    check_base(model, path, card)
    peft = require_peft()
    config = _lora_config(peft, path)
    state = _lora_state(path, next(model.parameters()).device)
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    _inject(peft, model, config, state, path)
    model.train(model.training)  # the new LoRA layers (their dropout) in the model's mode
    if merge:
        merge_lora_layers(model)
        for name, p in model.named_parameters():
            p.requires_grad_(trainable.get(name, p.requires_grad))
    model.adapter_dir = os.path.abspath(path)
    model.adapter_fingerprint = adapter_fingerprint(path)
    model.adapter_card = card
    return model


def stored_dtype(path: str | os.PathLike) -> torch.dtype:
    """The floating dtype the model directory ``path`` stores its weights in."""
    for file in _format.weight_files(os.fspath(path)):
        header, _ = _format.read_header(file)
        for info in header.values():
            if info.get("dtype") in _FLOAT_DTYPES:
                return _FLOAT_DTYPES[info["dtype"]]
    return torch.float32


def merge_adapter(base: Any, path: str | os.PathLike, out: str | os.PathLike, *, force: bool = False,
                  dtype: torch.dtype | str | None = None) -> str:
    """Write ``base`` (a model directory or Hub id, or a model, which is left as it is) with the
    adapter ``path`` merged in as the new model directory ``out`` (``config.json`` + safetensors,
    in ``dtype``: by default the base directory's own, fp32 for a model). An existing ``out`` is
    refused unless ``force``, and then only a model is replaced, atomically. Returns ``out``; the
    merged model loads without peft and embeds as ``from_pretrained(base, adapter=path)``."""
    out = os.fspath(out)
    read_adapter_card(path)
    inputs = [os.fspath(path)] + ([os.fspath(base)] if isinstance(base, (str, os.PathLike)) else [])
    check_output_dir(out, force, owned=model_files(out), inputs=inputs, what="model")
    if isinstance(base, (str, os.PathLike)):
        model = _format.load_pretrained(base, dtype=torch.float32)
        if dtype is None:
            dtype = stored_dtype(model.source_dir)
    else:
        if not isinstance(base, OnePeaceNetwork):
            raise ConfigError(f"merge_adapter: base must be a model directory, a Hub id or a model, not {type(base).__name__}")
        model = copy.deepcopy(base).float()
    load_adapter(model, path)
    _format.save_pretrained(model, out, dtype=dtype, overwrite=force)
    return out


__all__ = ["CARD_FILE", "CONFIG_FILE", "FORMAT", "REQUIRED", "WEIGHTS_FILE", "check_base", "load_adapter",
           "merge_adapter", "merge_lora_layers", "read_adapter_card", "require_peft", "stored_dtype"]
