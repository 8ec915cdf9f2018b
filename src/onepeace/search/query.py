"""Queries: embed the inputs, combine them with weights, search, and score.

A composed query is the weighted sum of the L2-normalised embeddings of its inputs, renormalised:
``q = normalize(sum_i w_i * normalize(embed(x_i)))``. A negative weight subtracts a concept
("this picture, minus 'a dog'"). Inputs are taken in the order text, image, audio, then any other
modality; ``weights`` is one number per input in that order, or a dict per modality.

Scores: ``score`` is the cosine similarity of the query and the row (in [-1, 1]); ``prob`` is the
softmax of ``logit_scale * score`` over the returned rows (the model's learned temperature, as in
its contrastive training), i.e. how the probability mass of "which of these k rows is the match"
splits among them. ``prob`` depends on which rows were returned; thresholds belong on ``score``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from .fingerprint import model_fingerprint, model_name
from .moments import (
    DEFAULT_MARGIN,
    DEFAULT_PER_FILE,
    MomentsNotBuiltError,
    check_per_file,
    find_moments,
    has_moments,
)
from .moments import no_moments_message as _no_moments

ORDER = ("text", "image", "audio")


def _as_list(value: Any, modality: str) -> list[Any]:
    if value is None:
        return []
    if modality == "text":
        if isinstance(value, str):
            return [value]
    elif isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, (list, tuple)):
        return [value]  # one path, bytes, PIL image or array
    return list(value)


def query_inputs(text: Any = None, image: Any = None, audio: Any = None,
                 **others: Any) -> list[tuple[str, Any]]:
    """(modality, input) pairs in query order: text, image, audio, then other modalities."""
    given = {"text": text, "image": image, "audio": audio, **others}
    names = [m for m in ORDER if m in given] + sorted(m for m in given if m not in ORDER)
    return [(m, x) for m in names for x in _as_list(given[m], m)]


def resolve_weights(inputs: list[tuple[str, Any]],
                    weights: Mapping[str, float] | Sequence[float] | None) -> list[float]:
    """One weight per input: all 1 (None), one number per input in order, or per modality."""
    n = len(inputs)
    names = [m for m, _ in inputs]
    if weights is None:
        out = [1.0] * n
    elif isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise InputError(f"weights for {', '.join(unknown)} but the query has no {', '.join(unknown)} input "
                             f"(its inputs: {', '.join(names)})")
        out = [weights.get(m, 1.0) for m in names]
    else:
        out = list(weights)
        if len(out) != n:
            listed = ", ".join(f"{m} {_short(x)}" for m, x in inputs)
            raise InputError(f"{len(out)} weights for {n} query input{'s' if n != 1 else ''} ({listed}); "
                             "give one weight per input, in the order text, image, audio")
    try:
        out = [float(w) for w in out]
    except (TypeError, ValueError):
        raise InputError(f"weights must be numbers, got {list(weights) if weights is not None else None}") from None
    if not all(math.isfinite(w) for w in out):
        raise InputError(f"weights must be finite numbers, got {out}")
    return out


def _short(x: Any, n: int = 30) -> str:
    from ..processing.inputs import describe

    s = repr(x) if isinstance(x, str) else describe(x)
    return s if len(s) <= n else s[: n - 1] + "…"


def compose(model: Any, *, text: Any = None, image: Any = None, audio: Any = None,
            weights: Mapping[str, float] | Sequence[float] | None = None, **other_modalities: Any) -> np.ndarray:
    """The query vector (float32 [dim], unit length) of the weighted inputs; see the module doc.

    Each of ``text``, ``image``, ``audio`` (and other modalities of the model) is one input or a
    list of inputs (paths, bytes, PIL images, arrays, as ``model.embed`` takes)."""
    inputs = query_inputs(text, image, audio, **other_modalities)
    if not inputs:
        raise InputError("nothing to search for: give a text, an image or an audio query (or several)")
    w = resolve_weights(inputs, weights)
    grouped: dict[str, list[Any]] = {}
    for m, x in inputs:
        grouped.setdefault(m, []).append(x)
    emb = model.embed(**grouped)
    seen: dict[str, int] = {}
    total = np.zeros(int(model.config.dim), dtype=np.float64)
    for (m, _), weight in zip(inputs, w):
        i = seen.get(m, 0)
        seen[m] = i + 1
        z = emb[m][i].double().numpy()
        total += weight * z / max(np.linalg.norm(z), 1e-12)
    norm = float(np.linalg.norm(total))
    if not math.isfinite(norm) or norm < 1e-6:
        raise InputError("the weighted query inputs cancel out (their sum is zero); change the weights")
    return (total / norm).astype(np.float32)


def model_scale(model: Any) -> float | None:
    """The model's learned temperature as a multiplier (exp(logit_scale), clamped to [1, 100]), or
    None for a model without one."""
    if getattr(model, "logit_scale", None) is None:
        return None
    return float(model.logit_scale_exp().detach())


def scores_to_probs(scores: Sequence[float], logit_scale: float) -> list[float]:
    """Softmax of ``logit_scale * score`` over the given scores (``logit_scale`` is the multiplier,
    e.g. :func:`model_scale`; 1/0.07 ~ 14.3 at initialisation, up to 100 once trained)."""
    s = np.asarray(list(scores), dtype=np.float64)
    if s.size == 0:
        return []
    z = float(logit_scale) * s
    z = np.exp(z - z.max())
    return (z / z.sum()).tolist()


def search(index: Any, model: Any, *, text: Any = None, image: Any = None, audio: Any = None,
           weights: Mapping[str, float] | Sequence[float] | None = None, modality: str | None = None,
           k: int = 10, where: str | None = None, exact: bool | None = None, filter: Any = None,
           moments: bool = False, per_file: int | None = None, **other_modalities: Any) -> list[dict[str, Any]]:
    """Embed and compose the query with ``model`` and search ``index``: hits best first, each a
    row (id, modality, uri, text, metadata) with ``score`` (cosine) and ``prob`` (softmax of the
    temperature-scaled scores over the hits; None when the model has no temperature). ``where``
    is a raw SQL filter (local use), ``filter`` a structured one (see ``store.compile_filter``).

    ``moments=True`` searches the time ranges of long audio and video instead (see
    :func:`search_moments`; ``per_file``: ranges per file, default 1)."""
    if moments:
        return search_moments(index, model, text=text, image=image, audio=audio, weights=weights, modality=modality,
                              k=k, where=where, exact=exact, filter=filter,
                              per_file=DEFAULT_PER_FILE if per_file is None else per_file, **other_modalities)
    if per_file is not None:
        raise InputError("per_file applies to a moment search (moments=True)")
    index.check_model(model_fingerprint(model), model_name(model))
    vector = compose(model, text=text, image=image, audio=audio, weights=weights, **other_modalities)
    hits = index.search(vector, k=k, modality=modality, where=where, exact=exact,
                        **({"filter": filter} if filter is not None else {}))
    _add_probs(model, hits)
    return hits


def search_moments(index: Any, model: Any, *, text: Any = None, image: Any = None, audio: Any = None,
                   weights: Mapping[str, float] | Sequence[float] | None = None, modality: str | None = None,
                   k: int = 10, per_file: int = DEFAULT_PER_FILE, margin: float = DEFAULT_MARGIN,
                   where: str | None = None, exact: bool | None = None, filter: Any = None,
                   **other_modalities: Any) -> list[dict[str, Any]]:
    """The best time ranges in the long audio and video of ``index`` for the composed query
    (:func:`onepeace.search.moments.find_moments`): hits best first, each with ``uri``, ``start``,
    ``end`` (seconds), ``score``, ``prob``, the file's ``id`` (= ``file_id``), ``modality``,
    ``name``, ``text``, ``metadata``; at most ``per_file`` ranges of one file. An index without
    moments raises :class:`~onepeace.search.moments.MomentsNotBuiltError` (an InputError) saying
    how to build them."""
    index.check_model(model_fingerprint(model), model_name(model))
    check_per_file(per_file)
    if not has_moments(index):  # said before anything is embedded
        raise MomentsNotBuiltError(_no_moments(index))
    vector = compose(model, text=text, image=image, audio=audio, weights=weights, **other_modalities)
    hits = find_moments(index, vector, k=k, per_file=per_file, margin=margin, modality=modality, where=where,
                        filter=filter, exact=exact)
    _add_probs(model, hits)
    return hits


def _add_probs(model: Any, hits: list[dict[str, Any]]) -> None:
    scale = model_scale(model)
    probs = scores_to_probs([h["score"] for h in hits], scale) if scale is not None else [None] * len(hits)
    for h, p in zip(hits, probs):
        h["prob"] = p
