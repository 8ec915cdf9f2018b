"""Retrieval evaluation between any two modalities of labelled manifests (emergent pairs too)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError
from .retrieval import retrieval_metrics


@torch.inference_mode()
def embed_sources(model, sources: Sequence[str], batch_size: int = 32) -> dict[str, tuple]:
    """{modality: (emb, labels|None)} and {"text@<modality>": captions' (emb, labels)} per source."""
    from ..data.dataset import make_loader

    out: dict[str, list] = {}
    for src in sources:
        for batch in make_loader(src, model.config, batch_size, 0, train=False, rank=0, world_size=1):
            (m,) = [k for k in batch if k not in ("text", "label")]
            labels = batch.get("label")
            out.setdefault(m, []).append((model.embed_batch(m, batch[m]).float().cpu(), labels))
            out.setdefault(f"text@{m}", []).append((model.embed_batch("text", batch["text"]).float().cpu(), labels))
    res = {}
    for k, parts in out.items():
        z = torch.cat([p[0] for p in parts])
        labels = None if any(p[1] is None for p in parts) else torch.cat([p[1] for p in parts])
        res[k] = (z, labels)
    return res


def evaluate_retrieval(model, sources: Sequence[str], query: str, gallery: str,
                       batch_size: int = 32) -> dict[str, float]:
    """R@1/5/10, mean rank and chance for ``query`` -> ``gallery`` (modality names or "text").

    Text pairs with the modality it captions; two non-text modalities need labels (relevance =
    same label), which is how emergent pairs such as audio -> image are scored.
    """
    if query == gallery:
        raise InputError("query and gallery must be different modalities")
    emb = embed_sources(model, sources, batch_size)
    mods = [k for k in emb if not k.startswith("text@")]

    def pick(name: str, other: str):
        if name != "text":
            if name not in emb:
                raise InputError(f"no {name} samples in {list(sources)}; found {mods}")
            return emb[name]
        partner = other if other != "text" else None
        key = f"text@{partner}"
        if key not in emb:
            raise InputError(f"no captions of {partner} samples in {list(sources)}")
        return emb[key]

    (zq, lq), (zg, lg) = pick(query, gallery), pick(gallery, query)
    if lq is None or lg is None:
        if "text" not in (query, gallery):
            raise InputError("retrieval between two non-text modalities needs a 'label' on every sample")
        return retrieval_metrics(zq, zg)
    return retrieval_metrics(zq, zg, lq, lg)
