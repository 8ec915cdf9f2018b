#!/usr/bin/env python
"""Moments in long media, with known answers (issue 24): where in a long recording or video a
text query lands, how fast long files are indexed, and how fast a moment search is.

* **audio**: long recordings (``--audio-files`` of ``--audio-seconds``, seeded) made of the demo's
  held-out spoken digits (``onepeace_train.demo.data.load_speech("test")``: voices never heard in
  training), five distinct digits a recording at known, non-overlapping offsets, over a bed of real
  environmental sound (ESC-10 clips, ``../shared/data/esc10``, each scaled to a twentieth of the
  words' mean peak) or, the second condition, over near-silence (a noise floor 60 dB under the
  words' peak). Each setting (fixed windows of several window/hop pairs, ``segment=onsets``,
  ``segment=both``) is a fresh index built by ``onepeace.search.build`` (moments on), searched by
  ``onepeace.search.search(..., moments=True)``:

  - *within the file*: each word occurrence's caption (the demo's ``eval_caption(label, "audio")``,
    "someone saying seven") searched for moments of its own file (``where uri = ...``, ``k=1``);
  - *across the collection*: each digit's caption, the top range over all files (``k=1``).

  A top range **hits** when its IoU (intersection over union of the two time ranges) with the
  true range of the word (the clip's placement) is at least 0.5; recall@1 is the share of hits.
  Also recorded: mean IoU, the mean start and end offset errors in seconds, the mean range length
  and whether the range contains the word's midpoint (a lenient "on the word" that a long range
  meets easily). Baselines: the whole file as the range (what a search without moments can say),
  and plain file search (``moments=False``: does the top file contain the digit) on the same
  index's file rows and on an index built without moments (today's long-audio handling).
* **video**: long videos made of the video demo's digit clips (``onepeace_train.demo.video.moving_digit``
  on the held-out test digits, 8 frames at 8 fps) with blank frames between them, known offsets;
  text -> video moments with ``runs/demo-video/model`` per window/hop, same measures.
* **throughput**: one generated 1-hour audio file (words over a bed, repeated) and one 1-hour video
  (48 px frames at 8 fps, written frame by frame), each indexed (moments on, default windows) in a
  child process: hours of media per CPU-hour (wall x threads, and the CPU time measured), peak
  RSS (``ru_maxrss``; and ``VmHWM`` reset once the model is loaded) against the RSS with the model
  loaded before the build, and against the float32 waveform of the hour (230 MB).
* **latency**: a moments table of ``--latency-hours`` hours of windows (one row per ``hop``
  second, synthetic unit vectors of the demo model's width: latency does not depend on their
  values) written through ``MomentTable.add``, with one file row per hour; median and p95 of a
  moment search (``find_moments``: the query vector given) exact and with the table's ANN index,
  and of ``search(..., moments=True)`` with the text query embedded by the demo model.

Writes ``benchmarks/results/moments.json`` (``--quick``: small sizes, for the test). Usage::

    python benchmarks/bench_moments.py                 # make bench-moments (make demo, make demo-video first)
    python benchmarks/bench_moments.py --parts audio   # one part; the others keep their values
    python benchmarks/bench_moments.py --quick --audio-model M --video-model M --out /tmp/moments.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _bench import SHARED, proc_status, reset_hwm, run_worker, worker_main, write_json_atomic  # noqa: E402

OUT = HERE / "results" / "moments.json"
ESC10 = SHARED / "data" / "esc10"
SR = 16000
FPS, CANVAS, CLIP_FRAMES = 8, 48, 8
#: a hit: the top range's IoU with the true range at least this
IOU_HIT = 0.5
OVERLAP_RULE = ("hit = IoU (|intersection| / |union| of the top range and the true range, in seconds) >= 0.5; "
                "true range = where the clip was placed (a word: its TTS clip, 0.25-0.45 s; a video clip: its "
                "8 frames, 1 s); recall@1 = hits / queries; start/end error = |range start - true start|, "
                "|range end - true end|; midpoint_hit = the range contains the true range's midpoint; "
                "best_window_recall = the share of words that some window of their file hits (what the windows "
                "allow whatever the scores)")
#: windows over long files: MomentOptions.over (every generated file is longer)
OVER = 10.0
#: in this order; an ``incremental`` setting is built over the previous setting's index (the build
#: embeds only the windows it lacks and deletes the others: "both" reuses fixed 1.5/0.5's windows,
#: "onsets" both's), a fresh index otherwise
AUDIO_SETTINGS = [
    {"name": "fixed 1.0/0.5", "segment": "fixed", "window": 1.0, "hop": 0.5},
    {"name": "fixed 2.0/1.0", "segment": "fixed", "window": 2.0, "hop": 1.0},
    {"name": "fixed 1.5/0.5", "segment": "fixed", "window": 1.5, "hop": 0.5},
    {"name": "both (onsets + fixed 1.5/0.5)", "segment": "both", "window": 1.5, "hop": 0.5, "incremental": True},
    {"name": "onsets", "segment": "onsets", "window": 1.5, "hop": 0.5, "incremental": True},
]
VIDEO_SETTINGS = [
    {"name": "fixed 1.0/0.25", "segment": "fixed", "window": 1.0, "hop": 0.25},
    {"name": "fixed 1.0/0.5", "segment": "fixed", "window": 1.0, "hop": 0.5},
    {"name": "fixed 2.0/1.0", "segment": "fixed", "window": 2.0, "hop": 1.0},
    {"name": "fixed 4.0/2.0 (default)", "segment": "fixed", "window": 4.0, "hop": 2.0},
]
SIZES = {
    "full": {"audio_files": 8, "audio_seconds": 75.0, "words": 5, "video_files": 8, "video_seconds": 60.0,
             "clips": 5, "hour_seconds": 3600.0, "latency_hours": 100, "latency_hop": 1.0, "latency_queries": 40,
             "audio_settings": [s["name"] for s in AUDIO_SETTINGS], "video_settings": [s["name"] for s in VIDEO_SETTINGS]},
    "quick": {"audio_files": 2, "audio_seconds": 24.0, "words": 3, "video_files": 2, "video_seconds": 16.0,
              "clips": 3, "hour_seconds": 30.0, "latency_hours": 1, "latency_hop": 1.0, "latency_queries": 5,
              "audio_settings": ["fixed 1.0/0.5", "onsets"], "video_settings": ["fixed 1.0/0.5"]},
}
#: the models each part uses
PART_MODELS = {"audio": ("audio",), "video": ("video",), "throughput": ("audio", "video"), "latency": ("audio",)}
FLOAT32_HOUR_BYTES = 3600 * SR * 4  # the float32 waveform of one hour at 16 kHz: 230.4 MB


def r(x: float | None, n: int = 3) -> float | None:
    return None if x is None else round(float(x), n)


# ------------------------------------------------------------------------------------------ scoring
def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def range_scores(pred: tuple[float, float] | None, truth: tuple[float, float]) -> dict[str, float]:
    """One query's measures: IoU, hit, offset errors, range length, midpoint inside (no range: a miss)."""
    if pred is None:
        return {"iou": 0.0, "hit": 0.0, "start_error": float("nan"), "end_error": float("nan"),
                "range": float("nan"), "midpoint": 0.0}
    v = iou(pred, truth)
    mid = (truth[0] + truth[1]) / 2
    return {"iou": v, "hit": float(v >= IOU_HIT - 1e-9), "start_error": abs(pred[0] - truth[0]),
            "end_error": abs(pred[1] - truth[1]), "range": pred[1] - pred[0],
            "midpoint": float(pred[0] <= mid <= pred[1])}


