"""The demo's moment step (issue 24, item 6): a long recording of held-out words over a procedural
bed, added to the demo's index with moments, one moment query; and benchmarks/bench_moments.py
(--quick) writing its results file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onepeace_train.demo import moments as dm

ROOT = Path(__file__).resolve().parents[1]


def test_the_long_recording_is_seeded_and_its_words_are_where_it_says():
    wave, words = dm.long_recording(0)
    again, words2 = dm.long_recording(0)
    assert np.array_equal(wave, again) and words == words2
    assert wave.dtype == np.float32 and len(wave) == int(dm.SECONDS * dm.SR)
    assert len(words) == dm.WORDS and len({w["digit"] for w in words}) == dm.WORDS
    assert dm.QUERY_DIGIT in {w["digit"] for w in words}
    for a, b in zip(words, words[1:]):
        assert b["start"] - a["end"] >= dm.GAP - 1e-3
    assert words[0]["start"] >= dm.GAP - 1e-3 and words[-1]["end"] <= dm.SECONDS - dm.GAP + 1e-3
    bed = np.ones(len(wave), bool)
    for w in words:  # each word is far louder than the bed around it
        a, b = int(w["start"] * dm.SR), int(w["end"] * dm.SR)
        bed[a:b] = False
        assert np.abs(wave[a:b]).max() > 5 * np.abs(wave[bed]).max() or np.abs(wave[a:b]).max() > 0.1
    assert 0 < np.abs(wave[bed]).max() < 0.1
    other, _ = dm.long_recording(1)
    assert not np.array_equal(wave, other)


def test_clock_and_overlap():
    assert dm.clock(41.23) == "0:41.2" and dm.clock(3601.0) == "1:00:01.0" and dm.clock(59.96) == "1:00.0" and dm.clock(-1) == "0:00.0"
    assert dm.overlap((0, 2), (1, 3)) == pytest.approx(1 / 3)
    assert dm.overlap((0, 1), (2, 3)) == 0.0 and dm.overlap((1, 2), (1, 2)) == 1.0


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    import torch

    import onepeace

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("m") / "tiny"
    onepeace.create_model("tiny", layers=1).save_pretrained(d)
    return d


def test_the_moment_step_indexes_the_recording_and_answers(tmp_path, tiny_dir, capsys):
    """With a random tiny model: the recording and its truth are written into the run's media,
    the index gets its windows, the query's top moment and the word's true time are printed; a
    rerun rewrites nothing and adds nothing; the run directory stays a demo directory."""
    pytest.importorskip("lancedb")
    from onepeace.search.moments import MomentTable
    from onepeace.search.store import Index
    from onepeace_train.demo.run import _check_demo_dir

    run = tmp_path / "run"
    (run / "index-media" / "audio").mkdir(parents=True)
    keep = run / "index-media" / "audio" / "seven-007.wav"
    keep.write_bytes(b"not ours")
    s = dm.demo_moment_step(str(run), str(tiny_dir))
    out = capsys.readouterr().out
    wav = run / "index-media" / dm.LONG_NAME
    truth = json.loads((run / "index-media" / dm.TRUTH_NAME).read_text())
    assert wav.is_file() and truth["words"] == s["words"] and keep.read_bytes() == b"not ours"
    assert s["truth"]["digit"] == dm.QUERY_DIGIT and s["query"] == "someone saying seven"
    assert s["top"] is not None and 0 <= s["top"]["start"] < s["top"]["end"] <= dm.SECONDS + 1e-6
    assert 0.0 <= s["iou"] <= 1.0
    assert "query 'someone saying seven': top moment long-recording.wav " in out
    assert f"the word 'seven' is at {dm.clock(s['truth']['start'])}" in out and "--moments" in out
    idx = Index.open(str(run / "index"))
    windows = MomentTable.open(idx).count()
    assert windows > 0 and s["build"]["moment_files"] == 1 and idx.count("audio") == 1
    meta = json.loads(idx.rows(["metadata"])[0]["metadata"])
    assert meta["moments"]["segment"] == dm.MOMENTS["segment"] and meta["duration"] == pytest.approx(dm.SECONDS)
    _check_demo_dir(str(run))  # nothing outside the demo's own entries: `onepeace demo` still runs there
    assert sorted(os.listdir(run)) == ["index", "index-media"]

    mtime = wav.stat().st_mtime_ns
    s2 = dm.demo_moments(str(run), str(tiny_dir))
    assert wav.stat().st_mtime_ns == mtime  # same bytes: not rewritten
    assert s2["build"]["unchanged"] == 1 and s2["build"]["added"] == 0 and s2["build"]["moment_windows"] == 0
    assert MomentTable.open(Index.open(str(run / "index"))).count() == windows
    # the same best score (a random tiny model scores many windows alike: which of a tie comes first may vary)
    assert s2["top"]["score"] == pytest.approx(s["top"]["score"], abs=1e-5) and s2["truth"] == s["truth"]


def test_the_digit_precision_skips_an_unlabelled_long_recording(tmp_path):
    """The demo's audio->image precision takes the labelled spoken digits only: the long
    recording in the same index (no label) is no query, on a rerun of the demo too."""
    pytest.importorskip("lancedb")
    from onepeace.search.store import Index
    from onepeace_train.demo.search import audio_to_image_precision

    idx = Index.create(str(tmp_path / "db"), fingerprint="f" * 64, model_name="m", dim=4)
    e = np.eye(4)
    idx.add([{"modality": "image", "uri": f"/i{k}.png", "metadata": {"label": k}, "content_hash": "h",
              "vector": e[k]} for k in range(2)]
            + [{"modality": "audio", "uri": "/a0.wav", "metadata": {"label": 0}, "content_hash": "h", "vector": e[0]},
               {"modality": "audio", "uri": "/long-recording.wav", "metadata": {"duration": 60.0}, "content_hash": "h",
                "vector": e[1]}])
    p = audio_to_image_precision(idx, k=1)
    assert p["queries"] == 1 and p["precision_at_k"] == 1.0


@pytest.mark.slow
def test_bench_moments_quick_writes_fractions(tmp_path):
    """benchmarks/bench_moments.py --quick (small sizes, a random model with audio and video
    branches): every part in the results file, recall figures fractions, the model fingerprinted."""
    pytest.importorskip("lancedb")
    pytest.importorskip("av")
    import torch

    import onepeace

    torch.manual_seed(0)
    model = tmp_path / "av"
    onepeace.create_model("tiny", layers=1, modalities={
        "text": {}, "image": {"image_size": 32}, "audio": {},
        "video": {"frames": 8, "image_size": 32, "pool": 1}}).save_pretrained(model)
    out = tmp_path / "moments.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_moments.py"), "--quick", "--audio-model",
                           str(model), "--video-model", str(model), "--out", str(out), "--tmp", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["quick"] is True and res["machine"]["cpu_model"] and res["machine"]["threads"] == 1
    assert set(res["seconds"]) == {"audio", "video", "throughput", "latency"}
    assert len(res["models"]["audio"]["fingerprint"]) >= 16 and res["overlap_rule"].startswith("hit = IoU")

    def fractions(block: dict, keys=("recall_at_1", "midpoint_hit", "mean_iou")) -> None:
        for k in keys:
            if block.get(k) is not None:
                assert 0.0 <= block[k] <= 1.0, (k, block)

    blocks = [*res["audio"]["conditions"].values(), res["video"]]
    assert set(res["audio"]["conditions"]) == {"bed", "silence"}
    for b in blocks:
        fractions(b["baseline"]["whole_file"])
        assert b["baseline"]["whole_file"]["recall_at_1"] == 0.0  # a word is far shorter than its file
        fractions(b["baseline"]["no_moments"]["across_files"], ("file_search_right_file", "right_file_chance"))
        assert b["settings"]
        for s in b["settings"]:
            assert s["windows"] > 0 and s["within_file"]["queries"] > 0
            fractions(s["within_file"])
            fractions(s["across_files"], ("recall_at_1", "right_file", "file_search_right_file", "right_file_chance"))
            assert s["within_file"]["start_error_s"] >= 0 and s["within_file"]["range_s"] > 0
    for m in ("audio", "video"):
        t = res["throughput"][m]
        assert "error" not in t, t
        assert t["windows"] > 0 and t["hours_per_cpu_hour"] > 0 and t["peak_rss_during_build_mb"] > 0
        assert t["rss_model_loaded_mb"] > 0 and t["threads"] == 1 and t["reference"]["windows"] > 0
    lat = res["latency"]
    assert lat["rows"] > 0 and lat["exact"]["p50_ms"] > 0 and lat["ann"]["p95_ms"] >= lat["ann"]["p50_ms"]
    assert "synthetic" in lat["vectors"]
    assert "audio moments over bed" in proc.stdout and "moment search over" in proc.stdout
