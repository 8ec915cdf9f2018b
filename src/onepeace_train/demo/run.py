"""The laptop demo (the README's main job): tri-modal pretraining on the bundled digits set.

Stage 1 aligns handwritten digit images with captions; stage 2 aligns spoken digit words with
captions, with the official stage-2 freezing. Audio and images never meet in training, yet audio
-> image retrieval works: the emergent alignment through language that ONE-PEACE claims. Evaluation
is on held-out images and on voices never heard in training.

The run directory (``runs/demo``) is resumable: ``demo.json`` records the settings (seed, step
counts) and which stages are done, so a rerun after an interruption continues where it stopped
(each stage from its last checkpoint). A finished demo is never overwritten unless ``force``.
Once finished, the intermediate files (the shards, both stages' checkpoints and models) are
removed unless ``keep_checkpoints``; what stays is the final model, metrics, plot and logs.

Same seed, same machine, same thread count -> the same losses and metrics, bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import shutil
from importlib import resources
from typing import Any

import numpy as np
import torch

from onepeace.checkpoints.format import write_png_atomic, write_text_atomic
from onepeace.errors import ConfigError, OutputError

log = logging.getLogger(__name__)

PAIRS = ["image->text", "text->image", "audio->text", "text->audio", "audio->image", "image->audio"]
STATE = "demo.json"  # settings and progress of the run in this directory
DEMO_ENTRIES = {"data", "stage1", "stage2", "model", "metrics.json", "demo.png", STATE, "index", "index-media"}
#: what a finished demo no longer needs (kept with ``keep_checkpoints``)
INTERMEDIATE = ("data", "stage1/checkpoints", "stage1/model", "stage2/checkpoints", "stage2/model")


def recipe(name: str) -> str:
    return str(resources.files("onepeace_train").joinpath("configs", name))


def _speech(splits: tuple[str, ...]):
    from onepeace_train.demo.data import load_speech

    waves, labels = [], []
    for sp in splits:
        w, lab, _ = load_speech(sp)
        waves += w
        labels.append(lab)
    return waves, np.concatenate(labels)


def build_data(root: str, seed: int = 0, extra_voices: bool = False) -> dict[str, str]:
    """Shards for train/test x image/audio from the bundled arrays (captions from templates),
    and the held-out sets: ``audio-heldout`` (festival voices: an engine never trained on) and
    ``image-heldout`` (digits rendered from handwriting-like fonts: a source never trained on).
    ``extra_voices``: train on the added voices (more espeak-ng variants, flite) too.

    Each set is written whole or not at all, and its captions depend only on (seed, set), so a
    set rebuilt after an interruption is the one an uninterrupted run writes."""
    from onepeace.data.shards import write_shards_from_samples
    from onepeace.outputs import staged_dir
    from onepeace_train.demo.data import (
        audio_captions,
        eval_caption,
        image_captions,
        load_digits,
        load_font_digits,
    )

    loads = {
        ("image", "train"): lambda: load_digits("train"),
        ("image", "test"): lambda: load_digits("test"),
        ("image", "heldout"): lambda: load_font_digits()[:2],
        ("audio", "train"): lambda: _speech(("train", "extra") if extra_voices else ("train",)),
        ("audio", "test"): lambda: _speech(("test",)),
        ("audio", "heldout"): lambda: _speech(("heldout",)),
    }
    captions = {"image": image_captions, "audio": audio_captions}
    out = {}
    for split in ("train", "test", "heldout"):
        for m, caption in captions.items():
            load = loads[m, split]
            name = f"{m}-{split}"
            path = os.path.join(root, name)
            if not os.path.isdir(path):
                rng = random.Random(f"onepeace-demo-captions:{seed}:{name}")
                items, labels = load()
                # training captions vary by template; evaluation uses one fixed prompt per digit
                cap = (lambda lab, c=caption, r=rng: c(lab, r)) if split == "train" else (lambda lab, m=m: eval_caption(lab, m))
                with staged_dir(path, what="demo data set") as tmp:
                    write_shards_from_samples(
                        ({m: x, "text": cap(lab), "label": int(lab), "id": f"{m}-{split}-{i}"}
                         for i, (x, lab) in enumerate(zip(items, labels))), tmp, samples_per_shard=5000)
            out[name] = path
    return out


#: ``plain=True`` (``onepeace demo --plain``): the earlier recipe, stage 2 for this many steps
#: (the recipe's default is 400) and no augmentation; kept for comparisons (the ablation's ``plain`` arm)
PLAIN_STAGE2_STEPS = 150
#: ``context=False`` (``onepeace demo --no-context``): the recipe before the word in context, stage 2
#: for this many steps with the tempo and noise augmentation only (no silence around the word, no bed
#: under it); kept to measure what the context adds (benchmarks/demo_robustness.py)
NO_CONTEXT_STAGE2_STEPS = 250
#: the audio augmentation ops that put the word in context (dropped by ``context=False``)
CONTEXT_OPS = ("silence", "bed")
#: ``augment=True`` (``onepeace demo --augment``): much heavier augmentation in place of the recipes'
#: own (stage 1: images, stage 2: audio). At the demo's step budget it costs accuracy everywhere
#: (benchmarks/results/demo-ablation.json, arm ``full``); an example of every option for longer runs.
HEAVY_AUGMENT = {
    "image": {  # digits as people write and photograph them: other sizes, places, slants, pens and lighting
        "stroke": {"p": 0.3, "width": [-1, 1]}, "scale": {"p": 0.5, "factor": [0.6, 1.1]},
        "rotate": {"p": 0.4, "degrees": [-15, 15]}, "shift": {"p": 0.5, "fraction": [-0.12, 0.12]},
        "lowres": {"p": 0.15, "factor": [0.4, 0.7]}, "blur": {"p": 0.15, "radius": [0.3, 1.0]},
        "contrast": {"p": 0.2, "factor": [0.5, 1.0]}, "invert": {"p": 0.1}},
    "audio": {  # other tempi and voices, rooms, phone lines, noise, the word somewhere in a longer recording
        "speed": {"p": 0.5, "factor": [0.85, 1.15]}, "pitch": {"p": 0.3, "semitones": [-2, 2]},
        "crop": {"p": 0.1, "keep": [0.9, 1.0]}, "reverb": {"p": 0.25, "rt60": [0.1, 0.5]},
        "pad": {"p": 0.6, "seconds": [0.1, 1.0]}, "telephone": {"p": 0.15},
        "noise": {"p": 0.4, "snr_db": [10, 35]}, "gain": {"p": 0.3, "db": [-12, 6]}},
}


def stage_config(stage: int, out: str, data: dict[str, str], *, seed: int = 0, steps: int | None = None,
                 progress: bool = True, init: str | None = None, augment: bool = False, plain: bool = False,
                 context: bool = True):
    """The training config of demo stage 1 (image-text) or 2 (audio-text, evaluated on the test
    sets), writing to ``out/stage{stage}``; stage 2 starts from ``init`` (default: stage 1's model).
    The recipes' own settings by default (stage 2: 400 steps, mild tempo and noise augmentation and
    the word in context: silence around it, a procedural background bed under it); ``plain``:
    stage 2 as the earlier recipe (:data:`PLAIN_STAGE2_STEPS`, no augmentation); ``context=False``:
    stage 2 as before the word in context (:data:`NO_CONTEXT_STAGE2_STEPS`, without the
    :data:`CONTEXT_OPS`); ``augment``: :data:`HEAVY_AUGMENT` in place of the recipes' augmentation
    (with ``plain``: at its step count)."""
    from onepeace_train.recipe import load_config

    if stage not in (1, 2):
        raise ValueError(f"the demo has stages 1 and 2, not {stage!r}")
    over = [f"train.seed={seed}", f"train.progress={'true' if progress else 'false'}",
            f"train.output={json.dumps(os.path.join(out, f'stage{stage}'))}"]
    if stage == 1:
        over.append(f"data.train={json.dumps(data['image-train'])}")
    else:
        over += [f"data.train={json.dumps(data['audio-train'])}",
                 f"model.init={json.dumps(init or os.path.join(out, 'stage1', 'model'))}"]
    cfg = load_config(recipe(f"demo_stage{stage}.toml"), over)
    if plain and stage == 2:
        cfg.optim.max_steps = PLAIN_STAGE2_STEPS
        cfg.data.augment = {}
    if not context and stage == 2:
        cfg.optim.max_steps = NO_CONTEXT_STAGE2_STEPS
        cfg.data.augment = {m: {k: v for k, v in ops.items() if k not in CONTEXT_OPS}
                            for m, ops in (cfg.data.augment or {}).items()}
    if augment:
        m = "image" if stage == 1 else "audio"
        cfg.data.augment = {m: json.loads(json.dumps(HEAVY_AUGMENT[m]))}  # a copy: configs are edited in place
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"--stage{stage}-steps must be a positive number of steps, got {steps!r}")
        cfg.optim.max_steps = steps
    if stage == 2:
        cfg.data.eval = [data["image-test"], data["audio-test"]]
    return cfg


def run_demo(out: str = "runs/demo", *, stage1_steps: int | None = None, stage2_steps: int | None = None,
             seed: int = 0, progress: bool = True, force: bool = False,
             keep_checkpoints: bool = False, extra_voices: bool = False, augment: bool = False,
             plain: bool = False, context: bool = True) -> dict[str, Any]:
    """Run (or resume) the demo in ``out``; returns what ``metrics.json`` holds, plus ``plot``
    and ``kept`` (the intermediate paths left, with their sizes in bytes). ``extra_voices``: train
    stage 2 on the added voices too (more espeak-ng variants, flite); ``augment``: the much heavier
    :data:`HEAVY_AUGMENT`; ``plain``: the earlier recipe (stage 2 shorter, no augmentation);
    ``context=False``: stage 2 without the word in context (as before it was added). All
    are off by default (benchmarks/results/demo-ablation.json measures each; see ``stage_config``)."""
    from onepeace_train.demo.data import demo_data_dir
    from onepeace_train.trainer import Trainer

    demo_data_dir()  # the demo data set is in the source tree, not the wheel: say so before any work
    # the settings are checked against the directory before any work
    if plain and not context:
        raise ConfigError("--plain already trains without the word in context (no augmentation); drop --no-context")
    recipe_cfgs = [stage_config(k, out, _NO_DATA, steps=n, augment=augment, plain=plain, context=context)
                   for k, n in ((1, stage1_steps), (2, stage2_steps))]
    settings = {"seed": int(seed), "stage1_steps": recipe_cfgs[0].optim.max_steps,
                "stage2_steps": recipe_cfgs[1].optim.max_steps,
                "extra_voices": bool(extra_voices), "augment": bool(augment), "plain": bool(plain)}
    if not context:
        settings["no_context"] = True  # only when set: runs from before the flag resume as they were
    state = _open_run(out, settings, force)
    data = build_data(os.path.join(out, "data"), seed, extra_voices=extra_voices)
    if not state.get("stage1"):
        Trainer(stage_config(1, out, data, seed=seed, steps=stage1_steps, progress=progress, augment=augment,
                             plain=plain),
                existing="resume").fit()  # an interrupted stage continues from its last checkpoint
        state["stage1"] = True
        _save_state(out, state)
    model_dir = os.path.join(out, "model")
    if "retrieval" not in state:
        result = Trainer(stage_config(2, out, data, seed=seed, steps=stage2_steps, progress=progress,
                                      augment=augment, plain=plain, context=context),
                         existing="resume").fit()
        _replace_dir(os.path.join(out, "stage2", "model"), model_dir)
        state["retrieval"] = result["retrieval"]
        _save_state(out, state)
    if "heldout" not in state:
        state["heldout"] = heldout_retrieval(model_dir, data)
        _save_state(out, state)
    plot = os.path.join(out, "demo.png")
    _plot(out, model_dir, data, plot)
    retrieval = _rounded(state["retrieval"], PAIRS)
    metrics = {"retrieval": retrieval,
               **{k: {"data": HELDOUT[k][2], **_rounded(state["heldout"][k], HELDOUT[k][1])} for k in HELDOUT},
               "model": model_dir,
               "train": {"seed": settings["seed"], "stage1_steps": settings["stage1_steps"],
                         "stage2_steps": settings["stage2_steps"], "extra_voices": settings["extra_voices"],
                         "augment": settings["augment"], "plain": settings["plain"],
                         "context": bool(context), "augmentation": {f"stage{k + 1}": c.data.augment for k, c in enumerate(recipe_cfgs)}},
               "environment": environment()}
    write_text_atomic(os.path.join(out, "metrics.json"), json.dumps(metrics, indent=2))
    from onepeace.checkpoints.hub import (
        write_model_card,  # the model's card (README.md): config, size, data, metrics
    )

    voices = ("espeak-ng and flite voices" if settings["extra_voices"] else "espeak-ng voices")
    write_model_card(model_dir, model_dir, {
        "retrieval on the held-out test sets (%)": retrieval,
        "retrieval with a held-out TTS engine (festival) (%)": _rounded(state["heldout"]["heldout_engine"],
                                                                       HELDOUT["heldout_engine"][1]),
        "retrieval with a held-out image source (font digits) (%)": _rounded(state["heldout"]["heldout_source"],
                                                                            HELDOUT["heldout_source"][1]),
    }, trained_on=[
        "the bundled demo set (onepeace_train/demo/assets): stage 1 handwritten MNIST digits with template captions "
        f"(image-text, {settings['stage1_steps']} steps), stage 2 spoken digit words from synthetic {voices} with "
        f"template captions (audio-text, {settings['stage2_steps']} steps), seed {settings['seed']}"
        + _augmentation_words(recipe_cfgs),
        "audio and images never meet in training: audio -> image retrieval is emergent"])
    if not keep_checkpoints:
        for rel in INTERMEDIATE:
            shutil.rmtree(os.path.join(out, rel), ignore_errors=True)
    state["finished"] = True
    _save_state(out, state)
    kept = {p: _size(p) for rel in INTERMEDIATE if os.path.exists(p := os.path.join(out, rel))}
    return {**metrics, "plot": plot, "kept": kept}


_NO_DATA = {k: "" for k in ("image-train", "audio-train", "image-test", "audio-test")}

#: the held-out evaluations: (eval sets, pairs reported, what they measure)
HELDOUT = {
    "heldout_engine": (("image-test", "audio-heldout"), ["audio->text", "text->audio", "audio->image", "image->audio"],
                       "audio: festival voices (an engine and speakers never trained on); "
                       "images: the MNIST test digits"),
    "heldout_source": (("image-heldout", "audio-test"), ["image->text", "text->image", "image->audio", "audio->image"],
                       "images: digits rendered from handwriting-like fonts (a source never trained on); "
                       "audio: the unseen espeak-ng test voices"),
}


def _rounded(res: dict[str, dict], pairs: list[str]) -> dict[str, dict]:
    """R@1 / chance / R@5 rounded, with protocol and counts. R@5 is absent where the gallery is
    smaller (e.g. a test set with fewer than 5 digits); class-level retrieval over distinct items
    (relevant = same digit), as the result names it."""
    return {p: {**{k: round(res[p][k], 2) for k in ("R@1", "chance", "R@5") if k in res[p]},
                **{k: res[p][k] for k in ("protocol", "queries", "gallery") if k in res[p]}} for p in pairs}


@torch.no_grad()
def heldout_retrieval(model_dir: str, data: dict[str, str], batch_size: int = 128) -> dict[str, dict]:
    """Zero-shot retrieval of the demo model in ``model_dir`` on the held-out engine and image
    source (:data:`HELDOUT`), as the training's evaluation computes it on the test sets."""
    from onepeace import OnePeace
    from onepeace.tasks.evaluate import all_pairs, embed_sources

    model = OnePeace.from_pretrained(model_dir).eval()
    out = {}
    for key, (sets, pairs, _) in HELDOUT.items():
        emb = embed_sources([data[s] for s in sets], model.config, model.embed_batch, batch_size)
        if emb.skipped:
            raise OutputError(f"the held-out demo sets could not be read ({', '.join(emb.skipped[:3])}); "
                              "rerun the demo with --force")
        res = all_pairs(emb)
        out[key] = {p: res[p] for p in pairs}
    return out


