"""The laptop demo (the README's main job): tri-modal pretraining on the bundled digits set.

Stage 1 aligns handwritten digit images with captions; stage 2 aligns spoken digit words with
captions, with the official stage-2 freezing. Audio and images never meet in training, yet audio
-> image retrieval works: the emergent alignment through language that ONE-PEACE claims. Evaluation
is on held-out images and on voices never heard in training.
"""

from __future__ import annotations

import json
import logging
import os
import random
from importlib import resources
from typing import Any

import numpy as np
import torch

from .checkpoints.format import write_text_atomic

log = logging.getLogger(__name__)

PAIRS = ["image->text", "text->image", "audio->text", "text->audio", "audio->image", "image->audio"]


def recipe(name: str) -> str:
    return str(resources.files("onepeace").joinpath("configs", name))


def build_data(root: str, seed: int = 0) -> dict[str, str]:
    """Shards for train/test x image/audio from the bundled arrays (captions from templates)."""
    from .data.demo import audio_captions, eval_caption, image_captions, load_digits, load_speech
    from .data.shards import write_shards_from_samples

    rng = random.Random(seed)
    sources = {
        "image": (lambda split: load_digits(split), image_captions),
        "audio": (lambda split: load_speech(split)[:2], audio_captions),
    }
    out = {}
    for split in ("train", "test"):
        for m, (load, caption) in sources.items():
            items, labels = load(split)
            path = os.path.join(root, f"{m}-{split}")
            if not os.path.isdir(path):
                # training captions vary by template; evaluation uses one fixed prompt per digit
                cap = (lambda lab, c=caption: c(lab, rng)) if split == "train" else (lambda lab, m=m: eval_caption(lab, m))
                write_shards_from_samples(
                    ({m: x, "text": cap(lab), "label": int(lab), "id": f"{m}-{split}-{i}"}
                     for i, (x, lab) in enumerate(zip(items, labels))), path, samples_per_shard=5000)
            out[f"{m}-{split}"] = path
    return out


def run_demo(out: str = "runs/demo", *, stage1_steps: int | None = None, stage2_steps: int | None = None,
             seed: int = 0, progress: bool = True) -> dict[str, Any]:
    from .train.config import load_config
    from .train.trainer import Trainer

    data = build_data(os.path.join(out, "data"), seed)
    common = [f"train.seed={seed}", f"train.progress={'true' if progress else 'false'}"]
    s1 = load_config(recipe("demo_stage1.toml"), common + [
        f"data.train={json.dumps(data['image-train'])}", f"train.output={json.dumps(os.path.join(out, 'stage1'))}"])
    if stage1_steps:
        s1.optim.max_steps = stage1_steps
    Trainer(s1).fit()
    s2 = load_config(recipe("demo_stage2.toml"), common + [
        f"data.train={json.dumps(data['audio-train'])}", f"train.output={json.dumps(os.path.join(out, 'stage2'))}",
        f"model.init={json.dumps(os.path.join(out, 'stage1', 'model'))}"])
    s2.data.eval = [data["image-test"], data["audio-test"]]
    if stage2_steps:
        s2.optim.max_steps = stage2_steps
    result = Trainer(s2).fit()
    model_dir = os.path.join(out, "model")
    _replace_dir(os.path.join(out, "stage2", "model"), model_dir)
    retrieval = {p: {"R@1": round(result["retrieval"][p]["R@1"], 2), "chance": round(result["retrieval"][p]["chance"], 2),
                     "R@5": round(result["retrieval"][p]["R@5"], 2)} for p in PAIRS}
    metrics = {"retrieval": retrieval, "model": model_dir,
               "train": {"stage1_steps": s1.optim.max_steps, "stage2_steps": s2.optim.max_steps}}
    write_text_atomic(os.path.join(out, "metrics.json"), json.dumps(metrics, indent=2))
    plot = os.path.join(out, "demo.png")
    _plot(out, model_dir, data, plot)
    metrics["plot"] = plot
    return metrics


def _replace_dir(src: str, dst: str) -> None:
    import shutil

    tmp = dst + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def _read_losses(path: str) -> list[tuple[int, float]]:
    if not os.path.exists(path):
        return []
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _plot(out: str, model_dir: str, data: dict[str, str], path: str) -> None:
    """Loss curves of both stages and the class-averaged audio->image similarity, with Pillow."""
    from PIL import Image, ImageDraw

    from .data.dataset import make_loader
    from .model.onepeace import OnePeace

    model = OnePeace.from_pretrained(model_dir)
    emb = {}
    for m in ("image", "audio"):
        zs, ls = [], []
        for batch in make_loader(data[f"{m}-test"], model.config, 128, 0, train=False, rank=0, world_size=1):
            with torch.no_grad():
                zs.append(model.embed_batch(m, batch[m]).float())
            ls.append(batch["label"])
        emb[m] = (torch.cat(zs), torch.cat(ls))
    sim = np.zeros((10, 10))
    za, la = emb["audio"]
    zi, li = emb["image"]
    s = (za @ zi.T).numpy()
    for a in range(10):
        for b in range(10):
            sim[a, b] = s[np.ix_((la == a).numpy(), (li == b).numpy())].mean()
    w, h = 900, 420
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    # loss curves
    x0, y0, x1, y1 = 50, 30, 470, 380
    d.rectangle((x0, y0, x1, y1), outline="black")
    d.text((x0, 8), "pretraining loss (stage 1 blue, stage 2 red)", fill="black")
    curves = [(_read_losses(os.path.join(out, st, "metrics.jsonl")), col) for st, col in (("stage1", "blue"), ("stage2", "red"))]
    n1 = max([s for s, _ in curves[0][0]], default=0)
    pts_all = [(s + (n1 if i else 0), v) for i, (c, _) in enumerate(curves) for s, v in c]
    if pts_all:
        smax = max(s for s, _ in pts_all) or 1
        vmin, vmax = min(v for _, v in pts_all), max(v for _, v in pts_all)
        vr = (vmax - vmin) or 1.0
        for i, (c, col) in enumerate(curves):
            pts = [(x0 + (s + (n1 if i else 0)) / smax * (x1 - x0), y1 - (v - vmin) / vr * (y1 - y0)) for s, v in c]
            if len(pts) > 1:
                d.line(pts, fill=col, width=2)
        d.text((x0, y1 + 5), f"steps 0..{smax}   loss {vmin:.2f}..{vmax:.2f}", fill="black")
    # heatmap
    hx, hy, cell = 540, 40, 32
    d.text((hx, 8), "audio (rows) -> image (cols) similarity, test set", fill="black")
    lo, hi = sim.min(), sim.max()
    for a in range(10):
        d.text((hx - 14, hy + a * cell + 10), str(a), fill="black")
        d.text((hx + a * cell + 12, hy + 10 * cell + 4), str(a), fill="black")
        for b in range(10):
            t = (sim[a, b] - lo) / ((hi - lo) or 1)
            col = (int(255 * t), int(80 + 100 * (1 - abs(t - 0.5) * 2)), int(255 * (1 - t)))
            d.rectangle((hx + b * cell, hy + a * cell, hx + (b + 1) * cell - 1, hy + (a + 1) * cell - 1), fill=col)
    tmp = path + ".tmp.png"
    img.save(tmp)
    os.replace(tmp, path)
