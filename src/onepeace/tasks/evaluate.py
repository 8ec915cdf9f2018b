"""Retrieval evaluation over manifests or shards, between text and a modality or between two
modalities (emergent pairs), with the distinct-item protocol of :mod:`onepeace.tasks.retrieval`.

:func:`embed_sources` is shared by ``onepeace eval retrieval`` (:func:`evaluate_retrieval`) and the
pretraining / demo evaluation (:class:`onepeace.train.trainer.PretrainJob`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from .retrieval import Rows, pair_metrics, retrieval_metrics


@dataclass
class Embedded:
    """Row embeddings of evaluation data: per modality its media rows and their caption rows
    (``text@<modality>``), plus the samples that could not be loaded."""

    media: dict[str, Rows] = field(default_factory=dict)
    captions: dict[str, Rows] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    rows: int = 0


def embed_sources(sources: Sequence[str], config, embed: Callable[[str, dict], torch.Tensor],
                  batch_size: int = 32, progress: bool | None = False) -> Embedded:
    """Embed every usable sample of ``sources`` (manifests or shards) in order with
    ``embed(modality, batch[modality]) -> [B, D]``, keeping each row's media identity, caption
    string and label. Every media field of a sample (any registered modality: a clip with its
    soundtrack gives a video row and an audio row) is embedded. Unloadable samples are skipped and named in ``skipped``; a labelled and an
    unlabelled sample of one modality together are an error. ``progress``: a bar of embedded
    samples on stderr (``None``: only when stderr is a terminal)."""
    from ..data.dataset import make_loader
    from ..progress import progress_bar

    out = Embedded()
    parts: dict[str, list] = {}

    def on_skip(sample_id: str, reason: str) -> None:
        out.skipped.append(sample_id)

    with progress_bar(progress, desc="embedding", unit="sample") as bar:
        for src in sources:
            loader = make_loader(src, config, batch_size, 0, train=False, rank=0, world_size=1, on_skip=on_skip)
            for batch in loader:
                labels = batch["label"].tolist() if "label" in batch else None
                zt = embed("text", batch["text"]).float().cpu()
                for m, items in batch["item"].items():  # every media field of the samples
                    zm = embed(m, batch[m]).float().cpu()
                    parts.setdefault(m, []).append((zm, zt, items, batch["caption"], labels))
                out.rows += len(batch["caption"])
                bar.update(len(batch["caption"]))
    for m, ps in parts.items():
        has = {p[4] is not None for p in ps}
        if len(has) > 1:
            raise InputError(f"some {m} samples of {list(sources)} have a 'label' and some do not; label all or none")
        labels = [lb for p in ps for lb in p[4]] if has == {True} else None
        out.media[m] = Rows(torch.cat([p[0] for p in ps]), [i for p in ps for i in p[2]], labels)
        out.captions[m] = Rows(torch.cat([p[1] for p in ps]), [c for p in ps for c in p[3]], labels, media=False)
    return out


def all_pairs(emb: Embedded, protocol: str = "auto") -> dict[str, dict]:
    """Each modality <-> text and every ordered pair of modalities (emergent, labels needed)."""
    out: dict[str, dict] = {}
    for m in emb.media:
        out.update(pair_metrics(emb.media[m], emb.captions[m], m, protocol=protocol))
    for a in emb.media:
        for b in emb.media:
            if a != b:
                out[f"{a}->{b}"] = retrieval_metrics(emb.media[a], emb.media[b], protocol=protocol)
    return out


@torch.inference_mode()
def evaluate_retrieval(model, sources: Sequence[str], query: str, gallery: str, batch_size: int = 32,
                       protocol: str = "auto",
                       on_skip: Callable[[list[str], int], None] | None = None,
                       progress: bool | None = False) -> dict[str, float | int | str]:
    """R@1/5/10, mean rank, chance, protocol and item counts for ``query`` -> ``gallery``
    (modality names or "text"), plus ``skipped``: samples of ``sources`` that could not be loaded
    (also passed to ``on_skip(names, rows used)`` before scoring, when given). ``progress`` is as
    in :func:`embed_sources`.

    Text pairs with the modality it captions; two non-text modalities need labels (relevance =
    same label), which is how emergent pairs such as audio -> image are scored.
    """
    if query == gallery:
        raise InputError("query and gallery must be different modalities")
    def embed(name: str, batch: dict) -> torch.Tensor:  # captions and clips of mixed lengths skip their padding
        return model.embed_batch(name, batch, bucket=True)

    emb = embed_sources(sources, model.config, embed, batch_size, progress)
    if on_skip is not None and emb.skipped:
        on_skip(emb.skipped, emb.rows)
    if not emb.rows:
        raise InputError(f"no sample of {list(sources)} could be used ({len(emb.skipped)} skipped)")
    mods = list(emb.media)
    for name in (query, gallery):
        if name != "text" and name not in emb.media:
            raise InputError(f"no {name} samples in {list(sources)}; found {mods}")
    if "text" in (query, gallery):
        m = gallery if query == "text" else query
        out = pair_metrics(emb.media[m], emb.captions[m], m, protocol=protocol)[f"{query}->{gallery}"]
    else:
        out = retrieval_metrics(emb.media[query], emb.media[gallery], protocol=protocol)
    out["skipped"] = len(emb.skipped)
    return out
