"""``onepeace download``: against a local HTTP server on 127.0.0.1 and file:// URLs, never the network."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from onepeace.checkpoints.download import KNOWN, download, fetch, resolve
from onepeace.cli import main
from onepeace.errors import CheckpointError, OnePeaceError, OutputError

DATA = np.random.default_rng(0).integers(0, 256, 1_500_000, dtype=np.uint8).tobytes()  # > one 1 MiB chunk


class Blob:
    """What the server serves at /file.bin, and what it saw."""

    def __init__(self, data: bytes, etag: str | None = '"v1"', ranges: bool = True):
        self.data, self.etag, self.ranges = data, etag, ranges
        self.cut_after: int | None = None  # send this many body bytes, then drop the connection
        self.requests: list[dict[str, str]] = []


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        blob: Blob = self.server.blob
        blob.requests.append({k.lower(): v for k, v in self.headers.items()})
        if self.path != "/file.bin":
            self.send_error(404)
            return
        data, start, status = blob.data, 0, 200
        want = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if want and blob.ranges and self.headers.get("If-Range") in (None, blob.etag):
            start, status = int(want.group(1)), 206
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if blob.etag:
            self.send_header("ETag", blob.etag)
        self.end_headers()
        if blob.cut_after is not None:
            body, blob.cut_after = body[: blob.cut_after], None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.blob = Blob(DATA)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/file.bin"
    yield srv
    srv.shutdown()
    srv.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name)


def test_http_download_is_verified_and_atomic(server, tmp_path, capsys):
    assert main(["download", server.url, "--out", str(tmp_path / "w"), "--sha256", sha(DATA).upper()]) == 0
    assert (tmp_path / "w" / "file.bin").read_bytes() == DATA and leftovers(tmp_path / "w") == []
    assert sha(DATA) in capsys.readouterr().out
    assert "range" not in server.blob.requests[0]


def test_sha_mismatch_leaves_nothing(server, tmp_path):
    with pytest.raises(CheckpointError, match="does not match the expected 000"):
        download(server.url, tmp_path / "f.bin", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OnePeaceError, match="64 hexadecimal"):
        download(server.url, tmp_path / "f.bin", sha256="abc")


def test_existing_output_needs_force(server, tmp_path, capsys):
    (tmp_path / "file.bin").write_bytes(b"mine")
    assert main(["download", server.url, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists" in err and "--force" in err
    assert (tmp_path / "file.bin").read_bytes() == b"mine" and server.blob.requests == []  # checked first
    assert main(["download", server.url, "--out", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "file.bin").read_bytes() == DATA


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    server.blob.cut_after = 400_000
    with pytest.raises(CheckpointError, match=r"kept in .*file\.bin\.part: run the same command again to resume"):
        download(server.url, tmp_path / "file.bin")
    assert not (tmp_path / "file.bin").exists()
    assert (tmp_path / "file.bin.part").read_bytes() == DATA[:400_000]
    path, digest = fetch(server.url, tmp_path / "file.bin", sha256=sha(DATA))
    assert path.read_bytes() == DATA and digest == sha(DATA) and leftovers(tmp_path) == []
    resume = server.blob.requests[-1]
    assert resume["range"] == "bytes=400000-" and resume["if-range"] == '"v1"'


def test_resume_starts_over_when_the_file_changed(server, tmp_path):
    server.blob.cut_after = 300_000
    with pytest.raises(CheckpointError, match="resume"):
        download(server.url, tmp_path / "file.bin")
    new = DATA[::-1]
    server.blob.data, server.blob.etag = new, '"v2"'  # If-Range fails: the server sends it whole
    assert download(server.url, tmp_path / "file.bin").read_bytes() == new
    assert leftovers(tmp_path) == []


def test_resume_fetches_only_the_missing_tail(server, tmp_path):
    server.blob.cut_after = len(DATA)  # all bytes sent...
    server.blob.data = DATA + b"x"  # ...but one short of what Content-Length promised
    with pytest.raises(CheckpointError, match="closed after"):
        download(server.url, tmp_path / "file.bin")
    assert download(server.url, tmp_path / "file.bin").read_bytes() == DATA + b"x"
    assert server.blob.requests[-1]["range"] == f"bytes={len(DATA)}-"


def test_a_complete_part_is_finished_without_refetching(server, tmp_path):
    # killed after the last byte was written but before the rename: the server has nothing left (416)
    (tmp_path / "file.bin.part").write_bytes(DATA)
    (tmp_path / "file.bin.part.json").write_text(json.dumps({"url": server.url, "validator": '"v1"', "size": len(DATA)}))
    assert fetch(server.url, tmp_path / "file.bin")[1] == sha(DATA)
    assert server.blob.requests[-1]["range"] == f"bytes={len(DATA)}-" and leftovers(tmp_path) == []


def test_no_partial_file_when_it_could_not_be_resumed(server, tmp_path):
    server.blob.etag = None  # no validator: a resume could splice two versions, so nothing is kept
    server.blob.cut_after = 200_000
    with pytest.raises(CheckpointError, match="closed after") as e:
        download(server.url, tmp_path / "file.bin")
    assert "resume" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_server_without_ranges_sends_it_whole(server, tmp_path):
    server.blob.ranges = False
    server.blob.cut_after = 100_000
    with pytest.raises(CheckpointError):
        download(server.url, tmp_path / "file.bin")
    assert download(server.url, tmp_path / "file.bin").read_bytes() == DATA


def test_file_urls_and_http_errors(server, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(DATA[:1000])
    assert download(src.as_uri(), tmp_path / "out" / "a.bin", sha256=sha(DATA[:1000])).read_bytes() == DATA[:1000]
    with pytest.raises(CheckpointError, match="cannot download file:"):
        download((tmp_path / "absent").as_uri(), tmp_path / "out" / "b.bin")
    with pytest.raises(CheckpointError, match="HTTP 404"):
        download(server.url.replace("file.bin", "nope.bin"), tmp_path / "out" / "c.bin")
    assert leftovers(tmp_path / "out") == []


def test_unreachable_host_is_one_line_exit_2(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["download", f"http://127.0.0.1:{port}/one-peace.pt", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"onepeace download: error: cannot download http://127.0.0.1:{port}/one-peace.pt: ")
    assert list(tmp_path.iterdir()) == []


def test_names_list_and_unknown_names(capsys):
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    for name, k in KNOWN.items():
        assert name in out and k.url.rsplit("/", 1)[1] in out
    assert resolve("one-peace")[0] == KNOWN["ONE-PEACE"].url  # names ignore case
    assert resolve("dict")[1] == KNOWN["dict"].sha256
    assert main(["download", "ONE-PEACE-XL"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown name 'ONE-PEACE-XL'" in err and "--list" in err
    assert main(["download", "ftp://example.invalid/x.pt"]) == 2
    assert main(["download"]) == 2


def test_a_part_file_in_use_is_left_alone(server, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    part = tmp_path / "file.bin.part"
    with open(part, "wb") as held:
        held.write(b"other")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(CheckpointError, match="being written by another download"):
            download(server.url, tmp_path / "file.bin")
    assert part.read_bytes() == b"other" and server.blob.requests == []


def test_output_folder_that_is_a_file(server, tmp_path):
    (tmp_path / "w").write_text("x")
    with pytest.raises(OutputError):
        download(server.url, tmp_path / "w" / "file.bin")
