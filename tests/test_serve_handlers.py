"""The server's handlers called as plain coroutines, without HTTP: each route module's work takes the
app's ServeState explicitly (create_app puts it on app.state.serve), so a test reaches embeddings,
search, health and the model list without a client, and gets the body the HTTP path answers. The
errors they raise (ServeError) carry the same JSON the HTTP path gives."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("lancedb")
pytest.importorskip("httpx")

from onepeace.serve.app import create_app  # noqa: E402
from onepeace.serve.errors import ServeError  # noqa: E402
from onepeace.serve.routes import embeddings as embeddings_route  # noqa: E402
from onepeace.serve.routes import health as health_route  # noqa: E402
from onepeace.serve.routes import models as models_route  # noqa: E402
from onepeace.serve.routes import search as search_route  # noqa: E402
from onepeace.serve.schemas import EmbeddingRequest  # noqa: E402
from onepeace.serve.state import Limits, ServeState  # noqa: E402
from test_serve import TEXTS, assert_matches_alone, world  # noqa: E402,F401  (the tiny model and its index)

TEXT_ONLY = {"and": [{"column": "modality", "op": "eq", "value": "text"},
                     {"column": "text", "op": "contains", "value": "circle"}]}


@pytest.fixture(scope="module")
def app(world):  # noqa: F811
    return create_app(world["model"], world["index"], api_key="secret", max_inputs=4, max_k=5)


@pytest.fixture(scope="module")
def state(app) -> ServeState:
    """The app's state, its batchers running (what the app's lifespan does)."""
    state = app.state.serve
    state.start()
    yield state
    state.close()


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app, headers={"Authorization": "Bearer secret"}) as c:
        yield c


def call(handler, *args):
    """``handler(*args)`` awaited in an event loop of its own (no server, no client)."""
    return asyncio.run(handler(*args))


def test_the_app_hands_its_state_to_the_handlers(app, state, world):  # noqa: F811
    assert isinstance(state, ServeState)
    assert state.index is world["index"] and state.default.model is world["model"]
    assert state.index_model is state.default and state.api_key == "secret"
    assert state.limits == Limits(max_inputs=4, max_k=5, max_request_bytes=16 * 1024 * 1024, timeout_s=30.0)
    # the names app.state has always had stay there
    assert app.state.model is world["model"] and app.state.batcher is state.default.batcher


def test_embeddings_of_texts_without_http(state, world):  # noqa: F811
    body = call(embeddings_route.create_embeddings, state, EmbeddingRequest(input=TEXTS[:3]))
    assert body["object"] == "list" and body["model"] == "model"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert_matches_alone(world, [d["embedding"] for d in body["data"]], "text", TEXTS[:3])
    encode = world["model"].processor.get("text").encode
    tokens = sum(len(encode(t)) for t in TEXTS[:3])
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    # the registered endpoint answers the same body as JSON
    response = call(embeddings_route.embeddings, state, EmbeddingRequest(input=TEXTS[:3]))
    sent = json.loads(response.body)
    assert sent["usage"] == body["usage"] and sent["model"] == body["model"]
    assert_matches_alone(world, [d["embedding"] for d in sent["data"]], "text", TEXTS[:3])


def test_search_with_a_filter_without_http(state, client):
    fields = {"text": "a red circle", "k": 5, "filter": TEXT_ONLY}
    req, files = search_route.search_request(state, fields)
    assert files == {} and req.k == 5
    body = call(search_route.run_search, state, req, files)
    assert body["schema_version"] == 1 and body["inputs"] == ["text"] and body["model"] == "model"
    assert [h["text"] for h in body["hits"]] == ["a red circle"] and body["hits"] == body["results"]
    assert body["hits"][0]["modality"] == "text" and body["hits"][0]["media_url"] is None
    over_http = client.post("/search", json=fields).json()
    assert [(h["id"], h["text"]) for h in over_http["hits"]] == [(h["id"], h["text"]) for h in body["hits"]]
    assert over_http["hits"][0]["score"] == pytest.approx(body["hits"][0]["score"], abs=1e-5)


@pytest.mark.parametrize("fields, status, code", [
    ({"text": "a dog", "where": "1=1"}, 400, "raw_sql_refused"),
    ({"text": "a dog", "bogus": 1}, 400, None),
    ({"text": "a dog", "k": 99}, 400, None),
    ({"text": "a dog", "model": "nobody"}, 404, "model_not_found"),
    ({"text": "a dog", "filter": {"column": "uri", "op": "eq", "value": "x"}}, 400, None),
    ({}, 400, None),
])
def test_a_bad_search_raises_the_error_the_http_path_answers(state, client, fields, status, code):
    with pytest.raises(ServeError) as raised:
        req, files = search_route.search_request(state, fields)
        call(search_route.run_search, state, req, files)
    assert raised.value.status_code == status and raised.value.code == code
    r = client.post("/search", json=fields)
    assert r.status_code == status and r.json() == raised.value.body()


@pytest.mark.parametrize("request_fields, status", [
    ({"input": []}, 400), ({"input": ["a"] * 5}, 413), ({"input": [[1, 2]]}, 400),
    ({"input": "a", "modality": "smell"}, 400), ({"input": "a", "dimensions": 3}, 400),
    ({"input": "a", "model": "nobody"}, 404),
])
def test_a_bad_embeddings_request_raises_the_error_the_http_path_answers(state, client, request_fields, status):
    with pytest.raises(ServeError) as raised:
        call(embeddings_route.create_embeddings, state, EmbeddingRequest(**request_fields))
    assert raised.value.status_code == status
    r = client.post("/v1/embeddings", json=request_fields)
    assert r.status_code == status and r.json() == raised.value.body()


def test_health_and_models_without_http(state, client, world):  # noqa: F811
    health = call(health_route.health_status, state, True)
    assert health["status"] == "ok" and health["auth"] is True and health["search"] is True
    assert health["model"] == "model" and health["models"] == ["model"] and health["dim"] == world["model"].config.dim
    assert health["index"]["rows"] == 11 and health["index"]["name"] == "index"
    assert health["batching"]["max_in_flight"] == 256
    over_http = client.get("/health").json()
    assert {k: v for k, v in over_http.items() if k != "batching"} == {k: v for k, v in health.items()
                                                                       if k != "batching"}
    # without the API key: only that the server is up
    assert call(health_route.health_status, state, state.key_ok(None)) == {"status": "ok", "auth": True}
    assert client.get("/health", headers={"Authorization": "Bearer wrong"}).json() == {"status": "ok", "auth": True}
    listed = call(models_route.models, state)
    assert listed == client.get("/v1/models").json()
    (only,) = listed["data"]
    assert only["id"] == "model" and only["default"] and only["search"] and only["dimensions"] == health["dim"]


def test_the_key_check_is_a_plain_method(state):
    assert state.key_ok("Bearer secret") and state.key_ok("bearer  secret ")
    assert not state.key_ok(None) and not state.key_ok("Bearer nope") and not state.key_ok("Basic secret")
    with pytest.raises(ServeError) as raised:
        state.authorize("Bearer nope")
    assert raised.value.status_code == 401 and raised.value.headers == {"WWW-Authenticate": "Bearer"}


def test_without_an_index_search_is_off_as_over_http(world):  # noqa: F811
    state = create_app(world["model"]).state.serve
    req, files = search_route.search_request(state, {"text": "a dog"})
    with pytest.raises(ServeError) as raised:
        call(search_route.run_search, state, req, files)
    assert raised.value.status_code == 404 and raised.value.code == "no_index"
    health = call(health_route.health_status, state)
    assert health["search"] is False and health["index"] is None and health["auth"] is False
