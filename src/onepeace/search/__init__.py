"""Search a collection: a LanceDB index over images, audio and text, and composed queries.

``Index`` (:mod:`.store`) is one embedded LanceDB table; :mod:`.ingest` builds it from folders,
JSONL manifests and text files (incrementally, in committed batches); :mod:`.query` embeds and
combines query inputs and turns scores into probabilities. LanceDB is imported only when an index
is opened, so ``import onepeace`` stays light (``pip install onepeace[search]``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Index", "IndexNotFoundError", "ModelMismatchError", "SearchIndexError", "build", "compose",
           "scores_to_probs", "search", "search_moments"]

_LAZY = {
    "Index": "store", "SearchIndexError": "store", "IndexNotFoundError": "store", "ModelMismatchError": "store",
    "build": "ingest", "compose": "query", "scores_to_probs": "query", "search": "query",
    "search_moments": "query",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
