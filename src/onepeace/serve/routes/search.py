"""``POST /search``: a composed query (texts, image, audio or another file, weights, target
modality, ``k``, a structured ``filter``) as JSON or a form, answered with the hits best first.

The handler's work as plain functions: :func:`search_request` (a JSON object's fields and any
uploaded files -> the :class:`SearchRequest` and the files' bytes), :func:`run_search` (those ->
the JSON body ``{"schema_version", "hits", ...}``). :func:`read_search` reads them off an HTTP
request."""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ...errors import InputError
from ...search import query as search_query
from ...search.moments import MAX_PER_FILE, has_moments
from ...search.store import compile_filter
from ..batching import MicroBatcher
from ..errors import ServeError
from ..inputs import (
    decode_base64_input,
    decode_media,
    parse_filter_field,
    parse_weights,
    refuse_where,
    validate_search,
)
from ..schemas import SEARCH_SCHEMA_VERSION, SearchRequest, SearchResponse, search_body_schema
from ..state import ServedModel, ServeState, State, authorize, check_modality


# ------------------------------------------------------------------------------ the request
def search_request(state: ServeState, fields: dict[str, Any],
                   files: dict[str, bytes] | None = None) -> tuple[SearchRequest, dict[str, bytes]]:
    """The query of a request's fields (a JSON object, or a form's fields with its uploads in
    ``files``) and the bytes of its files (base64 / data: URIs decoded): a 400 for raw SQL
    (``where``), an invalid or unknown field, or a file that is not base64."""
    files = dict(files or {})
    refuse_where(fields)
    req = validate_search(fields)
    unknown = sorted((req.model_extra or {}).keys() - state.file_modalities)
    if unknown:
        raise ServeError(400, f"unknown field {unknown[0]!r}; expected "
                              f"{', '.join([*SearchRequest.model_fields, *sorted(state.file_modalities)])}",
                         param=unknown[0])
    for key in ("image", "audio", *sorted(req.model_extra or {})):  # files as base64 / data URIs
        value = getattr(req, key, None)
        if value is not None and key not in files:
            files[key] = decode_base64_input(value, key, key)
    return req, files


async def read_form(request: Request, state: ServeState) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The fields of a multipart or urlencoded /search request, and its uploaded files' bytes."""
    file_modalities = state.file_modalities
    form = await request.form(max_files=4, max_fields=32)
    fields: dict[str, Any] = {}
    files: dict[str, bytes] = {}
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
        fields["weights"] = parse_weights(fields["weights"])
    if isinstance(fields.get("filter"), str):
        fields["filter"] = parse_filter_field(fields["filter"])
    return fields, files


