"""The LanceDB embedding function "onepeace" (issue 10, item 2): registered with LanceDB's registry,
it embeds text, image and audio source columns on insert and queries at search time. A random tiny
model cannot rank by meaning, so the checks are that the stored vectors and the query vector are
``model.embed`` of the same inputs (within a tolerance derived from the float32 error against a
float64 run), that the search ranks by those vectors, and the errors and registration paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lancedb")

import lancedb  # noqa: E402
from lancedb.embeddings import get_registry  # noqa: E402
from lancedb.pydantic import LanceModel, Vector  # noqa: E402

import onepeace  # noqa: E402
from conftest import EPS32, derived_tol, maxdiff, model_depth  # noqa: E402
from onepeace.errors import InputError, OnePeaceWarning  # noqa: E402
from onepeace.search import lancedb_fn  # noqa: E402

SAMPLES = resources.files("onepeace") / "assets" / "samples"
TEXTS = ["a red circle", "a blue square", "the sound of noise", "a green triangle"]
IMAGES = ["red_circle.png", "blue_square.png", "green_triangle.png"]
CLIPS = ["chirp.wav", "noise.wav", "tone_440hz.wav"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved tiny model and its float64 twin, and a folder with the bundled images and clips."""
    import torch

    root = tmp_path_factory.mktemp("lancedb_fn")
    torch.manual_seed(0)
    mods = onepeace.get_preset("tiny").modalities
    mods["image"] = {"image_size": 32}
    onepeace.create_model("tiny", layers=1, layer_scale_init=0.5, modalities=mods).save_pretrained(root / "model")
    media = root / "media"
    media.mkdir()
    for name in IMAGES + CLIPS:
        shutil.copy(SAMPLES / name, media / name)
    return {
        "root": root, "model_dir": str(root / "model"), "media": media,
        "model": onepeace.OnePeace.from_pretrained(root / "model"),
        "model64": onepeace.OnePeace.from_pretrained(root / "model", dtype=torch.float64),
    }


def _fn(world, **kw):
    return get_registry().get("onepeace").create(model=world["model_dir"], **kw)


def _assert_embeds(world, got, modality, items):
    """``got`` (rows) is ``model.embed`` of ``items``, within the derived float32 tolerance."""
    ref = world["model"].embed(**{modality: items})[modality].numpy()
    ref64 = world["model64"].embed(**{modality: items})[modality].numpy()
    got = np.stack([np.asarray(g, dtype=np.float32) for g in got])
    tol = derived_tol(got, ref64, ref, depth=model_depth(world["model"]))
    assert maxdiff(got, ref) <= tol, (modality, maxdiff(got, ref), tol)


def _dot_tol(world) -> float:
    """Rounding bound of a float32 dot product of unit vectors of the model's width (n * eps)."""
    return world["model"].config.dim * EPS32


def _query_vector(table, query):
    return np.asarray(table.search(query).to_query_object().vector, dtype=np.float32)


def test_registered_and_dimension(world):
    cls = get_registry().get("onepeace")
    assert cls is lancedb_fn.OnePeaceEmbeddings
    fn = _fn(world)
    assert fn.ndims() == world["model"].config.dim
    assert fn.embedding_model is _fn(world).embedding_model  # one model per process


def test_model_dir_recorded_absolute(world, monkeypatch):
    """LanceDB stores the arguments in the table: a relative model directory would not be found
    from another working directory."""
    monkeypatch.chdir(world["root"])
    recorded = get_registry().get("onepeace").create(model="model").safe_model_dump()["model"]
    assert os.path.isabs(recorded) and os.path.samefile(recorded, world["model_dir"])
    with pytest.raises(InputError, match="OnePeaceEmbeddings modality='smell'"):
        get_registry().get("onepeace").create(model="model", modality="smell")


def test_text_column_embedded_on_insert_and_query(world, tmp_path):
    fn = _fn(world, modality="text")

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    table = lancedb.connect(tmp_path / "db").create_table("docs", schema=Doc)
    table.add([{"text": t} for t in TEXTS])
    stored = {r["text"]: r["vector"] for r in table.to_arrow().to_pylist()}
    _assert_embeds(world, [stored[t] for t in TEXTS], "text", TEXTS)

    query = TEXTS[2]
    _assert_embeds(world, [_query_vector(table, query)], "text", [query])
    hits = table.search(query).distance_type("cosine").limit(len(TEXTS)).to_list()
    assert hits[0]["text"] == query  # the same text: cosine 1, ahead of every other
    ref = world["model"].embed(text=[query] + [h["text"] for h in hits])["text"].numpy().astype(np.float64)
    cos = ref[1:] @ ref[0]
    assert np.all(np.diff(cos) <= 2 * _dot_tol(world))  # ranked by the model's cosine
    dist = np.array([h["_distance"] for h in hits])
    assert maxdiff(dist, 1 - cos) <= 2 * _dot_tol(world)  # LanceDB's cosine distance, in float32


