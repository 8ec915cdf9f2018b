"""The demo's last step: index the held-out digits and search them with a composed query.

The held-out test digits (1,000 handwritten images, 150 clips of voices never heard in training)
are written as real files under ``RUN/index-media`` with a JSONL manifest that also lists one
caption per digit and modality, then indexed into ``RUN/index``. The printed query combines a
spoken digit with a text ("a handwritten digit") and asks for images: the audio never met an image
in training, so finding the right digit is the emergent alignment, now through the index.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np

MEDIA = "index-media"
INDEX = "index"
#: the demo's composed query: a spoken digit (its first held-out clip) plus this text, weighted
QUERY_DIGIT = 7
QUERY_TEXT = "a handwritten digit"
QUERY_WEIGHTS = (1.0, 0.5)


def write_media(run_dir: str) -> str:
    """The held-out digits as PNG and WAV files plus ``digits.jsonl``; returns the manifest path.
    Files already there with the same content are left alone (an index update is then a no-op)."""
    import soundfile as sf
    from PIL import Image

    from onepeace.checkpoints.format import write_bytes_atomic, write_text_atomic
    from onepeace_train.demo.data import DIGIT_WORDS, EVAL_TEMPLATES, load_digits, load_speech

    root = os.path.join(run_dir, MEDIA)
    for sub in ("images", "audio"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    lines = []

    def put(rel: str, data: bytes) -> None:
        path = os.path.join(root, rel)
        if not (os.path.isfile(path) and os.path.getsize(path) == len(data) and open(path, "rb").read() == data):
            write_bytes_atomic(path, data)

    images, labels = load_digits("test")
    for i, (img, lab) in enumerate(zip(images, labels)):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        rel = f"images/{DIGIT_WORDS[lab]}-{i:04d}.png"
        put(rel, buf.getvalue())
        lines.append({"image": rel, "text": EVAL_TEMPLATES["image"].format(word=DIGIT_WORDS[lab]),
                      "label": int(lab), "digit": DIGIT_WORDS[lab]})
    waves, wlabels, voices = load_speech("test")
    for i, (w, lab, voice) in enumerate(zip(waves, wlabels, voices)):
        buf = io.BytesIO()
        sf.write(buf, w, 16000, format="WAV", subtype="PCM_16")
        rel = f"audio/{DIGIT_WORDS[lab]}-{i:03d}.wav"
        put(rel, buf.getvalue())
        lines.append({"audio": rel, "text": EVAL_TEMPLATES["audio"].format(word=DIGIT_WORDS[lab]),
                      "label": int(lab), "digit": DIGIT_WORDS[lab], "voice": str(voice)})
    for lab, word in enumerate(DIGIT_WORDS):
        for template in EVAL_TEMPLATES.values():
            lines.append({"text": template.format(word=word), "label": lab, "digit": word})
    manifest = os.path.join(root, "digits.jsonl")
    write_text_atomic(manifest, "".join(json.dumps(x) + "\n" for x in lines))
    return manifest


def audio_to_image_precision(index: Any, k: int = 10) -> dict[str, float]:
    """Every indexed spoken digit as a query against the indexed digit images (its stored vector,
    exact search): the mean share of the top ``k`` images showing the spoken digit, and chance
    (the share of images of that digit)."""
    audio = [r for r in index.rows(["id", "metadata", "vector"], where="modality = 'audio'")
             if "label" in json.loads(r["metadata"] or "{}")]  # the digits, not an unlabelled long recording
    images = index.rows(["metadata"], where="modality = 'image'")
    counts: dict[int, int] = {}
    for r in images:
        lab = json.loads(r["metadata"])["label"]
        counts[lab] = counts.get(lab, 0) + 1
    if not audio or not images:
        return {"precision_at_k": float("nan"), "chance": float("nan"), "k": k, "queries": 0}
    precisions, chance = [], []
    for r in audio:
        lab = json.loads(r["metadata"])["label"]
        hits = index.search(np.asarray(r["vector"]), k=k, modality="image", exact=True)
        precisions.append(np.mean([h["metadata"].get("label") == lab for h in hits]))
        chance.append(counts.get(lab, 0) / len(images))
    return {"precision_at_k": float(np.mean(precisions)), "chance": float(np.mean(chance)), "k": k,
            "queries": len(audio)}


def query_clip_name() -> str:
    """The file name (under ``index-media/audio``) of the composed query's spoken digit: the first
    held-out clip of ``QUERY_DIGIT``, named as :func:`write_media` names it."""
    from onepeace_train.demo.data import DIGIT_WORDS, load_speech

    _, labels, _ = load_speech("test")
    i = next(i for i, lab in enumerate(labels) if int(lab) == QUERY_DIGIT)
    return f"{DIGIT_WORDS[QUERY_DIGIT]}-{i:03d}.wav"


def search_command(db: str, clip: str, k: int = 5) -> str:
    """The ``onepeace search`` command the demo prints to try next (the composed query itself)."""
    return (f"onepeace search {db} --audio {clip} --text '{QUERY_TEXT}' --weights text={QUERY_WEIGHTS[1]:g} "
            f"audio={QUERY_WEIGHTS[0]:g} --modality image -k {k}")


def demo_index(run_dir: str, model_dir: str, *, progress: bool | None = None, k: int = 5) -> dict[str, Any]:
    """Write the held-out media, index them into ``run_dir/index`` (an index of an earlier demo
    model is replaced: it is the demo's own), run the composed query. Returns what to print."""
    from onepeace import OnePeace
    from onepeace.search.fingerprint import model_fingerprint
    from onepeace.search.ingest import build
    from onepeace.search.query import search
    from onepeace.search.store import Index, is_index, remove_index

    db = os.path.join(run_dir, INDEX)
    if is_index(db) and Index.open(db).fingerprint != model_fingerprint(model_dir):
        remove_index(db)  # built by a previous demo run's model
    manifest = write_media(run_dir)
    model = OnePeace.from_pretrained(model_dir)
    result = build(db, model, [manifest], batch_size=64, progress=progress)
    idx = Index.open(db)
    clip = os.path.join(run_dir, MEDIA, "audio", query_clip_name())
    hits = search(idx, model, text=QUERY_TEXT, audio=clip, weights={"audio": QUERY_WEIGHTS[0], "text": QUERY_WEIGHTS[1]},
                  modality="image", k=k)
    return {
        "index": db, "build": result, "counts": idx.modality_counts(),
        "query": {"audio": clip, "text": QUERY_TEXT, "weights": {"audio": QUERY_WEIGHTS[0], "text": QUERY_WEIGHTS[1]},
                  "modality": "image", "digit": QUERY_DIGIT},
        "hits": hits, "audio_to_image": audio_to_image_precision(idx),
        "command": search_command(db, clip, k),
    }


def print_demo_index(s: dict[str, Any]) -> None:
    """The demo's search section (what ``onepeace demo`` prints last)."""
    counts = ", ".join(f"{n:,} {m}" for m, n in s["counts"].items())
    q = s["query"]
    print(f"\nsearch: indexed the held-out digits into {s['index']} ({counts})")
    print(f"composed query: the spoken digit {q['audio']} (weight {q['weights']['audio']:g}) + the text "
          f"'{q['text']}' (weight {q['weights']['text']:g}), images only:")
    for i, h in enumerate(s["hits"], 1):
        lab = h["metadata"].get("label")
        mark = "<- the spoken digit" if lab == q["digit"] else ""
        print(f"  {i}. score {h['score']:.3f}  prob {h['prob']:.2f}  {os.path.basename(h['uri'])}  {mark}")
    p = s["audio_to_image"]
    if p["queries"]:
        print(f"every held-out spoken digit as a query: precision@{p['k']} on the images {p['precision_at_k']:.2f} "
              f"(chance {p['chance']:.2f})")
    print(f"\ntry it yourself:\n  {s['command']}")


def demo_search_step(run_dir: str, model_dir: str) -> dict[str, Any] | None:
    """What ``onepeace demo`` runs last: index, query, print. Without LanceDB installed (the
    ``[search]`` extra) it prints how to get it instead."""
    try:
        import lancedb  # noqa: F401
    except ImportError:
        print("\nsearch: skipped (LanceDB is not installed): pip install 'onepeace[search]', then rerun the demo")
        return None
    print(f"\nindexing the held-out digits (images, spoken clips, captions) into {os.path.join(run_dir, INDEX)} ...")
    summary = demo_index(run_dir, model_dir)
    print_demo_index(summary)
    return summary