def environment() -> dict[str, Any]:
    """What besides the seed decides the exact numbers (see the README's reproducibility notes)."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpu": _cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _augmentation_words(cfgs) -> str:
    """', with image augmentation (scale, shift) in stage 1 and audio augmentation (speed, noise)
    in stage 2' -- what the model card says of the stages' [data.augment]."""
    parts = [f"{m} augmentation ({', '.join(ops)}) in stage {k + 1}"
             for k, c in enumerate(cfgs) for m, ops in (c.data.augment or {}).items() if ops]
    return ", with " + " and ".join(parts) if parts else ", no augmentation"


def _describe(s: dict[str, Any]) -> str:
    extra = "".join(f", {name}" for key, name in (("extra_voices", "--extra-voices"), ("augment", "--augment"),
                                                  ("plain", "--plain"), ("no_context", "--no-context"),
                                                  ("robust", "--robust"))
                    if s.get(key))
    return f"seed {s['seed']}, {s['stage1_steps']} + {s['stage2_steps']} steps{extra}"


def _open_run(out: str, settings: dict[str, Any], force: bool) -> dict[str, Any]:
    """The state of the demo in ``out``: an unfinished run with the same settings is resumed;
    anything else already there (a finished demo, an unfinished one with other settings, an
    older layout) is refused unless ``force``, which starts over: the intermediate files are
    removed, the previous model, metrics and plot stay until the new ones replace them."""
    from onepeace.outputs import check_creatable, is_staging_name

    _check_demo_dir(out)
    check_creatable(out)
    entries = sorted(e for e in (os.listdir(out) if os.path.isdir(out) else []) if not is_staging_name(e))
    state = _load_state(out) if STATE in entries else None
    if not force and state is not None and not state.get("finished") and state.get("settings") == settings:
        log.info("resuming the demo in %s (%s)", out, _describe(settings))
        return state
    if entries and not force:
        if state is None and "metrics.json" not in entries:
            raise OutputError(f"--out {out} holds an unfinished demo from an older onepeace ({', '.join(entries[:3])}); "
                              "pass --force to start it over, or choose another --out")
        if state is None or state.get("finished"):
            raise OutputError(f"--out {out} holds a finished demo (model/, metrics.json); pass --force to run it "
                              "again from scratch, or choose another --out")
        if set(state.get("settings") or {}) != set(settings):  # written by another onepeace: cannot be resumed
            raise OutputError(f"--out {out} holds an unfinished demo from an earlier onepeace "
                              f"({_describe(state['settings'])}); pass --force to start over with "
                              f"{_describe(settings)}, or choose another --out")
        raise OutputError(f"--out {out} holds an unfinished demo with {_describe(state['settings'])}; rerun with "
                          f"those settings to resume it, pass --force to start over with {_describe(settings)}, "
                          "or choose another --out")
    for name in ("data", "stage1", "stage2"):
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    state = {"settings": settings}
    os.makedirs(out, exist_ok=True)
    _save_state(out, state)
    return state


def _load_state(out: str, name: str = STATE) -> dict[str, Any] | None:
    """The run's settings and progress (``name`` in ``out``), or None when absent or unreadable."""
    try:
        with open(os.path.join(out, name)) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _save_state(out: str, state: dict[str, Any], name: str = STATE) -> None:
    write_text_atomic(os.path.join(out, name), json.dumps(state, indent=1))


