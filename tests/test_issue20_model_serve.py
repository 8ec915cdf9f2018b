"""Issue 20, the server side: no absolute server path in any answer, the precision reported,
float32 unit vectors over HTTP from a bf16 model, embeddings-only serving without an index,
``/embeddings`` as ``/v1/embeddings``, and ``/search`` with several texts and weights."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys

import httpx
import numpy as np
import pytest

import onepeace
from conftest import EPS32, tiny_search_collection
from onepeace.search import query
from onepeace.serve.app import create_app

TEXTS = ["a red circle", "a pure tone", "a noisy sound", "a green triangle", "a blue square"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from onepeace.search.ingest import build
    from onepeace.search.store import Index

    root = tmp_path_factory.mktemp("issue20serve").resolve()
    model_dir, media = tiny_search_collection(root)
    (root / "captions.txt").write_text("\n".join(TEXTS) + "\n")
    model = onepeace.OnePeace.from_pretrained(model_dir)
    counts = build(root / "index", model, [media, root / "captions.txt"], batch_size=4, workers=0, progress=False)
    assert counts["skipped"] == 0, counts
    return {"root": root, "model_dir": model_dir, "media": media, "model": model, "index": Index.open(root / "index")}


@pytest.fixture(scope="module")
def client(world):
    from fastapi.testclient import TestClient

    with TestClient(create_app(world["model"], world["index"])) as c:
        yield c


def _png_b64(world) -> str:
    return base64.b64encode((world["media"] / "red_circle.png").read_bytes()).decode()


def test_no_answer_names_a_path_of_the_server(world, client):
    root = str(world["root"])
    answers = {
        "health": client.get("/health"),
        "models": client.get("/v1/models"),
        "embeddings": client.post("/v1/embeddings", json={"input": ["a red circle"]}),
        "search text": client.post("/search", json={"text": "a red circle", "k": 20}),
        "search image": client.post("/search", json={"image": _png_b64(world), "k": 20}),
        "search form": client.post("/search", data={"text": "a tone", "k": "20"}),
        "bad model": client.post("/v1/embeddings", json={"input": "x", "model": "nope"}),
        "bad filter": client.post("/search", json={"text": "x", "where": "nonsense ((("}),
        "bad structured filter": client.post("/search", json={"text": "x", "filter": {"column": "uri", "value": root}}),
    }
    for what, r in answers.items():
        assert root not in r.text and str(world["model_dir"]) not in r.text, (what, r.text[:500])
    assert answers["models"].json()["data"][0]["id"] == "model"  # the directory's name
    health = answers["health"].json()
    assert health["model"] == "model" and health["index"]["model"] == "model" and health["index"]["name"] == "index"
    hits = answers["search text"].json()["results"]
    files = [h for h in hits if h["modality"] != "text"]
    assert files and {h["metadata"]["source"] for h in files} == {"media"}  # the indexed folder's name
    assert {h["metadata"]["source"] for h in hits if h["modality"] == "text"} == {"captions.txt"}
    # a client naming the model by the path it was started with is still served
    assert client.post("/v1/embeddings", json={"input": "x", "model": str(world["model_dir"])}).status_code == 200


def test_precision_is_reported(world, client):
    assert client.get("/v1/models").json()["data"][0]["precision"] == world["model"].precision == "fp32"
    assert client.get("/health").json()["precision"] == "fp32"


def test_a_bf16_server_returns_float32_unit_vectors(world):
    from fastapi.testclient import TestClient

    m = onepeace.OnePeace.from_pretrained(world["model_dir"], dtype="bf16")
    with TestClient(create_app(m, None)) as c:
        assert c.get("/v1/models").json()["data"][0]["precision"] == "bf16"
        assert c.get("/health").json()["precision"] == "bf16"
        texts = ["a red circle", "a pure tone", "two cats on a mat"]
        rows = np.array([d["embedding"] for d in c.post("/v1/embeddings", json={"input": texts}).json()["data"]])
        b64 = c.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"}).json()["data"]
    tol = (m.config.dim + 4) * EPS32  # float32 normalisation: see tests/test_issue20_model.py
    assert np.abs(np.linalg.norm(rows, axis=1) - 1).max() <= tol
    self_cos = [float(np.dot(r, r)) for r in rows]  # a vector's cosine with itself
    assert max(abs(s - 1) for s in self_cos) <= 2 * tol
    z = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64]).astype(np.float64)
    assert np.abs(np.linalg.norm(z, axis=1) - 1).max() <= tol


def test_embeddings_only_without_an_index(world):
    from fastapi.testclient import TestClient

    with TestClient(create_app(world["model"], None)) as c:
        health = c.get("/health").json()
        assert health["index"] is None and health["search"] is False
        assert c.get("/v1/models").json()["data"][0]["search"] is False
        r = c.post("/search", json={"text": "a dog"})
        assert r.status_code == 404 and "no index" in r.json()["error"]["message"]
        assert c.get("/media/" + "0" * 40).status_code == 404
        assert c.post("/v1/embeddings", json={"input": "a dog"}).status_code == 200
        page = c.get("/")
        assert page.status_code == 200 and "<form" in page.text
        assert "search is off" in c.get("/static/app.js").text


def test_embeddings_alias(client):
    a = client.post("/v1/embeddings", json={"input": ["a red circle", "a dog"]})
    b = client.post("/embeddings", json={"input": ["a red circle", "a dog"]})
    assert a.status_code == b.status_code == 200
    assert [d["embedding"] for d in a.json()["data"]] == [d["embedding"] for d in b.json()["data"]]


def test_search_takes_several_texts_with_weights(world, client):
    want = query.search(world["index"], world["model"], text=["a red circle", "a green triangle"],
                        weights=[1, -0.5], k=6)
    r = client.post("/search", json={"text": ["a red circle", "a green triangle"], "weights": [1, -0.5], "k": 6})
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["results"]] == [h["id"] for h in want]
    alone = query.search(world["index"], world["model"], text="a red circle", k=6)
    assert [h["score"] for h in want] != [h["score"] for h in alone]  # the second text counts
    form = client.post("/search", data={"text": ["a red circle", "a green triangle"], "weights": "[1, -0.5]", "k": "6"})
    assert form.status_code == 200, form.text
    assert [h["id"] for h in form.json()["results"]] == [h["id"] for h in want]
    # with an image too: weights in the order text, text, image
    both = query.search(world["index"], world["model"], text=["a red circle", "a tone"],
                        image=str(world["media"] / "red_circle.png"), weights=[1, 0.5, -0.25], k=6)
    r = client.post("/search", json={"text": ["a red circle", "a tone"], "image": _png_b64(world),
                                     "weights": [1, 0.5, -0.25], "k": 6})
    assert [h["id"] for h in r.json()["results"]] == [h["id"] for h in both]
    bad = client.post("/search", json={"text": ["a", "b"], "weights": [1]})
    assert bad.status_code == 400 and "1 weights for 2 query inputs" in bad.json()["error"]["message"]
    assert client.post("/search", json={"text": []}).status_code == 400


def test_cli_serves_embeddings_only_with_a_model_and_no_index(world, capsys):
    from onepeace.cli import main

    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model" in err, err
    exe = os.path.join(os.path.dirname(sys.executable), "onepeace")
    proc = subprocess.Popen([exe, "serve", "--model", str(world["model_dir"]), "--port", "0", "--threads", "1",
                             "--dtype", "fp32"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "onepeace serve: http://127.0.0.1:" in line and "search is off" in line, line + proc.stderr.read()
        url = line.split()[2].rstrip("/")
        assert httpx.get(url + "/health", timeout=30).json()["search"] is False
        r = httpx.post(url + "/embeddings", json={"input": "a dog"}, timeout=30)
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == world["model"].config.dim
        r = httpx.post(url + "/search", json={"text": "a dog"}, timeout=30)
        assert r.status_code == 404 and json.loads(r.text)["error"]["code"] == "no_index"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
    assert proc.returncode == 0

