"""Retrieval evaluation over manifests or shards, between text and a modality or between two
modalities (emergent pairs), with the distinct-item protocol of :mod:`onepeace.tasks.retrieval`.

:func:`embed_sources` is shared by ``onepeace eval retrieval`` (:func:`evaluate_retrieval`) and the
pretraining / demo evaluation (:class:`onepeace_train.trainer.PretrainJob`).
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
    (``text@<modality>``), the text-only lines (``texts``: captions with no media, e.g. a class's
    prompt), plus the samples that could not be loaded."""

    media: dict[str, Rows] = field(default_factory=dict)
    captions: dict[str, Rows] = field(default_factory=dict)
    texts: Rows | None = None
    skipped: list[str] = field(default_factory=list)
    rows: int = 0


def check_pair(query: str, gallery: str, known: Sequence[str] | None = None) -> None:
    """``query`` and ``gallery`` are two different modalities: ``"text"`` or a modality of the
    model (``known``; default: every registered modality). Checked before any data is read."""
    from ..modalities import registered_modalities

    known = list(registered_modalities() if known is None else known)
    if "text" not in known:
        known.insert(0, "text")
    for flag, name in (("--query", query), ("--gallery", gallery)):
        if name not in known:
            raise InputError(f"{flag} {name!r}: unknown modality; give one of {', '.join(known)}")
    if query == gallery:
        raise InputError(f"--query and --gallery are both {query}: give two different modalities")


@dataclass
class _Plan:
    """One source split for evaluation: loader sources (each with the same media fields on every
    line), the text-only lines and the media fields found."""

    loads: list[str] = field(default_factory=list)
    texts: list[tuple[str, int | None]] = field(default_factory=list)
    fields: set[str] = field(default_factory=set)