def open_side_run(out: str, settings: dict[str, Any], force: bool, *, what: str, state_name: str,
                  entries: set[str], discard: tuple[str, ...], skip_hidden: bool = False) -> dict[str, Any]:
    """The state of a follow-up demo (``what``: "video demo", "adapting demo") in ``out``, which may
    hold only ``entries``: an unfinished run with the same settings is resumed; a finished one, or
    one with other settings, is refused unless ``force``, which starts over after removing the
    ``discard`` entries; a directory holding anything else is refused. ``skip_hidden``: dot entries
    (a staging area of the run's own) do not count."""
    from onepeace.outputs import check_creatable, is_staging_name

    an = "an" if what[0] in "aeiou" else "a"
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError(f"--out {out} is a file, not a directory; give the {what} a directory")
    check_creatable(out)
    found = sorted(e for e in (os.listdir(out) if os.path.isdir(out) else [])
                   if not is_staging_name(e) and not (skip_hidden and e.startswith(".")))
    other = [e for e in found if e not in entries]
    if other:
        raise OutputError(f"--out {out} is not {an} {what} directory (it holds {', '.join(other[:3])}); "
                          "choose a new or empty directory")
    state = _load_state(out, state_name) if state_name in found else None
    if not force and state is not None and not state.get("finished") and state.get("settings") == settings:
        log.info("resuming the %s in %s", what, out)
        return state
    if found and not force:
        if state is not None and state.get("finished") and state.get("settings") == settings:
            raise OutputError(f"--out {out} holds a finished {what} (metrics.json); pass --force to run it again "
                              "from scratch, or choose another --out")
        raise OutputError(f"--out {out} holds {an} {what} with other settings or an unfinished older one; "
                          "rerun with its settings to resume, pass --force to start over, or choose another --out")
    for name in discard:
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    state = {"settings": settings}
    _save_state(out, state, state_name)
    return state


