"""Issue 22: the server under overload (bounded queue and in-flight requests, 503 + Retry-After,
deadlines cancel queued work, one batcher worker), structured filters that cannot escape (no raw
SQL over the network, values escaped, fixed columns, /media only under the indexed folders after
resolving symlinks), request parsing that never answers 500. Loopback / TestClient only."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("lancedb")
httpx = pytest.importorskip("httpx")

import onepeace  # noqa: E402
from conftest import tiny_search_collection  # noqa: E402
from onepeace.serve.app import ServerThread, create_app  # noqa: E402
from onepeace.serve.batching import MicroBatcher, QueueFullError  # noqa: E402

#: captions with the characters an injection would use: quotes, %, _, --, parentheses, backslash
CAPTIONS = ["a red circle", "100% pure tone", "it's a square", "a_b c", "x -- y", "(a) OR (b)", "back\\slash",
            "seven dogs", "1=1) OR (1=1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from onepeace.search.ingest import build
    from onepeace.search.store import Index

    root = tmp_path_factory.mktemp("issue22").resolve()
    model_dir, media = tiny_search_collection(root)
    (root / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    model = onepeace.OnePeace.from_pretrained(model_dir)
    build(root / "index", model, [media, root / "captions.txt"], batch_size=4, workers=0, progress=False)
    return {"root": root, "model_dir": model_dir, "media": media, "model": model, "index": Index.open(root / "index")}


@pytest.fixture(scope="module")
def client(world):
    from fastapi.testclient import TestClient

    with TestClient(create_app(world["model"], world["index"])) as c:
        yield c


def assert_error(r, status, *words):
    assert r.status_code == status, (r.status_code, r.text)
    msg = r.json()["error"]["message"]
    assert "Traceback" not in msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


class Gate:
    """An embed function that blocks until opened, recording what it was asked to embed."""

    def __init__(self, inner=None, delay: float = 0.0):
        self.event, self.seen, self.inner, self.delay = threading.Event(), [], inner, delay

    def __call__(self, modality, items):
        self.event.wait(30)
        if self.delay:
            time.sleep(self.delay)
        self.seen.extend(items)
        if self.inner is not None:
            return self.inner(modality, items)
        return np.ones((len(items), 4), dtype=np.float32)


# -------------------------------------------------------------------------- the batcher itself
def test_the_queue_is_bounded_and_cancelled_jobs_leave_it_at_once():
    gate = Gate()
    b = MicroBatcher(gate, max_batch=1, max_wait_ms=0, max_queue=4)
    try:
        blocker = b.submit("text", ["running"])
        deadline = time.monotonic() + 5
        while b.depth and time.monotonic() < deadline:  # the worker took it: it no longer waits
            time.sleep(0.01)
        queued = [b.submit("text", [f"q{i}"]) for i in range(4)]
        assert b.depth == 4 and b.snapshot()["queued"] == 4
        t0 = time.monotonic()
        with pytest.raises(QueueFullError, match="--max-queue"):
            b.submit("text", ["one too many"])
        assert time.monotonic() - t0 < 0.5  # refused at once, not after waiting
        assert queued[1].cancel()
        assert b.depth == 3  # freed at once, before the worker reaches it
        late = b.submit("text", ["late"])
        gate.event.set()
        assert blocker.result(5) is not None and late.result(5) is not None
        assert all(f.result(5) is not None for i, f in enumerate(queued) if i != 1)
        snap = b.snapshot()
        assert snap["rejected"] == 1 and snap["skipped"] == 1 and snap["queued"] == 0
        assert "q1" not in gate.seen and "one too many" not in gate.seen
    finally:
        gate.event.set()
        b.close()


def test_a_restart_after_a_timed_out_close_never_runs_two_workers():
    gate = Gate()
    b = MicroBatcher(gate, max_batch=1, max_wait_ms=0, name="issue22-one-worker")
    f = b.submit("text", ["busy"])
    time.sleep(0.05)
    b.close(timeout=0.05)  # the worker is stuck in a forward pass: the join times out
    with pytest.raises(RuntimeError, match="still finishing"):
        b.start(timeout=0.05)
    assert sum(t.name == "issue22-one-worker" and t.is_alive() for t in threading.enumerate()) == 1
    gate.event.set()
    assert f.result(5) is not None
    b.start()
    try:
        assert b.submit("text", ["after"]).result(5) is not None
        assert sum(t.name == "issue22-one-worker" and t.is_alive() for t in threading.enumerate()) == 1
    finally:
        b.close()


# ---------------------------------------------------------------------------------- over HTTP
@pytest.mark.slow
def test_past_max_in_flight_a_request_gets_503_at_once_and_health_still_answers(world):
    app = create_app(world["model"], None, max_in_flight=2, max_wait_ms=0)
    gate = Gate(app.state.batcher._embed)
    app.state.batcher._embed = gate
    with ServerThread(app) as server:
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(httpx.post, server.url + "/v1/embeddings", json={"input": f"held {i}"}, timeout=30)
                    for i in range(2)]
            deadline = time.monotonic() + 10
            while len(gate.seen) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)  # the second one is in flight too (queued behind the first)
            t0 = time.monotonic()
            r = httpx.post(server.url + "/v1/embeddings", json={"input": "third"}, timeout=30)
            assert time.monotonic() - t0 < 2.0
            assert_error(r, 503, "--max-in-flight")
            assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "service_unavailable"
            assert httpx.get(server.url + "/health", timeout=10).status_code == 200
            gate.event.set()
            assert [f.result(30).status_code for f in held] == [200, 200]
        assert httpx.post(server.url + "/v1/embeddings", json={"input": "after"}, timeout=30).status_code == 200


@pytest.mark.slow
def test_a_burst_against_a_small_queue_gets_only_200s_and_503s(world):
    """300 requests from 48 threads, a queue of 4 inputs and slow forward passes: some are shed
    with 503 + Retry-After, the others answered; /health answers throughout and afterwards."""
    app = create_app(world["model"], world["index"], max_queue=4, max_in_flight=64, max_batch=4, max_wait_ms=1)
    batcher = app.state.batcher
    fast = batcher._embed

    def slow(modality, items):
        time.sleep(0.02)
        return fast(modality, items)

    batcher._embed = slow
    health: list[tuple[int, float]] = []
    stop = threading.Event()
    with ServerThread(app) as server:
        def poll() -> None:
            with httpx.Client(timeout=10) as c:
                while not stop.is_set():
                    t0 = time.monotonic()
                    health.append((c.get(server.url + "/health").status_code, time.monotonic() - t0))
                    time.sleep(0.02)

        def ask(i: int) -> tuple[int, str | None, bool]:
            payload = {"text": f"burst {i}", "k": 3} if i % 3 == 0 else {"input": f"burst {i}"}
            r = httpx.post(server.url + ("/search" if i % 3 == 0 else "/v1/embeddings"), json=payload, timeout=60)
            json_body = r.headers.get("content-type", "").startswith("application/json")
            return r.status_code, r.headers.get("retry-after"), json_body

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            with ThreadPoolExecutor(48) as pool:
                answers = list(pool.map(ask, range(300)))
        finally:
            stop.set()
            poller.join(10)
        statuses = [s for s, _, _ in answers]
        assert set(statuses) <= {200, 503}, sorted(set(statuses))
        assert statuses.count(503) > 0 and statuses.count(200) > 0, statuses.count(503)
        assert all(ra == "1" for s, ra, _ in answers if s == 503) and all(j for _, _, j in answers)
        assert health and all(s == 200 for s, _ in health)
        assert batcher.depth == 0
        after = httpx.get(server.url + "/health", timeout=10).json()
        assert after["batching"]["queued"] == 0 and after["batching"]["max_queue"] == 4
        assert httpx.post(server.url + "/search", json={"text": "after"}, timeout=30).status_code == 200


def test_a_search_past_its_deadline_cancels_its_queued_work(world):
    """/search awaits its embeddings in the request's task: the 408 cancels the queued job (it is
    never embedded) and no thread stays blocked on it."""
    from fastapi.testclient import TestClient

    app = create_app(world["model"], world["index"], timeout_s=0.3, max_wait_ms=0)
    batcher = app.state.batcher
    gate = Gate(batcher._embed)
    with TestClient(app) as c:
        batcher._embed = gate
        blocker = batcher.submit("text", ["blocker"])  # the worker is busy with this one
        for i in range(3):
            assert_error(c.post("/search", json={"text": f"needle {i}"}), 408, "--timeout")
        assert batcher.depth == 0  # the cancelled jobs left the queue at once
        gate.event.set()
        blocker.result(10)
        time.sleep(0.2)
        assert not [x for x in gate.seen if str(x).startswith("needle")], gate.seen
        assert batcher.snapshot()["skipped"] >= 3
        assert c.post("/search", json={"text": "after"}).status_code == 200


@pytest.mark.parametrize("path,payload", [("/v1/embeddings", {"input": "needle"}),
                                          ("/search", {"text": "needle", "k": 3})])
def test_a_client_that_disconnects_while_queued_frees_its_slot_and_its_work(world, path, payload):
    """A client that sent its whole request and hung up while its input waits for a forward pass:
    its queued job leaves the queue at once (never embedded) and its --max-in-flight slot is free
    for the next request, without waiting for the deadline."""
    import socket

    app = create_app(world["model"], world["index"], max_wait_ms=0, max_in_flight=1, timeout_s=60)
    batcher = app.state.batcher
    gate = Gate(batcher._embed)
    with ServerThread(app) as server:
        batcher._embed = gate
        blocker = batcher.submit("text", ["blocker"])  # the worker is busy with this one
        deadline = time.monotonic() + 10
        while batcher.depth and time.monotonic() < deadline:  # taken by the worker (blocked in the gate)
            time.sleep(0.01)
        assert batcher.depth == 0
        body = json.dumps(payload).encode()
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 10
        while batcher.depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.depth == 1  # queued behind the blocker
        s.close()
        deadline = time.monotonic() + 3
        while batcher.depth and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.depth == 0, "the disconnected client's job is still queued"
        with ThreadPoolExecutor(1) as pool:  # its slot is free: the next request is admitted, not shed
            nxt = pool.submit(httpx.post, server.url + "/v1/embeddings", json={"input": "next"}, timeout=30)
            time.sleep(0.3)
            assert not nxt.done(), nxt.result().text
            gate.event.set()
            blocker.result(10)
            assert nxt.result(30).status_code == 200
        assert "needle" not in gate.seen, gate.seen


# -------------------------------------------------------------------------------------- filters
def test_raw_sql_is_refused_over_the_network(client):
    r = client.post("/search", json={"text": "seven", "modality": "image", "where": "1=1) OR (1=1"})
    assert_error(r, 400, "raw SQL", "filter")
    assert r.json()["error"]["param"] == "where"
    assert_error(client.post("/search", data={"text": "seven", "where": "1=1"}), 400, "raw SQL")


def _texts(r) -> list[str]:
    assert r.status_code == 200, r.text
    return sorted(h["text"] for h in r.json()["results"])


@pytest.mark.parametrize("op,value", [
    ("contains", "%"), ("contains", "'"), ("contains", "--"), ("contains", ")"), ("contains", "_"),
    ("contains", "\\"), ("eq", "1=1) OR (1=1"), ("eq", "it's a square"), ("contains", "' OR '1'='1"),
    ("starts_with", "a"), ("ends_with", "e"), ("ne", "a red circle"),
    ("in", ["x -- y", "(a) OR (b)", "nope'); DROP TABLE items; --"]), ("not_in", ["seven dogs"]),
])
def test_filter_values_are_literal(client, op, value):
    """Whatever the value holds, the filter keeps exactly the texts a literal comparison keeps."""
    pred = {"eq": lambda t: t == value, "ne": lambda t: t != value, "contains": lambda t: value in t,
            "starts_with": lambda t: t.startswith(value), "ends_with": lambda t: t.endswith(value),
            "in": lambda t: t in value, "not_in": lambda t: t not in value}[op]
    want = sorted(t for t in CAPTIONS if pred(t))
    r = client.post("/search", json={"text": "x", "modality": "text", "k": 100,
                                     "filter": {"column": "text", "op": op, "value": value}})
    assert _texts(r) == want


def test_the_modality_restriction_cannot_be_widened(client):
    widen = {"or": [{"column": "modality", "value": "text"}, {"column": "modality", "value": "audio"},
                    {"not": {"column": "modality", "value": "image"}}]}
    r = client.post("/search", json={"text": "seven", "modality": "image", "k": 100, "filter": widen})
    assert r.status_code == 200 and r.json()["results"] == []
    r = client.post("/search", json={"text": "seven", "modality": "image", "k": 100,
                                     "filter": {"column": "text", "op": "contains", "value": "') OR (1=1"}})
    assert r.status_code == 200 and r.json()["results"] == []
    both = {"and": [{"column": "name", "op": "ends_with", "value": ".png"},
                    {"not": {"column": "name", "value": "red_circle.png"}}]}
    names = {h["name"] for h in client.post("/search", json={"text": "x", "k": 100, "filter": both}).json()["results"]}
    assert names and all(n.endswith(".png") and n != "red_circle.png" for n in names)
    # a filter as a form field (the page's) is the same JSON
    r = client.post("/search", data={"text": "x", "k": "100", "filter": json.dumps({"column": "modality", "value": "audio"})})
    assert r.status_code == 200 and {h["modality"] for h in r.json()["results"]} == {"audio"}


@pytest.mark.parametrize("spec,words", [
    ({"column": "uri", "value": "/etc"}, ["unknown column 'uri'", "id, modality, text, name"]),
    ({"column": "metadata", "op": "contains", "value": "/"}, ["unknown column 'metadata'"]),
    ({"column": "1=1) OR (1", "value": "x"}, ["unknown column"]),
    ({"column": "text", "op": "LIKE", "value": "%"}, ["unknown operator 'LIKE'"]),
    ({"column": "text", "op": "eq", "value": 1}, ["must be a string"]),
    ({"column": "text", "op": "in", "value": "abc"}, ["list"]),
    ({"column": "name", "op": "contains", "value": "a"}, ["unknown operator 'contains' for name"]),
    ({"column": "name", "value": "../../etc/passwd"}, ["path separator"]),
    ({"and": []}, ["non-empty list"]),
    ({"and": [{"column": "text", "value": "a"}], "or": []}, ["only key"]),
    ({"column": "text", "value": "a", "sql": "1=1"}, ["unknown key 'sql'"]),
    ({"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"column": "text", "value": "a"}}}}}}}}}},
     ["nested deeper"]),
])
def test_bad_filters_are_400_naming_the_problem(client, spec, words):
    r = client.post("/search", json={"text": "x", "filter": spec})
    assert_error(r, 400, "filter", *words)
    assert r.json()["error"]["param"] == "filter"


def test_media_is_served_only_under_the_indexed_folders_after_resolving_symlinks(world, tmp_path):
    from fastapi.testclient import TestClient

    from onepeace.search.ingest import build
    from onepeace.search.store import Index

    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.png"
    secret.write_bytes((world["media"] / "red_circle.png").read_bytes())
    coll = tmp_path / "collection"
    coll.mkdir()
    (coll / "inside.png").write_bytes((world["media"] / "red_circle.png").read_bytes())
    os.symlink(secret, coll / "escape.png")  # a link in the collection pointing out of it
    os.symlink(coll / "inside.png", coll / "alias.png")  # a link that stays inside
    build(tmp_path / "index", world["model"], [coll], batch_size=4, workers=0, progress=False)
    with TestClient(create_app(world["model"], Index.open(tmp_path / "index"))) as c:
        hits = {h["name"]: h for h in c.post("/search", json={"text": "x", "k": 10}).json()["results"]}
        assert set(hits) == {"inside.png", "escape.png", "alias.png"}
        assert c.get(hits["inside.png"]["media_url"]).status_code == 200
        assert c.get(hits["alias.png"]["media_url"]).status_code == 200
        for url in (hits["escape.png"]["media_url"], hits["escape.png"]["thumb_url"]):
            r = c.get(url)
            msg = assert_error(r, 403, "outside the folders")
            assert str(outside) not in msg and r.content != secret.read_bytes()


# ------------------------------------------------------------------------- request parsing
@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"text": ' + b"[" * 100_000, b'{"filter": ' + b'{"not": ' * 50_000])
def test_deeply_nested_json_is_a_400_not_a_500(client, body):
    r = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert_error(r, 400)
    r = client.post("/search", data={"text": "x", "filter": "[" * 100_000})
    assert_error(r, 400, "filter")
    assert client.get("/health").status_code == 200


def test_filter_json_strings_with_injection_keep_the_query_valid(world):
    """compile_filter against LanceDB directly: every value is one literal (the count of hits
    equals the Python count), for every operator."""
    from onepeace.search.store import compile_filter

    idx = world["index"]
    rows = idx.rows(["text", "modality"], where="modality = 'text'")
    texts = [r["text"] for r in rows]
    for value in ["%", "_", "'", "''", "\\", "\\'", "--", "/*", ")", "(", "1=1) OR (1=1", "a%b", "'; --"]:
        for op, pred in (("contains", lambda t, v: v in t), ("starts_with", str.startswith),
                         ("ends_with", str.endswith), ("eq", str.__eq__)):
            sql = compile_filter({"and": [{"column": "modality", "value": "text"},
                                          {"column": "text", "op": op, "value": value}]})
            got = sorted(r["text"] for r in idx.rows(["text"], where=sql))
            assert got == sorted(t for t in texts if pred(t, value)), (op, value, sql)


# --------------------------------------------------------------------------------- result shape
def test_one_result_shape_documented_in_the_openapi_schema(client):
    r = client.post("/search", json={"text": "a red circle", "k": 3})
    body = r.json()
    assert body["schema_version"] == 1 and len(body["hits"]) == 3
    assert body["results"] == body["hits"]  # the old name, for a deprecation period
    for h in body["hits"]:
        assert {"id", "modality", "text", "metadata", "score", "prob"} <= set(h)
    schema = client.get("/openapi.json").json()
    ok = schema["paths"]["/search"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/SearchResponse")
    props = schema["components"]["schemas"]["SearchResponse"]["properties"]
    assert "hits" in props and props["results"].get("deprecated") is True


def test_the_cli_json_has_the_same_schema(world, client, capsys):
    from onepeace.cli import main

    assert main(["search", str(world["root"] / "index"), "--text", "a red circle", "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    served = client.post("/search", json={"text": "a red circle", "k": 3}).json()
    assert out["schema_version"] == served["schema_version"] == 1
    assert [h["id"] for h in out["hits"]] == [h["id"] for h in served["hits"]]
    common = {"id", "modality", "text", "metadata", "score", "prob"}
    assert all(common <= set(h) for h in out["hits"])
