"""The index and the server once under the default ``dtype="auto"``, as a user gets it.

Every other test pins ``auto`` to fp32 (tests/conftest.py), so that results are the same on every
machine; here ``auto`` picks from this CPU's real flags (bf16 where the CPU computes bf16 natively;
the server never picks int8, see ``serving_dtype``). What is checked holds in any precision:
rows are float32 unit vectors, they agree with the fp32 rows within a bound derived from the
precision's unit roundoff and the model's depth, and an easy query finds its item first.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

import onepeace
from conftest import EPS32, tiny_search_collection
from onepeace.cli import main

pytest.importorskip("lancedb")
pytest.importorskip("fastapi")

CAPTIONS = ["a red circle", "a blue square", "a green triangle", "the sound of noise", "a pure tone"]
UNIT_ROUNDOFF = {torch.float32: EPS32 / 2, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def _norm_tol(dim: int) -> float:
    """|‖z‖ - 1| for a vector normalised in float32 (whatever the model computed in): a sum of
    ``dim`` squares, then a division per entry; (dim + 4) float32 eps bounds both."""
    return (dim + 4) * EPS32


def _relative_error_bound(model, dtype: torch.dtype) -> float:
    """A first-order bound on ‖z_auto - z_fp32‖ for unit rows: each sequential stage (adapter, the
    attention and FFN halves of each layer, final norm, projection) rounds its input, its weights
    and its output to ``dtype`` (3 roundings of relative size u each, u the unit roundoff), and the
    errors add up linearly along the path, with no amplification credited: 3 u per stage."""
    stages = 2 * len(model.encoder.layers) + 3
    return 3 * stages * UNIT_ROUNDOFF[dtype]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    model_dir, media = tiny_search_collection(root)
    (root / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    return model_dir, media, root


def test_index_built_under_auto_holds_unit_rows_close_to_fp32(collection, auto_dtype_as_users_get_it, tmp_path):
    model_dir, media, root = collection
    db = tmp_path / "db"
    # the command as a user runs it: no --dtype
    assert main(["index", "build", str(db), str(media), str(root / "captions.txt"),
                 "--model", str(model_dir), "--workers", "0"]) == 0
    from onepeace.search.query import search
    from onepeace.search.store import Index

    rows = Index.open(db).rows(columns=("id", "modality", "uri", "text", "vector"))
    auto = onepeace.OnePeace.from_pretrained(model_dir, dtype="auto")
    fp32 = onepeace.OnePeace.from_pretrained(model_dir, dtype="fp32")
    assert auto.precision == auto_dtype_as_users_get_it  # what auto stands for on this CPU
    vec = np.stack([np.asarray(r["vector"], dtype=np.float64) for r in rows])
    assert np.abs(np.linalg.norm(vec, axis=1) - 1).max() <= _norm_tol(vec.shape[1])
    if auto.precision == "int8":
        pytest.skip("auto is int8 on this CPU: its per-tensor activation quantisation is held to its own "
                    "bound in tests/test_int8.py")

    # the same items embedded by the fp32 model: each index row is within the derived bound of it
    texts = [r for r in rows if r["modality"] == "text"]
    images = [r for r in rows if r["modality"] == "image"]
    assert len(texts) == len(CAPTIONS) and images
    ref = fp32.embed(text=[r["text"] for r in texts], image=[r["uri"] for r in images])
    got = {"text": np.stack([r["vector"] for r in texts]), "image": np.stack([r["vector"] for r in images])}
    bound = _relative_error_bound(auto, auto.dtype)
    err = max(float(np.linalg.norm(got[m] - ref[m].numpy(), axis=1).max()) for m in got)
    assert err <= bound, f"{auto.precision}: max ‖z_auto - z_fp32‖ = {err:.3g} > derived bound {bound:.3g}"

    # an easy query: a caption finds itself first, and an indexed image finds itself first; the
    # fp32 margin over the runner-up exceeds what the precision can move two scores by (2 err each)
    for query, want in ((dict(text=CAPTIONS[0]), CAPTIONS[0]), (dict(image=images[0]["uri"]), images[0]["id"])):
        hits = search(Index.open(db), auto, k=3, **query)
        margin = hits[0]["score"] - hits[1]["score"]
        assert margin > 4 * err, (query, margin, err)
        assert want in (hits[0].get("text"), hits[0].get("id")), (query, hits[0])


def test_server_under_auto_serves_unit_embeddings_close_to_fp32(collection, auto_dtype_as_users_get_it, tmp_path):
    from fastapi.testclient import TestClient

    from onepeace.cli.serve import load_model, serving_dtype
    from onepeace.search.ingest import build
    from onepeace.search.store import Index
    from onepeace.serve.app import create_app

    model_dir, media, root = collection
    model = load_model(str(model_dir), "auto")  # what `onepeace serve` loads by default
    picked, _ = serving_dtype("auto")
    assert model.precision == picked and picked != "int8"
    fp32 = onepeace.OnePeace.from_pretrained(model_dir, dtype="fp32")
    build(tmp_path / "db", model, [media, root / "captions.txt"], batch_size=4, workers=0, progress=False)
    image = sorted(media.glob("*.png"))[0]
    with TestClient(create_app(model, Index.open(tmp_path / "db"))) as client:
        r = client.post("/v1/embeddings", json={"input": CAPTIONS})
        assert r.status_code == 200, r.text
        text = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float64)
        b64 = base64.b64encode(image.read_bytes()).decode()
        r = client.post("/v1/embeddings", json={"input": [b64], "modality": "image"})
        assert r.status_code == 200, r.text
        img = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float64)
        hits = client.post("/search", json={"text": CAPTIONS[1], "k": 3}).json()["hits"]
    dim = text.shape[1]
    for z in (text, img):
        assert np.abs(np.linalg.norm(z, axis=1) - 1).max() <= _norm_tol(dim)
    ref = fp32.embed(text=CAPTIONS, image=[str(image)])
    err = max(float(np.linalg.norm(text - ref["text"].numpy(), axis=1).max()),
              float(np.linalg.norm(img - ref["image"].numpy(), axis=1).max()))
    bound = _relative_error_bound(model, model.dtype)
    assert err <= bound, f"{picked}: max ‖z_served - z_fp32‖ = {err:.3g} > derived bound {bound:.3g}"
    assert hits[0]["text"] == CAPTIONS[1], hits[0]
    assert hits[0]["score"] - hits[1]["score"] > 4 * err, hits[:2]
