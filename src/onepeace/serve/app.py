"""The HTTP service: an OpenAI-compatible embedding API, a search API over an index, and a web page.

``create_app(model, index)`` returns a FastAPI application (``onepeace serve`` runs it with uvicorn):

* ``POST /v1/embeddings`` (also ``/embeddings``) — OpenAI's request and response. ``input`` is a string or a list of
  strings; ``modality`` (``text`` by default, or ``image``, ``audio``, any branch of the model)
  says what they are: texts, or base64 / ``data:`` URIs of files, the convention of the
  OpenAI-compatible multimodal embedding servers (infinity). ``encoding_format`` float or base64;
  ``usage`` counts the text tokens the model reads (images and audio count 0).
* ``POST /search`` — a composed query (one text or several, image and/or audio, weights in the
  order text(s), image, audio as ``onepeace search`` composes them, target modality, ``k``, a
  structured ``filter``; raw SQL ``where`` is refused) as JSON (files as base64 / data URIs) or
  multipart form data (files as uploads) → ``{"schema_version": 1, "hits": [...]}`` (``results``:
  the same list, deprecated), each with ``score``, ``prob`` and a ``media_url``.
* ``GET /media/{id}`` — the indexed file of an item, looked up by its id in the index (never a
  path from the request); ``?thumb=N`` gives an image at most N pixels on its longer side.
* ``GET /health``, ``GET /v1/models``, ``GET /`` (the page; ``/static/*`` its script and style).

Without an index (``create_app(model)``, ``onepeace serve --model M``) the server serves
embeddings only: ``/search`` and ``/media`` answer 404 with a JSON error, the page says search is
off. No answer names a path of the server's disk: the model is its directory's name (or hub id),
the index its directory's name, a hit's file its name and ``metadata.source`` the name of the
folder or manifest it was indexed from.

Concurrent embeddings share forward passes (:mod:`.batching`). Every error is a JSON body
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status — 400 bad input, 401 a
missing or wrong API key, 403 a file outside the indexed folders, 404 unknown item, 408 over
``timeout_s``, 413 over ``max_request_bytes``, 503 (with ``Retry-After``) when the queue or the
in-flight requests are at their bounds — and never a traceback. ``GET /metrics``: Prometheus.

The endpoints live in :mod:`.routes` (one module per group); what their handlers share — the
models, the index, the limits — in :class:`~.state.ServeState`, which ``create_app`` builds and the
handlers receive explicitly, so that a test can call them without HTTP.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from .errors import RETRY_AFTER_S, ServeError, error_response, install_error_handlers
from .inputs import decode_base64_input, decode_media
from .limits import LimitsMiddleware
from .routes import routers
from .routes.page import STATIC_DIR, static_files
from .routes.search import embed_all
from .schemas import SEARCH_SCHEMA_VERSION, EmbeddingRequest, SearchHit, SearchRequest, SearchResponse
from .server import ServerThread, head_deadline_protocol
from .state import Limits, ServeState, public_name

__all__ = ["RETRY_AFTER_S", "SEARCH_SCHEMA_VERSION", "STATIC_DIR", "EmbeddingRequest", "SearchHit", "SearchRequest",
           "SearchResponse", "ServeError", "ServeState", "ServerThread", "create_app", "decode_base64_input",
           "decode_media", "embed_all", "error_response", "head_deadline_protocol", "public_name"]


def create_app(
    model: Any,
    index: Any = None,
    *,
    api_key: str | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_request_bytes: int = 16 * 1024 * 1024,
    timeout_s: float = 30.0,
    max_inputs: int = 256,
    max_text_chars: int = 8192,
    max_k: int = 200,
    model_name: str | None = None,
    warmup: bool = False,
    max_queue: int | None = 1024,
    max_in_flight: int | None = 256,
    model_load_s: float | None = None,
) -> FastAPI:
    """The FastAPI application serving ``model`` (an ``OnePeace``) and, if given, ``index`` (an
    ``onepeace.search.Index`` built with that model) — see the module docstring for the endpoints.

    ``api_key``: require ``Authorization: Bearer <key>`` on the API (the page and /health stay
    open). ``max_batch`` / ``max_wait_ms``: the micro-batcher's forward-pass size and collection
    window (``max_batch=1``: one request at a time). ``max_request_bytes`` and ``timeout_s`` bound
    each request (413 / 408); ``max_inputs`` the inputs of one embeddings request, ``max_text_chars``
    one text (the model reads its first 70 tokens), ``max_k`` the hits of one search.
    ``warmup``: at start-up, run one small input of each modality through the model (its first
    forward passes are slow), so that the first request is answered at full speed.
    ``max_queue``: most inputs waiting for a forward pass, ``max_in_flight``: most requests
    served at once (None: unbounded); past either, 503 with ``Retry-After`` at once.
    ``model_load_s``: how long loading the model took, for ``/metrics``.
    ``model`` may also be a dict name -> model (several models, the first the default).
    """
    limits = Limits(max_request_bytes=int(max_request_bytes), timeout_s=float(timeout_s), max_inputs=max_inputs,
                    max_text_chars=max_text_chars, max_k=max_k, max_in_flight=max_in_flight)
    state = ServeState.build(model, index, model_name=model_name, max_batch=max_batch, max_wait_ms=max_wait_ms,
                             max_queue=max_queue, model_load_s=model_load_s, limits=limits, api_key=api_key,
                             warmup=warmup)
    app = FastAPI(title="onepeace", version=_version(), lifespan=state.lifespan,
                  description="ONE-PEACE embeddings (OpenAI-compatible) and search over an index of images, audio and text")
    state.attach(app)
    install_error_handlers(app)
    app.add_middleware(LimitsMiddleware, max_bytes=limits.max_request_bytes, timeout_s=limits.timeout_s,
                       max_in_flight=max_in_flight, metrics=state.metrics)
    for router in routers(state):
        app.include_router(router)
    app.mount("/static", static_files(), name="static")
    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("onepeace")
    except Exception:  # noqa: BLE001
        return "0"
