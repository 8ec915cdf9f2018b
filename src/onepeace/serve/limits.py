"""The limits every HTTP request runs under (413 over ``max_request_bytes``, 408 over
``timeout_s``, 503 with ``Retry-After`` over ``max_in_flight``) and the per-request metrics: one
ASGI middleware, :class:`LimitsMiddleware`, around the whole application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from .errors import RETRY_AFTER_S, ServeError, error_response

log = logging.getLogger("onepeace.serve")

#: paths that are never shed (an operator's probes must answer under overload)
_UNSHED = ("/health", "/metrics")


class LimitsMiddleware:
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