def _check_demo_dir(out: str) -> None:
    """The demo resumes or reruns in its own directory, but never writes into another one."""
    from onepeace.checkpoints.format import model_files
    from onepeace.outputs import check_output_dir, is_staging_name

    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError(f"--out {out} is a file, not a directory; give the demo a directory")
    other = sorted(e for e in (os.listdir(out) if os.path.isdir(out) else [])
                   if e not in DEMO_ENTRIES and not is_staging_name(e))
    if other:
        raise OutputError(f"--out {out} is not a demo run directory (it holds {', '.join(other[:3])}"
                          f"{' ...' if len(other) > 3 else ''}); choose a new or empty directory")
    check_output_dir(os.path.join(out, "model"), True, owned=model_files(os.path.join(out, "model")),
                     what="model")  # replaced at the end


def _replace_dir(src: str, dst: str) -> None:
    """Copy the model directory ``src`` over ``dst``, atomically (the old or the new one, whole)."""
    from onepeace.checkpoints.format import model_files
    from onepeace.outputs import staged_dir

    with staged_dir(dst, force=True, owned=model_files(dst), what="model") as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def _read_losses(path: str) -> list[tuple[int, float]]:
    if not os.path.exists(path):
        return []
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    import math

    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float, step: float) -> str:
    import math

    digits = max(0, -math.floor(math.log10(step))) if step > 0 else 2
    return f"{v:.{digits}f}"


_VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def _colour(t: float) -> tuple[int, int, int]:
    """A viridis-like colour for t in [0, 1]."""
    t = min(1.0, max(0.0, float(t))) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    a, b, f = _VIRIDIS[i], _VIRIDIS[i + 1], t - i
    return tuple(int(round(x + (y - x) * f)) for x, y in zip(a, b))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _class_similarity(model_dir: str, data: dict[str, str]) -> np.ndarray:
    """[10, 10] mean cosine similarity of test audio of digit a (rows) to test images of digit b."""
    from onepeace import OnePeace
    from onepeace.data.dataset import make_loader

    model = OnePeace.from_pretrained(model_dir)
    emb = {}
    for m in ("image", "audio"):
        zs, ls = [], []
        for batch in make_loader(data[f"{m}-test"], model.config, 128, 0, train=False, rank=0, world_size=1):
            with torch.no_grad():
                zs.append(model.embed_batch(m, batch[m], bucket=True).float())  # spoken digits vary in length
            ls.append(batch["label"])
        emb[m] = (torch.cat(zs), torch.cat(ls))
    za, la = emb["audio"]
    zi, li = emb["image"]
    s = (za @ zi.T).numpy()
    sim = np.full((10, 10), np.nan)  # NaN: a digit missing from a test set
    for a in range(10):
        for b in range(10):
            rows, cols = (la == a).numpy(), (li == b).numpy()
            if rows.any() and cols.any():
                sim[a, b] = s[np.ix_(rows, cols)].mean()
    return sim


