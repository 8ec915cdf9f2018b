"""``GET /media/{id}``: the indexed file of an item, looked up by its id in the index (never a path
from the request), or (``?thumb=N``) a still of it at most N pixels on its longer side."""

from __future__ import annotations

import mimetypes
import os
import re
from typing import Any

from fastapi import APIRouter, Depends
from fastapi import Path as FastAPIPath
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from ..errors import ServeError
from ..state import ServeState, State, authorize

#: an item id in the index: a hex digest (sha1 is 40 characters)
_ID = re.compile(r"[0-9a-f]{16,64}")

router = APIRouter()


async def media_file(state: ServeState, item_id: str, thumb: int | None = None) -> tuple[dict, str]:
    """The index's row of ``item_id`` and the path of its file, once it may be served (else a 4xx)."""
    idx = state.need_index()
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
    if not under_indexed_source(row):
        raise ServeError(403, f"the file of item {item_id} is outside the folders the index was built from "
                              "(a symbolic link out of the collection?); it is not served")
    return row, uri


@router.get("/media/{item_id}", dependencies=[Depends(authorize)])
async def media(state: State, item_id: str = FastAPIPath(..., description="an item id, as /search returns it",
                                           examples=["0123456789abcdef0123456789abcdef01234567"]),
                thumb: int | None = None):
    row, uri = await media_file(state, item_id, thumb)
    served = state.index_model
    ctype = mimetypes.guess_type(uri)[0] or "application/octet-stream"
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
    if thumb is not None and row.get("modality") in served.thumbs:
        data = await run_in_threadpool(thumbnail, served.model.processor.get(row["modality"]), uri, thumb)
        if data is not None:
            return Response(data[0], media_type=data[1], headers=headers)
    return FileResponse(uri, media_type=ctype, headers=headers)


def under_indexed_source(row: dict) -> bool:
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


def thumbnail(processor: Any, path: str, size: int) -> tuple[bytes, str] | None:
    """A still of a file at most ``size`` pixels on its longer side, made by its modality's
    processor (a downscaled image, a video's middle frame); ``None`` if there is nothing smaller to
    show or the file cannot be read (then the file itself is sent)."""
    try:
        return processor.thumbnail(path, size)
    except Exception:  # noqa: BLE001 - any unreadable file: serve it as it is
        return None
