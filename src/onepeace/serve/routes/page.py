"""``GET /``: the web page (search and embeddings in a browser), and its script and style under
``/static``."""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page():
    return FileResponse(os.path.join(STATIC_DIR, "index.html"), media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


def static_files() -> StaticFiles:
    """The page's script and style, mounted at ``/static``."""
    return StaticFiles(directory=STATIC_DIR)
