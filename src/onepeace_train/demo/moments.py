"""The demo's moment step: where in a long recording a word is said.

After the demo's index is built (:mod:`onepeace_train.demo.search`), one minute-long recording is
made from held-out spoken digits (voices never heard in training) at known times over a
procedural bed of rain (:func:`onepeace.data.augment.procedural_bed`: made from a seed, no
recordings needed), written into ``RUN/index-media/long-recording.wav`` with the true times of its
words beside it (``long-recording.json``), and added to ``RUN/index`` with moments (one row per
window, :mod:`onepeace.search.moment_build`). One text query ("someone saying seven") then asks
for the moment of its word, and the top time range is printed next to the word's true time.

A rerun writes the same bytes (so the file is left alone and the index update is a no-op); the
step writes nothing outside ``RUN/index-media`` and ``RUN/index``.
"""

from __future__ import annotations

import io
import json
import os
import random
from typing import Any

import numpy as np

from onepeace.checkpoints.format import write_bytes_atomic
from onepeace.search.moments import clock as search_clock

from .search import INDEX, MEDIA

LONG_NAME = "long-recording.wav"
TRUTH_NAME = "long-recording.json"
SECONDS = 60.0
#: held-out words in the recording, and the one asked for
WORDS = 6
QUERY_DIGIT = 7
#: the words at least this many seconds apart, and from either end
GAP = 3.0
#: the bed: a procedural kind, its peak this fraction of the words' mean peak (as the benchmark's ESC-10 beds)
BED_KIND = "rain"
BED_PEAK = 1 / 20
#: how the recording is cut into windows (benchmarks/results/moments.json compares the settings)
MOMENTS = {"over": 20.0, "window": 1.5, "hop": 0.5, "segment": "onsets"}
SR = 16000


def long_recording(seed: int = 0) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The recording (float32 at 16 kHz, :data:`SECONDS` long) and its words (``digit``, ``word``,
    ``start``, ``end`` in seconds, ``voice``), from held-out clips; the same for the same seed."""
    from onepeace.data.augment import procedural_bed
    from onepeace_train.demo.data import DIGIT_WORDS, load_speech

    rng = random.Random(f"onepeace-demo-moments:{seed}")
    waves, labels, voices = load_speech("test")
    digits = [QUERY_DIGIT, *rng.sample([d for d in range(10) if d != QUERY_DIGIT], WORDS - 1)]
    rng.shuffle(digits)
    clips = [rng.choice([i for i, lab in enumerate(labels) if lab == d]) for d in digits]
    starts = _place(rng, [len(waves[i]) / SR for i in clips])
    n = int(SECONDS * SR)
    peak = float(np.mean([np.abs(waves[i]).max() for i in clips]))
    wave = procedural_bed(n, SR, np.random.default_rng(rng.randrange(1 << 30)), BED_KIND)
    wave = wave * np.float32(BED_PEAK * peak / max(float(np.abs(wave).max()), 1e-12))
    words = []
    for i, d, s in zip(clips, digits, starts):
        a = int(round(s * SR))
        wave[a: a + len(waves[i])] += waves[i]
        words.append({"digit": int(d), "word": DIGIT_WORDS[d], "start": round(a / SR, 4),
                      "end": round((a + len(waves[i])) / SR, 4), "voice": str(voices[i])})
    return np.clip(wave, -1.0, 1.0).astype(np.float32), words


def _place(rng: random.Random, lengths: list[float]) -> list[float]:
    """Start times (seconds, in order) for clips of ``lengths``: :data:`GAP` apart and from the ends."""
    while True:
        starts = sorted(rng.uniform(GAP, SECONDS - GAP - max(lengths)) for _ in lengths)
        if all(b - (a + n) >= GAP for a, b, n in zip(starts, starts[1:], lengths)):
            return starts


def write_long_recording(run_dir: str, seed: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """``RUN/index-media/long-recording.wav`` (16-bit WAV) and its words in ``long-recording.json``,
    each written atomically, and only when its bytes differ. Returns the recording's path and words."""
    import soundfile as sf

    wave, words = long_recording(seed)
    root = os.path.join(run_dir, MEDIA)
    os.makedirs(root, exist_ok=True)
    buf = io.BytesIO()
    sf.write(buf, wave, SR, format="WAV", subtype="PCM_16")
    path = os.path.join(root, LONG_NAME)
    truth = json.dumps({"recording": LONG_NAME, "seconds": SECONDS, "sample_rate": SR,
                        "bed": f"procedural {BED_KIND}, peak {BED_PEAK:g} of the words' mean peak",
                        "words": words}, indent=1) + "\n"
    for target, data in ((path, buf.getvalue()), (os.path.join(root, TRUTH_NAME), truth.encode())):
        if not (os.path.isfile(target) and os.path.getsize(target) == len(data) and open(target, "rb").read() == data):
            write_bytes_atomic(target, data)
    return path, words