def summarize(scores: list[dict[str, float]]) -> dict[str, Any]:
    def mean(k: str) -> float | None:
        xs = [s[k] for s in scores if not np.isnan(s[k])]
        return r(statistics.fmean(xs)) if xs else None

    return {"recall_at_1": mean("hit"), "mean_iou": mean("iou"), "start_error_s": mean("start_error"),
            "end_error_s": mean("end_error"), "range_s": mean("range"), "midpoint_hit": mean("midpoint"),
            "queries": len(scores)}


# ------------------------------------------------------------------------------------------ audio data
def place(rng: random.Random, total: float, lengths: list[float], gap: float, edge: float = 1.0) -> list[float]:
    """Sorted non-overlapping start times for items of ``lengths`` seconds in ``total`` seconds, at
    least ``gap`` seconds apart and ``edge`` from either end (rejection sampling)."""
    for _ in range(10_000):
        starts = sorted(rng.uniform(edge, total - edge - max(lengths)) for _ in lengths)
        ends = [s + n for s, n in zip(starts, lengths)]
        if all(starts[i + 1] - ends[i] >= gap for i in range(len(starts) - 1)):
            return starts
    raise RuntimeError(f"cannot place {len(lengths)} items {gap} s apart in {total} s")


def esc10_files() -> list[str]:
    return sorted(str(p) for p in ESC10.glob("*/*.ogg")) if ESC10.is_dir() else []


