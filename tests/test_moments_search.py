"""Moment search (issue 24, item 3): windows merged into ranges (controlled score patterns), at
most N ranges per file, the top k across files; a query cut out of a long recording finds its
place in it; text, image and audio queries; filters; the CLI (``--moments``, ``--per-file``,
``--json``), the Python API and ``POST /search`` with ``"moments": true``; bad input."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

pytest.importorskip("lancedb")

import onepeace  # noqa: E402
from onepeace.errors import InputError  # noqa: E402
from onepeace.search import Index, build, search, search_moments  # noqa: E402
from onepeace.search.moments import MomentsNotBuiltError, merge_windows, rank_moments  # noqa: E402
from onepeace.search.store import item_id  # noqa: E402
from test_moments_index import SR, long_wav  # noqa: E402


def w(start, end, score, file_id="a"):
    return {"start": start, "end": end, "score": score, "file_id": file_id}


# ---------------------------------------------------------------------------------- merging
def test_neighbouring_windows_within_the_margin_merge_into_one_range():
    windows = [w(10, 12, 0.90), w(11, 13, 0.88), w(12, 14, 0.86), w(13, 15, 0.70), w(30, 32, 0.85)]
    assert merge_windows(windows, per_file=1, margin=0.05) == [{"start": 10, "end": 14, "score": 0.90, "windows": 3}]
    # the next range is elsewhere in the file: the windows the first one overlaps are used up
    assert merge_windows(windows, per_file=3, margin=0.05) == [
        {"start": 10, "end": 14, "score": 0.90, "windows": 3}, {"start": 30, "end": 32, "score": 0.85, "windows": 1}]
    # touching windows merge; a gap keeps them apart; a wider margin takes the weaker neighbour
    assert merge_windows([w(0, 2, 0.5), w(2, 4, 0.5), w(5, 7, 0.5)], per_file=5, margin=0.01) == [
        {"start": 0, "end": 4, "score": 0.5, "windows": 2}, {"start": 5, "end": 7, "score": 0.5, "windows": 1}]
    assert merge_windows(windows, per_file=1, margin=0.25)[0] == {"start": 10, "end": 15, "score": 0.90, "windows": 4}
    # a weak window bridging two strong ones does not join them
    assert [r["start"] for r in merge_windows([w(0, 2, 0.9), w(1.5, 3.5, 0.2), w(3, 5, 0.9)], per_file=2,
                                              margin=0.05)] == [0, 3]
    assert merge_windows([], per_file=2) == []


def test_one_file_does_not_crowd_out_the_others():
    many = [w(s, s + 2, 0.95 - 0.001 * s, "loud") for s in range(0, 60, 3)]  # apart: each its own range
    windows = many + [w(5, 7, 0.6, "quiet"), w(40, 42, 0.55, "other")]
    top = rank_moments(windows, 3, per_file=1)
    assert [r["file_id"] for r in top] == ["loud", "quiet", "other"]
    top = rank_moments(windows, 3, per_file=2)
    assert [r["file_id"] for r in top] == ["loud", "loud", "quiet"]
    assert top[0]["score"] >= top[1]["score"] >= top[2]["score"]


# ---------------------------------------------------------------------------------- an index
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("moments")
    # (layer scale 0.5: a random tiny model whose audio embeddings tell sounds apart; at its default
    # init every sound embeds to nearly the same vector)
    onepeace.create_model("tiny", layer_scale_init=0.5).save_pretrained(root / "model")
    model = onepeace.OnePeace.from_pretrained(root / "model")
    media = root / "media"
    a, b = long_wav(media / "a.wav", 30, seed=1), long_wav(media / "b.wav", 26, seed=2)
    long_wav(media / "short.wav", 4, seed=3)
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(media / "red.png")
    r = build(root / "db", model, [media], workers=0, progress=False)
    assert (r["added"], r["moment_files"]) == (4, 2)
    import soundfile as sf

    wave, _ = sf.read(a, dtype="float32")
    query = root / "query.wav"
    sf.write(query, wave[12 * SR:14 * SR], SR)  # exactly the window [12, 14) of a.wav
    return {"root": root, "model": model, "index": Index.open(root / "db"), "a": a, "b": b, "query": query}


def test_a_clip_cut_from_a_recording_finds_its_place(world):
    hits = search_moments(world["index"], world["model"], audio=str(world["query"]), k=2)
    top = hits[0]
    assert top["uri"] == str(world["a"]) and top["id"] == top["file_id"] == item_id("audio", str(world["a"]))
    assert top["start"] <= 12 and top["end"] >= 14 and top["end"] - top["start"] <= 6
    assert top["score"] > 0.999 and top["name"] == "a.wav" and top["modality"] == "audio"
    assert [h["uri"] for h in hits] == [str(world["a"]), str(world["b"])]  # one range per file by default
    assert abs(sum(h["prob"] for h in hits) - 1) < 1e-9
    # the same through search(moments=True); two ranges per file
    again = search(world["index"], world["model"], audio=str(world["query"]), k=4, moments=True, per_file=2)
    assert (again[0]["start"], again[0]["end"]) == (top["start"], top["end"])
    assert len(again) == 4 and sorted(h["name"] for h in again) == ["a.wav", "a.wav", "b.wav", "b.wav"]
    for name in ("a.wav", "b.wav"):
        r1, r2 = sorted((h["start"], h["end"]) for h in again if h["name"] == name)
        assert r1[1] <= r2[0] + 1e-6  # two ranges apart, not one twice


def test_text_image_and_composed_queries(world):
    idx, model = world["index"], world["model"]
    for query in ({"text": "a low tone"}, {"image": str(world["root"] / "media" / "red.png")},
                  {"text": "a tone", "audio": str(world["query"]), "weights": [0.5, 1]}):
        hits = search_moments(idx, model, k=3, **query)
        assert 1 <= len(hits) <= 2 and all(0 <= h["start"] < h["end"] <= 30 for h in hits)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_filters_select_files(world):
    idx, model, q = world["index"], world["model"], str(world["query"])
    hits = search_moments(idx, model, audio=q, k=5, filter={"column": "name", "op": "eq", "value": "b.wav"})
    assert [h["name"] for h in hits] == ["b.wav"]
    hits = search_moments(idx, model, audio=q, k=5, where="uri LIKE '%/b.wav'")
    assert [h["name"] for h in hits] == ["b.wav"]
    assert search_moments(idx, model, audio=q, k=5, modality="image") == []
    with pytest.raises(InputError, match="filter"):
        search_moments(idx, model, audio=q, filter={"column": "uri", "value": "x"})
    with pytest.raises(InputError, match="per_file"):
        search_moments(idx, model, audio=q, per_file=0)
    with pytest.raises(InputError, match="per_file applies"):
        search(idx, model, audio=q, per_file=2)


def test_windows_of_a_file_without_its_row_are_not_returned(world, tmp_path):
    import shutil

    db = tmp_path / "db"
    shutil.copytree(world["root"] / "db", db)
    idx = Index.open(db)
    idx.delete([item_id("audio", str(world["a"]))])  # as after a kill before the file row was written
    hits = search_moments(idx, world["model"], audio=str(world["query"]), k=3)
    assert [h["name"] for h in hits] == ["b.wav"]


def test_an_index_without_moments_says_how_to_build_them(world, tmp_path, capsys):
    from onepeace.cli import main

    build(tmp_path / "plain", world["model"], [world["root"] / "media" / "red.png"], workers=0, progress=False)
    with pytest.raises(MomentsNotBuiltError, match="index build"):
        search_moments(Index.open(tmp_path / "plain"), world["model"], text="a tone")
    assert main(["search", str(tmp_path / "plain"), "--text", "a tone", "--moments"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no moments" in err and "onepeace index build" in err


# ---------------------------------------------------------------------------------- the CLI
def test_cli_moments_json_and_table(world, capsys):
    from onepeace.cli import main

    db, q = str(world["root"] / "db"), str(world["query"])
    assert main(["search", db, "--audio", q, "--moments", "--json", "-k", "3", "--dtype", "fp32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["moments"] is True and len(out["hits"]) == 2
    for h in out["hits"]:
        assert {"uri", "start", "end", "score"} <= set(h)
        assert all(isinstance(h[k], float) for k in ("start", "end", "score"))
    assert out["hits"][0]["uri"] == str(world["a"]) and out["hits"][0]["start"] <= 12 <= 14 <= out["hits"][0]["end"]
    assert main(["search", db, "--audio", q, "--moments", "--per-file", "2", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "time" in lines[1] and len(lines) == 5 and "a.wav" in lines[2] and "–" in lines[2]
    for args, said in ((["--per-file", "2"], "--per-file applies to --moments"),
                       (["--moments", "--per-file", "50"], "give 1 to 20")):
        assert main(["search", db, "--text", "x", *args]) == 2
        assert said in capsys.readouterr().err
    assert main(["index", "info", db]) == 0
    assert "moments: 54 windows of 2 long audio/video file(s)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def client(world):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from onepeace.serve.app import create_app

    with TestClient(create_app(world["model"], world["index"])) as c:
        yield c


def test_http_search_with_moments(world, client):
    clip = base64.b64encode(world["query"].read_bytes()).decode()
    r = client.post("/search", json={"audio": clip, "moments": True, "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["moments"] is True and [h["name"] for h in body["hits"]] == ["a.wav", "b.wav"]
    top = body["hits"][0]
    assert top["start"] <= 12 and top["end"] >= 14 and top["media_url"] == f"/media/{top['id']}"
    assert client.get(top["media_url"]).status_code == 200  # the file the player plays
    r = client.post("/search", json={"audio": clip, "moments": True, "per_file": 2, "k": 4})
    assert sorted(h["name"] for h in r.json()["hits"]) == ["a.wav", "a.wav", "b.wav", "b.wav"]
    # a form, as the page sends it
    r = client.post("/search", data={"moments": "true", "k": "2"},
                    files={"audio": ("q.wav", io.BytesIO(world["query"].read_bytes()), "audio/wav")})
    assert r.status_code == 200 and r.json()["hits"][0]["start"] <= 12
    plain = client.post("/search", json={"text": "a tone", "k": 2}).json()
    assert "moments" not in plain and all("start" not in h for h in plain["hits"])  # a plain answer as before


def test_http_bad_moment_requests(world, client, tmp_path):
    for body, param in (({"text": "x", "per_file": 2}, "per_file"), ({"text": "x", "moments": True, "per_file": 0},
                        "per_file"), ({"text": "x", "moments": True, "per_file": 99}, "per_file")):
        r = client.post("/search", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = client.post("/search", json={"text": "x", "moments": "maybe"})
    assert r.status_code in (400, 422) and "moments" in r.text
    from fastapi.testclient import TestClient

    from onepeace.serve.app import create_app

    build(tmp_path / "plain", world["model"], [world["root"] / "media" / "red.png"], workers=0, progress=False)
    with TestClient(create_app(world["model"], Index.open(tmp_path / "plain"))) as c:
        r = c.post("/search", json={"text": "x", "moments": True})
        assert r.status_code == 400 and "no moments" in r.json()["error"]["message"]


def test_sorted_scores_and_ranges_are_seconds(world):
    hits = search_moments(world["index"], world["model"], text="noise", k=5, per_file=3)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert all(isinstance(h["start"], float) and np.isfinite(h["end"]) for h in hits)
