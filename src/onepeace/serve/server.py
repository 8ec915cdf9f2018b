"""Running an app in this process: uvicorn's HTTP protocol with a deadline for request heads
(:func:`head_deadline_protocol`, which ``onepeace serve`` uses too) and :class:`ServerThread`
(tests, benchmarks, notebooks)."""

from __future__ import annotations

import asyncio
from typing import Any


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

