"""Serve a model and its index over HTTP: ``onepeace serve DB --model MODEL``.

:func:`create_app` (in :mod:`.app`) builds the FastAPI application: OpenAI-compatible
``/v1/embeddings`` for text, images and audio, ``/search`` over an index, ``/media/{id}``, ``/health``
and a web page at ``/``. FastAPI and uvicorn are imported only here, never by ``import onepeace``
(``pip install onepeace[serve]``).

Its rooms: :mod:`.routes` (one module per endpoint group, each an ``APIRouter``), :mod:`.state`
(``ServeState``: the models, index, limits and key the handlers receive), :mod:`.schemas` (the
request and answer bodies), :mod:`.inputs` (base64 files, search fields), :mod:`.errors` (the JSON
errors), :mod:`.limits` (size, time and load bounds, metrics per request), :mod:`.batching`,
:mod:`.metrics` and :mod:`.server` (uvicorn in a thread).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MicroBatcher", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "MicroBatcher":
        from .batching import MicroBatcher

        return MicroBatcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
