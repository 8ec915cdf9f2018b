"""Issue 22 item 7: several models in one server. ``--model NAME=MODEL`` may be given more than
once; requests pick a model by OpenAI's ``model`` field, ``/v1/models`` lists them all, and the
index is searched only with the model that built it (its fingerprint), else 400 naming it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("lancedb")

import onepeace  # noqa: E402
from conftest import tiny_search_collection  # noqa: E402
from onepeace.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    from onepeace.search.ingest import build
    from onepeace.search.store import Index

    root = tmp_path_factory.mktemp("models").resolve()
    model_dir, media = tiny_search_collection(root)
    torch.manual_seed(1)  # another training of the same architecture: other weights, other fingerprint
    other = onepeace.create_model("tiny", layers=2, layer_scale_init=0.5, modalities={"text": {}, "image": {"image_size": 64}})
    other.save_pretrained(root / "other")
    a = onepeace.OnePeace.from_pretrained(model_dir)
    b = onepeace.OnePeace.from_pretrained(root / "other")
    build(root / "index", a, [media], batch_size=4, workers=0, progress=False)
    return {"root": root, "a": a, "b": b, "index": Index.open(root / "index"), "model_dir": model_dir}


@pytest.fixture(scope="module")
def client(two):
    from fastapi.testclient import TestClient

    with TestClient(create_app({"alpha": two["a"], "beta": two["b"]}, two["index"])) as c:
        yield c


def _embed(client, model, text="a red circle"):
    body = {"input": [text], "encoding_format": "float"}
    if model is not None:
        body["model"] = model
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    return r.json()["model"], np.asarray(r.json()["data"][0]["embedding"], dtype=np.float32)


def test_requests_pick_a_model_by_name_and_get_its_rows(two, client):
    for name, m in (("alpha", two["a"]), ("beta", two["b"])):
        served, row = _embed(client, name)
        assert served == name
        want = m.embed(text=["a red circle"])["text"].numpy()[0]
        np.testing.assert_array_equal(row, want)  # the same forward pass as the model alone, fp32
    # the default (no model field, or "onepeace") is the first model given
    assert _embed(client, None)[0] == "alpha" and _embed(client, "onepeace")[0] == "alpha"
    a, b = _embed(client, "alpha")[1], _embed(client, "beta")[1]
    assert not np.allclose(a, b)  # really two models


def test_v1_models_lists_every_model(client):
    data = client.get("/v1/models").json()["data"]
    assert [d["id"] for d in data] == ["alpha", "beta"]
    assert [d["search"] for d in data] == [True, False]  # only alpha built the index
    assert data[1]["modalities"] == ["text", "image"]
    assert client.get("/health").json()["models"] == ["alpha", "beta"]


def test_an_unknown_model_is_404_naming_the_served_ones(client):
    r = client.post("/v1/embeddings", json={"input": "x", "model": "gamma"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "'alpha'" in r.json()["error"]["message"] and "'beta'" in r.json()["error"]["message"]


def test_a_modality_only_another_model_has_is_400(client):
    import base64

    wav = base64.b64encode(b"RIFF0000WAVEfmt ").decode()
    r = client.post("/v1/embeddings", json={"input": [wav], "model": "beta", "modality": "audio"})
    assert r.status_code == 400 and "unknown modality 'audio'" in r.json()["error"]["message"]


def test_the_index_is_searched_only_with_the_model_that_built_it(client):
    r = client.post("/search", json={"text": "a red circle", "k": 2})
    assert r.status_code == 200 and r.json()["model"] == "alpha" and r.json()["hits"]
    assert client.post("/search", json={"text": "a red circle", "k": 2, "model": "alpha"}).status_code == 200
    r = client.post("/search", json={"text": "a red circle", "k": 2, "model": "beta"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "model_mismatch" and err["param"] == "model"
    assert "'alpha'" in err["message"] and "'beta'" in err["message"]
    r = client.post("/search", data={"text": "a red circle", "model": "beta"})  # the form too
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_mismatch"


def test_an_app_none_of_whose_models_built_the_index_is_refused(two):
    from onepeace.search.store import ModelMismatchError

    with pytest.raises(ModelMismatchError, match="no served model built the index"):
        create_app({"beta": two["b"]}, two["index"])


def test_the_cli_takes_several_named_models(two, capsys):
    """``onepeace serve DB --model a=DIR --model b=DIR``: parsed, loaded, and refused when none
    built the index (one line, exit 2, before the server starts)."""
    from onepeace.cli import main
    from onepeace.cli.serve import _model_spec, load_several

    assert _model_spec("alpha=/x/m") == ("alpha", "/x/m")
    assert _model_spec("org/model") == (None, "org/model")
    models, index = load_several(str(two["root"] / "index"),
                                 [("alpha", str(two["model_dir"])), ("beta", str(two["root"] / "other"))])
    assert sorted(models) == ["alpha", "beta"] and index is not None
    rc = main(["serve", str(two["root"] / "index"), "--model", f"beta={two['root'] / 'other'}",
               "--model", f"gamma={two['root'] / 'other'}", "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "none of the --model options" in err and len(err.strip().splitlines()) == 1
    rc = main(["serve", str(two["root"] / "index"), "--model", f"x={two['root'] / 'other'}",
               "--model", f"x={two['model_dir']}", "--port", "0"])
    assert rc == 2 and "two models are called 'x'" in capsys.readouterr().err
