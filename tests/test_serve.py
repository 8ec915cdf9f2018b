"""onepeace serve: /v1/embeddings (OpenAI client against the live server), /search, /media, the
micro-batcher, request bounds, bad input and faults. A tiny model and a real index of the bundled
samples (built with onepeace.search.ingest.build); each test takes well under a second or two."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib import resources

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("lancedb")
httpx = pytest.importorskip("httpx")

import onepeace  # noqa: E402
from conftest import derived_tol, maxdiff, model_depth, tiny_search_collection  # noqa: E402
from onepeace.serve.app import ServerThread, create_app  # noqa: E402
from onepeace.serve.batching import MicroBatcher  # noqa: E402

SAMPLES = resources.files("onepeace") / "assets" / "samples"
TEXTS = ["a red circle", "a blue square", "a green triangle", "the sound of noise", "a pure tone"]


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved tiny model (and its float64 twin), a media folder and an index built from it."""
    from onepeace.search.ingest import build

    root = tmp_path_factory.mktemp("serve")
    _, media = tiny_search_collection(root)
    (root / "captions.txt").write_text("\n".join(TEXTS) + "\n")
    model = onepeace.OnePeace.from_pretrained(root / "model")
    counts = build(root / "index", model, [media, root / "captions.txt"], batch_size=4, workers=0, progress=False)
    assert counts["skipped"] == 0 and counts["added"] == 11, counts
    from onepeace.search.store import Index

    index = Index.open(root / "index")
    model64 = onepeace.OnePeace.from_pretrained(root / "model", dtype=torch.float64)
    return {"root": root, "model": model, "model64": model64, "index": index, "media": media}


@pytest.fixture(scope="module")
def app(world):
    return create_app(world["model"], world["index"], max_request_bytes=1 << 20, timeout_s=20)


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def live(app):
    with ServerThread(app) as server:
        yield server


def b64(path) -> str:
    return base64.b64encode(open(path, "rb").read()).decode()


def assert_matches_alone(world, got, modality, items):
    """Rows served (possibly inside a batch of other requests) against ``model.embed`` of the same
    inputs alone: the difference is bounded by the float32 error of the alone result (measured
    against the same model in float64), as in the parity tests — nothing tuned to this CPU."""
    alone = world["model"].embed(**{modality: items})[modality].numpy()
    exact = world["model64"].embed(**{modality: items})[modality].numpy()
    got = np.asarray(got, dtype=np.float32)
    tol = derived_tol(alone, exact, got, depth=model_depth(world["model"]))
    assert got.shape == alone.shape
    assert maxdiff(got, alone) <= tol, (maxdiff(got, alone), tol)


def assert_error(r, status, *words):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    msg = body["error"]["message"]
    assert isinstance(msg, str) and "Traceback" not in msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


