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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import math
import mimetypes
import os
import re
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi import Path as FastAPIPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import InputError, OnePeaceError
from .batching import MicroBatcher, QueueFullError

log = logging.getLogger("onepeace.serve")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
#: an item id in the index: a hex digest (sha1 is 40 characters)
_ID = re.compile(r"[0-9a-f]{16,64}")
_DATA_URI = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          405: "invalid_request_error", 408: "timeout_error", 413: "request_too_large", 415: "invalid_request_error",
          500: "server_error", 503: "service_unavailable"}
#: seconds a client shed with 503 is told to wait (``Retry-After``)
RETRY_AFTER_S = 1
#: paths that are never shed (an operator's probes must answer under overload)
_UNSHED = ("/health", "/metrics")


# ---------------------------------------------------------------------------------------- errors
class ServeError(StarletteHTTPException):
    """An error answered as JSON: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(status, message, headers)
        self.message, self.param, self.code = message, param, code


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable line for pydantic's list of errors (the first few of them)."""
    parts, param = [], None
    for err in exc.errors()[:3]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            where = f" at character {loc[0]}" if loc else ""
            return f"the request body is not valid JSON ({ctx.get('error', 'decode error')}{where})", None
        field = ".".join(loc) or "body"
        param = param or field
        parts.append(f"{field}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts), param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError):
        return error_response(exc.status_code, exc.message, param=exc.param, code=exc.code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, param=param)

    from ..search.store import StorageUnavailableError

    @app.exception_handler(StorageUnavailableError)
    async def _storage_down(request: Request, exc: StorageUnavailableError):
        log.warning("%s", exc)
        return error_response(503, str(exc), code="storage_unavailable", headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(OnePeaceError)
    async def _onepeace_error(request: Request, exc: OnePeaceError):
        redact = getattr(request.app.state, "redact", None) or (lambda m: m)
        return error_response(400, redact(str(exc)))

    @app.exception_handler(QueueFullError)
    async def _queue_full(request: Request, exc: QueueFullError):
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.rejected.labels("queue_full").inc()
        return error_response(503, str(exc), code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(ClientDisconnect)
    async def _disconnect(request: Request, exc: ClientDisconnect):
        return error_response(400, "the client disconnected before sending the whole request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details")


# ------------------------------------------------------------------------- size and time limits
class _LimitsMiddleware:
    """Bounds every HTTP request: a body over ``max_bytes`` is refused with 413 (from its
    Content-Length before reading, or as soon as the streamed bytes pass it), and a request that
    has not started its response within ``timeout_s`` (reading the body included) gets 408 and its
    work is cancelled (its queued embedding jobs with it). A response sent before the request's
    body has fully arrived (a 408 on a slow upload, an early error) closes the connection, so a
    client dribbling its body (slow loris) cannot hold it past the deadline. Sending a started response (a media
    file) has no deadline. At most ``max_in_flight`` requests are served at once: the next gets
    503 with ``Retry-After`` at once (``/health`` and ``/metrics`` are never refused). Every
    request is counted in ``metrics`` (route, status, latency) when given."""

    def __init__(self, app: Callable, max_bytes: int, timeout_s: float, max_in_flight: int | None = None,
                 metrics: Any = None):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.max_in_flight, self.metrics = max_in_flight, metrics
        self.in_flight = 0

    async def _reply(self, send: Callable, status: int, message: str, code: str | None = None,
                     headers: dict[str, str] | None = None) -> None:
        response = error_response(status, message, code=code, headers=headers)
        await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        status = [0]

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                if self.metrics is not None:
                    route = getattr(scope.get("route"), "path", None) or _route_of(scope.get("path", ""))
                    self.metrics.observe_request(route, scope.get("method", ""), status[0], loop.time() - t0)
            await send(message)

        shed = scope.get("path") not in _UNSHED
        if shed and self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            if self.metrics is not None:
                self.metrics.rejected.labels("too_many_requests").inc()
            await self._reply(counted_send, 503, f"the server is busy ({self.in_flight} requests in progress, at "
                                                 f"most {self.max_in_flight}: --max-in-flight); retry in a moment",
                              code="overloaded", headers={"Retry-After": str(RETRY_AFTER_S),
                                                          **({"Connection": "close"} if _has_body(scope) else {})})
            return
        self.in_flight += shed
        if self.metrics is not None:
            self.metrics.in_flight.inc()
        try:
            await self._limited(scope, receive, counted_send)
        finally:
            self.in_flight -= shed
            if self.metrics is not None:
                self.metrics.in_flight.dec()

    async def _limited(self, scope: dict, receive: Callable, send: Callable) -> None:
        too_large = (f"the request body is over the server's limit of {self.max_bytes:,} bytes "
                     "(--max-request-bytes); send smaller or fewer files")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await self._reply(send, 400, "the Content-Length header is not a number", headers={"Connection": "close"})
                return
            if declared > self.max_bytes:
                await self._reply(send, 413, too_large, headers={"Connection": "close"})
                return
        received = 0
        body_pending = [_has_body(scope)]  # until the body's last message arrives
        body_read = asyncio.Event()

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    body_pending[0] = False
                    body_read.set()
                if received > self.max_bytes:
                    raise ServeError(413, too_large)
            elif message["type"] == "http.disconnect":
                body_pending[0] = False
            return message

        started = asyncio.Event()

        async def tracked_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                started.set()
                if body_pending[0]:
                    message = {**message, "headers": _closing(message.get("headers") or [])}
            await send(message)

        async def hung_up() -> None:
            """Returns when the client disconnects after sending its whole body (uvicorn does not
            cancel the app then: without this, a queued request would keep its slot and its
            queued work until its deadline). Only for requests with a body: the app has read it
            (so this is the only reader left), and requests without one queue no work."""
            await body_read.wait()
            while (await receive())["type"] != "http.disconnect":
                pass

        task = asyncio.ensure_future(self.app(scope, limited_receive, tracked_send))
        waiter = asyncio.ensure_future(started.wait())
        watcher = asyncio.ensure_future(hung_up() if body_pending[0] else asyncio.Event().wait())
        try:
            done, _ = await asyncio.wait({task, waiter, watcher}, timeout=self.timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if watcher in done and not task.done() and not started.is_set():
                log.debug("client hung up before its answer: %s %s cancelled", scope.get("method"), scope.get("path"))
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                return
            if not done:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                if not started.is_set():
                    await self._reply(send, 408, f"the request took longer than the server's limit of "
                                                 f"{self.timeout_s:g} s (--timeout), its upload included; "
                                                 "send fewer or smaller inputs",
                                      headers={"Connection": "close"} if body_pending[0] else None)
                return
            await task
        finally:
            waiter.cancel()
            watcher.cancel()
            if not task.done():
                task.cancel()


def _has_body(scope: dict) -> bool:
    """Whether a request announces a body (a Content-Length above 0 or a Transfer-Encoding)."""
    headers = dict(scope.get("headers") or [])
    return headers.get(b"content-length", b"0").strip() not in (b"0", b"") or b"transfer-encoding" in headers


def _closing(headers: list) -> list:
    """Response headers that make uvicorn close the connection once the response is sent: the
    rest of a request body that has not arrived is never read, and a client dribbling it byte
    by byte would otherwise hold the connection open (each byte restarts the keep-alive timer)."""
    return [(k, v) for k, v in headers if k.lower() != b"connection"] + [(b"connection", b"close")]


_ROUTES = ("/", "/health", "/metrics", "/search", "/v1/embeddings", "/embeddings", "/v1/models")


def _route_of(path: str) -> str:
    """A metrics label for a path no route matched (shed before routing, or unknown): the route's
    template, never the raw path (its values would grow the label set without bound)."""
    if path in _ROUTES:
        return path
    if path.startswith("/media/"):
        return "/media/{item_id}"
    if path.startswith("/static/"):
        return "/static"
    return "other"


# ----------------------------------------------------------------------------- request decoding
def decode_base64_input(value: Any, modality: str, where: str) -> bytes:
    """The bytes of a base64 string or a ``data:`` URI; ``where`` names the input in errors."""
    if not isinstance(value, str):
        raise ServeError(400, f"{where}: a {modality} input must be a base64 string or a data: URI, "
                              f"got {type(value).__name__}", param=where)
    text = value.strip()
    if text.lower().startswith(("http://", "https://", "file:")):  # (base64 may start with "/": JPEG's "/9j/")
        raise ServeError(400, f"{where}: this server does not fetch URLs or read paths; send the {modality} "
                              "file itself as base64 or a data: URI (data:<type>;base64,...)", param=where)
    found = _DATA_URI.match(text)
    if found:
        kind = (found.group("type") or "").lower()
        if not found.group("b64"):
            raise ServeError(400, f"{where}: only base64 data: URIs are accepted (data:<type>;base64,...)", param=where)
        major = kind.split("/")[0]
        if major in ("image", "audio", "video", "text") and major != modality and modality in ("image", "audio", "video"):
            raise ServeError(400, f"{where}: a data: URI of type {kind} was sent as {modality}; set \"modality\" to "
                                  f"the kind of file you send", param=where)
        text = text[found.end():]
    text = re.sub(r"\s+", "", text)
    try:
        if "-" in text or "_" in text:
            data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        else:
            data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(400, f"{where}: not valid base64; send the {modality} file as base64 or a data: URI",
                         param=where) from None
    if not data:
        raise ServeError(400, f"{where}: the {modality} input is empty", param=where)
    return data


def decode_media(model: Any, modality: str, data: bytes, name: str) -> Any:
    """Decode one uploaded file for ``modality`` (raises InputError naming ``name`` if it cannot)
    with its processor's ``load``: images become RGB PIL images, audio a waveform at the model's
    rate, videos their sampled frames (and sound) — what the processors would make of the bytes,
    so embedding the decoded input gives the same rows. A modality whose processor has no
    ``load`` gets the bytes, decoded by its processor inside the batch (a failure there fails
    only this request: the batcher retries the batch's requests one by one)."""
    from ..processing.inputs import NamedBytes

    load = getattr(model.processor.get(modality), "load", None)
    return data if load is None else load(NamedBytes(data, name))


# ------------------------------------------------------------------------------- request models
class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, plus ``modality`` for images and audio (base64 or data URIs)."""

    model_config = ConfigDict(extra="ignore")

    input: Any = Field(..., description="a string or a list of strings: texts, or base64/data: URIs of files")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    modality: str = Field("text", description="text, image, audio (or another branch of the model)")


class SearchRequest(BaseModel):
    """A composed query: at least one of text / image / audio (files as base64 or data: URIs), or
    a file of any other modality of the model under its name (``"video": ...``)."""

    model_config = ConfigDict(extra="allow")

    text: str | list[str] | None = None
    image: str | None = None
    audio: str | None = None
    weights: dict[str, float] | list[float] | None = None
    modality: str | None = Field(None, description="the modality of the results (default: all)")
    model: str | None = Field(None, description="the served model to embed the query with (GET /v1/models); only "
                                                "the model that built the index can search it (default: that one)")
    k: int = 10
    filter: dict[str, Any] | None = Field(
        None, description="a structured filter: {\"column\": C, \"op\": OP, \"value\": V} with C one of id, modality, "
                          "text, name and OP one of eq, ne, in, not_in, contains, starts_with, ends_with; combined with "
                          "{\"and\": [...]}, {\"or\": [...]}, {\"not\": {...}}. Raw SQL (a \"where\" key) is refused.",
        examples=[{"and": [{"column": "text", "op": "contains", "value": "dog"},
                           {"column": "name", "op": "ends_with", "value": ".jpg"}]}])


#: the version of the search result schema (``{"schema_version", "hits": [...]}``), shared with
#: ``onepeace search --json``
SEARCH_SCHEMA_VERSION = 1


class SearchHit(BaseModel):
    """One hit: the fields ``onepeace search --json`` prints too (id, modality, text, metadata,
    score, prob), plus the file's name and URLs instead of its path on the server."""

    id: str
    modality: str
    text: str = ""
    metadata: dict[str, Any] = {}
    score: float = Field(..., description="cosine similarity of the query and the row, in [-1, 1]")
    prob: float | None = Field(None, description="softmax of the temperature-scaled scores over the hits")
    name: str = ""
    media_url: str | None = None
    media_type: str | None = None
    thumb_url: str | None = None


class SearchResponse(BaseModel):
    """The answer of /search: ``hits`` best first (the name ``onepeace search --json`` uses).
    ``results`` holds the same list under its old name, kept for a deprecation period."""

    schema_version: int = SEARCH_SCHEMA_VERSION
    hits: list[SearchHit]
    results: list[SearchHit] = Field(..., deprecated=True, description="deprecated: the same list as hits")
    k: int
    modality: str | None = None
    inputs: list[str]
    took_ms: float
    model: str | None = Field(None, description="the served model that embedded the query")


# ------------------------------------------------------------------------------------ the model
class _Embedded:
    """The model as query.compose sees it, its ``embed`` answering with rows already computed
    through the micro-batcher (awaited by the request's task, so a request's deadline or its
    client's disconnect cancels its queued jobs, and no thread waits on the batcher)."""

    def __init__(self, model: Any, rows: dict[str, np.ndarray]):
        self._model, self._rows = model, rows

    def embed(self, **given: Any) -> dict[str, Any]:
        import torch

        out = {}
        for name, items in given.items():
            if items is None:
                continue
            n = len(items) if isinstance(items, (list, tuple)) else 1
            rows = self._rows[name]
            if rows.shape[0] != n:
                raise RuntimeError(f"{n} {name} inputs but {rows.shape[0]} rows were embedded")
            out[name] = torch.from_numpy(rows)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


async def embed_all(batcher: MicroBatcher, grouped: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """Each modality's inputs through the batcher, awaited together: if one job is refused (the
    queue is full) or the awaiting task is cancelled, the jobs already queued are cancelled."""
    futures: dict[str, Any] = {}
    try:
        for name, items in grouped.items():
            futures[name] = batcher.submit(name, items)
        waiting = {name: asyncio.wrap_future(f) for name, f in futures.items()}
        return {name: await w for name, w in waiting.items()}
    finally:
        for f in futures.values():
            f.cancel()  # a no-op on a finished job


def _served_name(model: Any) -> str:
    """The model's name as the server knows it (a local path, a hub id or ``onepeace``)."""
    from ..search.fingerprint import IN_MEMORY, model_name

    name = model_name(model)
    return "onepeace" if name == IN_MEMORY else name


def public_name(name: str) -> str:
    """What the API calls a model or index: a local path becomes its last component (the server's
    disk layout is not the client's business); a hub id (``org/name``) stays as it is."""
    if not name:
        return name
    if os.path.isabs(name) or name.startswith(("." + os.sep, ".." + os.sep, "~")) or os.path.exists(name):
        return os.path.basename(os.path.normpath(os.path.expanduser(name))) or name
    return name


def _redactor(paths: list[str]) -> Callable[[str], str]:
    """A function replacing each of ``paths`` (absolute, longest first) in a message by its last
    component: error messages from the library name files the client must not see."""
    spelled = sorted({os.path.normpath(os.path.abspath(p)) for p in paths if p}, key=len, reverse=True)

    def redact(message: str) -> str:
        for p in spelled:
            if p in message:
                message = message.replace(p, os.path.basename(p) or "<server>")
        return message

    return redact


class _Served:
    """One model a server serves: its names, modalities and micro-batcher (each model has its own
    worker and queue), and its fingerprint (which index it may search)."""

    def __init__(self, label: str | None, model: Any, several: bool, **batching: Any):
        from ..modalities import get_modality

        model.eval()
        self.model = model
        self.known = _served_name(model)
        self.name = label or public_name(self.known)
        self.aliases = {self.name, self.known, public_name(self.known), os.path.basename(self.known.rstrip("/"))}
        if not several:
            self.aliases.add("onepeace")
        self.modalities = list(model.modality_names)
        self.dim = int(model.config.dim)
        #: modality -> the file name extensions its processor reads (the page's uploads, the form's fields)
        self.file_types = {m: list(get_modality(m).file_extensions) for m in self.modalities
                           if get_modality(m).file_extensions}
        self.file_modalities = set(self.file_types)
        #: modalities whose files have a still to show (images, the middle frame of a video)
        self.thumbs = {m for m in self.file_types if hasattr(model.processor.get(m), "thumbnail")}
        self._fingerprint: str | None = None

        def embed_rows(modality: str, items: list[Any]) -> np.ndarray:
            return model.embed(**{modality: items}, batch_size=max(1, len(items)))[modality].numpy()

        self.batcher = MicroBatcher(embed_rows, **batching)
        if self.precision == "int8":
            log.warning("serving an int8 model: its activations are quantised per forward pass, so a served row "
                        "depends on the other requests in its micro-batch; serve fp32 or bf16 for batch-invariant "
                        "rows")

    @property
    def precision(self) -> str | None:
        return getattr(self.model, "precision", None)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from ..search.fingerprint import model_fingerprint

            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint


def _merged_snapshot(batchers: list[MicroBatcher]) -> dict[str, Any]:
    """The batching counters of one batcher, or their sums over several models' batchers."""
    snaps = [b.snapshot() for b in batchers]
    if len(snaps) == 1:
        return snaps[0]
    out: dict[str, Any] = {key: sum(snap[key] for snap in snaps) for key in snaps[0]}
    out["largest_batch"] = max(snap["largest_batch"] for snap in snaps)
    out["mean_batch"] = round(out["items"] / out["batches"], 2) if out["batches"] else 0.0
    return out


# ------------------------------------------------------------------------------------- the app
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
    """
    from .metrics import make_metrics

    given = list(model.items()) if isinstance(model, dict) else [(model_name, model)]
    if not given:
        raise InputError("create_app: no model to serve")
    batchers: list[MicroBatcher] = []
    first_load = next((getattr(m, "load_seconds", None) for _, m in given), None)
    metrics = make_metrics(lambda: sum(b.depth for b in batchers),
                           model_load_s if model_load_s is not None else first_load)
    served = [_Served(label, m, len(given) > 1, max_batch=max_batch, max_wait_ms=max_wait_ms,
                      max_queue=max_queue, on_batch=metrics.observe_batch if metrics is not None else None)
              for label, m in given]
    batchers.extend(s.batcher for s in served)
    by_alias: dict[str, _Served] = {}
    for s in served:  # the names given first, then the other spellings where still free
        by_alias.setdefault(s.name, s)
    for s in served:
        for alias in sorted(s.aliases):
            by_alias.setdefault(alias, s)
    by_alias.setdefault("onepeace", served[0])
    default = served[0]
    #: the served model that built the index (its fingerprint), which searches it by default
    index_model: _Served | None = None
    if index is not None:
        index_model = next((s for s in served if s.fingerprint() == index.fingerprint), None)
        if index_model is None:
            from ..search.store import ModelMismatchError

            raise ModelMismatchError(
                f"no served model built the index {getattr(index, 'path', '')} (it was built with "
                f"{getattr(index, 'model_name', '') or '?'}, fingerprint {index.fingerprint[:12]}); serve that model")
    # the default model's state, as the handlers name it (a request for another model rebinds them)
    model, name = default.model, default.name
    modalities, dim, file_types = default.modalities, default.dim, default.file_types
    file_modalities = set().union(*(s.file_modalities for s in served))
    batcher = default.batcher

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for s in served:
            s.batcher.start()
        if warmup:
            for s in served:
                await run_in_threadpool(_warm_up, s.batcher, s.modalities)
        yield
        for s in served:
            s.batcher.close()

    app = FastAPI(title="onepeace", version=_version(), lifespan=lifespan,
                  description="ONE-PEACE embeddings (OpenAI-compatible) and search over an index of images, audio and text")
    app.state.model, app.state.index, app.state.batcher = model, index, batcher
    app.state.timeout_s = float(timeout_s)  # the request heads' deadline too (head_deadline_protocol)
    app.state.metrics, app.state.models = metrics, {s.name: s.model for s in served}
    app.state.redact = _redactor([*(s.known for s in served if os.path.exists(s.known)),
                                  *(str(getattr(s.model, "source_dir", "") or "") for s in served),
                                  str(getattr(index, "path", "") or ""),
                                  str(getattr(index, "model_name", "") or "")
                                  if os.path.isabs(str(getattr(index, "model_name", "") or "")) else ""])

    def precision() -> str | None:
        return default.precision

    def pick(requested: str | None) -> _Served:
        """The served model a request names (OpenAI's ``model`` field; None: the default)."""
        if requested is None:
            return default
        if not isinstance(requested, str) or requested not in by_alias:
            raise ServeError(404, f"model {requested!r} is not served here; this server serves "
                                  f"{', '.join(repr(s.name) for s in served)} (GET /v1/models)",
                             param="model", code="model_not_found")
        return by_alias[requested]

    def pick_for_search(requested: str | None) -> _Served:
        """The model to search the index with: the one that built it (its fingerprint); another
        named model is refused with 400, naming the index's."""
        assert index_model is not None
        if requested is None:
            return index_model
        s = pick(requested)
        if s is not index_model:
            raise ServeError(400, f"model: the index was built with the model {index_model.name!r}, not "
                                  f"{s.name!r} (their fingerprints differ); search it with \"model\": "
                                  f"\"{index_model.name}\" or leave model out", param="model",
                             code="model_mismatch")
        return s
    _install_error_handlers(app)
    app.add_middleware(_LimitsMiddleware, max_bytes=int(max_request_bytes), timeout_s=float(timeout_s),
                       max_in_flight=max_in_flight, metrics=metrics)

    async def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ServeError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def need_index() -> Any:
        if index is None:
            raise ServeError(404, "search is off: this server has no index and serves embeddings only "
                                  "(POST /v1/embeddings); start it with `onepeace serve DB` to search an index",
                             code="no_index")
        return index

    def check_modality(modality: str, param: str, modalities: list[str] = modalities) -> str:
        if not isinstance(modality, str) or modality not in modalities:
            raise ServeError(400, f"{param}: unknown modality {modality!r}; this model has {', '.join(modalities)}",
                             param=param)
        return modality

    # ------------------------------------------------------------------------------- embeddings
    @app.post("/v1/embeddings", dependencies=[Depends(authorize)])
    @app.post("/embeddings", dependencies=[Depends(authorize)], include_in_schema=False)
    async def embeddings(req: EmbeddingRequest):
        s = pick(req.model)
        model, name, modalities, dim, batcher = s.model, s.name, s.modalities, s.dim, s.batcher
        modality = check_modality(req.modality, "modality", modalities)
        items = req.input
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list):
            raise ServeError(400, "input: give a string or a list of strings", param="input")
        if not items:
            raise ServeError(400, "input: the list is empty; give at least one input", param="input")
        if len(items) > max_inputs:
            raise ServeError(413, f"input: {len(items)} inputs in one request; send at most {max_inputs} per request",
                             param="input")
        for i, x in enumerate(items):
            if not isinstance(x, str):
                what = "token ids are not accepted, send the text" if isinstance(x, (int, list)) else "not a string"
                raise ServeError(400, f"input[{i}]: {what}", param="input")
        if req.dimensions is not None and req.dimensions != dim:
            raise ServeError(400, f"dimensions: this model's embeddings have {dim} dimensions and cannot be "
                                  "shortened (it was not trained for it); leave dimensions out", param="dimensions")
        tokens = 0
        if modality == "text":
            proc = model.processor.get("text")
            for i, x in enumerate(items):
                if len(x) > max_text_chars:
                    raise ServeError(400, f"input[{i}]: {len(x):,} characters; at most {max_text_chars:,} (the model "
                                          f"reads only the first {getattr(proc, 'context_length', 70)} tokens)", param="input")

            def count() -> int:
                return sum(len(proc.encode(x)) for x in items)

            # long texts are tokenized off the event loop (short ones cost less than the thread hop)
            tokens = count() if sum(map(len, items)) < 4096 else await run_in_threadpool(count)
            decoded = items
        else:
            def decode_all() -> list[Any]:
                out = []
                for i, x in enumerate(items):
                    data = decode_base64_input(x, modality, f"input[{i}]")
                    out.append(decode_media(model, modality, data, f"input[{i}]"))
                return out

            decoded = await run_in_threadpool(decode_all)
        rows = await batcher.embed(modality, decoded)
        data = []
        for i, row in enumerate(rows):
            row = np.ascontiguousarray(row, dtype="<f4")
            value = base64.b64encode(row.tobytes()).decode() if req.encoding_format == "base64" else row.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        # a JSONResponse, not a dict: FastAPI's encoder would visit every float one by one
        return JSONResponse({"object": "list", "data": data, "model": name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        return {"object": "list", "data": [
            {"id": s.name, "object": "model", "created": 0, "owned_by": "onepeace", "modalities": s.modalities,
             "dimensions": s.dim, "precision": s.precision, "batch_invariant": s.precision != "int8",
             "precision_note": getattr(s.model, "serve_note", "") or None, "search": s is index_model,
             "default": s is default} for s in served]}

    # ----------------------------------------------------------------------------------- search
    async def parse_search(request: Request) -> tuple[SearchRequest, dict[str, bytes]]:
        """The query of a JSON or multipart /search request, with its files' bytes."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        files: dict[str, bytes] = {}
        if ctype == "multipart/form-data" or ctype == "application/x-www-form-urlencoded":
            form = await request.form(max_files=4, max_fields=32)
            fields: dict[str, Any] = {}
            for key, value in form.multi_items():
                if key not in SearchRequest.model_fields and key not in file_modalities and key != "where":
                    raise ServeError(400, f"unknown form field {key!r}; expected "
                                          f"{', '.join([*SearchRequest.model_fields, *sorted(file_modalities)])}",
                                     param=key)
                if hasattr(value, "read"):  # an uploaded file
                    if key not in ("image", "audio") and key not in file_modalities:
                        raise ServeError(400, f"{key}: a file was uploaded in a text field", param=key)
                    data = await value.read()
                    if not data:
                        raise ServeError(400, f"{key}: the uploaded file {value.filename or ''!r} is empty", param=key)
                    files[key] = data
                    fields[key] = None
                elif value != "" and key == "text" and "text" in fields:  # several texts, in order
                    fields["text"] = [*([fields["text"]] if isinstance(fields["text"], str) else fields["text"]), value]
                elif value != "":
                    fields[key] = value
            if "weights" in fields:
                fields["weights"] = _parse_weights(fields["weights"])
            if isinstance(fields.get("filter"), str):
                fields["filter"] = _parse_filter_field(fields["filter"])
            _refuse_where(fields)
            req = _validate_search(fields)
        elif ctype in ("application/json", ""):
            body = await request.body()
            try:
                payload = json.loads(body or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ServeError(400, f"the request body is not valid JSON ({e})") from None
            except RecursionError:
                raise ServeError(400, "the request body is JSON nested too deeply") from None
            if not isinstance(payload, dict):
                raise ServeError(400, "the request body must be a JSON object, e.g. {\"text\": \"a dog\", \"k\": 10}")
            _refuse_where(payload)
            req = _validate_search(payload)
        else:
            raise ServeError(415, f"unsupported Content-Type {ctype!r}: send application/json or multipart/form-data")
        unknown = sorted((req.model_extra or {}).keys() - file_modalities)
        if unknown:
            raise ServeError(400, f"unknown field {unknown[0]!r}; expected "
                                  f"{', '.join([*SearchRequest.model_fields, *sorted(file_modalities)])}",
                             param=unknown[0])
        for key in ("image", "audio", *sorted(req.model_extra or {})):  # files as base64 / data URIs
            value = getattr(req, key, None)
            if value is not None and key not in files:
                files[key] = decode_base64_input(value, key, key)
        return req, files

    @app.post("/search", dependencies=[Depends(authorize)], responses={200: {"model": SearchResponse}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": _search_body_schema(file_modalities)}}}})
    async def search(request: Request):
        from ..search import query as query_mod
        from ..search.store import compile_filter

        idx = need_index()
        req, files = await parse_search(request)
        s = pick_for_search(req.model)
        model, modalities, batcher, thumbs = s.model, s.modalities, s.batcher, s.thumbs
        if not 1 <= req.k <= max_k:
            raise ServeError(400, f"k: {req.k} is out of range; give 1 to {max_k}", param="k")
        if req.modality is not None:
            check_modality(req.modality, "modality", modalities)
        texts = [req.text] if isinstance(req.text, str) else list(req.text or [])
        if isinstance(req.text, list) and not texts:
            raise ServeError(400, "text: the list is empty; give one text or several", param="text")
        for i, t in enumerate(texts):
            if len(t) > max_text_chars:
                where = "text" if isinstance(req.text, str) else f"text[{i}]"
                raise ServeError(400, f"{where}: {len(t):,} characters; at most {max_text_chars:,}", param="text")
        inputs: dict[str, Any] = {}
        if texts:
            inputs["text"] = texts
        for key in files:
            check_modality(key, key, modalities)

        loop = asyncio.get_running_loop()
        t0 = loop.time()

        def decode() -> None:
            for key, data in files.items():
                inputs[key] = decode_media(model, key, data, f"{key} upload")

        if files:
            await run_in_threadpool(decode)
        if not inputs:
            raise ServeError(400, "the query is empty: give a text, an image or an audio clip (or several)")
        if req.filter is not None:  # refused before any work
            try:
                compile_filter(req.filter)
            except InputError as e:
                raise ServeError(400, str(e), param="filter") from None
        grouped: dict[str, list[Any]] = {}
        for m, x in query_mod.query_inputs(**inputs):
            grouped.setdefault(m, []).append(x)
        query_mod.resolve_weights(query_mod.query_inputs(**inputs), req.weights)  # bad weights: 400 before embedding
        # awaited here, not in a thread: the deadline (408) or a disconnect cancels the queued jobs
        rows = await embed_all(batcher, grouped)

        def run() -> list[dict]:
            return query_mod.search(idx, _Embedded(model, rows), weights=req.weights, modality=req.modality,
                                    k=req.k, filter=req.filter, **inputs)

        hits = await run_in_threadpool(run)
        took = round((loop.time() - t0) * 1000, 1)
        found = [_hit(h, thumbs) for h in hits]
        return JSONResponse({"schema_version": SEARCH_SCHEMA_VERSION, "hits": found, "results": found, "k": req.k,
                             "modality": req.modality, "inputs": sorted(inputs), "took_ms": took,
                             "model": s.name})

    # ------------------------------------------------------------------------------------ media
    @app.get("/media/{item_id}", dependencies=[Depends(authorize)])
    async def media(item_id: str = FastAPIPath(..., description="an item id, as /search returns it",
                                               examples=["0123456789abcdef0123456789abcdef01234567"]),
                    thumb: int | None = None):
        idx = need_index()
        model, thumbs = index_model.model, index_model.thumbs
        if not _ID.fullmatch(item_id):
            raise ServeError(400, f"not an item id: {item_id[:80]!r} (ids are hex digests, as /search returns them)",
                             param="item_id")
        if thumb is not None and not 16 <= thumb <= 2048:
            raise ServeError(400, f"thumb: {thumb} is out of range; give 16 to 2048 pixels", param="thumb")
        row = await run_in_threadpool(idx.get, item_id)
        if row is None:
            raise ServeError(404, f"no item {item_id} in the index")
        uri = row.get("uri") or ""
        if not uri:
            raise ServeError(404, f"item {item_id} is a {row.get('modality', 'text')} item with no file")
        if not os.path.isfile(uri):
            raise ServeError(404, f"the file of item {item_id} is no longer there; rebuild the index (--prune)")
        if not _under_indexed_source(row):
            raise ServeError(403, f"the file of item {item_id} is outside the folders the index was built from "
                                  "(a symbolic link out of the collection?); it is not served")
        ctype = mimetypes.guess_type(uri)[0] or "application/octet-stream"
        headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
        if thumb is not None and row.get("modality") in thumbs:
            data = await run_in_threadpool(_thumbnail, model.processor.get(row["modality"]), uri, thumb)
            if data is not None:
                return Response(data[0], media_type=data[1], headers=headers)
        return FileResponse(uri, media_type=ctype, headers=headers)

    # ----------------------------------------------------------------------------------- health
    @app.get("/health")
    async def health(request: Request):
        authorized = True
        if api_key is not None:
            try:
                await authorize(request)
            except ServeError:
                authorized = False
        out: dict[str, Any] = {"status": "ok", "auth": api_key is not None}
        if not authorized:
            return out
        out.update(model=name, models=[s.name for s in served], precision=precision(),
                   batch_invariant=all(s.precision != "int8" for s in served), dim=dim,
                   modalities=modalities, file_types=file_types,
                   index=None, search=index is not None,
                   batching={"max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1000,
                             "max_queue": batcher.max_queue, "max_in_flight": max_in_flight,
                             **_merged_snapshot([s.batcher for s in served])})
        if index is not None:
            from ..search.store import StorageUnavailableError

            try:
                out["index"] = await run_in_threadpool(_index_summary, index)
            except StorageUnavailableError as e:  # the server is up; its index's storage is not
                out.update(status="degraded", index={"name": _index_name(index), "error": str(e)})
        return out

    # ---------------------------------------------------------------------------------- metrics
    @app.get("/metrics", dependencies=[Depends(authorize)], include_in_schema=False)
    async def prometheus_metrics():
        if metrics is None:
            raise ServeError(404, "metrics are off: install prometheus-client (pip install 'onepeace[serve]')",
                             code="no_metrics")
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    # ------------------------------------------------------------------------------------- page
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _warm_up(batcher: MicroBatcher, modalities: list[str]) -> None:
    """One small input per built-in modality through the batcher (the first passes are slow)."""
    from PIL import Image

    samples = {"text": ["warm up"], "image": [Image.new("RGB", (64, 64), (128, 128, 128))],
               "audio": [(np.random.default_rng(0).standard_normal(16000) * 0.01).astype(np.float32)]}
    for modality in modalities:
        if modality in samples:
            batcher.embed_sync(modality, samples[modality])


def _search_body_schema(file_modalities: set[str]) -> dict:
    """The JSON body of /search as the OpenAPI schema documents it: SearchRequest's fields and a
    base64 field per file modality of the served models, nothing else (other keys are refused)."""
    schema = SearchRequest.model_json_schema()
    for m in sorted(file_modalities - set(schema["properties"])):
        schema["properties"][m] = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
                                   "description": f"a {m} file as base64 or a data: URI"}
    schema["additionalProperties"] = False
    return schema


def _validate_search(fields: dict) -> SearchRequest:
    """The search request of a JSON object or form fields; pydantic's errors become a 400 listing
    them, and nothing else raised while validating becomes a 500."""
    try:
        return SearchRequest.model_validate(fields)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None
    except (ValueError, TypeError, RecursionError) as e:
        raise ServeError(400, f"invalid request: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None


def _refuse_where(fields: dict) -> None:
    """The network API takes no raw SQL: a ``where`` key is refused (400), naming the way to filter."""
    if "where" in fields:
        raise ServeError(400, "where: raw SQL filters are not accepted over the network; send a structured "
                              "filter instead, e.g. \"filter\": {\"column\": \"text\", \"op\": \"contains\", "
                              "\"value\": \"dog\"}", param="where", code="raw_sql_refused")


def _parse_filter_field(value: str) -> Any:
    """A form's ``filter`` field: the JSON of a structured filter."""
    text = value.strip()
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ServeError(400, f"filter: {text[:100]!r} is not a JSON filter ({e if isinstance(e, json.JSONDecodeError) else 'nested too deeply'}); "
                              "e.g. {\"column\": \"text\", \"op\": \"contains\", \"value\": \"dog\"}",
                         param="filter") from None


def _parse_weights(value: Any) -> Any:
    """Form weights: JSON (``{"text": 1, "image": 0.5}`` or ``[1, 0.5]``) or ``text=1,image=0.5``."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ServeError(400, f"weights: not valid JSON ({e})", param="weights") from None
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, number = part.partition("=")
        try:
            out[key.strip()] = float(number)
        except ValueError:
            sep = ""
        if not sep or not math.isfinite(out.get(key.strip(), 0.0)):
            raise ServeError(400, f"weights: {part!r} is not NAME=NUMBER (e.g. text=1,image=0.5)", param="weights")
    return out


def _hit(h: dict, thumbs: set[str] | frozenset[str] = frozenset()) -> dict:
    """A search hit as the API returns it: no vector and no server path, a media URL instead (and
    its MIME type, and a thumbnail URL for the modalities in ``thumbs``)."""
    meta = h.get("metadata") or {}
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta else {}
        except json.JSONDecodeError:
            meta = {"raw": meta}
    meta = _public_metadata(meta) if isinstance(meta, dict) else meta
    uri = h.get("uri") or ""
    return {"id": h.get("id"), "modality": h.get("modality"), "text": h.get("text") or "",
            "name": os.path.basename(uri) if uri else "", "metadata": meta,
            "score": float(h["score"]), "prob": None if h.get("prob") is None else float(h["prob"]),
            "media_url": f"/media/{h.get('id')}" if uri else None,
            "media_type": (mimetypes.guess_type(uri)[0] or "application/octet-stream") if uri else None,
            "thumb_url": f"/media/{h.get('id')}?thumb=256" if uri and h.get("modality") in thumbs else None}


def _under_indexed_source(row: dict) -> bool:
    """Whether an indexed file lies, after resolving symbolic links, under the source it was
    indexed from: the folder, the folder of the manifest, or the file given itself as a source.
    A row that records no source is not served."""
    uri = row.get("uri") or ""
    meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    source = meta.get("source") if isinstance(meta.get("source"), str) else ""
    if not uri or not source or not os.path.isabs(source):
        return False
    real = os.path.realpath(uri)
    if os.path.isdir(source):
        root = os.path.realpath(source)
    elif os.path.normpath(source) == os.path.normpath(uri):
        return True  # a file named itself as a source
    else:
        root = os.path.dirname(os.path.realpath(source))  # a manifest: the files under its folder
    return os.path.commonpath([real, root]) == root


def _public_metadata(meta: dict) -> dict:
    """A hit's metadata without the server's paths: ``source`` (the folder or manifest the item
    was indexed from) and any other value that is an absolute path on this machine become their
    last component, the name the user gave at indexing."""
    out = {}
    for key, value in meta.items():
        if isinstance(value, str) and value and (key == "source" or (os.path.isabs(value) and os.path.exists(value))):
            value = os.path.basename(os.path.normpath(value)) if os.path.isabs(value) else value
        out[key] = value
    return out


def _index_name(index: Any) -> str | None:
    path = str(getattr(index, "path", "") or "")
    return os.path.basename(os.path.normpath(path.split("://", 1)[-1])) if path else None


def _index_summary(index: Any) -> dict:
    """Rows per modality, the index's name and its model (cheap: no walk of the files on disk)."""
    counts = index.modality_counts() if hasattr(index, "modality_counts") else index.info().get("modalities", {})
    return {"name": _index_name(index),
            "rows": int(sum(counts.values())), "modalities": counts,
            "model": public_name(getattr(index, "model_name", "") or ""), "dim": getattr(index, "dim", None)}


def _thumbnail(processor: Any, path: str, size: int) -> tuple[bytes, str] | None:
    """A still of a file at most ``size`` pixels on its longer side, made by its modality's
    processor (a downscaled image, a video's middle frame); ``None`` if there is nothing smaller to
    show or the file cannot be read (then the file itself is sent)."""
    try:
        return processor.thumbnail(path, size)
    except Exception:  # noqa: BLE001 - any unreadable file: serve it as it is
        return None


def head_deadline_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's head: a connection whose request
    line and headers have not all arrived ``seconds`` after it opened (or after its previous
    response) gets 408 and is closed. uvicorn has none: a client sending nothing, or one header
    byte at a time (slow loris), held its connection for as long as it liked, since every byte
    restarts its keep-alive timer. The body has its own deadline (the limits middleware)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadlineH11Protocol(H11Protocol):
        head_timeout_s = float(seconds)
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            """Running while the client owes a request head (h11: their state IDLE), else not."""
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if self._head_timer is None:
                    self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
            else:
                self._cancel_head_timer()

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
                return
            if self.conn.our_state is h11.IDLE:  # nothing of ours under way: say why it is closed
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
            self.transport.close()

    return HeadDeadlineH11Protocol


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, benchmarks, notebooks)::

        with ServerThread(create_app(model, index)) as server:
            httpx.get(server.url + "/health")

    ``port=0`` takes a free port; ``url`` is the address it listens on."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import socket
        import threading

        import uvicorn

        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(512)
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"
        head_s = getattr(getattr(app, "state", None), "timeout_s", 30.0)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False,
                                                    timeout_graceful_shutdown=2,
                                                    http=head_deadline_protocol(head_s)))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="onepeace-server", daemon=True)

    def start(self, timeout: float = 30.0) -> ServerThread:
        import time

        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("onepeace")
    except Exception:  # noqa: BLE001
        return "0"


