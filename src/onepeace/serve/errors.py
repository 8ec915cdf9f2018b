"""The server's errors: every one is a JSON body ``{"error": {"message", "type", "param", "code"}}``
with its status (4xx, 503 with ``Retry-After`` when the server sheds load), never a traceback.

:class:`ServeError` is what a handler raises; :func:`install_error_handlers` turns it, FastAPI's
own errors and the library's errors into that body.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import OnePeaceError
from ..search.store import StorageUnavailableError
from .batching import QueueFullError

log = logging.getLogger("onepeace.serve")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          405: "invalid_request_error", 408: "timeout_error", 413: "request_too_large", 415: "invalid_request_error",
          500: "server_error", 503: "service_unavailable"}
#: seconds a client shed with 503 is told to wait (``Retry-After``)
RETRY_AFTER_S = 1


class ServeError(StarletteHTTPException):
    """An error answered as JSON: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(status, message, headers)
        self.message, self.param, self.code = message, param, code

    def body(self) -> dict:
        """The JSON body the server answers this error with."""
        return error_body(self.status_code, self.message, param=self.param, code=self.code)


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param, code=code), status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
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


# ------------------------------------------------------------------------------------ handlers
async def _serve_error(request: Request, exc: ServeError):
    return error_response(exc.status_code, exc.message, param=exc.param, code=exc.code, headers=exc.headers)


async def _http_error(request: Request, exc: StarletteHTTPException):
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


async def _invalid(request: Request, exc: RequestValidationError):
    message, param = validation_message(exc)
    return error_response(400, message, param=param)


async def _storage_down(request: Request, exc: StorageUnavailableError):
    log.warning("%s", exc)
    return error_response(503, str(exc), code="storage_unavailable", headers={"Retry-After": str(RETRY_AFTER_S)})


async def _onepeace_error(request: Request, exc: OnePeaceError):
    redact = getattr(request.app.state, "redact", None) or (lambda m: m)
    return error_response(400, redact(str(exc)))


async def _queue_full(request: Request, exc: QueueFullError):
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.rejected.labels("queue_full").inc()
    return error_response(503, str(exc), code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})


async def _disconnect(request: Request, exc: ClientDisconnect):
    return error_response(400, "the client disconnected before sending the whole request")


async def _unexpected(request: Request, exc: Exception):
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details")


#: exception class -> its handler, in the order they are installed
HANDLERS = ((ServeError, _serve_error), (StarletteHTTPException, _http_error), (RequestValidationError, _invalid),
            (StorageUnavailableError, _storage_down), (OnePeaceError, _onepeace_error),
            (QueueFullError, _queue_full), (ClientDisconnect, _disconnect), (Exception, _unexpected))


def install_error_handlers(app: FastAPI) -> None:
    for exc_class, handler in HANDLERS:
        app.add_exception_handler(exc_class, handler)
