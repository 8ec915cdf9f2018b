"""Zero-shot classification: class names + prompt templates (ensembled) against images or audio."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError

#: ESC-50 protocol of the official evaluation: one template
AUDIO_TEMPLATES = ["This is a sound of {}."]
#: a small CLIP-style ensemble for images
IMAGE_TEMPLATES = [
    "a photo of a {}.",
    "a picture of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a good photo of a {}.",
    "an image of a {}.",
]
DEFAULT_TEMPLATES = {"image": IMAGE_TEMPLATES, "audio": AUDIO_TEMPLATES}


@torch.inference_mode()
def class_embeddings(model, labels: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """[C, D]: per class, the normalised mean of its normalised prompt embeddings."""
    if not labels:
        raise InputError("no class labels given")
    if not templates or any("{}" not in t for t in templates):
        raise InputError("each template needs a '{}' where the label goes")
    prompts = [t.format(label) for label in labels for t in templates]
    z = model.embed(text=prompts)["text"].view(len(labels), len(templates), -1)
    return F.normalize(z.mean(1), dim=-1)


@torch.inference_mode()
def zero_shot(model, labels: Sequence[str], *, templates: Sequence[str] | None = None,
              batch_size: int = 16, **inputs: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Per given modality: class probabilities [N, C] (softmax of the model's temperature-scaled
    cosine similarities)."""
    given = {k: v for k, v in inputs.items() if v is not None}
    if not given:
        raise InputError("nothing to classify: give image=[...] or audio=[...]")
    out = {}
    scale = float(model.logit_scale_exp()) if model.logit_scale is not None else 100.0
    for name, items in given.items():
        tpl = templates or DEFAULT_TEMPLATES.get(name, ["{}"])
        classes = class_embeddings(model, labels, tpl)
        z = model.embed(batch_size=batch_size, **{name: items})[name]
        out[name] = (scale * z @ classes.T).softmax(-1)
    return out


def parse_labels(spec: str) -> list[str]:
    """A file (one label per line, or .json list/dict) or a comma-separated list."""
    import json
    import os

    if os.path.exists(spec):
        try:
            with open(spec, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read labels file {spec}: {e}") from None
        if spec.endswith(".json"):
            data = json.loads(text)
            if isinstance(data, dict):
                if all(str(k).isdigit() for k in data):
                    return [str(data[k]) for k in sorted(data, key=int)]
                return [k for k, _ in sorted(data.items(), key=lambda kv: int(kv[1]))]
            return [str(x) for x in data]
        return [line.strip() for line in text.splitlines() if line.strip()]
    labels = [s.strip() for s in spec.split(",") if s.strip()]
    if len(labels) < 2:
        raise InputError(f"labels {spec!r}: give a file that exists or at least two comma-separated names")
    return labels
