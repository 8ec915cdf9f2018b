"""Scoring the held-out pairs before and after adapting.

* ``R@1 a->b`` and ``R@1 b->a``: retrieval over distinct items (:mod:`onepeace.tasks.retrieval`,
  the instance protocol: an item matches the items it is paired with in some held-out row);
* ``zero-shot``: when the texts are labels (at most half as many distinct captions as pairs, over
  the training and held-out pairs together; at least two held out), the accuracy of naming each
  held-out media item's caption among the distinct held-out captions (the classes), in percent,
  with ``zero-shot chance`` (1 / classes). Training captions may differ from them (templates,
  paraphrases): only the held-out ones are classes.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable

import torch

from onepeace.tasks.retrieval import Rows, retrieval_metrics

from .data import Decoder, Pairs, identity


def label_texts(held: Pairs, train: Pairs) -> list[str] | None:
    """The distinct held-out captions when the captions are labels (few and repeated over the
    training and held-out pairs together, so that a small held-out set is judged as its data), else None."""
    if "text" not in held.modalities:
        return None
    texts = [r["text"] for p in (train, held) for r in p.rows]
    classes = sorted({r["text"] for r in held.rows})
    return classes if len(classes) >= 2 and len(set(texts)) <= len(texts) / 2 else None


@torch.no_grad()
def _embed(model, decoder: Decoder, pairs: Pairs, batch_size: int, autocast) -> tuple[dict, list[dict]]:
    """Embeddings [N, D] per modality of the pairs that decode, and those rows."""
    rng = random.Random(0)  # unused by evaluation transforms; given for the protocol
    kept, chunks = [], {m: [] for m in pairs.modalities}
    batch: list[dict] = []

    def flush() -> None:
        b = decoder.collate(batch)
        with autocast():
            for m in pairs.modalities:
                chunks[m].append(model.embed_batch(m, b[m]).float().cpu())
        batch.clear()

    for row in pairs.rows:
        s = decoder.decode(row, False, rng)
        if s is None:
            continue
        kept.append(row)
        batch.append(s)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return {m: torch.cat(c) if c else torch.zeros(0) for m, c in chunks.items()}, kept


@torch.no_grad()
def _zero_shot(model, decoder: Decoder, emb: torch.Tensor, rows: list[dict], media: str, classes: list[str],
               autocast) -> dict[str, float]:
    text = decoder.proc.get("text")
    with autocast():
        c = torch.cat([model.embed_batch("text", text.collate([text.encode(t) for t in classes[i:i + 64]]))
                       .float().cpu() for i in range(0, len(classes), 64)])
    pred = (emb.double() @ c.double().T).argmax(1).tolist()
    index = {t: i for i, t in enumerate(classes)}
    hits = sum(int(p == index[r["text"]]) for p, r in zip(pred, rows))
    return {"zero-shot": 100.0 * hits / len(rows), "zero-shot chance": 100.0 / len(classes)}


def evaluate(model, decoder: Decoder, pairs: Pairs, *, batch_size: int = 32, classes: list[str] | None = None,
             autocast: Callable = contextlib.nullcontext) -> dict[str, float | int]:
    """The held-out figures of ``model`` on ``pairs`` (see the module docstring)."""
    was = model.training
    model.eval()
    try:
        emb, rows = _embed(model, decoder, pairs, batch_size, autocast)
        a, b = pairs.modalities
        out: dict[str, float | int] = {"pairs": len(rows)}
        if len(rows) < 2:
            return out
        ra = Rows(emb[a], [identity(a, r[a]) for r in rows], media=a != "text")
        rb = Rows(emb[b], [identity(b, r[b]) for r in rows], media=b != "text")
        out[f"R@1 {a}->{b}"] = retrieval_metrics(ra, rb, paired=True, protocol="instance", ks=(1,))["R@1"]
        out[f"R@1 {b}->{a}"] = retrieval_metrics(rb, ra, paired=True, protocol="instance", ks=(1,))["R@1"]
        if classes is not None and b == "text":
            out.update(_zero_shot(model, decoder, emb[a], rows, a, classes, autocast))
        return out
    finally:
        model.train(was)


def table(before: dict, after: dict) -> str:
    """The before/after figures as a text table (also the model card's)."""
    keys = [k for k in before if k.startswith(("R@1", "zero-shot")) and k in after]
    lines = [f"{'held-out':<22} {'before':>8} {'after':>8} {'change':>8}"]
    for k in keys:
        lines.append(f"{k:<22} {before[k]:8.1f} {after[k]:8.1f} {after[k] - before[k]:+8.1f}")
    lines.append(f"{'pairs scored':<22} {before.get('pairs', 0):8d} {after.get('pairs', 0):8d}")
    return "\n".join(lines)