def _plot(out: str, model_dir: str, data: dict[str, str], path: str) -> None:
    """demo.png: the loss curves of both stages (steps and loss on the axes), and the
    class-averaged audio->image similarity on the test sets with its colour scale."""
    from PIL import Image, ImageDraw

    sim = _class_similarity(model_dir, data)
    img = Image.new("RGB", (1000, 470), "white")
    d = ImageDraw.Draw(img)
    font, small = _font(14), _font(12)

    def text(xy, s, anchor="la", f=small, fill="black"):
        d.text(xy, s, fill=fill, font=f, anchor=anchor)

    _plot_losses(d, text, font, out)
    _plot_similarity(d, text, font, sim)
    write_png_atomic(path, np.asarray(img))


def _plot_losses(d, text, font, out: str) -> None:
    """demo.png's left half: both stages' loss curves, stage 2's steps after stage 1's."""
    x0, y0, x1, y1 = 70, 50, 490, 400
    text((x0, 14), "pretraining loss", f=font)
    s1 = _read_losses(os.path.join(out, "stage1", "metrics.jsonl"))
    s2 = _read_losses(os.path.join(out, "stage2", "metrics.jsonl"))
    n1 = max((s for s, _ in s1), default=0)
    curves = [(s1, (31, 119, 180), "stage 1: image-text"),
              ([(s + n1, v) for s, v in s2], (214, 39, 40), "stage 2: audio-text")]
    pts = [p for c, _, _ in curves for p in c]
    if pts:
        smax = max(s for s, _ in pts)
        vmin, vmax = min(v for _, v in pts), max(v for _, v in pts)
        pad = (vmax - vmin) * 0.05 or 0.5
        vlo, vhi = vmin - pad, vmax + pad
        sx = lambda s: x0 + s / max(1, smax) * (x1 - x0)  # noqa: E731
        sy = lambda v: y1 - (v - vlo) / (vhi - vlo) * (y1 - y0)  # noqa: E731
        yt = _nice_ticks(vlo, vhi, 6)
        for v in yt:
            d.line((x0, sy(v), x1, sy(v)), fill=(232, 232, 232))
            d.line((x0 - 4, sy(v), x0, sy(v)), fill="black")
            text((x0 - 7, sy(v)), _fmt(v, yt[1] - yt[0] if len(yt) > 1 else 1.0), anchor="rm")
        xt = _nice_ticks(0, smax, 6)
        for s in xt:
            d.line((sx(s), y1, sx(s), y1 + 4), fill="black")
            text((sx(s), y1 + 7), str(int(round(s))), anchor="ma")
        if s2 and n1:
            for y in range(y0, y1, 8):  # dashed line between the stages
                d.line((sx(n1), y, sx(n1), min(y + 4, y1)), fill=(150, 150, 150))
        for c, col, _ in curves:
            if len(c) > 1:
                d.line([(sx(s), sy(v)) for s, v in c], fill=col, width=2)
            elif c:
                d.ellipse((sx(c[0][0]) - 2, sy(c[0][1]) - 2, sx(c[0][0]) + 2, sy(c[0][1]) + 2), fill=col)
        ly = y0 + 10
        for _, col, label in curves:
            d.line((x1 - 150, ly, x1 - 128, ly), fill=col, width=2)
            text((x1 - 122, ly), label, anchor="lm")
            ly += 18
    else:
        text(((x0 + x1) // 2, (y0 + y1) // 2), "no losses logged", anchor="mm")
    d.rectangle((x0, y0, x1, y1), outline="black")
    text(((x0 + x1) // 2, y1 + 26), "step (stage 2 continues after stage 1)", anchor="ma")
    text((x0 - 7, y0 - 8), "loss", anchor="rb")


def _plot_similarity(d, text, font, sim: np.ndarray) -> None:
    """demo.png's right half: the audio (rows) -> image (cols) similarity, with its colour scale."""
    hx, hy, cell = 590, 70, 30
    text((hx - 30, 14), "audio -> image cosine similarity (test set)", f=font)
    text((hx - 30, 34), "mean over pairs of a spoken digit (row) and an image (column)")
    lo, hi = (float(np.nanmin(sim)), float(np.nanmax(sim))) if np.isfinite(sim).any() else (0.0, 0.0)
    for a in range(10):
        text((hx - 8, hy + a * cell + cell // 2), str(a), anchor="rm")
        text((hx + a * cell + cell // 2, hy + 10 * cell + 6), str(a), anchor="ma")
        for b in range(10):
            t = (sim[a, b] - lo) / ((hi - lo) or 1.0)
            col = _colour(t) if np.isfinite(sim[a, b]) else (220, 220, 220)
            d.rectangle((hx + b * cell, hy + a * cell, hx + (b + 1) * cell - 1, hy + (a + 1) * cell - 1), fill=col)
    text((hx + 5 * cell, hy + 10 * cell + 24), "image digit", anchor="ma")
    text((hx - 8, hy - 6), "spoken digit", anchor="rb")
    bx, bw, bh = hx + 10 * cell + 24, 16, 10 * cell
    for y in range(bh):
        d.line((bx, hy + y, bx + bw - 1, hy + y), fill=_colour(1 - y / max(1, bh - 1)))
    d.rectangle((bx, hy, bx + bw - 1, hy + bh - 1), outline="black")
    for v, y in ((hi, hy), ((hi + lo) / 2, hy + bh // 2), (lo, hy + bh - 1)):
        d.line((bx + bw - 1, y, bx + bw + 3, y), fill="black")
        text((bx + bw + 6, y), f"{v:.3f}", anchor="lm")
    text((bx + bw // 2, hy - 6), "max", anchor="mb")
    text((bx + bw // 2, hy + bh + 6), "min", anchor="ma")
