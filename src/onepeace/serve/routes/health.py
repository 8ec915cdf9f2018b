"""``GET /health`` (the server's state: its models, precision, batching counters and index; open
to all, the details only with the API key) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ...search.store import StorageUnavailableError
from ..errors import ServeError
from ..state import ServeState, State, authorize, merged_snapshot, public_name

router = APIRouter()


def index_name(index: Any) -> str | None:
    path = str(getattr(index, "path", "") or "")
    return os.path.basename(os.path.normpath(path.split("://", 1)[-1])) if path else None


def index_summary(index: Any) -> dict:
    """Rows per modality, the index's name and its model (cheap: no walk of the files on disk)."""
    counts = index.modality_counts() if hasattr(index, "modality_counts") else index.info().get("modalities", {})
    return {"name": index_name(index),
            "rows": int(sum(counts.values())), "modalities": counts,
            "model": public_name(getattr(index, "model_name", "") or ""), "dim": getattr(index, "dim", None)}


async def health_status(state: ServeState, authorized: bool = True) -> dict[str, Any]:
    """The body of ``/health``: ``{"status": "ok", "auth"}`` and, for a client with the API key
    (``authorized``), the models, batching and index; ``status`` "degraded" when the index's storage is down."""
    out: dict[str, Any] = {"status": "ok", "auth": state.api_key is not None}
    if not authorized:
        return out
    default, index, batcher = state.default, state.index, state.default.batcher
    out.update(model=default.name, models=[s.name for s in state.served], precision=default.precision,
               batch_invariant=all(s.precision != "int8" for s in state.served), dim=default.dim,
               modalities=default.modalities, file_types=default.file_types,
               index=None, search=index is not None,
               batching={"max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1000,
                         "max_queue": batcher.max_queue, "max_in_flight": state.limits.max_in_flight,
                         **merged_snapshot([s.batcher for s in state.served])})
    if index is not None:
        try:
            out["index"] = await run_in_threadpool(index_summary, index)
        except StorageUnavailableError as e:  # the server is up; its index's storage is not
            out.update(status="degraded", index={"name": index_name(index), "error": str(e)})
    return out


@router.get("/health")
async def health(state: State, request: Request):
    return await health_status(state, state.key_ok(request.headers.get("authorization", "")))


@router.get("/metrics", dependencies=[Depends(authorize)], include_in_schema=False)
async def prometheus_metrics(state: State):
    if state.metrics is None:
        raise ServeError(404, "metrics are off: install prometheus-client (pip install 'onepeace[serve]')",
                         code="no_metrics")
    body, ctype = state.metrics.render()
    return Response(body, media_type=ctype)
