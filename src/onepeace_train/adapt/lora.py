"""LoRA adapters on a ONE-PEACE network with the peft library (its low-level API on our plain module:
``LoraConfig``, ``inject_adapter_in_model``, ``get_peft_model_state_dict``; no PeftModel wrapper).

Targets (the Linear layers that get adapters), per branch ``m`` of ``--branches``:

* ``ffn``: ``encoder.layers.N.ffns.m.{wi_0,wi_1,wo}``, the branch's own feed-forward layers;
* ``proj``: ``proj.m``, the branch's embedding projection;
* ``attention``: ``encoder.layers.N.attn.{q,k,v,out}_proj``. Attention is SHARED by every
  modality, so adapting it changes the embeddings of every branch, not only those of
  ``--branches``.

The default, ``ffn,proj``, changes only the branches trained: the embeddings of the other
modalities stay bit-identical, so what the model did for them (say image-text retrieval after an
audio-text adaptation of the audio branch alone) cannot be forgotten.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from onepeace.checkpoints.adapter import require_peft  # the library's: one line naming the adapt extra
from onepeace.errors import ConfigError

TARGETS = ("ffn", "proj", "attention")
DEFAULT_TARGETS = ("ffn", "proj")


def parse_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    items = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    bad = [t for t in items if t not in TARGETS]
    if bad or not items:
        raise ConfigError(f"--targets takes a comma-separated list of {', '.join(TARGETS)}; got "
                          f"{','.join(items) if items else 'nothing'}")
    return tuple(t for t in TARGETS if t in items)


def target_regex(targets: Sequence[str], branches: Sequence[str]) -> str:
    """The peft ``target_modules`` pattern (matched against whole module names)."""
    br = "|".join(sorted(branches))
    parts = []
    if "ffn" in targets:
        parts.append(rf"encoder\.layers\.\d+\.ffns\.({br})\.(wi_0|wi_1|wo)")
    if "proj" in targets:
        parts.append(rf"proj\.({br})")
    if "attention" in targets:
        parts.append(r"encoder\.layers\.\d+\.attn\.(q_proj|k_proj|v_proj|out_proj)")
    return "^(" + "|".join(parts) + ")$"


def lora_config(rank: int, alpha: float, targets: Sequence[str], branches: Sequence[str]):
    peft = require_peft()
    return peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_regex(targets, branches),
                           lora_dropout=0.0, bias="none")


def add_lora(model: nn.Module, config) -> list[str]:
    """Inject LoRA layers in place; only they train (float32, even on a bf16 base: peft casts the
    input to them and the sum back). Returns the trainable parameter names."""
    peft = require_peft()
    peft.inject_adapter_in_model(config, model)
    names = []
    for name, p in model.named_parameters():
        lora = ".lora_" in name
        if lora and p.dtype != torch.float32:
            p.data = p.data.float()
        p.requires_grad_(lora)
        if lora:
            names.append(name)
    if not names:
        raise ConfigError("the LoRA targets match no layer of this model")
    return names


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors as peft saves them (keys relative to the network, no adapter name)."""
    peft = require_peft()
    return {k: v.detach().to("cpu").contiguous() for k, v in peft.get_peft_model_state_dict(model).items()}