async def read_search(request: Request, state: ServeState) -> tuple[SearchRequest, dict[str, bytes]]:
    """The query of a JSON or multipart /search request, with its files' bytes."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data" or ctype == "application/x-www-form-urlencoded":
        fields, files = await read_form(request, state)
        return search_request(state, fields, files)
    if ctype not in ("application/json", ""):
        raise ServeError(415, f"unsupported Content-Type {ctype!r}: send application/json or multipart/form-data")
    body = await request.body()
    try:
        payload = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ServeError(400, f"the request body is not valid JSON ({e})") from None
    except RecursionError:
        raise ServeError(400, "the request body is JSON nested too deeply") from None
    if not isinstance(payload, dict):
        raise ServeError(400, "the request body must be a JSON object, e.g. {\"text\": \"a dog\", \"k\": 10}")
    return search_request(state, payload)


# ------------------------------------------------------------------------------- the search
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


def query_texts(state: ServeState, s: ServedModel, req: SearchRequest, files: dict[str, bytes]) -> list[str]:
    """The request's texts, once ``k``, ``modality``, the texts and the files' modalities are checked."""
    max_k, max_text_chars = state.limits.max_k, state.limits.max_text_chars
    if not 1 <= req.k <= max_k:
        raise ServeError(400, f"k: {req.k} is out of range; give 1 to {max_k}", param="k")
    if req.modality is not None:
        check_modality(req.modality, "modality", s.modalities)
    texts = [req.text] if isinstance(req.text, str) else list(req.text or [])
    if isinstance(req.text, list) and not texts:
        raise ServeError(400, "text: the list is empty; give one text or several", param="text")
    for i, t in enumerate(texts):
        if len(t) > max_text_chars:
            where = "text" if isinstance(req.text, str) else f"text[{i}]"
            raise ServeError(400, f"{where}: {len(t):,} characters; at most {max_text_chars:,}", param="text")
    for key in files:
        check_modality(key, key, s.modalities)
    check_moments(state, req)
    return texts


def check_moments(state: ServeState, req: SearchRequest) -> None:
    """``moments`` and ``per_file``: a 400 for per_file without moments, out of range, or moments
    asked of an index that has none (naming how to build them)."""
    if req.per_file is not None and not req.moments:
        raise ServeError(400, "per_file applies to a moment search (\"moments\": true)", param="per_file")
    if req.per_file is not None and not 1 <= req.per_file <= MAX_PER_FILE:
        raise ServeError(400, f"per_file: {req.per_file} is out of range; give 1 to {MAX_PER_FILE}", param="per_file")
    if req.moments and not has_moments(state.need_index()):
        raise ServeError(400, "moments: this index has no moments (time ranges in long audio and video); rebuild it "
                              "with `onepeace index build` (audio and video over 20 s get them)", param="moments")


async def run_search(state: ServeState, req: SearchRequest, files: dict[str, bytes] | None = None) -> dict[str, Any]:
    """The body of the answer to ``req`` (with the bytes of its ``files`` by modality): the hits best first."""
    idx = state.need_index()
    files = files or {}
    s = state.pick_for_search(req.model)
    texts = query_texts(state, s, req, files)
    inputs: dict[str, Any] = {"text": texts} if texts else {}
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    def decode() -> None:
        for key, data in files.items():
            inputs[key] = decode_media(s.model, key, data, f"{key} upload")

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
    for m, x in search_query.query_inputs(**inputs):
        grouped.setdefault(m, []).append(x)
    search_query.resolve_weights(search_query.query_inputs(**inputs), req.weights)  # bad weights: 400 before embedding
    # awaited here, not in a thread: the deadline (408) or a disconnect cancels the queued jobs
    rows = await embed_all(s.batcher, grouped)

    moments = {"moments": True, "per_file": req.per_file} if req.moments else {}

    def run() -> list[dict]:
        return search_query.search(idx, _Embedded(s.model, rows), weights=req.weights, modality=req.modality,
                                   k=req.k, filter=req.filter, **moments, **inputs)

    hits = await run_in_threadpool(run)
    took = round((loop.time() - t0) * 1000, 1)
    found = [public_hit(h, s.thumbs) for h in hits]
    return {"schema_version": SEARCH_SCHEMA_VERSION, "hits": found, "results": found, "k": req.k,
            "modality": req.modality, "inputs": sorted(inputs), "took_ms": took, "model": s.name,
            **({"moments": True} if req.moments else {})}


# -------------------------------------------------------------------------------- the hits
def public_hit(h: dict, thumbs: set[str] | frozenset[str] = frozenset()) -> dict:
    """A search hit as the API returns it: no vector and no server path, a media URL instead (and
    its MIME type, and a thumbnail URL for the modalities in ``thumbs``); a moment's ``start`` and
    ``end`` (seconds in the file)."""
    meta = h.get("metadata") or {}
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta else {}
        except json.JSONDecodeError:
            meta = {"raw": meta}
    meta = public_metadata(meta) if isinstance(meta, dict) else meta
    uri = h.get("uri") or ""
    moment = {"start": float(h["start"]), "end": float(h["end"])} if h.get("start") is not None else {}
    return {"id": h.get("id"), "modality": h.get("modality"), "text": h.get("text") or "",
            "name": os.path.basename(uri) if uri else "", "metadata": meta,
            "score": float(h["score"]), "prob": None if h.get("prob") is None else float(h["prob"]),
            "media_url": f"/media/{h.get('id')}" if uri else None,
            "media_type": (mimetypes.guess_type(uri)[0] or "application/octet-stream") if uri else None,
            "thumb_url": f"/media/{h.get('id')}?thumb=256" if uri and h.get("modality") in thumbs else None,
            **moment}


def public_metadata(meta: dict) -> dict:
    """A hit's metadata without the server's paths: ``source`` (the folder or manifest the item
    was indexed from) and any other value that is an absolute path on this machine become their
    last component, the name the user gave at indexing."""
    out = {}
    for key, value in meta.items():
        if isinstance(value, str) and value and (key == "source" or (os.path.isabs(value) and os.path.exists(value))):
            value = os.path.basename(os.path.normpath(value)) if os.path.isabs(value) else value
        out[key] = value
    return out


# ----------------------------------------------------------------------------- the endpoint
async def search(state: State, request: Request):
    state.need_index()
    req, files = await read_search(request, state)
    return JSONResponse(await run_search(state, req, files))


def make_router(file_modalities: set[str]) -> APIRouter:
    """The /search route; its OpenAPI body lists a base64 field per file modality of the served models."""
    router = APIRouter()
    router.add_api_route("/search", search, methods=["POST"], dependencies=[Depends(authorize)],
                         responses={200: {"model": SearchResponse}},
                         openapi_extra={"requestBody": {"required": True, "content": {
                             "application/json": {"schema": search_body_schema(file_modalities)}}}})
    return router