@pytest.mark.parametrize("modality, names", [("image", IMAGES), ("audio", CLIPS)])
def test_media_column_and_cross_modal_query(world, tmp_path, modality, names):
    fn = _fn(world, modality=modality)

    class Item(LanceModel):
        uri: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    paths = [str(world["media"] / n) for n in names]
    table = lancedb.connect(tmp_path / "db").create_table("items", schema=Item)
    table.add([{"uri": p} for p in paths])
    stored = {r["uri"]: r["vector"] for r in table.to_arrow().to_pylist()}
    _assert_embeds(world, [stored[p] for p in paths], modality, paths)

    _assert_embeds(world, [_query_vector(table, "a red circle")], "text", ["a red circle"])  # text -> media
    _assert_embeds(world, [_query_vector(table, Path(paths[1]))], modality, [paths[1]])  # same modality
    assert table.search(Path(paths[1])).limit(1).to_list()[0]["uri"] == paths[1]
    _assert_embeds(world, [_query_vector(table, Path(paths[1]).read_bytes())], modality, [paths[1]])  # bytes


def test_auto_column_mixes_modalities(world):
    fn = _fn(world)  # modality="auto"
    image, clip = str(world["media"] / IMAGES[0]), str(world["media"] / CLIPS[0])
    col = [TEXTS[0], image, clip, (world["media"] / IMAGES[1]).as_uri(), None]
    got = fn.compute_source_embeddings(col)
    assert got[4] is None  # a null source: no vector
    _assert_embeds(world, [got[0]], "text", [TEXTS[0]])
    _assert_embeds(world, [got[1], got[3]], "image", [image, str(world["media"] / IMAGES[1])])
    _assert_embeds(world, [got[2]], "audio", [clip])


def test_composed_query(world):
    from PIL import Image

    fn = _fn(world)
    image = str(world["media"] / IMAGES[0])
    q = fn.compute_query_embeddings({"image": Image.open(image), "text": "red", "weights": {"text": -0.5}})[0]
    listed = fn.compute_query_embeddings({"image": image, "text": "red", "weights": [-0.5, 1]})[0]  # text, image
    assert maxdiff(q, listed) == 0  # the same inputs, the same weights
    emb = world["model"].embed(text=["red"], image=[image])
    want = emb["image"][0].double().numpy() - 0.5 * emb["text"][0].double().numpy()
    want /= np.linalg.norm(want)
    assert q.shape == want.shape and abs(float(np.linalg.norm(q)) - 1) <= _dot_tol(world)
    assert float(q.astype(np.float64) @ want) >= 1 - 4 * _dot_tol(world)


def test_bad_sources(world, tmp_path):
    fn = _fn(world)
    missing = str(tmp_path / "gone.jpg")
    with pytest.raises(InputError, match="image file not found: .*gone.jpg.*modality='text'"):
        fn.compute_source_embeddings([TEXTS[0], missing])
    with pytest.raises(InputError, match=r"image file not found: .*gone.jpg$"):  # no hint: image was asked for
        _fn(world, modality="image").compute_source_embeddings([missing])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(InputError, match="broken.png"):
        _fn(world, modality="image").compute_source_embeddings([str(world["media"] / IMAGES[0]), str(broken)])
    with pytest.raises(InputError, match="a text source must be a string"):
        _fn(world, modality="text").compute_source_embeddings([b"bytes"])
    with pytest.raises(InputError, match="remote URIs"):
        fn.compute_query_embeddings("https://example.com/cat.jpg")
    with pytest.raises(InputError, match="one value"):
        fn.compute_query_embeddings(["two", "texts"])
    with pytest.raises(InputError, match="batch_size"):
        _fn(world, batch_size=0)


def test_on_error_null_lets_lancedb_drop_the_row(world, tmp_path):
    fn = _fn(world, modality="image", on_error="null", batch_size=4)

    class Item(LanceModel):
        uri: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    good = [str(world["media"] / n) for n in IMAGES]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    table = lancedb.connect(tmp_path / "db").create_table("items", schema=Item)
    with pytest.warns(OnePeaceWarning, match="no vector for .*broken.png"):
        table.add([{"uri": good[0]}, {"uri": str(broken)}, {"uri": good[1]}, {"uri": good[2]}],
                  on_bad_vectors="drop")
    rows = {r["uri"]: r["vector"] for r in table.to_arrow().to_pylist()}
    assert sorted(rows) == sorted(good)
    _assert_embeds(world, [rows[p] for p in good], "image", good)  # the batch's good rows, unchanged


@pytest.mark.slow
def test_registration_in_a_new_process(world, tmp_path):
    """A table made in one process opens and searches in another that imported lancedb, then
    onepeace (the registry learns "onepeace" from ``import onepeace``); ``import onepeace`` alone
    does not import lancedb."""
    fn = _fn(world, modality="text")

    class Doc(LanceModel):
        text: str = fn.SourceField()
        vector: Vector(fn.ndims()) = fn.VectorField()

    db = tmp_path / "db"
    lancedb.connect(db).create_table("docs", schema=Doc).add([{"text": t} for t in TEXTS])
    code = (
        "import sys, onepeace; assert 'lancedb' not in sys.modules\n"
        "del sys.modules['onepeace']\n"
        "import lancedb, onepeace\n"
        f"t = lancedb.connect({str(db)!r}).open_table('docs')\n"
        f"print(t.search({TEXTS[1]!r}).limit(1).to_list()[0]['text'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == TEXTS[1]
