"""The moment index (issue 24, item 2): long audio gets one row per window in the index's
``moments`` table beside its file row; incremental builds, window-setting changes, --prune;
bad input (an empty or truncated long file, a short file, a window or hop that does not fit);
an interrupted build resumed without a duplicate or a missing window (in this process, and a
real ``onepeace index build`` killed with SIGKILL half-way through a long file)."""

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
from onepeace.inference.moments import embed_windows  # noqa: E402
from onepeace.search.ingest import build  # noqa: E402
from onepeace.search.moments import MomentTable, window_key  # noqa: E402
from onepeace.search.store import Index, item_id  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
SR = 16000


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


def long_wav(path: Path, seconds: float, seed: int = 0) -> Path:
    """A recording whose sound changes every 3 s (tones of other pitches over faint noise), so
    its windows differ."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    pitch = 200 + 150 * rng.integers(0, 8, size=int(seconds // 3) + 1)[(t // 3).astype(int)]
    wave = 0.3 * np.sin(2 * np.pi * pitch * t) + 0.02 * rng.standard_normal(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), SR)
    return path


def moments_of(db) -> list[dict]:
    table = MomentTable.open(Index.open(db))
    return [] if table is None else table.scan(["id", "file_id", "start", "end", "kind", "content_hash",
                                                "vector"]).to_pylist()


def by_key(rows: list[dict]) -> dict:
    return {window_key(r["start"], r["end"], r["kind"]): np.asarray(r["vector"]) for r in rows}


@pytest.fixture(scope="module")
def tol(model, tmp_path_factory) -> float:
    """How far a window's vector moves between batch compositions on this machine (each window
    of a 12 s recording alone against all together), times 10: what a resumed build, which
    batches other windows together, may differ by from an uninterrupted one."""
    path = long_wav(tmp_path_factory.mktemp("tol") / "a.wav", 12, seed=3)
    alone = embed_windows(model, audio=[str(path)], batch_size=1)["audio"][0].embeddings
    together = embed_windows(model, audio=[str(path)], batch_size=64)["audio"][0].embeddings
    return max(1e-6, 10 * float((alone - together).abs().max()))


# ---------------------------------------------------------------------------------- building
def test_long_file_gets_windows_and_a_file_row_written_from_them(tmp_path, model, tol):
    media = tmp_path / "media"
    big = long_wav(media / "long.wav", 30)
    long_wav(media / "short.wav", 5, seed=1)
    r = build(tmp_path / "db", model, [media], workers=0, progress=False)
    assert (r["added"], r["skipped"], r["moment_files"]) == (2, 0, 1)
    idx = Index.open(tmp_path / "db")
    assert idx.count() == 2  # the file rows as before: one per file
    rows = moments_of(tmp_path / "db")
    want = embed_windows(model, audio=[str(big)])["audio"][0]  # what the inference layer gives alone
    assert r["moment_windows"] == len(rows) == len(want.start) == 29
    assert sorted((round(x["start"], 3), round(x["end"], 3)) for x in rows) == \
        [(round(s, 3), round(e, 3)) for s, e in zip(want.start, want.end)]
    assert len({x["id"] for x in rows}) == len(rows)
    fid = item_id("audio", str(big))
    assert {x["file_id"] for x in rows} == {fid}
    got = by_key(rows)
    for s, e, k, v in zip(want.start, want.end, want.kind, want.embeddings.numpy()):
        assert np.abs(got[window_key(s, e, k)] - v).max() <= tol
    # the file row: the duration-weighted mean of its windows, renormalised; its metadata says so
    row = idx.get(fid)
    assert row["metadata"]["moments"] == {"window": 2.0, "hop": 1.0, "segment": "fixed", "windows": 29}
    assert row["metadata"]["duration"] == 30.0 and row["content_hash"] == rows[0]["content_hash"]
    mean = sum((x["end"] - x["start"]) * np.asarray(x["vector"], np.float64) for x in rows)
    vec = next(x["vector"] for x in idx.rows(["id", "vector"]) if x["id"] == fid)
    assert np.abs(np.asarray(vec) - mean / np.linalg.norm(mean)).max() < 1e-6
    short = idx.get(item_id("audio", str(media / "short.wav")))
    assert "moments" not in short["metadata"] and short["metadata"]["duration"] == 5.0
    report = json.load(open(r["report"]))
    assert report["counts"]["moment_windows"] == 29 and report["partial"] == []


@pytest.mark.slow
def test_rerun_change_settings_change_file_and_prune(tmp_path, model):
    media = tmp_path / "media"
    big = long_wav(media / "long.wav", 24)
    db = tmp_path / "db"
    build(db, model, [media], workers=0, progress=False)
    first = moments_of(db)
    r = build(db, model, [media], workers=0, progress=False)  # nothing to do
    assert (r["added"], r["changed"], r["unchanged"], r["moment_windows"]) == (0, 0, 1, 0)
    assert moments_of(db) == first
    # other windows: the file's windows are rebuilt, none of the old settings left
    r = build(db, model, [media], workers=0, progress=False, moments={"window": 4, "hop": 2})
    rows = moments_of(db)
    assert r["changed"] == 1 and len(rows) == 11 and all(x["end"] - x["start"] == 4 for x in rows)
    assert Index.open(db).get(item_id("audio", str(big)))["metadata"]["moments"]["windows"] == 11
    # the file changes: its old windows (the old content hash) go, the new ones come
    long_wav(big, 24, seed=5)
    r = build(db, model, [media], workers=0, progress=False, moments={"window": 4, "hop": 2})
    rows = moments_of(db)
    assert r["changed"] == 1 and len(rows) == 11
    assert {x["content_hash"] for x in rows} == {Index.open(db).get(item_id("audio", str(big)))["content_hash"]}
    # a file that becomes short: its windows go with the old content
    long_wav(big, 6, seed=5)
    r = build(db, model, [media], workers=0, progress=False)
    assert r["changed"] == 1 and moments_of(db) == []
    # --prune: windows of a vanished file go too
    long_wav(media / "other.wav", 25, seed=2)
    build(db, model, [media], workers=0, progress=False)
    assert len(moments_of(db)) == 24
    os.remove(media / "other.wav")
    r = build(db, model, [media], workers=0, progress=False, prune=True)
    assert r["pruned"] == 1 and moments_of(db) == [] and r["windows_deleted"] == 24


def test_no_moments_keeps_one_row_per_file(tmp_path, model):
    media = tmp_path / "media"
    long_wav(media / "long.wav", 25)
    r = build(tmp_path / "db", model, [media], workers=0, progress=False, moments=False)
    assert r["added"] == 1 and r["moment_files"] == 0
    assert MomentTable.open(Index.open(tmp_path / "db")) is None


# ---------------------------------------------------------------------------------- bad input
def test_empty_truncated_and_short_files(tmp_path, model):
    media = tmp_path / "media"
    full = long_wav(tmp_path / "full.wav", 60)
    data = full.read_bytes()
    media.mkdir()
    (media / "truncated.wav").write_bytes(data[: 2 * len(data) // 3])  # 40 s of 60 announced
    (media / "empty.wav").write_bytes(b"")
    long_wav(media / "short.wav", 8)
    r = build(tmp_path / "db", model, [media], workers=0, progress=False)
    assert (r["added"], r["skipped"], r["partial"]) == (2, 1, 1)
    report = json.load(open(r["report"]))
    assert [(Path(s["uri"]).name, "empty" in s["reason"]) for s in report["skipped"]] == [("empty.wav", True)]
    (part,) = report["partial"]
    assert Path(part["uri"]).name == "truncated.wav" and "truncated" in part["problems"][0]
    assert any("truncated.wav" in w and "truncated" in w for w in report["warnings"])
    rows = moments_of(tmp_path / "db")
    assert len(rows) == part["windows"] == 39 and max(x["end"] for x in rows) <= 40.0 + 1e-6
    row = Index.open(tmp_path / "db").get(item_id("audio", str(media / "truncated.wav")))
    assert row["metadata"]["moments"]["problems"] == part["problems"]
    # a rerun does not try the damaged file again (its windows are what it has), and skips the empty one again
    r = build(tmp_path / "db", model, [media], workers=0, progress=False)
    assert (r["added"], r["unchanged"], r["skipped"], r["moment_windows"]) == (0, 2, 1, 0)


def test_window_or_hop_that_does_not_fit_is_one_line(tmp_path, model_dir, capsys):
    from onepeace.cli import main

    long_wav(tmp_path / "media" / "a.wav", 3)
    db = tmp_path / "db"
    for extra, said in [(["--window", "0"], "window"), (["--window", "2", "--hop", "3"], "longer than the window"),
                        (["--window", "40"], "in one pass"), (["--no-moments", "--hop", "1"], "contradict")]:
        code = main(["index", "build", str(db), str(tmp_path / "media"), "--model", str(model_dir), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and said in err and len(err.splitlines()) == 1, (extra, err)
        assert not db.exists()  # refused before any work


# ---------------------------------------------------------------------------------- faults
def test_interrupted_build_resumes_with_the_committed_windows(tmp_path, model, tol, monkeypatch):
    import onepeace.search.moment_build as mb

    media = tmp_path / "media"
    long_wav(media / "long.wav", 40)
    real, seen = mb.iter_window_batches, []

    def dying(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 3:
                raise KeyboardInterrupt  # after three batches of 4, committed every 4 windows
            seen.append(len(batch.start))
            yield batch

    monkeypatch.setattr(mb, "iter_window_batches", dying)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "db", model, [media], workers=0, progress=False, batch_size=4, commit_rows=4)
    assert Index.open(tmp_path / "db").count() == 0  # no file row: its moments are not complete
    assert len(moments_of(tmp_path / "db")) == sum(seen) == 12
    monkeypatch.setattr(mb, "iter_window_batches", real)
    r = build(tmp_path / "db", model, [media], workers=0, progress=False, batch_size=4)
    assert r["moment_windows"] == 39 - 12
    build(tmp_path / "ref", model, [media], workers=0, progress=False)
    assert_same_windows(moments_of(tmp_path / "db"), moments_of(tmp_path / "ref"), tol)


def assert_same_windows(got: list[dict], ref: list[dict], tol: float) -> None:
    assert len({x["id"] for x in got}) == len(got), "a window indexed twice"
    a, b = by_key(got), by_key(ref)
    assert sorted(a) == sorted(b) and len(a) == len(got)
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= tol, (worst, tol)


@pytest.mark.slow
def test_sigkill_half_way_through_a_long_file_then_rerun(tmp_path, model_dir, model, tol, capsys):
    media = tmp_path / "media"
    long_wav(media / "long.wav", 200)  # 199 windows of 2 s
    total = 199
    db = tmp_path / "db"
    proc = subprocess.Popen([sys.executable, "-m", "onepeace", "index", "build", str(db), str(media), "--model",
                             str(model_dir), "--batch-size", "4", "--commit-every", "4", "--workers", "0",
                             "--dtype", "fp32"],  # as the reference build below
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at, deadline = 0, time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (db / "moments.lance" / "_versions").is_dir():
            killed_at = len(moments_of(db))
            if killed_at >= total // 2:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = len(moments_of(db))
    assert proc.returncode == -signal.SIGKILL and total // 2 <= killed_at < total, (proc.returncode, killed_at)
    assert killed_at % 4 == 0 and Index.open(db).count() == 0  # whole commits; no file row yet
    from onepeace.cli import main

    assert main(["index", "build", str(db), str(media), "--model", str(model_dir), "--workers", "0", "--dtype",
                 "fp32"]) == 0
    assert f"{total - killed_at} window(s) of 1 long file(s)" in capsys.readouterr().out
    assert Index.open(db).count() == 1
    build(tmp_path / "ref", model, [media], workers=0, progress=False)
    assert_same_windows(moments_of(db), moments_of(tmp_path / "ref"), tol)


def test_a_long_video_gets_windows_and_moment_search_finds_them(tmp_path):
    pytest.importorskip("av")
    import torch

    from onepeace.processing.video import write_video
    from onepeace.search import search_moments

    torch.manual_seed(0)
    model = onepeace.create_model("tiny", layers=1, layer_scale_init=0.5,
                                  modalities={"text": {}, "image": {"image_size": 32},
                                              "video": {"image_size": 32, "frames": 4}}).eval()
    frames = np.random.default_rng(0).integers(0, 255, (60, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "media").mkdir()
    write_video(tmp_path / "media" / "clip.mp4", frames, fps=5)  # 12 s
    r = build(tmp_path / "db", model, [tmp_path / "media"], workers=0, progress=False, moments={"over": 5})
    assert (r["added"], r["moment_files"]) == (1, 1)
    want = embed_windows(model, video=[str(tmp_path / "media" / "clip.mp4")])["video"][0]  # 4 s every 2 s
    rows = moments_of(tmp_path / "db")
    assert sorted(by_key(rows)) == sorted(window_key(s, e, k) for s, e, k in zip(want.start, want.end, want.kind))
    assert {x["kind"] for x in rows} == {"fixed"} and len(rows) == 5
    hits = search_moments(Index.open(tmp_path / "db"), model, text="a noisy picture", k=2)
    assert len(hits) == 1 and hits[0]["modality"] == "video" and 0 <= hits[0]["start"] < hits[0]["end"] <= 12


def test_the_ray_engine_says_it_builds_no_moments(tmp_path, model_dir, monkeypatch, capsys):
    """The note's wiring (Ray itself is tests/test_search_ray.py's): a stand-in engine indexes
    the files as the local one does without moments."""
    import onepeace.search.ray_engine as ray_engine
    from onepeace.cli import main

    long_wav(tmp_path / "media" / "long.wav", 25)

    def stand_in(db, model, sources, **kwargs):
        return build(db, model, sources, workers=0, progress=False, moments=False)

    monkeypatch.setattr(ray_engine, "build_ray", stand_in)
    monkeypatch.setattr(ray_engine, "import_ray", lambda: None)
    r = build(tmp_path / "db", str(model_dir), [tmp_path / "media"], engine="ray")
    assert r["moments_note"].startswith("--engine ray builds no moments") and r["moment_files"] == 0
    assert main(["index", "build", str(tmp_path / "db2"), str(tmp_path / "media"), "--model", str(model_dir),
                 "--engine", "ray"]) == 0
    err = capsys.readouterr().err
    assert "note: --engine ray builds no moments" in err and "--engine local" in err
    assert MomentTable.open(Index.open(tmp_path / "db2")) is None
