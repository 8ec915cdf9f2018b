"""The heads on raw inputs: classification logits, grounding boxes and segmentation maps.

Each function takes the model (an :class:`~onepeace.model.onepeace.OnePeaceNetwork`, so also an
:class:`onepeace.OnePeace`) as its first argument; :meth:`onepeace.OnePeace.classify`,
:meth:`~onepeace.OnePeace.ground` and :meth:`~onepeace.OnePeace.segment` call them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from ..model.onepeace import OnePeaceNetwork
from .embedding import batches


@torch.inference_mode()
def classify(model: OnePeaceNetwork, *, batch_size: int = 16, **inputs: Sequence[Any] | None) -> torch.Tensor:
    """Head logits for raw inputs; several modalities given together are fused pairwise."""
    inputs = {k: ([v] if isinstance(v, (str, bytes, os.PathLike)) else list(v)) for k, v in inputs.items() if v is not None}
    if not inputs:
        raise InputError("nothing to classify")
    lengths = {len(v) for v in inputs.values()}
    if len(lengths) > 1:
        raise InputError("fused inputs need the same number of items per modality")
    n = lengths.pop()
    out = []
    for i in range(0, n, batch_size):
        batch = {k: model.processor.get("image" if k == "image2" else k)(v[i : i + batch_size])
                 for k, v in inputs.items()}
        out.append(model.classify_batch(**batch).float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def ground(model: OnePeaceNetwork, image: Sequence[Any], text: Sequence[str]) -> torch.Tensor:
    """Boxes (x0, y0, x1, y1) in original pixels for (image, text) pairs (grounding models)."""
    image = [image] if not isinstance(image, (list, tuple)) else list(image)
    text = [text] if isinstance(text, str) else list(text)
    if len(image) != len(text):
        raise InputError(f"ground() needs one text per image, got {len(image)} images and {len(text)} texts")
    if model.head is None or model.config.head.num_classes != 4:
        raise ConfigError("ground() needs a grounding checkpoint (a 4-output head)")
    img = model.processor.get("image")(image)
    logits = model.classify_batch(text=model.processor.get("text")(text), image=img).float().cpu()
    wh = img["sizes"].float()
    scale = torch.stack([wh[:, 0], wh[:, 1], wh[:, 0], wh[:, 1]], dim=1)
    return logits.sigmoid() * scale


@torch.inference_mode()
def segment(model: OnePeaceNetwork, image: Sequence[Any], batch_size: int = 8) -> list[torch.Tensor]:
    """Class maps [H, W] (long) at each image's original size (segmentation models)."""
    image = [image] if not isinstance(image, (list, tuple)) else list(image)
    if model.head is None or model.config.head.type != "dense":
        raise ConfigError("segment() needs a segmentation model (a dense head)")
    out = []
    for chunk in batches(image, batch_size):
        img = model.processor.get("image")(chunk)
        logits = model.classify_batch(image=img).float()
        for lg, (w, h) in zip(logits, img["sizes"].tolist()):
            up = F.interpolate(lg[None], size=(h, w), mode="bilinear", align_corners=False)
            out.append(up[0].argmax(0).cpu())
    return out


__all__ = ["classify", "ground", "segment"]
