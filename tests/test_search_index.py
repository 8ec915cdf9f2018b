"""The search index (issue 10): building from folders, manifests and text files, incremental
updates and pruning, bad files, composed queries and scores, the CLI, and faults (SIGKILL during
a build, a reader searching while a writer adds, a model that does not match)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lancedb")

import onepeace  # noqa: E402
from onepeace.search.ingest import build, build_lock  # noqa: E402
from onepeace.search.query import compose, query_inputs, resolve_weights, scores_to_probs, search  # noqa: E402
from onepeace.search.store import Index, IndexNotFoundError, ModelMismatchError, SearchIndexError, item_id  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("m") / "tiny"
    onepeace.create_model("tiny").save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def model(model_dir):
    return onepeace.OnePeace.from_pretrained(model_dir)


def _images(folder: Path, n: int, start: int = 0) -> list[Path]:
    from PIL import Image

    from onepeace_train.demo.data import load_digits

    imgs, labels = load_digits("test")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        p = folder / f"{i:03d}-{labels[i]}.png"
        Image.fromarray(imgs[i]).save(p)
        out.append(p)
    return out


def _clips(folder: Path, n: int) -> list[Path]:
    import soundfile as sf

    from onepeace_train.demo.data import load_speech

    waves, labels = load_speech("test")[:2]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"{i:03d}-{labels[i]}.wav"
        sf.write(p, waves[i][:8000], 16000)  # half a second: fast, tiled to the 1 s minimum
        out.append(p)
    return out


def _ids(idx: Index) -> list[str]:
    return [r["id"] for r in idx.rows(["id"])]


# ---------------------------------------------------------------------------------- building
def test_build_sources_incremental_and_prune(tmp_path, model):
    media = tmp_path / "media"
    imgs = _images(media / "img", 6)
    clips = _clips(media / "aud", 3)
    (media / "notes.md").write_text("not media")
    (media / ".hidden.png").write_bytes(b"hidden files are left alone")
    captions = tmp_path / "extra" / "captions.jsonl"
    extra = _images(tmp_path / "extra" / "pics", 2, start=10)
    captions.write_text(
        json.dumps({"image": "pics/" + extra[0].name, "text": "a handwritten digit", "label": 3, "split": "x"}) + "\n"
        + json.dumps({"text": "a caption on its own"}) + "\n\n"
        + json.dumps({"image": "pics/" + extra[1].name, "text": "another digit"}) + "\n")
    texts = tmp_path / "texts.txt"
    texts.write_text("the number one\n\nthe number two\nthe number one\n")
    db = tmp_path / "db"

    r = build(db, model, [media, captions, texts], batch_size=4, workers=1, ann_threshold=None)
    assert (r["added"], r["changed"], r["unchanged"], r["skipped"]) == (14, 0, 0, 0)
    assert r["duplicates"] == 1 and r["left_out"] == 1  # a repeated text; notes.md
    idx = Index.open(db)
    assert idx.modality_counts() == {"audio": 3, "image": 8, "text": 3}
    assert len(set(_ids(idx))) == idx.count() == 14
    row = idx.get(item_id("image", str(extra[0].resolve())))
    assert row["text"] == "a handwritten digit"
    assert row["metadata"]["label"] == 3 and row["metadata"]["split"] == "x"
    assert row["metadata"]["source"] == str(captions.resolve())
    assert idx.get(item_id("text", text="the number two"))["metadata"]["line"] == 3
    assert os.path.isfile(r["report"]) and json.load(open(r["report"]))["counts"]["added"] == 14

    # rerun: nothing to do; a touched but identical file is unchanged too
    os.utime(imgs[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    r = build(db, model, [media, captions, texts], batch_size=4, workers=0, ann_threshold=None)
    assert (r["added"], r["changed"], r["unchanged"]) == (0, 0, 14)
    # a new caption and label for an unchanged file: its row is rewritten, its vector kept
    vec = {x["id"]: x["vector"] for x in idx.rows(["id", "vector"])}
    lines = captions.read_text().splitlines()
    lines[0] = json.dumps({"image": "pics/" + extra[0].name, "text": "a relabelled digit", "label": 4})
    captions.write_text("\n".join(lines) + "\n")
    r = build(db, model, [media, captions, texts], batch_size=4, workers=0, ann_threshold=None)
    assert (r["added"], r["changed"], r["metadata_only"], r["unchanged"]) == (0, 1, 1, 13)
    row = idx.get(item_id("image", str(extra[0].resolve())))
    assert row["text"] == "a relabelled digit" and row["metadata"]["label"] == 4 and "split" not in row["metadata"]
    assert row["metadata"]["file_size"] == extra[0].stat().st_size
    assert vec == {x["id"]: x["vector"] for x in idx.rows(["id", "vector"])}
    # a changed file replaces its row; a new file is added; nothing is duplicated
    old = idx.get(item_id("image", str(imgs[1])))
    from PIL import Image

    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(imgs[1])
    _images(media / "img", 1, start=20)
    r = build(db, model, [media, captions, texts], batch_size=4, workers=0, ann_threshold=None)
    assert (r["added"], r["changed"], r["unchanged"]) == (1, 1, 13)
    new = idx.get(item_id("image", str(imgs[1])))
    assert new["content_hash"] != old["content_hash"]
    assert len(set(_ids(idx))) == idx.count() == 15

    # --prune: a deleted file, a line gone from a text file, a manifest line gone
    imgs[2].unlink()
    clips[0].unlink()
    texts.write_text("the number one\n")
    captions.write_text(json.dumps({"image": "pics/" + extra[0].name, "text": "a relabelled digit", "label": 4})
                        + "\n")
    r = build(db, model, [media, captions, texts], batch_size=4, workers=0, ann_threshold=None)
    assert r["pruned"] == 0 and idx.count() == 15  # without --prune nothing is removed
    r = build(db, model, [media, captions, texts], batch_size=4, workers=0, prune=True, ann_threshold=None)
    assert r["pruned"] == 5
    assert idx.modality_counts() == {"audio": 2, "image": 7, "text": 1}
    assert idx.get(item_id("image", str(imgs[2]))) is None
    assert idx.get(item_id("text", text="the number one")) is not None


def test_bad_files_are_skipped_listed_and_never_abort(tmp_path, model):
    media = tmp_path / "media"
    good = _images(media, 3) + _clips(media, 2)
    (media / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (media / "empty.jpg").write_bytes(b"")
    (media / "not-audio.wav").write_text("this is text, not a wav file")
    truncated = media / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:60])
    wav = good[3].read_bytes()
    (media / "truncated.wav").write_bytes(wav[:30])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "media/missing.png", "text": "gone"}\n{not json}\n'
                        '{"image": "media/000-7.png", "audio": "media/000-3.wav"}\n')
    db = tmp_path / "db"
    report = tmp_path / "report.json"
    r = build(db, model, [media, manifest], batch_size=3, workers=0, report_path=str(report), ann_threshold=None)
    assert r["added"] == len(good) and r["skipped"] == 8
    rep = json.loads(report.read_text())
    names = {os.path.basename(s.get("uri") or s.get("item")) for s in rep["skipped"]}
    assert {"corrupt.png", "empty.jpg", "not-audio.wav", "truncated.png", "truncated.wav", "missing.png"} <= names
    assert all(s["reason"] for s in rep["skipped"])
    assert any("invalid JSON" in s["reason"] for s in rep["skipped"])
    assert any("several media fields" in s["reason"] for s in rep["skipped"])
    assert Index.open(db).count() == len(good)
    # the skipped files are tried again next time (and skipped again), the good ones are not
    r = build(db, model, [media], batch_size=3, workers=0, ann_threshold=None)
    assert (r["added"], r["unchanged"], r["skipped"]) == (0, len(good), 5)


def test_index_errors(tmp_path, model, model_dir):
    with pytest.raises(IndexNotFoundError, match="index not found"):
        Index.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("x")
    with pytest.raises(IndexNotFoundError, match="not an onepeace index"):
        Index.open(tmp_path / "plain")
    with pytest.raises(SearchIndexError, match="not an onepeace index and not empty"):
        build(tmp_path / "plain", model, [tmp_path / "plain" / "x.txt"])
    with pytest.raises(onepeace.InputError, match="source not found"):
        build(tmp_path / "db", model, [tmp_path / "missing"])
    assert not (tmp_path / "db").exists()  # nothing created for a bad source

    # a model that does not match: refused naming both, the index untouched
    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\n")
    build(tmp_path / "db", model, [texts], workers=0)
    import torch

    torch.manual_seed(1)
    other_dir = tmp_path / "other"
    onepeace.create_model("tiny").save_pretrained(other_dir)
    other = onepeace.OnePeace.from_pretrained(other_dir)
    with pytest.raises(ModelMismatchError) as e:
        build(tmp_path / "db", other, [texts], workers=0)
    assert str(model_dir) in str(e.value) and str(other_dir) in str(e.value)
    with pytest.raises(ModelMismatchError):
        search(Index.open(tmp_path / "db"), other, text="one")
    assert Index.open(tmp_path / "db").count() == 2
    # the same model in another dtype is the same model (fingerprint of its files)
    bf16 = onepeace.OnePeace.from_pretrained(model_dir, dtype="bf16")
    assert search(Index.open(tmp_path / "db"), bf16, text="one", k=1)

    # a second build on the same index while one runs is refused
    with build_lock(str(tmp_path / "db")), pytest.raises(SearchIndexError, match="another"):
        build(tmp_path / "db", model, [texts], workers=0)


# ---------------------------------------------------------------------------------- queries
def test_compose_weights_and_scores(tmp_path, model):
    img = _images(tmp_path, 1)[0]
    emb = model.embed(text=["a digit", "a dog"], image=[str(img)])
    t0, t1, i0 = (emb["text"][0].double().numpy(), emb["text"][1].double().numpy(), emb["image"][0].double().numpy())
    ref = 2 * t0 - 0.5 * t1 + i0
    ref /= np.linalg.norm(ref)
    q = compose(model, text=["a digit", "a dog"], image=str(img), weights=[2, -0.5, 1])
    assert q.dtype == np.float32 and abs(np.linalg.norm(q) - 1) < 1e-6
    np.testing.assert_allclose(q, ref, atol=1e-6)  # float32 rounding of unit-scale values
    by_modality = compose(model, text="a digit", image=str(img), weights={"image": 3})
    ref2 = t0 + 3 * i0
    np.testing.assert_allclose(by_modality, ref2 / np.linalg.norm(ref2), atol=1e-6)

    inputs = query_inputs(text=["a", "b"], audio="x.wav")
    assert [m for m, _ in inputs] == ["text", "text", "audio"]
    with pytest.raises(onepeace.InputError, match="nothing to search for"):
        compose(model)
    with pytest.raises(onepeace.InputError, match="2 weights for 3 query inputs"):
        resolve_weights(inputs, [1, 2])
    with pytest.raises(onepeace.InputError, match="no image input"):
        resolve_weights(inputs, {"image": 1.0})
    with pytest.raises(onepeace.InputError, match="cancel out"):
        compose(model, text=["a digit", "a digit"], weights=[1, -1])

    p = scores_to_probs([0.9, 0.5, -0.2], 100.0)
    z = np.exp(100 * np.array([0.9, 0.5, -0.2]) - 90)
    np.testing.assert_allclose(p, z / z.sum(), rtol=1e-12)
    assert scores_to_probs([], 10.0) == []


def _unit(rng, n, d):
    v = rng.standard_normal((n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_store_search_filters_and_ann(tmp_path):
    rng = np.random.default_rng(0)
    d = 16
    idx = Index.create(tmp_path / "db", fingerprint="f" * 64, model_name="synthetic", dim=d)
    vecs = _unit(rng, 300, d)
    mods = ["image", "audio", "text"]
    rows = [{"modality": mods[i % 3], "uri": f"/x/{i}.bin" if i % 3 != 2 else "", "text": f"t{i}",
             "metadata": {"i": i}, "content_hash": str(i), "vector": v} for i, v in enumerate(vecs)]
    for i in range(0, 300, 100):
        idx.add(rows[i : i + 100])
    assert idx.count() == 300 and idx.count("audio") == 100
    q = _unit(rng, 1, d)[0]
    hits = idx.search(q, k=7)
    exact = vecs @ q  # float64 reference
    order = np.argsort(-exact)[:7]
    assert [h["metadata"]["i"] for h in hits] == order.tolist()
    np.testing.assert_allclose([h["score"] for h in hits], exact[order], atol=1e-6)  # float32 vectors
    assert all("vector" not in h for h in hits)
    audio = idx.search(q, k=5, modality="audio")
    assert len(audio) == 5 and all(h["modality"] == "audio" for h in audio)
    only = idx.search(q, k=5, where="text = 't4'")
    assert [h["text"] for h in only] == ["t4"]
    with pytest.raises(onepeace.InputError, match="not a valid filter"):
        idx.search(q, where="no_such_column = 1")
    with pytest.raises(onepeace.InputError, match="16-dimensional"):
        idx.search(np.ones(3))
    with pytest.raises(onepeace.InputError, match="positive"):
        idx.search(q, k=0)
    # an existing id is replaced in the same commit: no duplicate
    idx.add([{**rows[0], "text": "replaced"}])
    assert idx.count() == 300 and idx.get(rows_id := _ids(idx)[0]) is not None
    assert idx.delete([rows_id, "missing"]) == 1 and idx.count() == 299

    assert idx.ensure_ann(min_rows=1000) == "exact" and idx.info()["index"] == "exact"
    kind = idx.ensure_ann(min_rows=256)
    assert "PQ" in kind and idx.info()["ann"]["indexed_rows"] == 299
    # with re-ranking, the ANN top hit of a stored vector is that vector
    found = sum(idx.search(vecs[i], k=1)[0]["metadata"]["i"] == i for i in range(1, 41))
    assert found >= 38


@pytest.mark.slow
def test_reader_searches_while_writer_adds(tmp_path):
    d, batches, per = 8, 25, 20
    idx = Index.create(tmp_path / "db", fingerprint="f" * 64, model_name="synthetic", dim=d)
    writer = subprocess.Popen([sys.executable, "-c", f"""