def clock(t: float) -> str:
    """Seconds as ``m:ss.s`` (41.23 -> ``0:41.2``; ``h:mm:ss.s`` from an hour), as search prints moments."""
    return search_clock(max(0.0, float(t)), tenths=True)


def overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two time ranges."""
    union = max(a[1], b[1]) - min(a[0], b[0])
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0])) / union if union > 0 else 0.0


def demo_moments(run_dir: str, model_dir: str, *, model: Any = None, seed: int = 0) -> dict[str, Any]:
    """Write the long recording, add it to ``RUN/index`` with moments (:data:`MOMENTS`), ask for
    the moment of :data:`QUERY_DIGIT` in it. Returns what to print."""
    from onepeace import OnePeace
    from onepeace.search.ingest import build
    from onepeace.search.query import search
    from onepeace.search.store import Index
    from onepeace_train.demo.data import eval_caption

    path, words = write_long_recording(run_dir, seed)
    model = model if model is not None else OnePeace.from_pretrained(model_dir)
    db = os.path.join(run_dir, INDEX)
    result = build(db, model, [path], moments=dict(MOMENTS), workers=0, progress=False)
    idx = Index.open(db)
    uri = idx.rows(["uri"], where=f"id = '{_file_id(idx, path)}'")[0]["uri"]
    text = eval_caption(QUERY_DIGIT, "audio")
    hits = search(idx, model, text=text, moments=True, k=1, where="uri = '" + uri.replace("'", "''") + "'")
    truth = next(w for w in words if w["digit"] == QUERY_DIGIT)
    top = {k: hits[0][k] for k in ("start", "end", "score")} if hits else None
    return {"index": db, "recording": path, "seconds": SECONDS, "words": words, "build": result,
            "settings": dict(MOMENTS), "query": text, "digit": QUERY_DIGIT, "truth": truth, "top": top,
            "iou": overlap((top["start"], top["end"]), (truth["start"], truth["end"])) if top else 0.0,
            "command": f"onepeace search {db} --text '{text}' --moments"}


def _file_id(idx: Any, path: str) -> str:
    from onepeace.search.store import item_id

    return item_id("audio", os.path.abspath(path))


def print_demo_moments(s: dict[str, Any]) -> None:
    """The demo's moment section: the recording, the query, the top moment and the word's true time."""
    name = os.path.basename(s["recording"])
    print(f"\nmoments: {name} ({s['seconds']:.0f} s, {len(s['words'])} held-out spoken digits over a procedural "
          f"{BED_KIND} bed) indexed in windows ({s['settings']['segment']}) into {s['index']}")
    t = s["truth"]
    if s["top"] is None:
        print(f"  query '{s['query']}': no moment found")
    else:
        top = s["top"]
        verdict = "on the word" if s["iou"] >= 0.5 else ("overlaps the word" if s["iou"] > 0 else "elsewhere")
        other = [w["word"] for w in s["words"] if w is not t and overlap((top["start"], top["end"]),
                                                                          (w["start"], w["end"])) > 0]
        if s["iou"] == 0 and other:
            verdict = f"not the word: '{other[0]}' is said there"
        print(f"  query '{s['query']}': top moment {name} {clock(top['start'])}–{clock(top['end'])} "
              f"score {top['score']:.2f} ({verdict})")
    print(f"  the word '{t['word']}' is at {clock(t['start'])}–{clock(t['end'])} (all words: "
          f"{os.path.join(os.path.dirname(s['recording']), TRUTH_NAME)}); try: {s['command']}")


def demo_moment_step(run_dir: str, model_dir: str) -> dict[str, Any] | None:
    """What ``onepeace demo`` runs after its index: the long recording, indexed, one moment query,
    printed. Without LanceDB (the ``[search]`` extra) nothing is done (the search step said so)."""
    try:
        import lancedb  # noqa: F401
    except ImportError:
        return None
    print(f"\nadding a {SECONDS:.0f} s recording of held-out words to {os.path.join(run_dir, INDEX)} with moments ...")
    summary = demo_moments(run_dir, model_dir)
    print_demo_moments(summary)
    return summary
