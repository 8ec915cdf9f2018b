"""``POST /v1/embeddings`` (and ``/embeddings``): OpenAI's embeddings request and response, for
texts and (``modality``) files sent as base64 or ``data:`` URIs.

:func:`create_embeddings` is the handler's work as a plain coroutine: a :class:`ServeState` and an
:class:`EmbeddingRequest` in, the JSON body out (a :class:`ServeError` for a bad request)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..errors import ServeError
from ..inputs import decode_base64_input, decode_media
from ..schemas import EmbeddingRequest
from ..state import ServedModel, ServeState, State, authorize, check_modality

router = APIRouter()


def checked_inputs(state: ServeState, s: ServedModel, req: EmbeddingRequest) -> tuple[str, list[str]]:
    """The request's modality and its list of inputs, or the 400 / 413 of the first thing wrong."""
    modality = check_modality(req.modality, "modality", s.modalities)
    items = req.input
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list):
        raise ServeError(400, "input: give a string or a list of strings", param="input")
    if not items:
        raise ServeError(400, "input: the list is empty; give at least one input", param="input")
    max_inputs = state.limits.max_inputs
    if len(items) > max_inputs:
        raise ServeError(413, f"input: {len(items)} inputs in one request; send at most {max_inputs} per request",
                         param="input")
    for i, x in enumerate(items):
        if not isinstance(x, str):
            what = "token ids are not accepted, send the text" if isinstance(x, (int, list)) else "not a string"
            raise ServeError(400, f"input[{i}]: {what}", param="input")
    if req.dimensions is not None and req.dimensions != s.dim:
        raise ServeError(400, f"dimensions: this model's embeddings have {s.dim} dimensions and cannot be "
                              "shortened (it was not trained for it); leave dimensions out", param="dimensions")
    return modality, items


async def count_tokens(state: ServeState, s: ServedModel, items: list[str]) -> int:
    """The text tokens the model reads of ``items`` (a 400 for a text over ``max_text_chars``)."""
    proc = s.model.processor.get("text")
    max_text_chars = state.limits.max_text_chars
    for i, x in enumerate(items):
        if len(x) > max_text_chars:
            raise ServeError(400, f"input[{i}]: {len(x):,} characters; at most {max_text_chars:,} (the model "
                                  f"reads only the first {getattr(proc, 'context_length', 70)} tokens)", param="input")

    def count() -> int:
        return sum(len(proc.encode(x)) for x in items)

    # long texts are tokenized off the event loop (short ones cost less than the thread hop)
    return count() if sum(map(len, items)) < 4096 else await run_in_threadpool(count)


async def create_embeddings(state: ServeState, req: EmbeddingRequest) -> dict[str, Any]:
    """The body of the answer to ``req``: ``{"object": "list", "data": [...], "model", "usage"}``."""
    s = state.pick(req.model)
    modality, items = checked_inputs(state, s, req)
    tokens = 0
    if modality == "text":
        tokens = await count_tokens(state, s, items)
        decoded: list[Any] = items
    else:
        def decode_all() -> list[Any]:
            out = []
            for i, x in enumerate(items):
                data = decode_base64_input(x, modality, f"input[{i}]")
                out.append(decode_media(s.model, modality, data, f"input[{i}]"))
            return out

        decoded = await run_in_threadpool(decode_all)
    rows = await s.batcher.embed(modality, decoded)
    data = []
    for i, row in enumerate(rows):
        row = np.ascontiguousarray(row, dtype="<f4")
        value = base64.b64encode(row.tobytes()).decode() if req.encoding_format == "base64" else row.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": s.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


@router.post("/v1/embeddings", dependencies=[Depends(authorize)])
@router.post("/embeddings", dependencies=[Depends(authorize)], include_in_schema=False)
async def embeddings(state: State, req: EmbeddingRequest):
    # a JSONResponse, not a dict: FastAPI's encoder would visit every float one by one
    return JSONResponse(await create_embeddings(state, req))