# --------------------------------------------------------------------------------- embeddings
def test_embeddings_text_is_openai_shaped_with_usage_and_base64(world, client):
    r = client.post("/v1/embeddings", json={"input": TEXTS[:3], "model": "onepeace"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    rows = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert_matches_alone(world, rows, "text", TEXTS[:3])
    encode = world["model"].processor.get("text").encode
    tokens = sum(len(encode(t)) for t in TEXTS[:3])
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert body["model"] == "model"  # the directory's name: no server path leaves the server
    # base64: little-endian float32, the same numbers as float (the same computation: one input
    # alone, in the same worker thread); a single string is a list of one
    floats = client.post("/v1/embeddings", json={"input": TEXTS[0]}).json()["data"][0]["embedding"]
    r = client.post("/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64",
                                            "dimensions": world["model"].config.dim})
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(vec, np.array(floats, dtype=np.float32))


def test_embeddings_images_and_audio_as_base64_and_data_uris(world, client):
    png = sorted(world["media"].glob("*.png"))
    wav = sorted(world["media"].glob("*.wav"))
    r = client.post("/v1/embeddings", json={"input": [f"data:image/png;base64,{b64(png[0])}", b64(png[1])],
                                            "modality": "image"})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 0
    assert_matches_alone(world, [d["embedding"] for d in r.json()["data"]], "image", [str(p) for p in png[:2]])
    from PIL import Image

    jpeg = io.BytesIO()
    Image.open(png[2]).convert("RGB").save(jpeg, format="JPEG")
    encoded = base64.b64encode(jpeg.getvalue()).decode()
    assert encoded.startswith("/9j/")  # JPEG in base64 looks like a path: still an image
    r = client.post("/v1/embeddings", json={"input": [encoded], "modality": "image"})
    assert_matches_alone(world, [r.json()["data"][0]["embedding"]], "image", [jpeg.getvalue()])
    r = client.post("/v1/embeddings", json={"input": [f"data:audio/wav;base64,{b64(wav[0])}"], "modality": "audio"})
    assert r.status_code == 200, r.text
    assert_matches_alone(world, [r.json()["data"][0]["embedding"]], "audio", [str(wav[0])])


def test_openai_client_against_the_live_server(world, live):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    out = client.embeddings.create(input=TEXTS, model="onepeace")  # the client asks for base64 and decodes it
    assert len(out.data) == len(TEXTS) and out.usage.prompt_tokens > 0
    assert_matches_alone(world, [d.embedding for d in out.data], "text", TEXTS)
    out = client.embeddings.create(input=TEXTS[:1], model="onepeace", encoding_format="float")
    assert len(out.data[0].embedding) == world["model"].config.dim
    png = sorted(world["media"].glob("*.png"))[0]
    out = client.embeddings.create(input=[f"data:image/png;base64,{b64(png)}"], model="onepeace",
                                   extra_body={"modality": "image"})
    assert_matches_alone(world, [out.data[0].embedding], "image", [str(png)])
    assert [m.id for m in client.models.list().data] == ["model"]
    with pytest.raises(openai.BadRequestError, match="the list is empty"):
        client.embeddings.create(input=[], model="onepeace")
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.embeddings.create(input=["x"], model="text-embedding-3-small")


# ------------------------------------------------------------------------------ micro-batching
def test_concurrent_requests_share_forward_passes_and_get_their_own_rows(world):
    app = create_app(world["model"], None, max_batch=16, max_wait_ms=200)
    texts = [("a " + "very " * i + "long caption") for i in range(12)]
    png = [str(p) for p in sorted(world["media"].glob("*.png"))]
    results: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(len(texts) + len(png))

    def ask(i: int, payload: dict) -> None:
        barrier.wait()
        r = httpx.post(server.url + "/v1/embeddings", json=payload, timeout=60)
        assert r.status_code == 200, r.text
        results[i] = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)

    with ServerThread(app) as server:
        jobs = [{"input": t} for t in texts] + [{"input": b64(p), "modality": "image"} for p in png]
        threads = [threading.Thread(target=ask, args=(i, p)) for i, p in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = app.state.batcher.stats
    assert len(results) == len(jobs)
    assert stats.largest_batch > 1 and stats.batches < len(jobs), stats  # requests shared forward passes
    assert_matches_alone(world, np.concatenate([results[i] for i in range(len(texts))]), "text", texts)
    assert_matches_alone(world, np.concatenate([results[len(texts) + i] for i in range(len(png))]), "image", png)


def test_batcher_splits_rows_isolates_failures_and_skips_cancelled_jobs():
    seen: list[tuple[str, int]] = []
    gate = threading.Event()

    def embed(modality, items):
        gate.wait(5)
        if "bad" in items:
            raise ValueError("bad input")
        seen.append((modality, len(items)))
        return np.array([[float(x), float(len(modality))] for x in items])

    b = MicroBatcher(embed, max_batch=4, max_wait_ms=50)
    try:
        blocker = b.submit("text", [0])  # holds the worker until the gate opens
        time.sleep(0.1)
        futures = [b.submit("text", [1, 2]), b.submit("image", [3]), b.submit("text", [4, 5, 6]),
                   b.submit("text", ["bad"]), b.submit("image", [7])]
        cancelled = b.submit("text", [8])
        assert cancelled.cancel()
        gate.set()
        assert blocker.result(5).tolist() == [[0.0, 4.0]]
        assert futures[0].result(5)[:, 0].tolist() == [1.0, 2.0]
        assert futures[1].result(5).tolist() == [[3.0, 5.0]]
        assert futures[2].result(5)[:, 0].tolist() == [4.0, 5.0, 6.0]
        with pytest.raises(ValueError, match="bad input"):
            futures[3].result(5)
        assert futures[4].result(5)[:, 0].tolist() == [7.0]
        assert all(n <= 4 for _, n in seen) and any(n > 1 for _, n in seen)
        assert b.stats.skipped == 1 and 8 not in [x for _, n in seen for x in range(n)]
    finally:
        b.close()
    with pytest.raises(RuntimeError, match="closed"):
        b.submit("text", [1])


# -------------------------------------------------------------------------------------- search
def test_search_json_and_multipart_rank_like_the_python_api(world, client):
    from onepeace.search import query

    r = client.post("/search", json={"text": "a red circle", "k": 4})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    want = query.search(world["index"], world["model"], text="a red circle", k=4)
    assert [h["id"] for h in hits] == [h["id"] for h in want]
    assert np.allclose([h["score"] for h in hits], [h["score"] for h in want], atol=1e-5)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert abs(sum(h["prob"] for h in hits) - 1) < 1e-6
    assert all("uri" not in h and "vector" not in h for h in hits)
    for h in hits:
        assert (h["media_url"] is None) == (h["modality"] == "text")
    # an uploaded image + a text, weighted, images only
    png = sorted(world["media"].glob("*.png"))[0]
    with open(png, "rb") as f:
        r = client.post("/search", files={"image": (png.name, f, "image/png")},
                        data={"text": "a circle", "weights": '{"text": 0.5, "image": 1}', "modality": "image", "k": "3"})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    want = query.search(world["index"], world["model"], text="a circle", image=str(png),
                        weights={"text": 0.5, "image": 1}, modality="image", k=3)
    assert [h["id"] for h in hits] == [h["id"] for h in want] and {h["modality"] for h in hits} == {"image"}
    assert r.json()["inputs"] == ["image", "text"]
    # the same query as JSON with a data URI; a filter on the columns
    r = client.post("/search", json={"image": f"data:image/png;base64,{b64(png)}", "text": "a circle",
                                     "weights": [0.5, 1], "modality": "image", "k": 3})
    assert [h["id"] for h in r.json()["results"]] == [h["id"] for h in want]
    r = client.post("/search", data={"image": b64(png), "text": "a circle", "weights": "text=0.5,image=1",
                                     "modality": "image", "k": "3"})  # base64 in a form field
    assert [h["id"] for h in r.json()["results"]] == [h["id"] for h in want]
    r = client.post("/search", json={"text": "noise", "filter": {"column": "modality", "value": "audio"}, "k": 10})
    assert {h["modality"] for h in r.json()["results"]} == {"audio"}


def test_media_serves_only_indexed_files(world, client):
    hits = client.post("/search", json={"text": "x", "k": 50}).json()["results"]
    img = next(h for h in hits if h["modality"] == "image")
    r = client.get(img["media_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (world["media"] / img["name"]).read_bytes()
    text = next(h for h in hits if h["modality"] == "text")
    assert_error(client.get(f"/media/{text['id']}"), 404, "no file")
    assert_error(client.get("/media/" + "0" * 40), 404, "no item")
    assert_error(client.get("/media/not-an-id"), 400, "not an item id")
    assert_error(client.get(img["media_url"] + "?thumb=5"), 400, "thumb")


@pytest.mark.parametrize("path", [
    "/media/../../etc/passwd", "/media/..%2F..%2Fetc%2Fpasswd", "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/media/%2E%2E/%2E%2E/etc/passwd", "/media/..%5c..%5cetc%5cpasswd", "/media/%252e%252e%252fetc%252fpasswd",
    "/media/....//....//etc/passwd", "/media/%00", "/media//etc/passwd",
])
def test_media_path_traversal_is_refused_on_the_wire(live, path):
    """Raw HTTP (no client-side normalisation of the path): never a file outside the index."""
    with socket.create_connection(("127.0.0.1", int(live.url.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert status in (400, 404), head
    assert b"root:" not in body and json.loads(body)["error"]["message"]


def test_media_thumbnails_of_large_images(world, tmp_path):
    from PIL import Image

    from onepeace.search.ingest import build

    photo = tmp_path / "photos" / "wide.jpg"
    photo.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 600, 3), dtype=np.uint8)).save(photo)
    build(tmp_path / "index", world["model"], [photo.parent], batch_size=2, workers=0, progress=False)
    from fastapi.testclient import TestClient

    from onepeace.search.store import Index

    with TestClient(create_app(world["model"], Index.open(tmp_path / "index"))) as c:
        hit = c.post("/search", json={"text": "x"}).json()["results"][0]
        r = c.get(hit["media_url"] + "?thumb=128")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(r.content)).size == (128, 64)
        assert c.get(hit["media_url"]).content == photo.read_bytes()


# --------------------------------------------------------------------------- bad input, faults
def test_bad_requests_are_4xx_json_and_the_server_keeps_serving(world, client):
    wav = sorted(world["media"].glob("*.wav"))[0]
    cases = [
        (client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (client.post("/v1/embeddings", json={"input": []}), 400, "empty"),
        (client.post("/v1/embeddings", json={"input": ["x"], "modality": "smell"}), 400, "unknown modality 'smell'"),
        (client.post("/v1/embeddings", json={"input": [[1, 2, 3]]}), 400, "token ids"),
        (client.post("/v1/embeddings", json={"input": {"a": 1}}), 400, "string"),
        (client.post("/v1/embeddings", json={"input": ["x"], "encoding_format": "int8"}), 400, "encoding_format"),
        (client.post("/v1/embeddings", json={"input": ["x"], "dimensions": 64}), 400, "cannot be shortened"),
        (client.post("/v1/embeddings", json={"input": ["x" * 9000]}), 400, "characters"),
        (client.post("/v1/embeddings", json={"input": ["x"] * 300}), 413, "at most 256"),
        (client.post("/v1/embeddings", json={"input": [b64(wav)], "modality": "image"}), 400, "cannot decode image input[0]"),
        (client.post("/v1/embeddings", json={"input": [f"data:audio/wav;base64,{b64(wav)}"], "modality": "image"}), 400, "audio/wav"),
        (client.post("/v1/embeddings", json={"input": ["!!not base64!!"], "modality": "image"}), 400, "not valid base64"),
        (client.post("/v1/embeddings", json={"input": ["https://example.com/cat.jpg"], "modality": "image"}), 400, "does not fetch URLs"),
        (client.post("/v1/embeddings", json={"input": ["file:///etc/passwd"], "modality": "image"}), 400, "does not fetch URLs"),
        (client.post("/v1/embeddings", json={"input": ["/etc/passwd"], "modality": "image"}), 400, "cannot decode image"),
        (client.post("/search", files={"image": ("notes.png", b"just some text, not a picture", "image/png")}), 400, "cannot decode image"),
        (client.post("/search", files={"audio": ("x.wav", b"RIFF....nonsense", "audio/wav")}), 400, "cannot decode audio"),
        (client.post("/search", json={}), 400, "query is empty"),
        (client.post("/search", json={"text": "x", "modality": "smell"}), 400, "unknown modality"),
        (client.post("/search", json={"text": "x", "k": 0}), 400, "k:"),
        (client.post("/search", json={"text": "x", "colour": "red"}), 400, "colour"),
        (client.post("/search", json={"text": "x", "weights": {"image": 1}}), 400, "no image input"),
        (client.post("/search", json={"text": "x", "weights": [1, 2]}), 400, "2 weights for 1"),
        (client.post("/search", data={"text": "x", "weights": "text=lots"}), 400, "NAME=NUMBER"),
        (client.post("/search", json={"text": "x", "where": "nonsense ((("}), 400, "raw SQL"),
        (client.post("/search", data={"text": "x", "filter": "nonsense((("}), 400, "nonsense"),
        (client.post("/search", json=[1, 2]), 400, "JSON object"),
        (client.post("/search", content=b"text=x", headers={"content-type": "text/plain"}), 415, "Content-Type"),
        (client.get("/nowhere"), 404, "no such endpoint"),
        (client.get("/v1/embeddings"), 405, ""),
    ]
    for r, status, words in cases:
        assert_error(r, status, words)
    assert client.get("/health").json()["status"] == "ok"
    assert client.post("/v1/embeddings", json={"input": "still here"}).status_code == 200


def test_huge_uploads_get_413_before_or_while_reading(world, client):
    big = b"\x89PNG" + b"\0" * (2 << 20)
    assert_error(client.post("/search", files={"image": ("big.png", big, "image/png")}), 413, "limit of 1,048,576 bytes")

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(40):
            yield b"x" * 65536

    assert_error(client.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"}),
                 413, "over the server's limit")
    assert client.post("/search", json={"text": "after"}).status_code == 200


def test_a_slow_request_gets_408_and_the_server_recovers(world):
    from fastapi.testclient import TestClient

    app = create_app(world["model"], world["index"], timeout_s=0.3)
    batcher = app.state.batcher
    fast = batcher._embed

    def slow(modality, items):
        time.sleep(1.0)
        return fast(modality, items)

    with TestClient(app) as c:
        batcher._embed = slow
        t0 = time.monotonic()
        assert_error(c.post("/v1/embeddings", json={"input": "x"}), 408, "0.3 s")
        assert_error(c.post("/search", json={"text": "x"}), 408, "--timeout")
        assert time.monotonic() - t0 < 1.5
        batcher._embed = fast
        time.sleep(1.0)
        assert c.post("/v1/embeddings", json={"input": "x"}).status_code == 200
    # a client that sends its body too slowly (here: half of it, then nothing)
    with ServerThread(app) as server, socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as s:
        s.settimeout(10)
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 40\r\n\r\n{\"input\": ")
        head = s.recv(65536).split(b"\r\n", 1)[0]
        assert head.split()[1] == b"408", head
        assert httpx.get(server.url + "/health").status_code == 200


def test_clients_that_disconnect_mid_request_do_not_hurt_the_server(world, live):
    port = int(live.url.rsplit(":", 1)[1])
    png = sorted(world["media"].glob("*.png"))[0]
    body = json.dumps({"input": [b64(png)] * 8, "modality": "image"}).encode()
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    for cut in (len(body) // 2, len(body)):  # mid-body, then right after the body (before the answer)
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(head + body[:cut])
            s.close()
    search_body = b'{"text": "a'  # a search cut inside its JSON
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
              + search_body)
    s.close()
    time.sleep(0.5)
    assert httpx.get(live.url + "/health", timeout=10).json()["status"] == "ok"
    r = httpx.post(live.url + "/v1/embeddings", json={"input": [b64(png)], "modality": "image"}, timeout=30)
    assert r.status_code == 200
    assert_matches_alone(world, [r.json()["data"][0]["embedding"]], "image", [str(png)])


def test_search_while_the_index_is_being_updated(world, tmp_path):
    from onepeace.search.ingest import build
    from onepeace.search.store import Index

    build(tmp_path / "index", world["model"], [world["media"], world["root"] / "captions.txt"], batch_size=4,
          workers=0, progress=False)
    index = Index.open(tmp_path / "index")
    writer = Index.open(tmp_path / "index")  # another handle, as `onepeace index build` would be
    rng = np.random.default_rng(0)
    dim = world["model"].config.dim
    failures: list[str] = []
    done = threading.Event()

    def add() -> None:
        try:
            for b in range(10):
                writer.add([{"modality": "text", "text": f"new {b}-{i}", "content_hash": f"{b}-{i}",
                             "vector": rng.standard_normal(dim)} for i in range(5)])
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            failures.append(repr(e))
        finally:
            done.set()

    with ServerThread(create_app(world["model"], index)) as server:
        before = httpx.get(server.url + "/health").json()["index"]["rows"]
        thread = threading.Thread(target=add)
        thread.start()
        statuses = []
        while not done.is_set() or not statuses:
            r = httpx.post(server.url + "/search", json={"text": "a circle", "k": 5}, timeout=30)
            statuses.append(r.status_code)
            assert r.status_code == 200, r.text
        thread.join()
        after = httpx.get(server.url + "/health").json()["index"]["rows"]
        r = httpx.post(server.url + "/search", json={"text": "x", "filter": {"column": "text", "op": "starts_with", "value": "new "},
                                                          "k": 100})
    assert not failures, failures
    assert after == before + 50 and len(r.json()["results"]) == 50


def test_api_key(world):
    from fastapi.testclient import TestClient

    with TestClient(create_app(world["model"], world["index"], api_key="s3cret")) as c:
        assert_error(c.post("/v1/embeddings", json={"input": "x"}), 401, "API key")
        r = c.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer wrong"})
        assert_error(r, 401, "API key") and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert_error(c.post("/search", json={"text": "x"}), 401)
        assert_error(c.get("/media/" + "0" * 40), 401)
        assert c.get("/health").json() == {"status": "ok", "auth": True}  # open, but says nothing more
        assert c.get("/health", headers={"Authorization": "Bearer s3cret"}).json()["model"]
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200


def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    for ref in ("/static/app.js", "/static/style.css"):
        assert ref in r.text and client.get(ref).status_code == 200
    assert_error(client.get("/static/../app.py"), 404)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_errors_are_one_line_before_serving(world, tmp_path, capsys):
    from onepeace.cli import main

    def run(*args):
        code = main(["serve", *map(str, args)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        return err

    assert "no index at" in run(tmp_path / "nope")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    assert "not an onepeace index" in run(tmp_path / "junk")
    torch.manual_seed(1)
    other = onepeace.create_model("tiny", layers=1)
    other.save_pretrained(tmp_path / "other")
    assert "was built with the model" in run(world["root"] / "index", "--model", tmp_path / "other", "--port", 0)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert "in use" in run(world["root"] / "index", "--port", port)
    assert "--api-key is empty" in run(world["root"] / "index", "--api-key", "")


@pytest.mark.slow
def test_cli_serves_the_index(world):
    """`onepeace serve DB` (the model recorded in the index) as a user runs it, on a free port."""
    exe = os.path.join(os.path.dirname(sys.executable), "onepeace")
    proc = subprocess.Popen([exe, "serve", str(world["root"] / "index"), "--port", "0", "--threads", "1"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "ONEPEACE_API_KEY": "k"})
    try:
        line = proc.stderr.readline()
        assert "onepeace serve: http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split()[2].rstrip("/")
        headers = {"Authorization": "Bearer k"}
        assert httpx.get(url + "/health", headers=headers, timeout=30).json()["index"]["rows"] == 11
        r = httpx.post(url + "/search", json={"text": "a pure tone", "modality": "text", "k": 1}, headers=headers, timeout=30)
        assert r.json()["results"][0]["text"] == "a pure tone"
        assert httpx.post(url + "/search", json={"text": "x"}, timeout=30).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        proc.wait(15)
    assert proc.returncode == 0 and "stopped" in proc.stderr.read()
