"""How fragile are a demo model's hearing and sight? One controlled corruption at a time.

Zero-shot accuracy (the nearest of the ten fixed digit prompts, as the demo's audio->text and
image->text R@1 over distinct captions) of trained demo models on the held-out test clips (the
unseen espeak-ng voices) and test digits, each corrupted one way at a time: louder/quieter,
faster/slower, noise, the telephone band, silence around the word; blur, thicker/thinner strokes,
low resolution, shifted, smaller, inverted, dark ink on light paper. Corruptions are fixed
(seeded), so every model sees the same inputs.

    python benchmarks/demo_robustness.py --models runs/demo-ablation/full/seed-0/model runs/demo-seeds/seed-0/model
    python benchmarks/demo_robustness.py --table

writes ``benchmarks/results/demo-robustness.json``: per model, the accuracy per corruption.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _bench import write_json_atomic  # noqa: E402  (the house helper)

RESULTS = HERE / "results"
SR = 16000
N_IMAGES = 300  # the first 300 test digits (30 per class)


def audio_corruptions() -> dict:
    from onepeace.data.augment import _noise, _resample

    def noise(snr):
        def f(x, i):
            rng = np.random.default_rng([7, i])
            return x + _noise(len(x), rng) * np.float32(np.sqrt(np.mean(x**2) / 10 ** (snr / 10)))
        return f

    def telephone(x, i):
        return _resample(_resample(x, SR, 8000), 8000, SR)

    def silence(x, i):
        z = np.zeros(SR // 2, np.float32)
        return np.concatenate([z, x, z])

    return {
        "none": lambda x, i: x,
        "gain x0.1": lambda x, i: x * np.float32(0.1),
        "speed 1.15": lambda x, i: _resample(x, SR * 1.15, SR),
        "speed 0.85": lambda x, i: _resample(x, SR * 0.85, SR),
        "noise 20 dB": noise(20),
        "noise 10 dB": noise(10),
        "telephone": telephone,
        "0.5 s silence each side": silence,
        "telephone + 20 dB + silence": lambda x, i: noise(20)(silence(telephone(x, i), i), i),
    }


def image_corruptions() -> dict:
    from PIL import Image, ImageFilter

    def pil(f):
        return lambda a: np.asarray(f(Image.fromarray(a)))

    def shift(a):
        return np.roll(np.roll(a, 6, axis=1), 4, axis=0)

    def smaller(a):
        out = np.zeros_like(a)
        out[7:21, 7:21] = np.asarray(Image.fromarray(a).resize((14, 14), Image.BILINEAR))
        return out

    def photo(a):  # dark ink on light paper, a wider margin
        small = np.asarray(Image.fromarray(a).resize((18, 18), Image.BILINEAR), dtype=np.float32)
        out = np.full((28, 28), 255.0)
        out[5:23, 5:23] -= small * 0.8
        return out.clip(0, 255).astype(np.uint8)

    return {
        "none": lambda a: a,
        "blur 1.5": pil(lambda im: im.filter(ImageFilter.GaussianBlur(1.5))),
        "thicker (3x3 max)": pil(lambda im: im.filter(ImageFilter.MaxFilter(3))),
        "thinner (3x3 min)": pil(lambda im: im.filter(ImageFilter.MinFilter(3))),
        "8x8 low resolution": pil(lambda im: im.resize((8, 8), Image.BILINEAR).resize((28, 28), Image.BILINEAR)),
        "shifted (6, 4) px": shift,
        "half size": smaller,
        "inverted": lambda a: 255 - a,
        "dark ink on light paper": photo,
    }


def evaluate(model_dir: str) -> dict:
    import torch

    from onepeace import OnePeace
    from onepeace_train.demo.data import EVAL_TEMPLATES, load_digits, load_speech

    model = OnePeace.from_pretrained(model_dir).eval()
    out = {}
    with torch.no_grad():
        for m, texts in (("audio", EVAL_TEMPLATES["audio"]), ("image", EVAL_TEMPLATES["image"])):
            from onepeace_train.demo.data import DIGIT_WORDS

            zt = model.embed_batch("text", model.processor.get("text")([texts.format(word=w) for w in DIGIT_WORDS]))
            if m == "audio":
                waves, labels, _ = load_speech("test")
                cases = audio_corruptions()
            else:
                images, labels = load_digits("test")
                order = np.argsort(labels, kind="stable").reshape(10, -1)[:, : N_IMAGES // 10].T.reshape(-1)
                images, labels = images[np.sort(order)], labels[np.sort(order)]
                cases = image_corruptions()
            acc = {}
            for name, f in cases.items():
                if m == "audio":
                    items = [f(w, i) for i, w in enumerate(waves)]
                else:
                    items = [np.repeat(f(a)[..., None], 3, axis=2) for a in images]
                zs = []
                for k in range(0, len(items), 64):
                    zs.append(model.embed_batch(m, model.processor.get(m)(items[k: k + 64])).float())
                pred = (torch.cat(zs) @ zt.float().T).argmax(1).numpy()
                acc[name] = round(100.0 * float((pred == labels).mean()), 1)
            out[f"{m}->text"] = acc
    return out


def table(result: dict) -> str:
    """Accuracy per corruption: the median (min - max) over the models of each group (a label's
    first word, e.g. "full s0" and "full s1" are the group "full")."""
    import statistics

    groups: dict[str, list[str]] = {}
    for m in result["models"]:
        groups.setdefault(result["labels"].get(m, m).split()[0], []).append(m)
    lines = []
    for pair in ("audio->text", "image->text"):
        cases = list(next(iter(result["models"].values()))[pair])
        lines += [f"| {pair} accuracy (%) | " + " | ".join(f"{g} ({len(ms)})" for g, ms in groups.items()) + " |",
                  "|---|" + "---:|" * len(groups)]
        for c in cases:
            cells = []
            for ms in groups.values():
                v = [result["models"][m][pair][c] for m in ms]
                cells.append(f"{statistics.median(v):.1f} ({min(v):.1f} - {max(v):.1f})" if len(v) > 1 else f"{v[0]:.1f}")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=[], help="demo model directories")
    ap.add_argument("--labels", nargs="+", default=[], help="a short name per model for the table")
    ap.add_argument("--out", default=str(RESULTS / "demo-robustness.json"))
    ap.add_argument("--table", action="store_true", help="print the table from --out and exit")
    ap.add_argument("--append", action="store_true", help="add these models to the results already in --out")
    args = ap.parse_args()
    out = Path(args.out)
    if args.table:
        print(table(json.loads(out.read_text())))
        return
    if not args.models:
        sys.exit("give --models DIR ...")
    if args.labels and len(args.labels) != len(args.models):
        sys.exit("--labels needs one name per model")
    old = json.loads(out.read_text()) if args.append and out.exists() else {"models": {}, "labels": {}}
    models = dict(old["models"])
    for d in args.models:
        print(f"evaluating {d}", flush=True)
        models[d] = evaluate(d)
    result = {"schema": 1, "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "test_clips": "the 150 unseen-voice espeak-ng test clips", "test_images": f"{N_IMAGES} test digits",
              "labels": {**old["labels"], **dict(zip(args.models, args.labels))}, "models": models}
    write_json_atomic(out, result)
    print(f"wrote {out}\n")
    print(table(result))


if __name__ == "__main__":
    main()
