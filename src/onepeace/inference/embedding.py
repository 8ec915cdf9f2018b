"""Embeddings of raw inputs (texts, files, bytes, arrays) with a model: bucketing, long inputs, fusion.

Every function takes the model (an :class:`~onepeace.model.onepeace.OnePeaceNetwork`, so also an
:class:`onepeace.OnePeace`) as its first argument; :class:`onepeace.OnePeace`'s ``embed``,
``encode_*`` and ``embed_fused`` call them. Rows come back as float32 on the CPU.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .. import progress as _progress  # progress_bar read at call time (tests replace it)
from ..errors import InputError, OnePeaceWarning
from ..modalities import get_modality
from ..model.onepeace import OnePeaceNetwork
from ..model.packing import embed_scheduled
from ..processing import split_companions
from ..processing.audio import check_long_audio
from ..processing.text import check_long_text, shorten

#: with bucketing, ``embed`` sorts up to this many batches' worth of items at a time
SORT_WINDOW = 8


def as_list(items: Any) -> list[Any]:
    """One item (a string, bytes, a path, or anything that is not a sequence) as a list of one."""
    if isinstance(items, (str, bytes, os.PathLike)) or not isinstance(items, Sequence):
        return [items]
    return list(items)


def batches(items: Sequence[Any], batch_size: int):
    """``items`` in slices of ``batch_size``."""
    if batch_size < 1:
        raise InputError("batch_size must be at least 1")
    for i in range(0, len(items), batch_size):
        yield items[i : i + batch_size]


def embed(model: OnePeaceNetwork, *positional: Any, batch_size: int = 16, normalize: bool = True,
          long_audio: str = "truncate", long_text: str = "truncate", progress: bool | None = False,
          bucket: bool = True, max_tokens: int | None = None,
          **inputs: Sequence[Any] | None) -> dict[str, torch.Tensor]:
    """Embeddings per modality of ``model`` for raw ``inputs`` (``text=[...]``, ``image=[...]``...):
    what :meth:`onepeace.OnePeace.embed` returns (see there for every option)."""
    if positional:
        raise InputError(_positional_message(model, positional))
    check_long_audio(long_audio)
    check_long_text(long_text)
    given = {name: as_list(items) for name, items in inputs.items() if items is not None}
    if "text" in given and "text" in model.modality_names:
        _check_texts(model, given["text"], long_text)
    result = {}
    with torch.inference_mode(), _progress.progress_bar(progress, total=sum(map(len, given.values())), desc="embedding") as bar:
        for name, items in given.items():
            proc = model.processor.get(name)
            scheduled = bucket and model._schedulable(name)
            if (name == "audio" and long_audio == "chunk") or (name == "text" and long_text == "chunk"):
                result[name] = embed_chunked(model, proc, items, batch_size, normalize, scheduled, max_tokens, name=name)
                bar.update(len(items))
                continue
            rows = []
            for chunk in batches(items, batch_size * (SORT_WINDOW if scheduled else 1)):
                if scheduled:
                    rows.append(embed_sorted(model, name, proc(chunk), normalize, batch_size, max_tokens,
                                             bar.update).float().cpu())
                else:
                    rows.append(model.embed_batch(name, proc(chunk), normalize).float().cpu())
                    bar.update(len(chunk))
            result[name] = torch.cat(rows) if rows else torch.empty(0, model.config.dim)
    if not result:
        raise InputError("nothing to embed: pass text=, image= or audio=")
    return result


def encode_media(model: OnePeaceNetwork, modality: str, items: Sequence[Any] | Any, *, normalize: bool = True,
                 batch_size: int = 16, **options: Any) -> torch.Tensor:
    """Embeddings [N, D] of ``items`` of ``modality`` (see :meth:`onepeace.OnePeace.encode_media`)."""
    if not isinstance(modality, str) or modality not in model.modality_names:
        raise InputError(f"this model has no {modality} branch; it has {', '.join(model.modality_names)}")
    return embed(model, **{modality: items}, normalize=normalize, batch_size=batch_size, **options)[modality]


def embed_sorted(model: OnePeaceNetwork, name: str, batch: dict[str, torch.Tensor], normalize: bool,
                 batch_size: int, max_tokens: int | None, on_step=None) -> torch.Tensor:
    """A processed batch embedded without its padding (see :meth:`onepeace.OnePeace.embed`, ``bucket``)."""
    if max_tokens is None:
        max_tokens = batch_size * max(model.processor.get(name).lengths(batch))
    return embed_scheduled(model, name, batch, normalize=normalize, max_tokens=max_tokens, on_step=on_step)


def _positional_message(model: OnePeaceNetwork, positional: tuple) -> str:
    first = positional[0]
    shown = first if isinstance(first, (str, bytes, os.PathLike)) or not isinstance(first, Sequence) else \
        (list(first)[:2] + ["..."] if len(first) > 2 else list(first))
    example = ", ".join(f"embed({m}=[...])" for m in model.modality_names)
    return (f"embed() takes its inputs by modality, not by position (got {str(shown)[:80]}): "
            f"name what they are, e.g. {example}")


def _check_texts(model: OnePeaceNetwork, texts: list[Any], long_text: str) -> None:
    """Warn about texts that are not what they seem: the name of a media file (embedded as the
    words of the name), or over the token limit under ``long_text="truncate"``. The warnings point
    at the caller of ``model.embed`` (this <- embed <- OnePeace.embed <- the caller)."""
    exts = {e.lower(): m for m in model.modality_names if m != "text"
            for e in getattr(get_modality(m), "file_extensions", ()) or ()}
    for t in texts:
        if isinstance(t, str) and len(t) < 4096 and "\n" not in t \
                and os.path.splitext(t)[1].lower() in exts and os.path.isfile(t):
            m = exts[os.path.splitext(t)[1].lower()]
            warnings.warn(f"the text {shorten(t)} is the name of an existing {m} file; it is embedded as text "
                          f"(the words of the name). To embed the file, pass it as {m}: embed({m}=[...])",
                          OnePeaceWarning, stacklevel=4)
            break
    if long_text != "truncate":
        return
    proc = model.processor.get("text")
    cap = getattr(proc, "context_length", None)
    if cap is None or not hasattr(proc, "count"):
        return
    long = [(t, n) for t in texts if isinstance(t, str) and len(t.encode("utf-8")) >= cap for n in [proc.count(t)] if n > cap]
    if long:
        t, n = long[0]
        more = f" (and {len(long) - 1} more text{'s' * (len(long) > 2)} over the limit)" if len(long) > 1 else ""
        warnings.warn(f"text {shorten(t)} is {n} tokens long; only its first {cap} are used (the model's "
                      f"limit){more}. To use all of it, average {cap}-token windows: embed/zeroshot "
                      "--long-text chunk (Python: long_text='chunk')", OnePeaceWarning, stacklevel=4)


def embed_chunked(model: OnePeaceNetwork, proc, items: list[Any], batch_size: int, normalize: bool,
                  bucket: bool = False, max_tokens: int | None = None, name: str = "audio") -> torch.Tensor:
    """Audio in 15 s windows (texts in windows of the token limit, ``name="text"``): up to
    ``batch_size`` windows (from any items) per forward pass (with ``bucket``, up to
    ``SORT_WINDOW * batch_size`` windows sorted by length, see :meth:`onepeace.OnePeace.embed`), each
    item's window embeddings averaged with their weights (seconds, tokens), then renormalised: one
    row per item (``long_audio="chunk"``). Timestamped windows, one row each, are
    :func:`onepeace.inference.moments.embed_windows`."""
    if batch_size < 1:
        raise InputError("batch_size must be at least 1")
    if not items:
        return torch.empty(0, model.config.dim)
    parts: list[list[tuple[torch.Tensor, float]]] = [[] for _ in items]
    pending: list[tuple[int, float, torch.Tensor]] = []

    def flush() -> None:
        batch = proc.collate([w for _, _, w in pending])
        if bucket:
            z = embed_sorted(model, name, batch, normalize, batch_size, max_tokens)
        else:
            z = model.embed_batch(name, batch, normalize)
        for (i, weight, _), row in zip(pending, z.float().cpu()):
            parts[i].append((row, weight))
        pending.clear()

    def combine(rows: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
        if len(rows) == 1:  # a clip within the cap: its truncate embedding, untouched
            return rows[0][0]
        z = sum(r.double() * w for r, w in rows) / sum(w for _, w in rows)
        return (F.normalize(z, dim=-1) if normalize else z).float()

    for i, item in enumerate(items):
        for w, weight in zip(*proc.windows(item, "chunk")):
            pending.append((i, weight, w))
            if len(pending) == batch_size * (SORT_WINDOW if bucket else 1):
                flush()
    if pending:
        flush()
    return torch.stack([combine(rows) for rows in parts])


def _fused_segments(model: OnePeaceNetwork, given: dict[str, list[Any]], i: int, batch_size: int,
                    companions: bool) -> dict[str, dict]:
    """The processed segments of items ``i`` to ``i + batch_size`` to fuse (with the companions)."""
    segments: dict[str, dict] = {}
    for m, items in given.items():
        proc = model.processor.get(m)
        extra = [c for c in getattr(proc, "companions", ()) if companions
                 and c in model.modality_names and c not in given]
        own, carried = split_companions(proc(items[i : i + batch_size], companions=extra) if extra
                                        else proc(items[i : i + batch_size]))
        segments[m] = own
        segments.update(carried)
    if len(segments) < 2:
        raise InputError(f"a fused embedding needs two segments or more; {', '.join(segments)} alone "
                         "is one (give two modalities, or a video with its sound on a model with an "
                         "audio branch)")
    return segments


@torch.inference_mode()
def embed_fused(model: OnePeaceNetwork, *, batch_size: int = 16, normalize: bool = True, companions: bool = True,
                fusion: str = "joint", progress: bool | None = False,
                **inputs: Sequence[Any] | None) -> torch.Tensor:
    """One embedding per item from one fused pass over its segments, [N, D] (float32, CPU): see
    :meth:`onepeace.OnePeace.embed_fused`."""
    given = {k: as_list(v) for k, v in inputs.items() if v is not None}
    if not given:
        raise InputError("nothing to embed: give the segments to fuse, e.g. video=[...] (with its sound), "
                         "or text=[...] and image=[...]")
    lengths = {len(v) for v in given.values()}
    if len(lengths) > 1:
        raise InputError("fused inputs need the same number of items per modality, got "
                         + ", ".join(f"{len(v)} {k}" for k, v in given.items()))
    n = lengths.pop()
    if batch_size < 1:
        raise InputError("batch_size must be at least 1")
    if fusion not in ("joint", "late"):
        raise InputError(f"fusion must be 'joint' (one sequence) or 'late' (separate passes), got {fusion!r}")
    rows = []
    with _progress.progress_bar(progress, total=n, desc="embedding") as bar:
        for i in range(0, n, batch_size):
            segments = _fused_segments(model, given, i, batch_size, companions)
            if fusion == "joint":
                out = model.encode(**segments)
                z = torch.stack([model.project(m, out.features[m], normalize=True) for m in segments]).mean(0)
            else:
                z = torch.stack([model.embed_batch(m, b, normalize=True) for m, b in segments.items()]).mean(0)
            rows.append((F.normalize(z, dim=-1) if normalize else z).float().cpu())
            bar.update(len(rows[-1]))
    return torch.cat(rows)


__all__ = ["SORT_WINDOW", "as_list", "batches", "embed", "embed_chunked", "embed_fused", "embed_sorted",
           "encode_media"]
