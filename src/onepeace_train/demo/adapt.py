"""The adapting demo (``make demo-adapt``): the demo model adapted to real recorded speech with LoRA.

The demo model (``runs/demo/model``, from ``make demo``) learnt spoken digits from synthetic voices
only. Here it meets people: the Free Spoken Digit Dataset's recordings (``fsdd.npz``, six speakers,
CC BY-SA 4.0; :func:`onepeace_train.demo.data.load_real_speech`). Four speakers' clips become a
pairs manifest (wav files in ``runs/demo-adapt/data``, captions made from the labels with the
demo's audio caption templates), joined by the demo's own synthetic training clips (rehearsal:
without them the adapted model forgets much of the synthetic voices), and ``onepeace adapt``
(:func:`onepeace_train.adapt.run_adapt`) trains LoRA adapters on them; the two other speakers are
held out whole and never trained on. Scored before and after:

* zero-shot accuracy on the held-out speakers: each clip against the ten digits' evaluation
  captions (``eval_caption``: "someone saying {word}"), chance 10%;
* forgetting: the demo's own audio->text R@1 on its test split (synthetic voices never heard in
  training), computed as the demo computes it (class-level, :func:`onepeace.tasks.evaluate.all_pairs`).

The adapters sit on the audio branch's FFN and projection and on the attention, which every
modality shares (``--branches audio --targets ffn,proj,attention``): the FFN and projection alone
barely moved the held-out speakers (benchmarks/results/adapt.json), so text and image embeddings
change too, and the forgetting figure covers the text side as well. The run directory is
resumable as the other demos' are (``demo-adapt.json`` records the settings and what is done); a
finished run is never overwritten unless ``force``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from typing import Any

import numpy as np
import torch

from onepeace.checkpoints.format import write_text_atomic
from onepeace.errors import ConfigError, InputError, OutputError
from onepeace_train.demo import run as demo

log = logging.getLogger(__name__)

STATE = "demo-adapt.json"
ENTRIES = {"data", "adapter", "metrics.json", STATE}
#: the speakers never trained on (the last two of the six, in the file's alphabetical order)
HELD_OUT = ("theo", "yweweler")
#: steps, learning rate and rank of the demo's adapter (a few minutes on 2 cores)
DEFAULTS = {"steps": 300, "lr": 1e-3, "rank": 8}
TARGETS = "ffn,proj,attention"


def write_pairs(root: str, held_out: tuple[str, ...] = HELD_OUT, seed: int = 0, rehearse: bool = True) -> dict[str, Any]:
    """The FSDD clips as wav files in ``root`` with two manifests: ``train.jsonl`` (the speakers not
    in ``held_out``, one caption from the demo's audio templates per clip, seeded; with
    ``rehearse``, the demo's synthetic training clips too, captioned the same way) and
    ``heldout.jsonl`` (the ``held_out`` speakers, the demo's evaluation caption per clip). Each
    line has the digit as ``label``. Written whole or not at all; depends only on (seed,
    held_out, rehearse). Returns ``{"train": path, "heldout": path, "train_pairs": n,
    "heldout_pairs": n, "rehearsal_pairs": n, "train_speakers": [...], "heldout_speakers": [...]}``."""
    import soundfile as sf

    from onepeace.data.manifest import write_manifest
    from onepeace.outputs import staged_dir
    from onepeace_train.demo.data import (
        SAMPLE_RATE,
        audio_captions,
        eval_caption,
        load_real_speech,
        load_speech,
        real_speakers,
    )

    speakers = real_speakers()
    unknown = [s for s in held_out if s not in speakers]
    if unknown or not held_out or len(held_out) >= len(speakers):
        raise ConfigError(f"hold out one to {len(speakers) - 1} of the speakers {', '.join(speakers)}; "
                          f"got {', '.join(held_out) or 'none'}")
    train_speakers = [s for s in speakers if s not in held_out]
    info = {"train": os.path.join(root, "train.jsonl"), "heldout": os.path.join(root, "heldout.jsonl"),
            "train_speakers": train_speakers, "heldout_speakers": list(held_out)}
    if not os.path.isfile(info["heldout"]):
        rng = random.Random(f"onepeace-demo-adapt-captions:{seed}")
        with staged_dir(root, what="demo-adapt data") as tmp:
            os.makedirs(os.path.join(tmp, "clips"))
            sets = [("train", load_real_speech(train_speakers), lambda lab: audio_captions(lab, rng)),
                    ("heldout", load_real_speech(list(held_out)), lambda lab: eval_caption(lab, "audio"))]
            if rehearse:
                sets.append(("rehearsal", load_speech("train"), lambda lab: audio_captions(lab, rng)))
            for name, (waves, labels, names), caption in sets:
                rows, takes = [], {}
                for w, lab, spk in zip(waves, labels, names):
                    spk = spk.replace("+", "-") if name == "rehearsal" else spk  # espeak-ng voice names
                    k = takes[spk, int(lab)] = takes.get((spk, int(lab)), -1) + 1
                    clip = f"clips/{int(lab)}_{spk}_{k}.wav"
                    sf.write(os.path.join(tmp, clip), w, SAMPLE_RATE, subtype="PCM_16")
                    rows.append({"audio": clip, "text": caption(lab), "label": int(lab), "id": f"{spk}-{int(lab)}-{k}"})
                if name == "rehearsal":
                    write_manifest(os.path.join(tmp, "rehearsal.jsonl"), rows)  # for the record; joined below
                    rows = _rows(os.path.join(tmp, "train.jsonl")) + rows
                    name = "train"
                write_manifest(os.path.join(tmp, f"{name}.jsonl"), rows)
    rehearsal = os.path.join(root, "rehearsal.jsonl")
    info["rehearsal_pairs"] = len(_rows(rehearsal)) if os.path.isfile(rehearsal) else 0
    info["train_pairs"] = len(_rows(info["train"])) - info["rehearsal_pairs"]  # real speech only
    info["heldout_pairs"] = len(_rows(info["heldout"]))
    return info


def _rows(manifest: str) -> list[dict[str, Any]]:
    from onepeace.data.manifest import iter_jsonl

    return [r for _, r in iter_jsonl(manifest)]


def synthetic_test_set(root: str) -> str:
    """The demo's test split (synthetic voices never heard in training) as the demo writes it:
    shards of the clips with their evaluation captions and digits, in ``root/audio-test``."""
    from onepeace.data.shards import write_shards_from_samples
    from onepeace.outputs import staged_dir
    from onepeace_train.demo.data import eval_caption, load_speech

    path = os.path.join(root, "audio-test")
    if not os.path.isdir(path):
        waves, labels, _ = load_speech("test")
        with staged_dir(path, what="demo test set") as tmp:
            write_shards_from_samples(({"audio": w, "text": eval_caption(lab, "audio"), "label": int(lab),
                                        "id": f"audio-test-{i}"} for i, (w, lab) in enumerate(zip(waves, labels))),
                                      tmp, samples_per_shard=5000)
    return path


@torch.inference_mode()
def score(model, heldout: str, test_set: str, batch_size: int = 64) -> dict[str, float]:
    """``zero-shot``: accuracy (%) on the held-out speakers' clips of ``heldout`` (a manifest of the
    demo-adapt pairs), each against the ten digits' evaluation captions; ``demo audio->text R@1``:
    the demo's test-split figure, as the demo computes it (class-level retrieval)."""
    from onepeace.tasks.evaluate import all_pairs, embed_sources
    from onepeace.tasks.zeroshot import zero_shot
    from onepeace_train.demo.data import DIGIT_WORDS, EVAL_TEMPLATES

    root = os.path.dirname(heldout)
    rows = _rows(heldout)
    clips = [os.path.join(root, r["audio"]) for r in rows]
    labels = np.asarray([r["label"] for r in rows])
    template = EVAL_TEMPLATES["audio"].replace("{word}", "{}")
    p = zero_shot(model, DIGIT_WORDS, templates=[template], audio=clips, batch_size=batch_size)["audio"]
    acc = float((p.argmax(-1).numpy() == labels).mean() * 100)
    emb = embed_sources([test_set], model.config, model.embed_batch, 128)
    if emb.skipped:
        raise OutputError(f"the demo's test set could not be read ({', '.join(emb.skipped[:3])}); rerun with --force")
    r = all_pairs(emb)["audio->text"]
    return {"zero-shot": round(acc, 2), "demo audio->text R@1": round(r["R@1"], 2)}


def _settings(demo_model: str, seed: int, steps: int | None, lr: float | None, rank: int | None,
              held_out: tuple[str, ...]) -> dict[str, Any]:
    for name, value in (("steps", steps), ("rank", rank)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"--{name} must be a positive integer, got {value!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and 0 < lr < 1):
        raise ConfigError(f"--lr must be a positive learning rate below 1, got {lr!r}")
    return {"seed": int(seed), "steps": steps or DEFAULTS["steps"], "lr": float(lr or DEFAULTS["lr"]),
            "rank": rank or DEFAULTS["rank"], "targets": TARGETS, "branches": "audio", "rehearse": True,
            "held_out": list(held_out), "demo_model": os.path.abspath(demo_model)}


def _adapt(out: str, demo_model: str, data: dict[str, Any], s: dict[str, Any], progress: bool) -> dict[str, Any]:
    """``onepeace adapt`` on the training speakers (resumed where a killed run stopped)."""
    from onepeace_train.adapt import run_adapt

    adapter = os.path.join(out, "adapter")
    m = run_adapt(demo_model, data["train"], adapter, val=data["heldout"], branches=s["branches"],
                  targets=s["targets"], rank=s["rank"], steps=s["steps"], lr=s["lr"], seed=s["seed"],
                  progress=progress, force=os.path.isdir(adapter))
    keep = ("before", "after", "steps", "trainable_params", "adapter_bytes", "seconds_per_step")
    return {k: m[k] for k in keep if k in m}


def run_demo_adapt(out: str = "runs/demo-adapt", demo_model: str = "runs/demo/model", *, seed: int = 0,
                   steps: int | None = None, lr: float | None = None, rank: int | None = None,
                   held_out: tuple[str, ...] = HELD_OUT, progress: bool = True,
                   force: bool = False) -> dict[str, Any]:
    """Run (or resume) the adapting demo in ``out`` on top of ``demo_model``; returns what
    ``metrics.json`` holds."""
    from onepeace import OnePeace

    if not os.path.isfile(os.path.join(demo_model, "config.json")):
        raise InputError(f"no trained demo model in {demo_model}: run `make demo` (or `onepeace demo`) first, "
                         "or point --demo-model at a model with text and audio branches")
    held_out = tuple(held_out)
    s = _settings(demo_model, seed, steps, lr, rank, held_out)
    state = _open_run(out, s, force)
    t0 = time.perf_counter() - state.get("seconds", 0.0)
    data = write_pairs(os.path.join(out, "data"), held_out, seed)
    test_set = synthetic_test_set(os.path.join(out, "data"))
    if "before" not in state:
        state["before"] = score(OnePeace.from_pretrained(demo_model).eval(), data["heldout"], test_set)
        _save_state(out, {**state, "seconds": time.perf_counter() - t0})
    if "adapt" not in state:
        state["adapt"] = _adapt(out, demo_model, data, s, progress)
        _save_state(out, {**state, "seconds": time.perf_counter() - t0})
    if "after" not in state:
        model = OnePeace.from_pretrained(demo_model, adapter=os.path.join(out, "adapter")).eval()
        state["after"] = score(model, data["heldout"], test_set)
    state["seconds"] = time.perf_counter() - t0
    metrics = _metrics(out, demo_model, data, s, state)
    write_text_atomic(os.path.join(out, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    state["finished"] = True
    _save_state(out, state)
    return metrics


def print_intro(held_out: tuple[str, ...] = HELD_OUT) -> None:
    print("onepeace demo-adapt: the demo model (trained on synthetic voices only) adapted to real recorded speech\n"
          f"with LoRA; the speakers {', '.join(held_out)} are held out and scored before and after.\n")


def print_results(m: dict[str, Any]) -> None:
    """What ``onepeace demo-adapt`` prints once the run is done."""
    z, f, a, d = m["heldout_zero_shot"], m["forgetting"], m["adapt"], m["data"]
    print(f"\nadapted to {d['train_pairs']} real clips of {', '.join(d['train_speakers'])} (+ {d['rehearsal_pairs']} "
          f"synthetic clips rehearsed): {a['steps']} steps, {a['trainable_params']:,} LoRA parameters, "
          f"{a['seconds_per_step']:.2f} s per step")
    print(f"\n{'':34}{'before':>8}{'after':>8}{'change':>8}")
    print(f"{'held-out speakers, zero-shot':34}{z['before']:8.1f}{z['after']:8.1f}{z['change']:+8.1f}"
          f"   ({', '.join(z['speakers'])}; chance {z['chance']:.0f})")
    print(f"{'demo test voices, audio->text R@1':34}{f['before']:8.1f}{f['after']:8.1f}{f['change']:+8.1f}"
          "   (forgetting: the synthetic voices)")
    print(f"\nadapter: {m['adapter']} ({a['adapter_bytes'] / 1e6:.2f} MB)   metrics: "
          f"{os.path.join(os.path.dirname(m['adapter']), 'metrics.json')}   ({m['seconds']:.0f} s)")
    print(f"use it:  onepeace try --model {m['demo_model']} "
          f"--adapter {m['adapter']} --audio your_recording.wav")


def _metrics(out: str, demo_model: str, data: dict[str, Any], s: dict[str, Any],
             state: dict[str, Any]) -> dict[str, Any]:
    b, a = state["before"], state["after"]
    r1 = "demo audio->text R@1"
    return {
        "heldout_zero_shot": {"before": b["zero-shot"], "after": a["zero-shot"], "chance": 10.0,
                              "change": round(a["zero-shot"] - b["zero-shot"], 2),
                              "speakers": data["heldout_speakers"], "clips": data["heldout_pairs"],
                              "prompt": "someone saying {word} (the demo's eval caption), ten digits"},
        "forgetting": {"before": b[r1], "after": a[r1], "change": round(a[r1] - b[r1], 2),
                       "task": "the demo's test split (synthetic voices never trained on): audio->text R@1, "
                               "class-level, as the demo computes it"},
        "adapt": state["adapt"],
        "data": {"source": "Free Spoken Digit Dataset (Zohar Jackson et al., CC BY-SA 4.0), fsdd.npz",
                 "train_speakers": data["train_speakers"], "train_pairs": data["train_pairs"],
                 "rehearsal_pairs": data["rehearsal_pairs"],
                 "rehearsal": "the demo's own synthetic training clips (load_speech('train')), captioned the same way",
                 "heldout_speakers": data["heldout_speakers"], "heldout_pairs": data["heldout_pairs"]},
        "settings": {k: v for k, v in s.items() if k != "demo_model"},
        "demo_model": demo_model, "adapter": os.path.join(out, "adapter"), "seconds": round(state["seconds"], 1),
        "environment": demo.environment(),
    }


def _open_run(out: str, settings: dict[str, Any], force: bool) -> dict[str, Any]:
    """An unfinished run with the same settings is resumed; a finished one, or one with other
    settings, is refused unless ``force`` (which starts over); a directory holding anything else
    is refused. The last entry discarded is an unfinished adapt run's staging area."""
    return demo.open_side_run(out, settings, force, what="adapting demo", state_name=STATE, entries=ENTRIES,
                              discard=("data", "adapter", ".adapter.onepeace-adapt"), skip_hidden=True)


def _save_state(out: str, state: dict[str, Any]) -> None:
    demo._save_state(out, state, STATE)


__all__ = ["DEFAULTS", "HELD_OUT", "run_demo_adapt", "score", "synthetic_test_set", "write_pairs"]