def _plan_manifest(path: str, modalities: set[str] | None, tmp: str) -> _Plan:
    """A manifest's lines grouped by the media fields wanted (``modalities``; None: all), so that
    no batch mixes modalities: each group is written to its own manifest under ``tmp`` (absolute
    media paths) unless the whole manifest is one group already. Lines with no wanted media field
    but a caption are text-only rows (when text is wanted); the other lines hold nothing this
    evaluation uses. Nothing is decoded here."""
    import json
    import os

    from ..data.manifest import iter_jsonl, media_fields, resolve_media, validate_sample

    base = os.path.dirname(os.path.abspath(path))
    want_text = modalities is None or "text" in modalities
    groups: dict[tuple[str, ...], list[dict]] = {}
    plan, changed = _Plan(), False
    for where, rec in iter_jsonl(path):
        if not isinstance(rec, dict):
            raise InputError(f"{where}: a sample must be a JSON object, got {type(rec).__name__}")
        found = media_fields(rec)
        keep = tuple(k for k in found if modalities is None or k in modalities)
        changed |= keep != tuple(found)
        if not keep:
            if want_text and not found:  # a caption of its own (a class's prompt, a distractor)
                text, label = rec.get("text"), rec.get("label")
                if not isinstance(text, str) or not text:
                    raise InputError(f"{where}: a line without media needs a non-empty 'text'")
                if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
                    raise InputError(f"{where}: 'label' must be an integer, got {label!r}")
                plan.texts.append((text, label))
            continue
        validate_sample(rec, where)
        row = {k: v for k, v in rec.items() if k not in found or k in keep}
        for k in keep:
            row[k] = resolve_media(base, row[k])
        groups.setdefault(keep, []).append(row)
        plan.fields.update(keep)
    if len(groups) == 1 and not changed and not plan.texts:
        plan.loads.append(path)  # one kind of line: the manifest as it is
        return plan
    for i, rows in enumerate(groups.values()):
        part = os.path.join(tmp, f"part-{len(os.listdir(tmp)):04d}-{i}.jsonl")
        with open(part, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        plan.loads.append(part)
    return plan


def _is_manifest(source) -> bool:
    import os

    return isinstance(source, (str, os.PathLike)) and os.path.isfile(source) and not os.fspath(source).endswith(".tar")


def embed_sources(sources: Sequence[str], config, embed: Callable[[str, dict], torch.Tensor],
                  batch_size: int = 32, progress: bool | None = False,
                  modalities: Sequence[str] | None = None, require: Sequence[str] = ()) -> Embedded:
    """Embed every usable sample of ``sources`` (manifests or shards) in order with
    ``embed(modality, batch[modality]) -> [B, D]``, keeping each row's media identity, caption
    string and label. Every media field of a sample (any registered modality: a clip with its
    soundtrack gives a video row and an audio row) is embedded, or only those of ``modalities``
    (``"text"`` among them: the captions, else captions are not embedded).

    A manifest may mix lines of several modalities and lines with a caption only: its lines are
    batched by their media fields, and the caption-only lines become ``texts``. Unloadable
    samples are skipped and named in ``skipped``; a labelled and an unlabelled sample of one
    modality together are an error. ``require``: modalities that must have samples, checked
    before anything is decoded where every source is a manifest. ``progress``: a bar of embedded
    samples on stderr (``None``: only when stderr is a terminal)."""
    import tempfile

    from ..data.dataset import make_loader
    from ..modalities import Processor
    from ..progress import progress_bar

    wanted = None if modalities is None else set(modalities)
    want_text = wanted is None or "text" in wanted
    out = Embedded()
    parts: dict[str, list] = {}
    texts: list[tuple[str, int | None]] = []

    def on_skip(sample_id: str, reason: str) -> None:
        out.skipped.append(sample_id)

    with tempfile.TemporaryDirectory(prefix="onepeace-eval-") as tmp:
        loads: list = []
        found: set[str] | None = set()
        for src in sources:
            if _is_manifest(src):
                plan = _plan_manifest(src, wanted, tmp)
                loads += plan.loads
                texts += plan.texts
                if found is not None:
                    found |= plan.fields | ({"text"} if plan.texts or plan.fields else set())
            else:
                loads.append(src)
                found = None  # shards: known once read
        missing = [m for m in require if found is not None and m not in found]
        if missing:
            have = sorted(found or ()) or ["nothing usable"]
            raise InputError(f"no {missing[0]} samples in {list(sources)}; found {', '.join(have)}")
        with progress_bar(progress, desc="embedding", unit="sample") as bar:
            for src in loads:
                loader = make_loader(src, config, batch_size, 0, train=False, rank=0, world_size=1, on_skip=on_skip)
                for batch in loader:
                    labels = batch["label"].tolist() if "label" in batch else None
                    zt = embed("text", batch["text"]).float().cpu() if want_text else None
                    for m, items in batch["item"].items():  # every media field of the samples
                        zm = embed(m, batch[m]).float().cpu()
                        parts.setdefault(m, []).append((zm, zt, items, batch["caption"], labels))
                    out.rows += len(batch["caption"])
                    bar.update(len(batch["caption"]))
            if texts and want_text:
                tokenize = Processor(config).get("text")
                zs = [embed("text", tokenize([t for t, _ in texts[i : i + batch_size]])).float().cpu()
                      for i in range(0, len(texts), batch_size)]
                has = {lb is not None for _, lb in texts}
                if len(has) > 1:
                    raise InputError(f"some text-only lines of {list(sources)} have a 'label' and some do not; "
                                     "label all or none")
                out.texts = Rows(torch.cat(zs), [t for t, _ in texts],
                                 [lb for _, lb in texts] if has == {True} else None, media=False)
                out.rows += len(texts)
                bar.update(len(texts))
    for m, ps in parts.items():
        has = {p[4] is not None for p in ps}
        if len(has) > 1:
            raise InputError(f"some {m} samples of {list(sources)} have a 'label' and some do not; label all or none")
        labels = [lb for p in ps for lb in p[4]] if has == {True} else None
        out.media[m] = Rows(torch.cat([p[0] for p in ps]), [i for p in ps for i in p[2]], labels)
        if want_text:
            out.captions[m] = Rows(torch.cat([p[1] for p in ps]), [c for p in ps for c in p[3]], labels, media=False)
    return out


def all_pairs(emb: Embedded, protocol: str = "auto") -> dict[str, dict]:
    """Each modality <-> text (the text-only lines join its captions) and every ordered pair of
    modalities (emergent, labels needed)."""
    out: dict[str, dict] = {}
    for m in emb.media:
        out.update(pair_metrics(emb.media[m], emb.captions[m], m, protocol=protocol, texts=emb.texts))
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

    Only the lines holding ``query`` or ``gallery`` are read, so one manifest may hold several
    modalities (and caption-only lines, which join the text side). Text pairs with the modality it
    captions; two non-text modalities need labels (relevance = same label), which is how emergent
    pairs such as audio -> image are scored. Both names are checked against the model before any
    data is read.
    """
    check_pair(query, gallery, model.modality_names)

    def embed(name: str, batch: dict) -> torch.Tensor:  # captions and clips of mixed lengths skip their padding
        return model.embed_batch(name, batch, bucket=True)

    media = [m for m in (query, gallery) if m != "text"]
    emb = embed_sources(sources, model.config, embed, batch_size, progress, modalities=[query, gallery],
                        require=media)
    if on_skip is not None and emb.skipped:
        on_skip(emb.skipped, emb.rows)
    if not emb.rows:
        raise InputError(f"no sample of {list(sources)} could be used ({len(emb.skipped)} skipped)")
    for name in media:
        if name not in emb.media:
            raise InputError(f"no {name} samples in {list(sources)} could be used; found {list(emb.media) or 'none'}")
    if "text" in (query, gallery):
        m = gallery if query == "text" else query
        out = pair_metrics(emb.media[m], emb.captions[m], m, protocol=protocol, texts=emb.texts)[f"{query}->{gallery}"]
    else:
        out = retrieval_metrics(emb.media[query], emb.media[gallery], protocol=protocol)
    out["skipped"] = len(emb.skipped)
    return out
