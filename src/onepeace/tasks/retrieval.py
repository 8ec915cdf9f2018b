"""Retrieval metrics between any two sets of embeddings, emergent pairs included.

Relevance is by label when labels are given (an item is relevant when it shares the query's label),
else by index (query i matches gallery i). ``chance`` is the expected R@1 of a random ranking:
the mean share of relevant items in the gallery.
"""

from __future__ import annotations

import torch


def retrieval_metrics(queries: torch.Tensor, gallery: torch.Tensor,
                      query_labels: torch.Tensor | None = None,
                      gallery_labels: torch.Tensor | None = None,
                      ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    sim = queries.float() @ gallery.float().T
    if query_labels is None:
        if queries.shape[0] != gallery.shape[0]:
            raise ValueError("index-matched retrieval needs as many queries as gallery items")
        relevant = torch.eye(sim.shape[0], dtype=torch.bool)
    else:
        relevant = query_labels[:, None].eq(gallery_labels[None, :])
    order = sim.argsort(dim=1, descending=True)
    hits = relevant.gather(1, order)  # [Q, G] relevance in ranked order
    has = hits.any(1)
    first = torch.where(has, hits.float().argmax(1), torch.full_like(has, hits.shape[1], dtype=torch.long))
    out = {f"R@{k}": float((first < k).float().mean() * 100) for k in ks if k <= sim.shape[1]}
    out["mean_rank"] = float((first + 1).float().mean())
    out["chance"] = float(relevant.float().mean(1).mean() * 100)
    return out
