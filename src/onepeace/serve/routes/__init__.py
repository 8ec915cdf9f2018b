"""The server's endpoints, one module per group, each an ``APIRouter`` whose handlers take the
:class:`~onepeace.serve.state.ServeState` explicitly (a FastAPI dependency), so that a test can call
them as plain coroutines:

* :mod:`.embeddings` — ``POST /v1/embeddings`` and ``/embeddings`` (:func:`~.embeddings.create_embeddings`)
* :mod:`.models` — ``GET /v1/models``
* :mod:`.search` — ``POST /search`` (:func:`~.search.search_request`, :func:`~.search.run_search`)
* :mod:`.media` — ``GET /media/{id}``
* :mod:`.health` — ``GET /health`` (:func:`~.health.health_status`) and ``GET /metrics``
* :mod:`.page` — ``GET /`` and ``/static``
"""

from __future__ import annotations

from fastapi import APIRouter

from ..state import ServeState
from . import embeddings, health, media, models, page, search


def routers(state: ServeState) -> list[APIRouter]:
    """The routers of an app serving ``state``, in the order their routes are matched (and listed
    in the OpenAPI schema)."""
    return [embeddings.router, models.router, search.make_router(state.file_modalities), media.router,
            health.router, page.router]