def bed_wave(rng: random.Random, n: int, peak: float, clips: list[str]) -> tuple[np.ndarray, list[str]]:
    """``n`` samples of real environmental sound: ESC-10 clips drawn at random, one after another
    (10 ms fades), each scaled so its peak is ``peak``; without ESC-10, procedural beds
    (``onepeace.data.augment.procedural_bed``) scaled alike. Returns the bed and its sources."""
    from onepeace.data.augment import procedural_bed
    from onepeace.processing.audio import load_audio

    out, used, at = np.zeros(n, np.float32), [], 0
    fade = np.linspace(0, 1, SR // 100, dtype=np.float32)
    while at < n:
        if clips:
            path = rng.choice(clips)
            x = load_audio(path, SR).astype(np.float32)
            used.append(os.path.relpath(path, ESC10))
        else:
            kind = rng.choice(["pink", "rain", "wind", "engine", "fan", "hum"])
            x = procedural_bed(5 * SR, SR, np.random.default_rng(rng.randrange(1 << 30)), kind)
            used.append(f"procedural:{kind}")
        x = x[: n - at].copy()
        if len(x) > 2 * len(fade):
            x[: len(fade)] *= fade
            x[-len(fade):] *= fade[::-1]
        m = float(np.abs(x).max())
        out[at: at + len(x)] = x * (peak / m if m > 0 else 0.0)
        at += len(x)
    return out, used


def audio_recordings(rng: random.Random, size: dict, condition: str, clips: list[str]) -> list[dict[str, Any]]:
    """The long recordings of one condition ("bed" or "silence"): waveform and true word ranges."""
    from onepeace_train.demo.data import load_speech

    waves, labels, _ = load_speech("test")
    pool = {d: [i for i, lab in enumerate(labels) if lab == d] for d in range(10)}
    for p in pool.values():
        rng.shuffle(p)
    recs = []
    for f in range(size["audio_files"]):
        digits = rng.sample(range(10), size["words"])
        idx = [pool[d].pop() for d in digits]
        lengths = [len(waves[i]) / SR for i in idx]
        starts = place(rng, size["audio_seconds"], lengths, gap=3.0)
        n = int(size["audio_seconds"] * SR)
        peak = float(np.mean([np.abs(waves[i]).max() for i in idx]))
        if condition == "bed":
            wave, sources = bed_wave(rng, n, peak / 20, clips)
        else:  # near-silence: a white noise floor 60 dB under the words' peak
            wave = (np.random.default_rng(rng.randrange(1 << 30)).standard_normal(n) * peak * 1e-3).astype(np.float32)
            sources = ["noise floor -60 dB"]
        words = []
        for i, d, s in zip(idx, digits, starts):
            a = int(round(s * SR))
            wave[a: a + len(waves[i])] += waves[i]
            words.append({"label": int(d), "start": a / SR, "end": (a + len(waves[i])) / SR, "clip": int(i)})
        recs.append({"name": f"{condition}-{f:02d}.wav", "wave": np.clip(wave, -1, 1), "words": words,
                     "bed": sources})
    return recs


def write_wavs(folder: Path, recs: list[dict[str, Any]]) -> None:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    for rec in recs:
        sf.write(folder / rec["name"], rec["wave"], SR, subtype="PCM_16")
        rec["uri"] = str((folder / rec["name"]).resolve())
        rec["duration"] = len(rec["wave"]) / SR


# ------------------------------------------------------------------------------------------ video data
def write_video_frames(path: Path, frames: Iterator[np.ndarray], fps: int = FPS) -> int:
    """Encode frames (uint8 [H, W, 3] each, from an iterator: never all in memory) as H.264 .mp4,
    written under a temporary name and moved into place. Returns how many frames."""
    import av

    tmp = path.with_name(path.name + ".tmp.mp4")
    count = 0
    with av.open(str(tmp), mode="w") as out:
        vs = None
        for img in frames:
            if vs is None:
                vs = out.add_stream("libx264", rate=fps)
                vs.width, vs.height, vs.pix_fmt = img.shape[1], img.shape[0], "yuv420p"
            for packet in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(packet)
            count += 1
        for packet in vs.encode():
            out.mux(packet)
    os.replace(tmp, path)
    return count


def video_recordings(rng: random.Random, size: dict, folder: Path) -> list[dict[str, Any]]:
    """Long videos: ``clips`` digit clips (distinct digits, held-out test digits as the video demo's
    test clips) at known whole-frame offsets, blank frames between them."""
    from onepeace_train.demo.data import load_digits
    from onepeace_train.demo.video import _WAYS, moving_digit

    images, labels = load_digits("test")
    images, labels = images[0::2], labels[0::2]  # the digits of the video demo's test clips
    pool = {d: [i for i, lab in enumerate(labels) if lab == d] for d in range(10)}
    folder.mkdir(parents=True, exist_ok=True)
    blank = np.zeros((CANVAS, CANVAS, 3), np.uint8)
    recs = []
    for f in range(size["video_files"]):
        digits = rng.sample(range(10), size["clips"])
        total = int(size["video_seconds"] * FPS)
        starts = [int(round(s * FPS)) for s in place(rng, size["video_seconds"], [CLIP_FRAMES / FPS] * len(digits), 2.0)]
        clips = {s: moving_digit(images[rng.choice(pool[d])], rng.choice(sorted(_WAYS)), rng)
                 for s, d in zip(starts, digits)}

        def frames(clips: dict = clips, total: int = total) -> Iterator[np.ndarray]:
            k = 0
            while k < total:
                if k in clips:
                    yield from clips[k]
                    k += CLIP_FRAMES
                else:
                    yield blank
                    k += 1

        name = f"video-{f:02d}.mp4"
        write_video_frames(folder / name, frames())
        recs.append({"name": name, "uri": str((folder / name).resolve()), "duration": total / FPS,
                     "words": [{"label": int(d), "start": s / FPS, "end": (s + CLIP_FRAMES) / FPS}
                               for s, d in zip(starts, digits)]})
    return recs


# ------------------------------------------------------------------------------------------ evaluation
def _top_range(hits: list[dict[str, Any]]) -> tuple[str, tuple[float, float]] | None:
    return (hits[0]["uri"], (float(hits[0]["start"]), float(hits[0]["end"]))) if hits else None


def within_file(index: Any, model: Any, recs: list[dict], caption: Any) -> list[dict[str, float]]:
    """Each occurrence's caption searched for moments of its own file: the top range's measures."""
    from onepeace.search import search

    scores = []
    for rec in recs:
        where = "uri = '" + rec["uri"].replace("'", "''") + "'"
        for w in rec["words"]:
            top = _top_range(search(index, model, text=caption(w["label"]), moments=True, k=1, where=where,
                                    exact=True))
            scores.append(range_scores(top[1] if top else None, (w["start"], w["end"])))
    return scores


def across_files(index: Any, model: Any, recs: list[dict], caption: Any, modality: str,
                 moments: bool = True) -> dict[str, Any]:
    """Each digit's caption over the whole collection: the top range hits when its IoU with an
    occurrence of that digit in its file is >= 0.5; the right file when its file holds the digit;
    ``file_search_right_file``: the same for the top file of a plain (file-level) search (alone
    when not ``moments``)."""
    from onepeace.search import search

    where_is = {}
    for rec in recs:
        for w in rec["words"]:
            where_is.setdefault(w["label"], []).append((rec["uri"], (w["start"], w["end"])))
    hits, right, file_right, best = [], [], [], []
    for d, occ in sorted(where_is.items()):
        top = _top_range(search(index, model, text=caption(d), moments=True, k=1, exact=True)) if moments else None
        v = max((iou(top[1], t) for u, t in occ if top and u == top[0]), default=0.0)
        hits.append(float(v >= IOU_HIT - 1e-9))
        best.append(v)
        right.append(float(bool(top) and any(u == top[0] for u, _ in occ)))
        files = search(index, model, text=caption(d), modality=modality, k=1, exact=True)
        file_right.append(float(bool(files) and any(u == files[0]["uri"] for u, _ in occ)))
    chance = statistics.fmean(len({u for u, _ in occ}) / len(recs) for occ in where_is.values())
    found = {"recall_at_1": r(statistics.fmean(hits)), "mean_iou": r(statistics.fmean(best)),
             "right_file": r(statistics.fmean(right))} if moments else {}
    return {**found, "file_search_right_file": r(statistics.fmean(file_right)), "right_file_chance": r(chance),
            "queries": len(hits)}


def window_oracle(table: Any, recs: list[dict]) -> dict[str, Any]:
    """What the windows allow at best: the share of words that some window of their file hits
    (IoU >= 0.5), and the mean of each word's best IoU, whatever the model's scores."""
    t = table.scan(["uri", "start", "end"]).to_pydict()
    spans: dict[str, list[tuple[float, float]]] = {}
    for u, a, b in zip(t["uri"], t["start"], t["end"]):
        spans.setdefault(u, []).append((a, b))
    best = [max((iou(w, (x["start"], x["end"])) for w in spans.get(rec["uri"], [])), default=0.0)
            for rec in recs for x in rec["words"]]
    return {"best_window_recall": r(statistics.fmean(v >= IOU_HIT - 1e-9 for v in best)),
            "best_window_iou": r(statistics.fmean(best))}


def whole_file_baseline(recs: list[dict]) -> dict[str, Any]:
    """The whole recording as the range of every word: what a search without moments can say."""
    return summarize([range_scores((0.0, rec["duration"]), (w["start"], w["end"])) for rec in recs
                      for w in rec["words"]])


def eval_setting(model: Any, folder: Path, db: Path, recs: list[dict], setting: dict | None, caption: Any,
                 modality: str) -> dict[str, Any]:
    """Build an index of ``folder`` with the moments of ``setting`` (None: no moments; a fresh
    index unless the setting is ``incremental``), then search it within each file and across files."""
    from onepeace.search import Index, build

    if not (setting or {}).get("incremental"):
        shutil.rmtree(db, ignore_errors=True)
    moments = False if setting is None else {"over": OVER, **{k: setting[k] for k in ("window", "hop", "segment")}}
    t0 = time.perf_counter()
    res = build(str(db), model, [str(folder)], moments=moments, workers=0, progress=False)
    build_s = time.perf_counter() - t0
    out: dict[str, Any] = {"build_s": r(build_s, 1)}
    for _ in range(2):  # a file the build skipped (should not happen: said, and built again incrementally)
        if not res.get("skipped"):
            break
        why = json.loads(Path(res["report"]).read_text()).get("skipped")
        print(f"  ! {folder}: {res['skipped']} files skipped: {why}; building again", flush=True)
        out.setdefault("skipped_then_rebuilt", []).append(why)
        res = build(str(db), model, [str(folder)], moments=moments, workers=0, progress=False)
    if res.get("skipped"):
        raise RuntimeError(f"{folder}: {res['skipped']} files skipped twice: see {res['report']}")
    index = Index.open(str(db))
    if setting is not None:
        from onepeace.search.moments import MomentTable

        table = MomentTable.open(index)
        out["windows"] = table.count()
        out["within_file"] = {**summarize(within_file(index, model, recs, caption)), **window_oracle(table, recs)}
    out["across_files"] = across_files(index, model, recs, caption, modality, moments=setting is not None)
    return {**(setting or {"name": "no moments (file rows only)"}), **out}


def audio_part(model_dir: str, size: dict, tmp: Path, seed: int) -> dict[str, Any]:
    from onepeace import OnePeace
    from onepeace_train.demo.data import eval_caption

    model = OnePeace.from_pretrained(model_dir)
    clips = esc10_files()
    caption = lambda d: eval_caption(d, "audio")  # noqa: E731
    out: dict[str, Any] = {"data": {
        "files": size["audio_files"], "seconds": size["audio_seconds"], "words_per_file": size["words"],
        "words": "the demo's held-out spoken digits (load_speech('test'): voices never heard in training), distinct "
                 "digits in a file, >= 3 s apart",
        "bed": ("ESC-10 clips (../shared/data/esc10), each scaled to peak at 1/20 of the words' mean peak"
                if clips else "procedural beds (ESC-10 not found), each scaled to peak at 1/20 of the words' mean peak"),
        "silence": "white noise floor, std 1/1000 of the words' mean peak (-60 dB)",
        "query": "eval_caption(label, 'audio'), e.g. 'someone saying seven'", "over": OVER},
        "conditions": {}}
    for condition in ("bed", "silence"):
        rng = random.Random(f"bench-moments:audio:{seed}:{condition}")
        recs = audio_recordings(rng, size, condition, clips)
        folder = tmp / f"audio-{condition}"
        write_wavs(folder, recs)
        res: dict[str, Any] = {"baseline": {"whole_file": whole_file_baseline(recs),
                                            "no_moments": eval_setting(model, folder, tmp / "db", recs, None, caption,
                                                                       "audio")},
                               "settings": []}
        for setting in (s for s in AUDIO_SETTINGS if s["name"] in size["audio_settings"]):
            res["settings"].append(eval_setting(model, folder, tmp / "db", recs, setting, caption, "audio"))
            print(f"  audio {condition:8} {setting['name']:32} {json.dumps(res['settings'][-1]['within_file'])}",
                  flush=True)
        res["truth"] = [{"file": rec["name"], "words": rec["words"], "bed": rec["bed"]} for rec in recs]
        out["conditions"][condition] = res
        shutil.rmtree(folder, ignore_errors=True)
    return out


def video_part(model_dir: str, size: dict, tmp: Path, seed: int) -> dict[str, Any]:
    from onepeace import OnePeace
    from onepeace_train.demo.data import DIGIT_WORDS
    from onepeace_train.demo.video import EVAL_TEMPLATE

    model = OnePeace.from_pretrained(model_dir)
    caption = lambda d: EVAL_TEMPLATE.format(word=DIGIT_WORDS[d])  # noqa: E731
    folder = tmp / "video"
    recs = video_recordings(random.Random(f"bench-moments:video:{seed}"), size, folder)
    res: dict[str, Any] = {
        "data": {"files": size["video_files"], "seconds": size["video_seconds"], "clips_per_file": size["clips"],
                 "clips": f"moving_digit on the held-out test digits (every other one, as the video demo's test clips), "
                          f"{CLIP_FRAMES} frames at {FPS} fps, {CANVAS} px, H.264; blank frames between, >= 2 s apart; "
                          "no sound track", "query": f"'{EVAL_TEMPLATE}'", "over": OVER},
        "baseline": {"whole_file": whole_file_baseline(recs),
                     "no_moments": eval_setting(model, folder, tmp / "db", recs, None, caption, "video")},
        "settings": []}
    for setting in (s for s in VIDEO_SETTINGS if s["name"] in size["video_settings"]):
        res["settings"].append(eval_setting(model, folder, tmp / "db", recs, setting, caption, "video"))
        print(f"  video {setting['name']:32} {json.dumps(res['settings'][-1]['within_file'])}", flush=True)
    res["truth"] = [{"file": rec["name"], "words": rec["words"]} for rec in recs]
    shutil.rmtree(folder, ignore_errors=True)
    return res


# ------------------------------------------------------------------------------------------ throughput
def write_hour_audio(path: Path, seconds: float, seed: int) -> dict[str, Any]:
    """``seconds`` of audio: one minute of words over an ESC-10 bed (as the audio part's), repeated,
    written block by block (16-bit WAV)."""
    import soundfile as sf

    size = {"audio_files": 1, "audio_seconds": min(60.0, seconds), "words": 5 if seconds >= 60 else 3}
    rec = audio_recordings(random.Random(f"bench-moments:hour:{seed}"), size, "bed", esc10_files())[0]
    n = int(seconds * SR)
    with sf.SoundFile(str(path), "w", SR, 1, "PCM_16") as f:
        done = 0
        while done < n:
            part = rec["wave"][: n - done]
            f.write(part)
            done += len(part)
    return {"seconds": seconds, "pattern": f"{size['audio_seconds']:g} s of {size['words']} words over a bed, repeated",
            "file_bytes": path.stat().st_size}


def write_hour_video(path: Path, seconds: float, seed: int) -> dict[str, Any]:
    """``seconds`` of 48 px video at 8 fps: a minute of digit clips and blank frames, repeated,
    encoded frame by frame."""
    size = {"video_files": 1, "video_seconds": min(60.0, seconds), "clips": 5 if seconds >= 60 else 3}
    rng = random.Random(f"bench-moments:hour-video:{seed}")
    from onepeace_train.demo.data import load_digits
    from onepeace_train.demo.video import _WAYS, moving_digit

    images, _ = load_digits("test")
    cycle = int(size["video_seconds"] * FPS)
    starts = {int(round(s * FPS)) for s in place(rng, size["video_seconds"], [1.0] * size["clips"], 2.0)}
    clips = {s: moving_digit(images[rng.randrange(len(images))], rng.choice(sorted(_WAYS)), rng) for s in starts}
    blank = np.zeros((CANVAS, CANVAS, 3), np.uint8)

    def frames() -> Iterator[np.ndarray]:
        for k in range(int(seconds * FPS)):
            c = k % cycle
            start = next((s for s in clips if s <= c < s + CLIP_FRAMES), None)
            yield clips[start][c - start] if start is not None else blank

    t0 = time.perf_counter()
    n = write_video_frames(path, frames())
    return {"seconds": seconds, "frames": n, "fps": FPS, "size_px": CANVAS, "encode_s": r(time.perf_counter() - t0, 1),
            "pattern": f"{size['video_seconds']:g} s of {size['clips']} digit clips and blank frames, repeated",
            "file_bytes": path.stat().st_size}


def _worker_index(spec: dict) -> dict[str, Any]:
    """Child: load the model, note the RSS, index one long file (moments on), note the peaks."""
    import torch

    torch.set_num_threads(int(spec["threads"]))
    import lancedb  # noqa: F401 - loaded by any build: counted in the RSS before it

    from onepeace import OnePeace
    from onepeace.search import Index, build
    from onepeace.search.moments import MomentTable

    model = OnePeace.from_pretrained(spec["model"])
    before = proc_status()
    reset = reset_hwm()
    t0, c0 = time.perf_counter(), os.times()
    res = build(spec["db"], model, [spec["file"]], moments={"over": OVER}, workers=0, progress=False)
    wall, c1 = time.perf_counter() - t0, os.times()
    after = proc_status()
    index = Index.open(spec["db"])
    row = index.rows(["metadata"])[0]
    return {"wall_s": wall, "cpu_s": (c1.user - c0.user) + (c1.system - c0.system),
            "rss_model_loaded_bytes": before.get("VmRSS"), "hwm_before_build_bytes": before.get("VmHWM"),
            "hwm_during_build_bytes": after.get("VmHWM") if reset else None, "hwm_reset": reset,
            "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "windows": MomentTable.open(index).count(), "moments": json.loads(row["metadata"]).get("moments"),
            "skipped": res.get("skipped"), "threads": torch.get_num_threads()}


def index_in_child(model: str, path: Path, db: Path, threads: int, label: str) -> dict[str, Any]:
    """Index one long file (moments on) in a child process: its rates and memory."""
    spec = {"model": model, "file": str(path), "db": str(db), "threads": threads}
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    res = run_worker("index", spec, 16e9, label, env_extra=env, script=__file__)
    shutil.rmtree(db, ignore_errors=True)
    if "error" in res:
        return {"error": res["error"]}
    peak = res["hwm_during_build_bytes"] or res["ru_maxrss_bytes"]
    return {"threads": res["threads"], "windows": res["windows"], "moments": res["moments"],
            "wall_s": r(res["wall_s"], 1), "cpu_s": r(res["cpu_s"], 1),
            "rss_model_loaded_mb": r(res["rss_model_loaded_bytes"] / 1e6, 1),
            "peak_rss_during_build_mb": r(peak / 1e6, 1),
            "peak_rss_mb": r(max(peak, res["hwm_before_build_bytes"] or 0) / 1e6, 1),
            "ru_maxrss_mb": r(res["ru_maxrss_bytes"] / 1e6, 1),
            "growth_mb": r((peak - res["rss_model_loaded_bytes"]) / 1e6, 1), "_peak": peak,
            "_loaded": res["rss_model_loaded_bytes"]}


def throughput_part(models: dict[str, str], size: dict, tmp: Path, threads: int, seed: int) -> dict[str, Any]:
    """An hour of audio and of video indexed, each in a child process; a minute of the same (15 s
    in --quick) beside it, so that memory growing with the file's length shows."""
    out: dict[str, Any] = {}
    for modality, writer, ext in (("audio", write_hour_audio, ".wav"), ("video", write_hour_video, ".mp4")):
        ref_seconds = 60.0 if size["hour_seconds"] >= 600 else 1.5 * OVER  # longer than OVER: it gets moments
        got = {}
        for key, seconds in (("hour", size["hour_seconds"]), ("reference", ref_seconds)):
            path = tmp / f"{key}-{modality}{ext}"
            made = writer(path, seconds, seed)
            got[key] = {"file": made, **index_in_child(models[modality], path, tmp / f"db-{key}-{modality}", threads,
                                                       f"index {seconds:g} s of {modality}")}
            path.unlink(missing_ok=True)
        x, ref = got["hour"], got["reference"]
        if "error" in x or "error" in ref:
            out[modality] = {"error": x.get("error") or ref.get("error")}
            continue
        hours = x["file"]["seconds"] / 3600
        peak, loaded = x.pop("_peak"), x.pop("_loaded")
        ref.pop("_peak"), ref.pop("_loaded")
        out[modality] = {
            **x, "hours_per_cpu_hour": r(hours / (x["wall_s"] / 3600 * x["threads"]), 1),
            "hours_per_cpu_hour_measured_cpu": r(hours / (x["cpu_s"] / 3600), 1),
            "peak_over_float32_hour": r(peak / FLOAT32_HOUR_BYTES, 2),
            "growth_over_float32_hour": r((peak - loaded) / FLOAT32_HOUR_BYTES, 3),
            "reference": {k: ref[k] for k in ("file", "windows", "wall_s", "rss_model_loaded_mb",
                                              "peak_rss_during_build_mb", "growth_mb")}}
        print(f"  throughput {modality}: {json.dumps(out[modality])}", flush=True)
    out["float32_hour_mb"] = r(FLOAT32_HOUR_BYTES / 1e6, 1)
    out["note"] = ("hours_per_cpu_hour = hours of media / (wall hours x threads); hours_per_cpu_hour_measured_cpu: "
                   "over the CPU time the child used building; rss_model_loaded = the child's VmRSS with the model "
                   "and LanceDB loaded, before the build; peak_rss_during_build = its VmHWM, reset then "
                   "(/proc/self/clear_refs) and read after the build; peak_rss = the child's own peak over its life; "
                   "growth = peak during the build - RSS before it; reference = the same for a file of a minute "
                   "(growth that does not grow with the file's length is bounded). ru_maxrss is recorded but not "
                   "used: on Linux it keeps the parent's peak across fork+exec")
    return out


# ------------------------------------------------------------------------------------------ latency
def _ms(xs: list[float]) -> dict[str, float | None]:
    xs = sorted(xs)
    return {"p50_ms": r(1000 * statistics.median(xs), 2), "p95_ms": r(1000 * xs[min(len(xs) - 1, int(0.95 * len(xs)))], 2),
            "queries": len(xs)}


def fill_moments(index: Any, hours: int, hop: float, window: float, seed: int) -> int:
    """``hours`` one-hour files of windows (``window`` s every ``hop`` s) with random unit vectors,
    through ``MomentTable.add`` (commits of one file), each with its file row (same content hash)."""
    from onepeace.search.moments import MomentTable, moment_id
    from onepeace.search.store import item_id

    table = MomentTable.open_or_create(index)
    rng = np.random.default_rng(seed)
    starts = np.arange(0.0, 3600.0 - window + 1e-9, hop)
    for f in range(hours):
        uri = f"/synthetic/hour-{f:03d}.wav"
        fid, digest = item_id("audio", uri), f"synthetic-{f:03d}"
        vecs = rng.standard_normal((len(starts), index.dim)).astype(np.float32)
        table.add([{"id": moment_id(fid, s, s + window, "fixed"), "file_id": fid, "modality": "audio", "uri": uri,
                    "kind": "fixed", "content_hash": digest, "start": s, "end": s + window, "vector": v}
                   for s, v in zip(starts, vecs)])
        index.add([{"id": fid, "modality": "audio", "uri": uri, "text": "", "content_hash": digest,
                    "metadata": {"duration": 3600.0}, "vector": vecs.mean(axis=0)}], replace=False)
    return table.count()


def latency_part(model_dir: str, size: dict, tmp: Path, seed: int) -> dict[str, Any]:
    from onepeace import OnePeace
    from onepeace.search import Index, search
    from onepeace.search.moments import MomentTable, find_moments
    from onepeace_train.demo.data import eval_caption

    model = OnePeace.from_pretrained(model_dir)
    index = Index.open_or_create(str(tmp / "db-latency"), model)
    t0 = time.perf_counter()
    rows = fill_moments(index, size["latency_hours"], size["latency_hop"], 2.0, seed)
    write_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed + 1)
    queries = rng.standard_normal((size["latency_queries"], index.dim))
    texts = [eval_caption(i % 10, "audio") for i in range(size["latency_queries"])]
    out: dict[str, Any] = {"rows": rows, "files": size["latency_hours"], "hours": size["latency_hours"],
                           "hop_s": size["latency_hop"], "window_s": 2.0, "dim": index.dim, "write_s": r(write_s, 1),
                           "vectors": "synthetic random unit vectors (latency does not depend on their values)",
                           "k": 10, "per_file": 1,
                           "timing": "the four searches in turn for each query (a drift of the shared host's speed "
                                     "hits all alike), one warm-up each; cpu_ms: process CPU time per query"}
    t0 = time.perf_counter()
    out["ann_index"] = MomentTable.open(index).ensure_ann(min_rows=0)
    out["ann_build_s"] = r(time.perf_counter() - t0, 1)
    fns = {"exact": lambda i: find_moments(index, queries[i], k=10, exact=True),
           "exact_with_query_embedding": lambda i: search(index, model, text=texts[i], moments=True, k=10, exact=True),
           "ann": lambda i: find_moments(index, queries[i], k=10),
           "ann_with_query_embedding": lambda i: search(index, model, text=texts[i], moments=True, k=10)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn(0)
    for i in range(len(queries)):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn(i)
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    for k in fns:
        out[k] = {**_ms(times[k]), "cpu_ms_mean": r(1000 * statistics.fmean(cpu[k]), 2)}
    shutil.rmtree(tmp / "db-latency", ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------------ report
def model_facts(path: str) -> dict[str, Any]:
    from onepeace.search.fingerprint import model_fingerprint

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise SystemExit(f"bench_moments: no model at {path}: run `make demo` (runs/demo/model) and `make demo-video` "
                         "(runs/demo-video/model) first, or name the models with --audio-model / --video-model")
    rel = os.path.relpath(path, ROOT) if os.path.abspath(path).startswith(str(ROOT)) else path
    return {"path": rel, "fingerprint": model_fingerprint(path)}


def print_summary(res: dict[str, Any]) -> None:
    def row(name: str, w: dict | None, a: dict | None) -> str:
        f = lambda x: "   -" if x is None else f"{x:5.2f}"  # noqa: E731
        w = w or {}
        a = a or {}
        return (f"  {name:34}{f(w.get('recall_at_1'))}{f(w.get('start_error_s')):>9}{f(w.get('end_error_s')):>9}"
                f"{f(w.get('range_s')):>9}{f(a.get('recall_at_1')):>9}{f(a.get('right_file')):>8}")

    head = f"  {'setting':34}{'R@1':>5}{'start err':>9}{'end err':>9}{'range s':>9}{'coll R@1':>9}{'file':>8}"
    for cond, c in (res.get("audio") or {}).get("conditions", {}).items():
        print(f"\naudio moments over {cond} (within the file; across the collection)\n{head}")
        print(row("whole file (baseline)", c["baseline"]["whole_file"], None))
        for s in c["settings"]:
            print(row(s["name"], s["within_file"], s["across_files"]))
    if res.get("video"):
        print(f"\nvideo moments\n{head}")
        print(row("whole file (baseline)", res["video"]["baseline"]["whole_file"], None))
        for s in res["video"]["settings"]:
            print(row(s["name"], s["within_file"], s["across_files"]))
    for m, t in (res.get("throughput") or {}).items():
        if isinstance(t, dict) and "wall_s" in t:
            print(f"\nindexing {t['file']['seconds'] / 3600:.3g} h of {m}: {t['hours_per_cpu_hour']} h per CPU-hour ({t['threads']} thread(s)), peak RSS "
                  f"{t['peak_rss_during_build_mb']} MB (model loaded: {t['rss_model_loaded_mb']} MB; "
                  f"{t['peak_over_float32_hour']}x the float32 hour)")
    lat = res.get("latency")
    if lat:
        print(f"\nmoment search over {lat['rows']:,} windows ({lat['hours']} h): exact p50 {lat['exact']['p50_ms']} ms, "
              f"ANN ({lat['ann_index']}) p50 {lat['ann']['p50_ms']} ms; with the text embedded: "
              f"{lat['exact_with_query_embedding']['p50_ms']} / {lat['ann_with_query_embedding']['p50_ms']} ms")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_worker"]:
        worker_main({"index": _worker_index}, argv[1], argv[3], argv[5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", choices=["audio", "video", "throughput", "latency"],
                    default=["audio", "video", "throughput", "latency"],
                    help="what to measure (the others keep their values in an existing --out file)")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run for the test)")
    ap.add_argument("--audio-model", default=str(ROOT / "runs" / "demo" / "model"))
    ap.add_argument("--video-model", default=str(ROOT / "runs" / "demo-video" / "model"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a shared machine one "
                                                           "thread is the steadier and often the faster)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="folder for the generated media and indexes (default: a temp dir)")
    ap.add_argument("--out", default=None, help=f"results file (default {OUT.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from _bench import machine_facts

    out = Path(args.out) if args.out else (OUT if not args.quick else HERE / "results" / "moments-quick.json")
    size = SIZES["quick" if args.quick else "full"]
    res: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    needed = {k for part in args.parts for k in PART_MODELS[part]}  # a part runs without the other's model
    models = {k: model_facts(p) for k, p in (("audio", args.audio_model), ("video", args.video_model)) if k in needed}
    facts = machine_facts()
    facts["threads"] = args.threads
    res.update({"benchmark": "benchmarks/bench_moments.py", "quick": args.quick, "seed": args.seed, "sizes": size,
                "machine": facts, "when": _dt.datetime.now().isoformat(timespec="seconds"),
                "overlap_rule": OVERLAP_RULE})
    res.setdefault("models", {})
    res.setdefault("seconds", {})
    with tempfile.TemporaryDirectory(prefix="bench-moments-", dir=args.tmp) as tmp:
        for part in args.parts:
            t0 = time.perf_counter()
            print(f"{part} ...", flush=True)
            if part == "audio":
                res["audio"] = audio_part(args.audio_model, size, Path(tmp), args.seed)
            elif part == "video":
                res["video"] = video_part(args.video_model, size, Path(tmp), args.seed)
            elif part == "throughput":
                res["throughput"] = throughput_part({"audio": args.audio_model, "video": args.video_model}, size,
                                                    Path(tmp), args.threads, args.seed)
            else:
                res["latency"] = latency_part(args.audio_model, size, Path(tmp), args.seed)
            res["models"].update({k: models[k] for k in PART_MODELS[part]})
            res["seconds"][part] = r(time.perf_counter() - t0, 1)
            write_json_atomic(out, res)
    print_summary(res)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
