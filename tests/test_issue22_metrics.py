"""Issue 22 item 4: GET /metrics in the Prometheus text format (prometheus-client), one registry
per app, behind the API key when one is set."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import onepeace  # noqa: E402
from conftest import tiny_search_collection  # noqa: E402
from onepeace.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model_dir, _ = tiny_search_collection(tmp_path_factory.mktemp("issue22metrics"))
    return onepeace.OnePeace.from_pretrained(model_dir)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_batches_rejections_and_load_time(model):
    from fastapi.testclient import TestClient

    with TestClient(create_app(model, None, model_load_s=1.25, max_queue=8)) as a, \
            TestClient(create_app(model, None)) as b:  # two apps in one process: separate registries
        for _ in range(3):
            assert a.post("/v1/embeddings", json={"input": ["x", "y"]}).status_code == 200
        assert a.post("/v1/embeddings", json={"input": []}).status_code == 400
        r = a.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        got = samples(r.text)
        route = ("route", "/v1/embeddings")
        assert got[("onepeace_requests_total", (("method", "POST"), route, ("status", "200")))] == 3
        assert got[("onepeace_requests_total", (("method", "POST"), route, ("status", "400")))] == 1
        assert got[("onepeace_request_duration_seconds_count", (route,))] == 4
        assert got[("onepeace_batch_size_count", (("modality", "text"),))] >= 3
        assert got[("onepeace_batch_size_sum", (("modality", "text"),))] >= 6
        assert got[("onepeace_queue_depth", ())] == 0
        assert got[("onepeace_rejected_requests_total", (("reason", "queue_full"),))] == 0
        assert got[("onepeace_model_load_seconds", ())] == 1.25
        assert ("onepeace_requests_in_flight", ()) in got
        other = samples(b.get("/metrics").text)
        assert ("onepeace_requests_total", (("method", "POST"), route, ("status", "200"))) not in other
        assert b.get("/media/0123456789abcdef0123").status_code == 404  # a templated route, not the raw path
        other = samples(b.get("/metrics").text)
        assert not [k for k in other if "0123456789abcdef" in str(k)]


def test_shed_requests_are_counted(model):
    from fastapi.testclient import TestClient

    app = create_app(model, None, max_queue=1, max_wait_ms=0)
    batcher = app.state.batcher
    gate = threading.Event()
    inner = batcher._embed
    batcher._embed = lambda m, items: (gate.wait(10), inner(m, items))[1]
    with TestClient(app) as c:
        first = batcher.submit("text", ["a"])  # occupies the worker
        time.sleep(0.1)
        second = batcher.submit("text", ["b"])  # waits: the queue holds 1 input, its limit
        r = c.post("/v1/embeddings", json={"input": "c"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "queue_full"
        gate.set()
        first.result(10), second.result(10)
        got = samples(c.get("/metrics").text)
        assert got[("onepeace_rejected_requests_total", (("reason", "queue_full"),))] == 1
        assert got[("onepeace_requests_total", (("method", "POST"), ("route", "/v1/embeddings"), ("status", "503")))] == 1


def test_metrics_are_behind_the_api_key(model):
    from fastapi.testclient import TestClient

    with TestClient(create_app(model, None, api_key="k")) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
