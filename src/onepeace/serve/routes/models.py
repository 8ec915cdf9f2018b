"""``GET /v1/models``: the served models (OpenAI's list, with each model's modalities, dimensions
and precision, and which one searches the index)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..state import State, authorize

router = APIRouter()


@router.get("/v1/models", dependencies=[Depends(authorize)])
async def models(state: State):
    return {"object": "list", "data": [
        {"id": s.name, "object": "model", "created": 0, "owned_by": "onepeace", "modalities": s.modalities,
         "dimensions": s.dim, "precision": s.precision, "batch_invariant": s.precision != "int8",
         "precision_note": getattr(s.model, "serve_note", "") or None, "search": s is state.index_model,
         "default": s is state.default} for s in state.served]}
