"""AdamW with no-decay groups and optional layer-wise lr decay; warmup + cosine schedule."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

_NO_DECAY = ("cls_embedding", "cls_pos_embed", "pos_embed", "embed_positions", "mask_token",
             "mask_embedding", "decoder_pos", "logit_scale", "pool.q")


def layer_id(name: str, num_layers: int) -> int:
    """0 for adapters (relative tables follow their layer), k+1 for layer k, L+1 for the rest."""
    m = re.search(r"model\.encoder\.layers\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    m = re.search(r"model\.adapters\.\w+\.rel_tables\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    if ".adapters." in name or name.startswith("adapters."):
        return 0
    return num_layers + 1


def param_groups(module: nn.Module, weight_decay: float, layer_decay: float, num_layers: int) -> list[dict]:
    groups: dict[tuple, dict] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        clean = name.replace("_orig_mod.", "").replace("module.", "", 1)
        no_decay = p.ndim < 2 or clean.endswith(".bias") or any(k in clean for k in _NO_DECAY)
        lid = layer_id(clean, num_layers)
        scale = layer_decay ** (num_layers + 1 - lid) if layer_decay != 1.0 else 1.0
        key = (no_decay, scale)
        g = groups.setdefault(key, {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                                    "lr_scale": scale})
        g["params"].append(p)
    return list(groups.values())


def lr_at(step: int, base: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup from 0, then cosine from ``base`` down to ``min_lr`` at ``total``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
