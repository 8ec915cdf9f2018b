"""How fragile are a demo model's hearing and sight? One controlled corruption at a time.

Zero-shot accuracy (the nearest of the ten fixed digit prompts, as the demo's audio->text and
image->text R@1 over distinct captions) of trained demo models on the held-out test clips (the
unseen espeak-ng voices) and test digits, each corrupted one way at a time: louder/quieter,
faster/slower, noise, the telephone band, silence around the word; blur, thicker/thinner strokes,
low resolution, shifted, smaller, inverted, dark ink on light paper. Corruptions are fixed
(seeded), so every model sees the same inputs.

The word in context: 0.5 s of silence each side, and a bed of real environmental sound under the
word (ESC-10, from ``../shared/data/esc10`` beside the project, or ``--esc10 DIR``; one clip per
test clip, drawn by its index, at a twentieth of the word's peak and at 20 and 10 dB SNR to the
word), and both. The demo trains only with procedural beds (``onepeace.data.augment.BED_KINDS``),
so these recordings are sounds it never heard. Without ESC-10 those cases are left out.

``--try`` also measures ``onepeace try``'s own path (its caption prototypes, and its silence trim
on and off) on the test clips: tightly cut, with silence, over a bed and both.

    python benchmarks/demo_robustness.py --models runs/demo-ablation/full/seed-0/model runs/demo-seeds/seed-0/model
    python benchmarks/demo_robustness.py --table

writes ``benchmarks/results/demo-robustness.json``: per model, the accuracy per corruption.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _bench import write_json_atomic  # noqa: E402  (the house helper)

RESULTS = HERE / "results"
ESC10 = HERE.parent.parent / "shared" / "data" / "esc10"  # test data beside the project, never shipped
SR = 16000
N_IMAGES = 300  # the first 300 test digits (30 per class)


@lru_cache(maxsize=None)
def _esc_clip(path: str) -> np.ndarray:
    """An ESC-10 clip at 16 kHz without the digital silence the set pads its clips with."""
    from onepeace.processing.audio import load_audio

    x = load_audio(path, SR)
    live = np.flatnonzero(np.abs(x) > 1e-4)
    return x[live[0]: live[-1] + 1] if len(live) > 1 else x


def esc_bed(files: list[str], i: int, n: int) -> np.ndarray:
    """``n`` samples of the ESC-10 clip drawn for test clip ``i`` (looped if short), at a drawn offset
    where it is not silent (some clips hold stretches of digital silence)."""
    rng = np.random.default_rng([13, i])
    clip = _esc_clip(files[int(rng.integers(len(files)))])
    clip = np.tile(clip, -(-n // len(clip)))
    level = np.sqrt(np.mean(clip**2))
    for _ in range(100):
        start = int(rng.integers(0, len(clip) - n + 1))
        seg = clip[start: start + n]
        if np.sqrt(np.mean(seg**2)) > 0.1 * level:
            break
    return seg


def _silence(x, i):
    z = np.zeros(SR // 2, np.float32)
    return np.concatenate([z, x, z])


def context_corruptions(esc10: Path | None) -> dict:
    """The word over a bed of ESC-10 sound: at a twentieth of the word's peak, at an SNR to the
    word's power, and with 0.5 s of silence each side too. No ESC-10: none."""
    files = sorted(str(p) for p in esc10.glob("*/*.ogg")) if esc10 and esc10.is_dir() else []

    def bed(peak_ratio=None, snr=None, silence=False):
        def f(x, i):
            word = x
            x = _silence(x, i) if silence else x
            b = esc_bed(files, i, len(x))
            if peak_ratio is not None:
                scale = np.abs(word).max() * peak_ratio / (np.abs(b).max() + 1e-12)
            else:
                scale = np.sqrt(np.mean(word**2) / 10 ** (snr / 10) / (np.mean(b**2) + 1e-20))
            return (x + b * np.float32(scale)).astype(np.float32)
        return f

    if not files:
        return {}
    return {"ESC-10 bed at 1/20 peak": bed(1 / 20), "ESC-10 bed, 20 dB SNR": bed(snr=20),
            "ESC-10 bed, 10 dB SNR": bed(snr=10), "0.5 s silence + ESC-10 bed at 1/20 peak": bed(1 / 20, silence=True)}


def audio_corruptions(esc10: Path | None = None) -> dict:
    from onepeace.data.augment import _noise, _resample

    def noise(snr):
        def f(x, i):
            rng = np.random.default_rng([7, i])
            return x + _noise(len(x), rng) * np.float32(np.sqrt(np.mean(x**2) / 10 ** (snr / 10)))
        return f

    def telephone(x, i):
        return _resample(_resample(x, SR, 8000), 8000, SR)

    silence = _silence
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
        **context_corruptions(esc10),
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


