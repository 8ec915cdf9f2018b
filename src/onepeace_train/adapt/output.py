"""The adapter directory ``onepeace adapt`` writes (read by ``onepeace.checkpoints.adapter``):

``adapter_config.json`` (peft's LoraConfig), ``adapter_model.safetensors`` (the LoRA tensors,
``get_peft_model_state_dict``: keys relative to the network), ``onepeace_adapter.json`` (format,
base model fingerprint and name, modalities, targets, rank, alpha, peft version, steps, seed),
``README.md`` (the model card) and ``metrics.json`` (the held-out figures before and after).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from typing import Any

from onepeace.outputs import is_model_card

from .metrics import table

FORMAT = "onepeace-lora/1"
CONFIG, WEIGHTS, META, CARD, METRICS = ("adapter_config.json", "adapter_model.safetensors", "onepeace_adapter.json",
                                        "README.md", "metrics.json")
ADAPTER_FILES = (CONFIG, WEIGHTS, META, CARD, METRICS)


def adapter_files(folder: str) -> Callable[[str], bool]:
    """The entries a previous adapter consists of (``--force`` replaces only those): a README.md
    only when it is a card written for onepeace, never a user's own."""
    def owned(name: str) -> bool:
        if name == CARD:
            return is_model_card(os.path.join(folder, name))
        return name in ADAPTER_FILES
    return owned


def _card(meta: dict[str, Any], metrics: dict[str, Any], options: dict[str, Any]) -> str:
    a, b = meta["modalities"]
    opts = "\n".join(f"| {k} | {v} |" for k, v in options.items())
    p = metrics["pairs"]
    return f"""---
library_name: onepeace
tags:
- onepeace
- lora
- peft
---
# LoRA adapter for {meta['base_name']}

A LoRA adapter (peft {meta['peft_version']}) of the {', '.join(meta['branches'])} branch(es) of the ONE-PEACE model
`{meta['base_name']}` (fingerprint `{meta['base_fingerprint']}`), trained by `onepeace adapt` with the
aligning contrast on {a}-{b} pairs. It loads onto that model only.

## Data

{p['train']} training pairs and {p['val']} held-out pairs from `{p['source']}` (held out: {p['held_out']});
{p['skipped']} pair(s) skipped as unreadable.

## Options

| option | value |
|---|---|
{opts}

## Held-out figures

```
{table(metrics['before'], metrics['after'])}
```

## Use

```python
from onepeace import OnePeace
model = OnePeace.from_pretrained("{meta['base_name']}", adapter="PATH/TO/THIS/ADAPTER")
```

or `--adapter PATH/TO/THIS/ADAPTER` on any inference command and on `onepeace serve`; `onepeace adapt merge BASE
PATH/TO/THIS/ADAPTER --out MERGED` writes a full model with the adapter merged into its weights.
"""


def write_adapter(folder: str, lora_cfg, tensors: dict, meta: dict[str, Any], metrics: dict[str, Any],
                  options: dict[str, Any]) -> int:
    """Write the adapter's files into the (empty) ``folder``; returns the weights' size in bytes."""
    from safetensors.torch import save_file

    cfg = copy.deepcopy(lora_cfg)
    cfg.base_model_name_or_path = meta["base_name"]
    cfg.inference_mode = True
    cfg.save_pretrained(folder)
    weights = os.path.join(folder, WEIGHTS)
    save_file(tensors, weights, metadata={"format": "pt"})
    size = os.path.getsize(weights)
    with open(os.path.join(folder, META), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(folder, METRICS), "w", encoding="utf-8") as f:
        json.dump({**metrics, "adapter_bytes": size}, f, indent=1)
    with open(os.path.join(folder, CARD), "w", encoding="utf-8") as f:
        f.write(_card(meta, metrics, options))
    return size
