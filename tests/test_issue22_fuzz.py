"""Issue 22 item 5: the server tested by tools nobody here wrote. Schemathesis generates requests
from the server's own OpenAPI schema (bounded examples, a server on 127.0.0.1 only): no 5xx, and
the answers match the schema. Hypothesis: any bytes sent as an image, audio or video file are an
InputError (a 4xx over HTTP), never a crash or a hang."""

from __future__ import annotations

import base64

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("lancedb")
schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import onepeace  # noqa: E402
from conftest import tiny_search_collection  # noqa: E402
from onepeace.errors import InputError  # noqa: E402
from onepeace.serve.app import ServerThread, create_app  # noqa: E402

#: examples per operation: enough to reach every parameter's kinds, bounded for 2 cores
EXAMPLES = 30


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from onepeace.search.ingest import build
    from onepeace.search.store import Index

    root = tmp_path_factory.mktemp("fuzz").resolve()
    model_dir, media = tiny_search_collection(root)
    model = onepeace.OnePeace.from_pretrained(model_dir)
    build(root / "index", model, [media], batch_size=4, workers=0, progress=False)
    return {"model": model, "index": Index.open(root / "index"), "media": media}


@pytest.fixture(scope="module")
def server(world):
    with ServerThread(create_app(world["model"], world["index"], timeout_s=20)) as server:
        yield server


def _operations(server) -> list:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_the_schema_covers_the_api(server):
    paths = {(op.method.upper(), op.path) for op in _operations(server)}
    for want in [("POST", "/v1/embeddings"), ("POST", "/search"), ("GET", "/v1/models"), ("GET", "/health"),
                 ("GET", "/media/{item_id}")]:
        assert want in paths, paths


@pytest.mark.parametrize("path", ["/v1/embeddings", "/search", "/v1/models", "/health", "/media/{item_id}"])
def test_no_5xx_and_answers_match_the_openapi_schema(server, path):
    """Schemathesis's own checks on generated requests (positive and negative data from the
    schema): ``not_a_server_error`` and ``response_schema_conformance``. (Its pytest plugin does
    not run under pytest 9, so the operations' strategies are driven by Hypothesis here.)"""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    op = next(op for op in _operations(server) if op.path == path)
    seen: list[int] = []

    @given(op.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def check(case):
        response = case.call(base_url=server.url, timeout=60)
        seen.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    check()
    assert seen and max(seen) < 500, seen


# ------------------------------------------------------------------------ any bytes as a file
_MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x00\x00\x00WAVEfmt ", b"fLaC",
          b"ID3", b"OggS", b"\x00\x00\x00\x18ftypmp42", b"\x1aE\xdf\xa3", b"BM"]
#: bytes that look like the start of a real file of some kind, then anything
FILE_BYTES = st.builds(lambda magic, rest: magic + rest, st.sampled_from(_MAGIC), st.binary(max_size=512))


@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_any_bytes_given_as_a_file_are_an_input_error(world, modality):
    from onepeace.processing.inputs import NamedBytes

    if modality == "video":
        pytest.importorskip("av")
        from onepeace.processing.video import VideoProcessor

        processor = VideoProcessor(frames=2, image_size=32)
    else:
        processor = world["model"].processor.get(modality)

    @given(FILE_BYTES)
    @settings(max_examples=60, deadline=2000, suppress_health_check=list(HealthCheck), derandomize=True)
    def check(data):
        refused.append(data)
        try:
            processor.load(NamedBytes(data, f"upload.{modality}"))
        except InputError:
            return
        # a file that decodes is fine (random bytes can be a valid WAV); it must then embed
        refused.pop()
        assert modality != "image" or data.startswith((b"\x89PNG", b"\xff\xd8", b"GIF8", b"BM"))

    refused: list[bytes] = []
    check()
    assert len(refused) >= 30, len(refused)  # the examples ran, and were refused as InputError


def test_any_bytes_over_http_are_a_4xx_never_a_5xx(world):
    from fastapi.testclient import TestClient

    with TestClient(create_app(world["model"], world["index"], timeout_s=20)) as client:

        @given(FILE_BYTES, st.sampled_from(["image", "audio"]), st.sampled_from(["embed", "search", "form"]))
        @settings(max_examples=60, deadline=5000, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(data, modality, how):
            b64 = base64.b64encode(data).decode()
            if how == "embed":
                r = client.post("/v1/embeddings", json={"input": [b64], "modality": modality})
            elif how == "search":
                r = client.post("/search", json={modality: b64})
            else:
                r = client.post("/search", files={modality: ("upload.bin", data)})
            seen.append(r.status_code)
            assert r.status_code < 500, r.text
            if r.status_code != 200:
                assert 400 <= r.status_code < 500 and "Traceback" not in r.text, r.text

        seen: list[int] = []
        check()
        assert len(seen) >= 30 and 400 in seen, seen  # the examples ran, and bad files were refused
