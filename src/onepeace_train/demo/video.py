"""The video demo (``make demo-video``): a new modality aligned to the demo model with the
"align a new modality" recipe (``configs/align_new_modality.toml``).

Short clips are generated from the bundled digits: a handwritten digit moving across the frame,
its spoken word on the soundtrack, a caption. The demo model (``runs/demo/model``, from
``make demo``) grows a video branch (``add_modalities``; it starts as a copy of the image branch)
and only that branch is trained, **against text only**, with both ONE-PEACE objectives (aligning
contrast with the captions; denoising contrast on tube-masked frame patches). Held-out clips (digits
and voices never trained on) are then retrieved against text, and against audio and images: pairs
the video branch never saw (the emergent alignment). The usual way to use an image model on video,
the average of its frames' image embeddings, is scored on the same clips as the baseline.

The run directory (``runs/demo-video``) is resumable as the demo's is: ``demo-video.json``
records the settings and what is done; a finished run is never overwritten unless ``force``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from typing import Any

import numpy as np
import torch

from onepeace.checkpoints.format import write_text_atomic
from onepeace.errors import ConfigError, InputError
from onepeace_train.demo import run as demo

log = logging.getLogger(__name__)

PAIRS = ["video->text", "text->video", "video->audio", "video->image"]
STATE = "demo-video.json"
ENTRIES = {"data", "train", "model", "metrics.json", STATE}
FRAMES, FPS, CANVAS, DIGIT = 8, 8, 48, 28
#: the video branch: 8 frames at the demo's 32 px image size (2 x 2 patches a frame), 33 tokens a clip
VIDEO_OPTIONS = {"frames": FRAMES, "image_size": 32, "pool": 1}
TRAIN_TEMPLATES = [
    "a video of the digit {word} moving {way}",
    "the number {word} sliding {way}",
    "a clip of a handwritten {word}",
    "a handwritten {word} moves {way} across the screen",
    "a short video of the number {word}",
    "the digit {word} drifting {way}",
]
EVAL_TEMPLATE = "a video of the digit {word}"
_WAYS = {"to the right": ((0, 0.5), (1, 0.5)), "to the left": ((1, 0.5), (0, 0.5)), "down": ((0.5, 0), (0.5, 1)),
         "up": ((0.5, 1), (0.5, 0)), "diagonally": ((0, 0), (1, 1))}
DEFAULTS = {"steps": 300, "train_clips": 3000, "test_clips": 300}


def moving_digit(digit: np.ndarray, way: str, rng: random.Random) -> np.ndarray:
    """uint8 [FRAMES, CANVAS, CANVAS, 3]: ``digit`` (uint8 [28, 28], white on black) moving
    across a black frame in direction ``way`` (a key of the path table), jittered by ``rng``."""
    (x0, y0), (x1, y1) = _WAYS[way]
    room = CANVAS - DIGIT
    jitter = [rng.uniform(-0.15, 0.15) for _ in range(4)]
    clamp = lambda v: min(1.0, max(0.0, v))  # noqa: E731
    x0, y0, x1, y1 = (clamp(v + j) for v, j in zip((x0, y0, x1, y1), jitter))
    out = np.zeros((FRAMES, CANVAS, CANVAS), dtype=np.uint8)
    for t in range(FRAMES):
        a = t / (FRAMES - 1)
        x, y = round(room * (x0 + (x1 - x0) * a)), round(room * (y0 + (y1 - y0) * a))
        out[t, y : y + DIGIT, x : x + DIGIT] = digit
    return np.repeat(out[..., None], 3, axis=-1)


def _word(label: int) -> str:
    from onepeace_train.demo.data import DIGIT_WORDS

    return DIGIT_WORDS[int(label)]


def build_clips(root: str, split: str, n: int, seed: int = 0) -> str:
    """``n`` clips of ``split`` (digits and voices of the demo set's split) in ``root/video-<split>``:
    ``clip-NNNNN.mp4`` (H.264, the spoken digit as AAC), the same sound as ``.wav`` (test: the
    audio rows of the emergent video->audio evaluation) and ``clips.jsonl``. Written whole or not
    at all; depends only on (seed, split, n). Returns the manifest path."""
    import soundfile as sf

    from onepeace.data.manifest import write_manifest
    from onepeace.outputs import staged_dir
    from onepeace.processing.video import write_video
    from onepeace_train.demo.data import SAMPLE_RATE, load_digits, load_speech

    path = os.path.join(root, f"video-{split}")
    manifest = os.path.join(path, "clips.jsonl")
    if os.path.isfile(manifest):
        return manifest
    rng = random.Random(f"onepeace-demo-video:{seed}:{split}:{n}")
    images, labels = load_digits(split)
    if split == "test":  # every other test digit; the rest is the image gallery (build_images)
        images, labels = images[0::2], labels[0::2]
    waves, wave_labels, _ = load_speech(split)
    by_label = {d: [w for w, lab in zip(waves, wave_labels) if lab == d] for d in range(10)}
    rows = []
    with staged_dir(path, what="demo video set") as tmp:
        for i in range(n):
            j = rng.randrange(len(images))
            lab = int(labels[j])
            way = rng.choice(sorted(_WAYS))
            frames = moving_digit(images[j], way, rng)
            sound = rng.choice(by_label[lab]) if by_label[lab] else np.zeros(SAMPLE_RATE // 2, np.float32)
            name = f"clip-{i:05d}"
            write_video(os.path.join(tmp, name + ".mp4"), frames, fps=FPS, audio=sound, sample_rate=SAMPLE_RATE)
            row = {"video": name + ".mp4", "label": lab, "id": f"video-{split}-{i}"}
            if split == "train":
                row["text"] = rng.choice(TRAIN_TEMPLATES).format(word=_word(lab), way=way)
            else:
                sf.write(os.path.join(tmp, name + ".wav"), sound, SAMPLE_RATE, subtype="PCM_16")
                row["audio"] = name + ".wav"
                row["text"] = EVAL_TEMPLATE.format(word=_word(lab))
            rows.append(row)
        write_manifest(os.path.join(tmp, "clips.jsonl"), rows)
    return manifest


def build_images(root: str, n: int = 500) -> str:
    """The image gallery of the emergent video->image evaluation: ``n`` test digits no test clip
    shows (every other one), as shards in ``root/image-test``."""
    from onepeace.data.shards import write_shards_from_samples
    from onepeace.outputs import staged_dir
    from onepeace_train.demo.data import eval_caption, load_digits

    path = os.path.join(root, "image-test")
    if not os.path.isdir(path):
        images, labels = load_digits("test")
        odd = list(range(1, len(images), 2))
        pick = odd[:: max(1, len(odd) // n)][:n]  # spread over the set (it is sorted by digit)
        with staged_dir(path, what="demo image set") as tmp:
            write_shards_from_samples(({"image": images[i], "text": eval_caption(labels[i]), "label": int(labels[i]),
                                        "id": f"image-test-{i}"} for i in pick), tmp, samples_per_shard=5000)
    return path


def train_config(out: str, demo_model: str, data: dict[str, str], *, seed: int = 0, steps: int | None = None,
                 progress: bool = True):
    """configs/align_new_modality.toml with the demo's settings: the video branch added to
    ``demo_model`` and trained on the clips against their captions only (``data.fields``
    leaves the soundtrack out), evaluated on held-out clips, their sounds and held-out images."""
    from onepeace_train.demo.run import recipe
    from onepeace_train.recipe import load_config

    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"--steps must be a positive number of steps, got {steps!r}")
    opts = ", ".join(f"{k} = {json.dumps(v)}" for k, v in VIDEO_OPTIONS.items())
    over = [f"model.init={json.dumps(demo_model)}", f"model.add_modalities={{ video = {{ {opts} }} }}",
            f"data.train={json.dumps(data.get('video-train', ''))}", 'data.fields=["video"]', "data.batch_size=32",
            "objective.mask={other = 0.5, joint_other = 0.5}", "optim.lr=1e-3", "optim.min_lr=1e-5",
            f"optim.max_steps={steps or DEFAULTS['steps']}", "optim.warmup_ratio=0.1",
            f"train.output={json.dumps(os.path.join(out, 'train'))}", f"train.seed={seed}",
            f"train.progress={'true' if progress else 'false'}", "train.log_every=10", "train.save_every=100"]
    cfg = load_config(recipe("align_new_modality.toml"), over)
    cfg.data.eval = [data["video-test"], data["image-test"]] if data.get("video-test") else []
    return cfg


@torch.inference_mode()
def frame_average_baseline(model, data: dict[str, str], batch_size: int = 64) -> dict[str, dict]:
    """The held-out pairs with each clip embedded as the mean of its frames' image embeddings
    (the same frames the video branch sees), the usual way to use an image model on video."""
    import torch.nn.functional as F

    from onepeace.tasks.evaluate import all_pairs, embed_sources
    from onepeace.tasks.retrieval import Rows

    emb = embed_sources([data["video-test"], data["image-test"]], model.config, model.embed_batch, batch_size)
    video = emb.media["video"]
    vproc, iproc = model.processor.get("video"), model.processor.get("image")
    rows = []
    for item in video.items:
        clip = vproc.read(item, audio=False)
        pixels = iproc([f.convert("RGB") for f in clip.frames])
        z = model.embed_batch("image", pixels).float().mean(0)
        rows.append(F.normalize(z, dim=-1))
    emb.media["video"] = Rows(torch.stack(rows), video.items, video.labels)
    return all_pairs(emb)


def example_clip(manifest: str) -> dict[str, Any]:
    """The first clip of a held-out ``clips.jsonl`` with the caption of its own digit: what the CLI
    suggests embedding next (``{"video": path, "digit": d, "text": "a video of the digit ..."}``)."""
    with open(manifest, encoding="utf-8") as f:
        row = json.loads(next(line for line in f if line.strip()))
    label = int(row["label"])
    return {"video": os.path.join(os.path.dirname(manifest), row["video"]), "digit": label,
            "text": EVAL_TEMPLATE.format(word=_word(label))}


def _summary(res: dict[str, dict]) -> dict[str, dict]:
    return {p: {**{k: round(res[p][k], 2) for k in ("R@1", "chance", "R@5") if k in res[p]},
                **{k: res[p][k] for k in ("protocol", "queries", "gallery") if k in res[p]}} for p in PAIRS}


def run_demo_video(out: str = "runs/demo-video", demo_model: str = "runs/demo/model", *, steps: int | None = None,
                   train_clips: int | None = None, test_clips: int | None = None, seed: int = 0,
                   progress: bool = True, force: bool = False, keep_checkpoints: bool = False) -> dict[str, Any]:
    """Run (or resume) the video demo in ``out`` on top of ``demo_model``; returns what
    ``metrics.json`` holds."""
    from onepeace import OnePeace
    from onepeace_train.demo.run import environment
    from onepeace_train.trainer import Trainer

    if not os.path.isfile(os.path.join(demo_model, "config.json")):
        raise InputError(f"no trained demo model in {demo_model}: run `make demo` (or `onepeace demo`) first, "
                         "or point --demo-model at a model with text, image and audio branches")
    try:
        import av  # noqa: F401
    except ImportError:
        raise ConfigError("the video demo needs PyAV: pip install 'onepeace[video]'") from None
    settings = {"seed": int(seed), "steps": train_config(out, demo_model, {}, steps=steps).optim.max_steps,
                "train_clips": int(train_clips or DEFAULTS["train_clips"]),
                "test_clips": int(test_clips or DEFAULTS["test_clips"]), "demo_model": os.path.abspath(demo_model)}
    if min(settings["train_clips"], settings["test_clips"]) < 1:
        raise ConfigError("--train-clips and --test-clips must be positive")
    state = _open_run(out, settings, force)
    root = os.path.join(out, "data")
    data = {"video-train": build_clips(root, "train", settings["train_clips"], seed),
            "video-test": build_clips(root, "test", settings["test_clips"], seed),
            "image-test": build_images(root, min(500, 5 * settings["test_clips"]))}
    model_dir = os.path.join(out, "model")
    if "retrieval" not in state:
        from onepeace_train.demo.run import _replace_dir

        cfg = train_config(out, demo_model, data, seed=seed, steps=steps, progress=progress)
        result = Trainer(cfg, existing="resume").fit()
        _replace_dir(os.path.join(out, "train", "model"), model_dir)
        state["retrieval"] = result["retrieval"]
        state["skipped"] = result.get("skipped", 0)
        _save_state(out, state)
    if "baseline" not in state:
        model = OnePeace.from_pretrained(model_dir).eval()
        state["baseline"] = frame_average_baseline(model, data)
        _save_state(out, state)
    metrics = {"retrieval": _summary(state["retrieval"]),
               "baseline_frame_average": _summary(state["baseline"]),
               "model": model_dir, "trained_pairs": ["video-text"], "example": example_clip(data["video-test"]),
               "train": {k: settings[k] for k in ("seed", "steps", "train_clips", "test_clips")},
               "video_options": VIDEO_OPTIONS, "environment": environment()}
    write_text_atomic(os.path.join(out, "metrics.json"), json.dumps(metrics, indent=2))
    if not keep_checkpoints:
        shutil.rmtree(os.path.join(out, "train", "checkpoints"), ignore_errors=True)
        shutil.rmtree(os.path.join(out, "train", "model"), ignore_errors=True)
    state["finished"] = True
    _save_state(out, state)
    return metrics


def _open_run(out: str, settings: dict[str, Any], force: bool) -> dict[str, Any]:
    """An unfinished run with the same settings is resumed; a finished one, or one with other
    settings, is refused unless ``force`` (which starts over, the old model staying until the new
    one replaces it); a directory holding anything else is refused."""
    return demo.open_side_run(out, settings, force, what="video demo", state_name=STATE, entries=ENTRIES,
                              discard=("data", "train"))


def _load_state(out: str) -> dict[str, Any] | None:
    return demo._load_state(out, STATE)


def _save_state(out: str, state: dict[str, Any]) -> None:
    demo._save_state(out, state, STATE)


__all__ = ["PAIRS", "build_clips", "build_images", "frame_average_baseline", "moving_digit", "run_demo_video",
           "train_config"]