import numpy as np
from onepeace.search.store import Index
idx = Index.open({str(tmp_path / 'db')!r})
rng = np.random.default_rng(1)
for b in range({batches}):
    v = rng.standard_normal(({per}, {d}))
    idx.add([{{"id": f"{{b}}-{{i}}", "modality": "image", "uri": f"/x/{{b}}-{{i}}", "content_hash": "h",
              "vector": x}} for i, x in enumerate(v)], replace=False)
"""], env=ENV)
    counts, searches = [], 0
    q = np.ones(d)
    deadline = time.time() + 240
    while writer.poll() is None and time.time() < deadline:
        before = idx.count()
        hits = idx.search(q, k=5)  # sees a version between the two counts (commits go on meanwhile)
        n = idx.count()
        assert min(5, before) <= len(hits) <= min(5, n) and all(h["uri"].startswith("/x/") for h in hits)
        counts += [before, n]
        searches += 1
    assert writer.wait(timeout=60) == 0
    assert counts == sorted(counts) and all(c % per == 0 for c in counts)  # whole commits only
    assert searches > 0 and idx.count() == batches * per and len(set(_ids(idx))) == batches * per


@pytest.mark.slow
def test_sigkill_during_build_then_rerun(tmp_path, model_dir, capsys):
    files = _images(tmp_path / "media", 48)
    db = tmp_path / "db"
    proc = subprocess.Popen([sys.executable, "-m", "onepeace", "index", "build", str(db), str(tmp_path / "media"),
                             "--model", str(model_dir), "--batch-size", "2", "--commit-every", "2",
                             "--workers", "0"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = 0
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (db / "items.lance" / "_versions").is_dir():
            seen = Index.open(db).count()
            if seen >= 4:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = Index.open(db).count()
    assert proc.returncode == -signal.SIGKILL and 4 <= killed_at < len(files), (proc.returncode, killed_at)
    assert killed_at % 2 == 0  # whole commits only
    from onepeace.cli import main

    assert main(["index", "build", str(db), str(tmp_path / "media"), "--model", str(model_dir), "--workers", "0"]) == 0
    idx = Index.open(db)
    ids = _ids(idx)
    assert len(ids) == len(set(ids)) == len(files)
    assert {row["uri"] for row in idx.rows(["uri"])} == {str(f) for f in files}
    assert f"indexed {len(files) - killed_at} new" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- command line
def test_cli_build_info_search_and_errors(tmp_path, model_dir, capsys):
    from onepeace.cli import main

    imgs = _images(tmp_path / "media", 4)
    (tmp_path / "media" / "texts.txt").write_text("the number one\nthe number seven\n")
    db = tmp_path / "db"
    assert main(["index", "build", str(db), str(tmp_path / "media"), str(tmp_path / "media" / "texts.txt"),
                 "--model", str(model_dir), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "indexed 6 new" in out and "image 4, text 2" in out
    assert main(["index", "info", str(db)]) == 0
    out = capsys.readouterr().out
    assert "rows:    6 (image 4, text 2)" in out and "exact" in out
    assert main(["search", str(db), "--text", "the number one", "--image", str(imgs[0]), "--weights", "1", "-0.5",
                 "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [q["weight"] for q in out["query"]] == [1.0, -0.5]
    scores = [h["score"] for h in out["hits"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert abs(sum(h["prob"] for h in out["hits"]) - 1) < 1e-9
    assert main(["search", str(db), "--text", "seven", "--modality", "image", "-k", "2"]) == 0
    assert capsys.readouterr().out.count(" image ") == 2

    errors = [
        (("search", str(db)), "nothing to search for"),
        (("search", str(db), "--text", "a", "--weights", "1", "2"), "2 weights for 1 query input"),
        (("search", str(db), "--text", "a", "--weights", "text=1", "2"), "not both"),
        (("search", str(tmp_path / "media"), "--text", "a"), "not an onepeace index"),
        (("search", str(db), "--image", str(tmp_path / "nope.png")), "image query file not found"),
        (("index", "info", str(tmp_path)), "not an onepeace index"),
        (("index", "build", str(tmp_path / "media"), str(db), "--model", str(model_dir)), "not an onepeace index"),
        (("index", "build", str(tmp_path / "new"), str(tmp_path / "gone"), "--model", str(model_dir)),
         "source not found"),
        (("index", "build", str(db), str(imgs[0]), "--model", str(model_dir), "--report", str(imgs[1])),
         "already exists; pass --force"),
    ]
    for args, message in errors:
        assert main(list(args)) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (args, err)


def test_import_onepeace_stays_light():
    code = "import sys, onepeace, onepeace.search; assert 'lancedb' not in sys.modules and 'lance' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True, timeout=120)


@pytest.mark.slow
def test_demo_search_step(tmp_path, monkeypatch, capsys):
    """``make demo`` ends by indexing the held-out digits and running one composed query (here on
    a few digits and an untrained model: the plumbing, not the quality)."""
    import torch

    import onepeace_train.demo.data as demo_data
    from onepeace.config import get_preset
    from onepeace_train.demo.search import demo_search_step

    digits, speech = demo_data.load_digits, demo_data.load_speech
    monkeypatch.setattr(demo_data, "load_digits", lambda split=None: tuple(a[:20] for a in digits(split)))
    monkeypatch.setattr(demo_data, "load_speech", lambda split=None: tuple(a[:10] for a in speech(split)))
    cfg = get_preset("tiny")
    cfg.modalities["image"] = {"image_size": 32}
    run = tmp_path / "run"
    for seed in (0, 1):  # a rerun of the demo trains a new model: its index is replaced
        torch.manual_seed(seed)
        onepeace.create_model(cfg).save_pretrained(run / "model", overwrite=True)
        s = demo_search_step(str(run), str(run / "model"))
        assert s["build"]["added"] == 20 + 10 + 30 and s["build"]["skipped"] == 0
    out = capsys.readouterr().out
    assert "composed query" in out and "onepeace search" in out and "precision@10" in out
    assert len(s["hits"]) == 5 and all(h["modality"] == "image" for h in s["hits"])
    assert Index.open(run / "index").modality_counts() == {"audio": 10, "image": 20, "text": 30}
    assert (run / "index-media" / "images").is_dir() and s["query"]["audio"].endswith(".wav")
    from onepeace_train.demo.search import demo_index

    again = demo_index(str(run), str(run / "model"))  # same model, same files: nothing to do
    assert again["build"]["added"] == 0 and again["build"]["unchanged"] == 60