def evaluate(model_dir: str, esc10: Path | None = None, try_path: bool = False) -> dict:
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
                cases = audio_corruptions(esc10)
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
    if try_path:
        out["try"] = try_accuracy(model, esc10)
    return out


#: the cases ``--try`` runs through ``onepeace try``'s path
TRY_CASES = ("none", "0.5 s silence each side", "ESC-10 bed at 1/20 peak", "0.5 s silence + ESC-10 bed at 1/20 peak")


def try_accuracy(model, esc10: Path | None) -> dict:
    """``onepeace try``'s accuracy on the test clips per case of :data:`TRY_CASES`, with its
    silence trim on and off: each clip through ``prepare_audio``, then embedded alone and named by
    the nearest of ``try``'s caption prototypes (``classify_digit``'s argmax, the prototypes computed
    once); a clip ``try`` refuses (InputError) counts as wrong, and is counted."""
    import torch

    from onepeace.errors import InputError
    from onepeace_train.demo.data import load_speech
    from onepeace_train.demo.try_it import _prototypes, prepare_audio

    waves, labels, _ = load_speech("test")
    cases = {k: v for k, v in audio_corruptions(esc10).items() if k in TRY_CASES}
    proc = model.processor.get("audio")
    with torch.no_grad():
        protos = _prototypes(model, "audio")
    out = {}
    for name, f in cases.items():
        row = {}
        for trim in (True, False):
            right = refused = 0
            for i, (w, lab) in enumerate(zip(waves, labels)):
                try:
                    item = prepare_audio((f(w, i), SR), trim=trim)
                except InputError:
                    refused += 1
                    continue
                with torch.no_grad():
                    z = model.embed_batch("audio", proc([item])).float()
                right += int((z @ protos.T).argmax()) == lab
            row["trim" if trim else "no trim"] = round(100.0 * right / len(waves), 1)
            row["refused, trim" if trim else "refused, no trim"] = refused
        out[name] = row
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
        cases = list(dict.fromkeys(c for m in result["models"].values() for c in m[pair]))  # older runs lack some
        lines += [f"| {pair} accuracy (%) | " + " | ".join(f"{g} ({len(ms)})" for g, ms in groups.items()) + " |",
                  "|---|" + "---:|" * len(groups)]
        for c in cases:
            cells = []
            for ms in groups.values():
                v = [result["models"][m][pair][c] for m in ms if c in result["models"][m][pair]]
                cells.append("-" if not v else f"{statistics.median(v):.1f} ({min(v):.1f} - {max(v):.1f})"
                             if len(v) > 1 else f"{v[0]:.1f}")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("")
    tried = {g: [m for m in ms if "try" in result["models"][m]] for g, ms in groups.items()}
    tried = {g: ms for g, ms in tried.items() if ms}
    if tried:
        lines += ["| onepeace try accuracy (%), trim / no trim | " + " | ".join(f"{g} ({len(ms)})" for g, ms in tried.items())
                  + " |", "|---|" + "---:|" * len(tried)]
        for c in TRY_CASES:
            cells = []
            for ms in tried.values():
                rows = [result["models"][m]["try"][c] for m in ms if c in result["models"][m]["try"]]
                cells.append(" / ".join(f"{statistics.median(r[k] for r in rows):.1f}" for k in ("trim", "no trim"))
                             if rows else "-")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=[], help="demo model directories")
    ap.add_argument("--labels", nargs="+", default=[], help="a short name per model for the table")
    ap.add_argument("--out", default=str(RESULTS / "demo-robustness.json"))
    ap.add_argument("--table", action="store_true", help="print the table from --out and exit")
    ap.add_argument("--append", action="store_true", help="add these models to the results already in --out")
    ap.add_argument("--esc10", default=str(ESC10), help="the ESC-10 folder for the bed cases (default ../shared/data/esc10)")
    ap.add_argument("--try", dest="try_path", action="store_true",
                    help="also measure onepeace try's path, its silence trim on and off")
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
    esc10 = Path(args.esc10)
    if not esc10.is_dir():
        print(f"no ESC-10 at {esc10}: the bed cases are left out", flush=True)
    for d in args.models:
        print(f"evaluating {d}", flush=True)
        models[d] = evaluate(d, esc10 if esc10.is_dir() else None, args.try_path)
    result = {"schema": 1, "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "test_clips": "the 150 unseen-voice espeak-ng test clips", "test_images": f"{N_IMAGES} test digits",
              "beds": "ESC-10 (real recordings, 400 clips of 10 classes), one drawn per test clip by its index; "
                      "'1/20 peak': the bed's peak a twentieth of the word's; 'N dB SNR': the word's power to the "
                      "bed's; with silence, the bed covers the silence too",
              "labels": {**old["labels"], **dict(zip(args.models, args.labels))}, "models": models}
    write_json_atomic(out, result)
    print(f"wrote {out}\n")
    print(table(result))


if __name__ == "__main__":
    main()
