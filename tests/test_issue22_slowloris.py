"""Issue 22: a client that uploads its request body byte by byte (slow loris) is cut off: past the
request deadline (--timeout) it gets 408 and the server closes the connection, and a response sent
before the body has fully arrived closes it too, so dribbled bytes cannot hold a connection open
forever (uvicorn's keep-alive timer restarts on every byte). /health answers meanwhile. A real
uvicorn server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("lancedb")
httpx = pytest.importorskip("httpx")

import onepeace  # noqa: E402
from conftest import tiny_search_collection  # noqa: E402
from onepeace.serve.app import ServerThread, create_app  # noqa: E402

DEADLINE_S = 1.0
#: how long the dribbling goes on at most: far past the deadline plus uvicorn's 5 s keep-alive
DRIBBLE_S = 20.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model_dir, _ = tiny_search_collection(tmp_path_factory.mktemp("slowloris").resolve())
    return onepeace.OnePeace.from_pretrained(model_dir)


def _dribble(sock: socket.socket, stop: threading.Event) -> None:
    """One byte of body every 50 ms until the server closes the connection (or DRIBBLE_S)."""
    end = time.monotonic() + DRIBBLE_S
    while not stop.is_set() and time.monotonic() < end:
        try:
            sock.send(b" ")
        except OSError:
            return
        time.sleep(0.05)


@pytest.mark.parametrize("method,path,words", [
    ("POST", "/v1/embeddings", [b"408", b"--timeout"]),   # the app waits for the body: the deadline cuts it
    ("POST", "/health", [b"405"]),                        # answered before the body: nothing reads it
])
def test_a_slow_upload_is_cut_off_and_its_connection_closed(model, method, path, words):
    app = create_app(model, None, timeout_s=DEADLINE_S)
    with ServerThread(app) as server:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=DRIBBLE_S + 10)
        stop = threading.Event()
        try:
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: 100000\r\n\r\n".encode())
            t0 = time.monotonic()
            dribbler = threading.Thread(target=_dribble, args=(sock, stop), daemon=True)
            dribbler.start()
            time.sleep(DEADLINE_S / 2)
            assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # not blocked by it
            received = b""
            closed_after = None
            sock.settimeout(1.0)
            while time.monotonic() - t0 < DRIBBLE_S:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    closed_after = time.monotonic() - t0
                    break
                received += chunk
            status_line = received.split(b"\r\n", 1)[0]
            for w in words[:1]:
                assert w in status_line, received[:300]
            for w in words[1:]:
                assert w in received, received[:300]
            assert closed_after is not None, f"the connection was still open after {DRIBBLE_S} s of dribbling"
            assert closed_after < DEADLINE_S + 5, closed_after
            assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        finally:
            stop.set()
            sock.close()


@pytest.mark.parametrize("head", [
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ",  # a request head dribbled byte by byte
    b"",                                             # a connection that never sends a byte
])
def test_a_slow_or_missing_request_head_is_cut_off(model, head):
    """uvicorn has no deadline for a request's head: a client sending one header byte at a time (or
    nothing) held its connection for as long as it liked. The server closes it after --timeout."""
    app = create_app(model, None, timeout_s=DEADLINE_S)
    with ServerThread(app) as server:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=DRIBBLE_S + 10)
        stop = threading.Event()
        try:
            sock.sendall(head)
            t0 = time.monotonic()
            if head:
                threading.Thread(target=_dribble, args=(sock, stop), daemon=True).start()
            assert httpx.get(server.url + "/health", timeout=10).status_code == 200
            received, closed_after = b"", None
            sock.settimeout(1.0)
            while time.monotonic() - t0 < DRIBBLE_S:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    closed_after = time.monotonic() - t0
                    break
                received += chunk
            assert closed_after is not None, f"the connection was still open after {DRIBBLE_S} s"
            assert closed_after < DEADLINE_S + 5, closed_after
            assert received == b"" or received.startswith(b"HTTP/1.1 408"), received[:200]
            assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        finally:
            stop.set()
            sock.close()
