"""Retrieval metrics over distinct items: the one protocol every retrieval evaluation uses
(``onepeace eval retrieval``, the pretraining/demo evaluation, the retrieval fine-tuning task).

Evaluation data are *rows*: the lines of a manifest or the samples of shards, each a media item
with its caption (and maybe a label). Rows repeat items (COCO: one image, five captions, five
lines; the demo: one fixed prompt per digit on a thousand lines), so galleries and query sets are
first **de-duplicated by identity**: a media item is its file (resolved path) or its bytes (shard
samples, ``sha1:...``), a caption is its exact string. Each distinct item is queried once and is
one gallery entry.

Relevance follows one of two protocols, named in every result (``"protocol"``):

* ``"instance"``: an item matches the items it is paired with. Between media and captions that
  is the rows: image -> text is a hit at K when *any* of the image's captions is in the top K, text
  -> image ranks the distinct images. A manifest without labels, or whose labels each name one
  distinct media item (COCO retrieval manifests: ``label`` = image), is instance-level. Between
  two media modalities (emergent pairs), labels that each name one item per modality.
* ``"class"``: labels are classes shared by several distinct media items (the demo: ``label`` =
  the digit), and an item matches every item of the same label.

``protocol="auto"`` picks ``"class"`` when some label spans more than one distinct media item,
else ``"instance"``. Metrics: R@K for each K up to the gallery size, ``mean_rank`` (1-based rank
of the first relevant item; never above the gallery size), ``chance`` (expected R@1 of a random
ranking: the mean share of relevant items), ``queries`` and ``gallery`` (distinct items). A query
with no relevant item in the gallery (possible between labelled sets only) is not scored and is
counted in ``no_match``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError

PROTOCOLS = ("auto", "instance", "class")


@dataclass
class Rows:
    """One side of a retrieval: row embeddings [N, D], each row's item identity (``None``: every
    row is its own item), its label (``None``: unlabelled) and whether the rows are media (whose
    labels decide the protocol) or captions."""

    emb: torch.Tensor
    items: Sequence[Hashable] | None = None
    labels: Sequence[int] | torch.Tensor | None = None
    media: bool = True

    def __post_init__(self) -> None:
        n = self.emb.shape[0]
        if self.items is None:
            self.items = range(n)
        if isinstance(self.labels, torch.Tensor):
            self.labels = self.labels.tolist()
        if len(self.items) != n or (self.labels is not None and len(self.labels) != n):
            raise ValueError("a retrieval side needs one item and one label (if any) per embedding row")


def distinct(items: Sequence[Hashable]) -> tuple[list[int], list[int]]:
    """``(first, index)``: the row of each distinct item's first occurrence (in order of first
    occurrence) and, for every row, the number of its distinct item."""
    seen: dict[Hashable, int] = {}
    first: list[int] = []
    index: list[int] = []
    for row, item in enumerate(items):
        j = seen.get(item)
        if j is None:
            j = seen[item] = len(first)
            first.append(row)
        index.append(j)
    return first, index


def infer_protocol(*sides: Rows) -> str:
    """``"class"`` when a label spans more than one distinct media item on any media side,
    else ``"instance"`` (also for unlabelled rows)."""
    for side in sides:
        if not side.media or side.labels is None:
            continue
        owner: dict[int, Hashable] = {}
        for item, label in zip(side.items, side.labels):
            if owner.setdefault(label, item) != item:
                return "class"
    return "instance"


def _label_sets(side: Rows, index: list[int], n: int, vocab: dict[int, int]) -> torch.Tensor:
    """[n distinct items, labels] multi-hot: the labels each distinct item occurs with."""
    hot = torch.zeros(n, len(vocab), dtype=torch.bool)
    for j, label in zip(index, side.labels):
        hot[j, vocab[label]] = True
    return hot


def ranked_metrics(queries: torch.Tensor, gallery: torch.Tensor, relevant: torch.Tensor,
                   ks: tuple[int, ...] = (1, 5, 10), chunk: int = 1024) -> dict[str, float]:
    """R@K, mean rank and chance of ``queries`` against ``gallery`` (already distinct items) for
    a boolean relevance matrix [Q, G]; queries without a relevant item are left out. Similarities
    are float64, ``chunk`` queries at a time (a 25k x 5k COCO evaluation stays small)."""
    scored = relevant.any(1)
    if not bool(scored.any()):
        raise InputError("no query has a relevant item in the gallery (do the two sides share labels?)")
    queries, relevant = queries[scored], relevant[scored]
    g = gallery.double()
    first = []  # 0-based rank of the first relevant gallery item, per query
    for i in range(0, queries.shape[0], chunk):
        sim = queries[i : i + chunk].double() @ g.T
        order = sim.argsort(dim=1, descending=True, stable=True)
        first.append(relevant[i : i + chunk].gather(1, order).to(torch.uint8).argmax(1))
    rank = torch.cat(first)
    out = {f"R@{k}": float((rank < k).double().mean() * 100) for k in ks if k <= gallery.shape[0]}
    out["mean_rank"] = float((rank + 1).double().mean())
    out["chance"] = float((relevant.sum(1).double() / relevant.shape[1]).mean() * 100)
    return out


def retrieval_metrics(query: Rows, gallery: Rows, *, paired: bool = False, protocol: str = "auto",
                      ks: tuple[int, ...] = (1, 5, 10),
                      pairs: Sequence[tuple[int, int]] | None = None) -> dict[str, float | int | str]:
    """Metrics of retrieving ``gallery`` items with ``query`` items, each side de-duplicated by
    item identity (see the module docstring for the protocols).

    ``paired``: row ``i`` of both sides is one line (a media item and its caption), so under the
    instance protocol the items of a row match each other. Unpaired sides (two media
    modalities) need labels, which define relevance under both protocols.

    ``pairs``: the (query row, gallery row) pairs of lines, where not every row has a partner
    (captions without media: a query without a match, or a distractor in the gallery); implies
    ``paired``.
    """
    if protocol not in PROTOCOLS:
        raise InputError(f"retrieval protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    labelled = query.labels is not None and gallery.labels is not None
    if pairs is None and paired:
        if len(query.items) != len(gallery.items):
            raise ValueError("paired retrieval needs as many query rows as gallery rows")
        pairs = [(i, i) for i in range(len(query.items))]
    paired = pairs is not None
    if not labelled and (not paired or protocol == "class"):
        raise InputError("class-level retrieval needs a 'label' on every sample" if protocol == "class" else
                         "retrieval between two non-text modalities needs a 'label' on every sample")
    if protocol == "auto":
        protocol = infer_protocol(query, gallery) if labelled else "instance"
    qfirst, qindex = distinct(query.items)
    gfirst, gindex = distinct(gallery.items)
    if paired and protocol == "instance":
        relevant = torch.zeros(len(qfirst), len(gfirst), dtype=torch.bool)
        if pairs:
            relevant[torch.tensor([qindex[a] for a, _ in pairs]), torch.tensor([gindex[b] for _, b in pairs])] = True
    else:
        vocab = {label: i for i, label in enumerate(sorted(set(query.labels) | set(gallery.labels)))}
        q = _label_sets(query, qindex, len(qfirst), vocab)
        g = _label_sets(gallery, gindex, len(gfirst), vocab)
        relevant = torch.cat([(q[i : i + 4096].float() @ g.float().T) > 0 for i in range(0, len(q), 4096)])
    out: dict[str, float | int | str] = {"protocol": protocol}
    out.update(ranked_metrics(query.emb[qfirst], gallery.emb[gfirst], relevant, ks))
    out["queries"] = len(qfirst)
    out["gallery"] = len(gfirst)
    unmatched = int((~relevant.any(1)).sum())
    if unmatched:
        out["no_match"] = unmatched
    return out


def pair_metrics(media: Rows, captions: Rows, name: str, *, protocol: str = "auto",
                 ks: tuple[int, ...] = (1, 5, 10),
                 texts: Rows | None = None) -> dict[str, dict[str, float | int | str]]:
    """``{"<name>->text": ..., "text-><name>": ...}`` for paired media and caption rows; the
    protocol is decided once (on the media) for both directions. ``texts``: captions without
    media (caption-only manifest lines) joining the text side: relevant by label under the class
    protocol; under the instance protocol, gallery distractors and queries without a match."""
    if protocol == "auto":
        protocol = infer_protocol(media) if media.labels is not None else "instance"
    if texts is None or not len(texts.items):
        return {f"{name}->text": retrieval_metrics(media, captions, paired=True, protocol=protocol, ks=ks),
                f"text->{name}": retrieval_metrics(captions, media, paired=True, protocol=protocol, ks=ks)}
    if (texts.labels is None) != (captions.labels is None):
        raise InputError(f"the {name} lines {'have' if captions.labels is not None else 'have no'} 'label' and the "
                         f"caption-only lines {'have' if texts.labels is not None else 'have no'}: label all lines "
                         "or none")
    if len(captions.items) != len(media.items):
        raise ValueError("paired retrieval needs as many caption rows as media rows")
    joined = Rows(torch.cat([captions.emb, texts.emb.to(captions.emb.dtype)]), [*captions.items, *texts.items],
                  None if captions.labels is None else [*captions.labels, *texts.labels], media=False)
    pairs = [(i, i) for i in range(len(media.items))]
    return {f"{name}->text": retrieval_metrics(media, joined, protocol=protocol, ks=ks, pairs=pairs),
            f"text->{name}": retrieval_metrics(joined, media, protocol=protocol, ks=ks, pairs=pairs)}
