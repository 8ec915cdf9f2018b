"""The bundled tri-modal demo set: handwritten MNIST digits and synthetic spoken digit words.

The arrays (11 MB) live in the source tree, ``src/onepeace_train/demo/assets`` (see its README.md;
rebuilt by ``scripts/build_demo_data.py``), not in the wheel: ``make demo`` runs from a clone and needs
no network. Elsewhere, point ``ONEPEACE_DEMO_DATA`` at a copy of that folder. They need nothing
beyond numpy to read::

    images, labels = load_digits("train")        # uint8 [4000, 28, 28], uint8 [4000]
    waves, labels, voices = load_speech("test")  # list of float32 16 kHz clips, labels, voice names
    waves, labels, speakers = load_real_speech()  # real recorded digits (FSDD), resampled to 16 kHz

Speech test clips come from voices (espeak-ng voice variants) that never occur in training, so the
test split measures generalisation to unseen speakers. :func:`load_real_speech` gives real
recordings of the same words by six people (the Free Spoken Digit Dataset, CC BY-SA 4.0, in
``fsdd.npz``), which ``make demo-adapt`` adapts the demo model to. Captions are drawn from a few templates per
modality (:func:`image_captions`, :func:`audio_captions`); :func:`eval_caption` is the one fixed
prompt per digit for zero-shot evaluation.
"""

from __future__ import annotations

import os
import random
from functools import lru_cache
from pathlib import Path

import numpy as np

from onepeace.errors import InputError

__all__ = [
    "AUDIO_TEMPLATES",
    "DIGIT_WORDS",
    "IMAGE_TEMPLATES",
    "SAMPLE_RATE",
    "audio_captions",
    "eval_caption",
    "image_captions",
    "load_digits",
    "load_font_digits",
    "load_real_speech",
    "load_speech",
    "mnist_style",
    "real_speakers",
]

SAMPLE_RATE = 16000
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

IMAGE_TEMPLATES = [
    "a handwritten digit {word}",
    "the number {word} written by hand",
    "a photo of a handwritten {word}",
    "{word}, drawn in ink",
    "a scanned image of the digit {word}",
    "a pen drawing of the number {word}",
]
AUDIO_TEMPLATES = [
    "someone saying {word}",
    "a voice speaking the number {word}",
    "the spoken word {word}",
    "a recording of a person saying {word}",
    "a speaker says the number {word}",
    "the sound of someone counting {word}",
]
EVAL_TEMPLATES = {
    "image": "a handwritten digit {word}",
    "audio": "someone saying {word}",
    "text": "the number {word}",
}

_SPLITS = {"train": 0, "test": 1}
#: speech.npz split codes: the original espeak-ng train/test voices, the added training voices
#: (more espeak-ng variants and flite), and the held-out engine (festival, never trained on)
_SPEECH_SPLITS = {"train": 0, "test": 1, "extra": 2, "heldout": 3}


#: where the demo set lives: ONEPEACE_DEMO_DATA, else beside this module in a clone
DEMO_DATA_ENV = "ONEPEACE_DEMO_DATA"


def demo_data_dir() -> Path:
    """The folder of the demo arrays: ``$ONEPEACE_DEMO_DATA`` if set, else the source tree's
    ``src/onepeace_train/demo/assets``. Missing: one line saying where to get it."""
    env = os.environ.get(DEMO_DATA_ENV)
    folder = Path(env) if env else Path(__file__).resolve().parent / "assets"
    if not (folder / "digits.npz").is_file():
        where = f"{DEMO_DATA_ENV}={env}" if env else str(folder)
        raise InputError(f"the demo data set is not at {where}: it ships with the source tree, not the wheel; "
                         f"run the demo from a clone of the repository (make demo) or set {DEMO_DATA_ENV} "
                         "to a copy of its src/onepeace_train/demo/assets folder")
    return folder


def _asset(name: str) -> Path:
    return demo_data_dir() / name


@lru_cache(maxsize=None)
def _npz(name: str) -> dict[str, np.ndarray]:
    with _asset(name).open("rb") as f, np.load(f) as z:
        arrays = {k: z[k] for k in z.files}
    for a in arrays.values():
        a.setflags(write=False)  # shared by every caller through the cache
    return arrays


def _mask(split_arr: np.ndarray, split: str | None, codes: dict[str, int] = _SPLITS) -> np.ndarray:
    if split is None:
        return np.ones(len(split_arr), dtype=bool)
    if split not in codes:
        raise ValueError(f"split must be one of {', '.join(map(repr, codes))} or None, not {split!r}")
    return split_arr == codes[split]


def load_digits(split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Handwritten digits: (images uint8 [N, 28, 28], white on black; labels uint8 [N]).

    ``split`` is ``"train"`` (4,000), ``"test"`` (1,000) or ``None`` (all 5,000)."""
    z = _npz("digits.npz")
    m = _mask(z["split"], split)
    return z["images"][m].copy(), z["labels"][m].copy()


def load_speech(split: str | None = None, *, engines: bool = False):
    """Spoken digit words: (list of float32 mono waveforms at 16 kHz in [-1, 1], labels uint8 [N],
    voices: the voice name of each clip, e.g. ``"en-gb-scotland+m3"``, str array [N]), plus the
    engine of each clip (``"espeak-ng"``, ``"flite"`` or ``"festival"``, str array [N]) when
    ``engines``.

    ``split``: ``"train"`` and ``"test"`` are the original espeak-ng voices (test voices never
    occur in training), ``"extra"`` the added training voices (more espeak-ng variants, flite),
    ``"heldout"`` the held-out engine (festival: no engine or speaker of it is trained on);
    ``None`` is all of them."""
    z = _npz("speech.npz")
    m = _mask(z["split"], split, _SPEECH_SPLITS)
    audio, off = z["audio"], z["offsets"]
    idx = np.flatnonzero(m)
    waves = [audio[off[i] : off[i + 1]].astype(np.float32) / 32768.0 for i in idx]
    voices = z["voices"][z["voice"][idx]].astype(str)
    if not engines:
        return waves, z["labels"][idx].copy(), voices
    return waves, z["labels"][idx].copy(), voices, z["engines"][z["engine"][idx]].astype(str)


#: the level :func:`load_real_speech` brings each clip's peak to, as the synthetic clips were built
REAL_SPEECH_PEAK = 0.8


def real_speakers() -> list[str]:
    """The six speakers of ``fsdd.npz`` (Free Spoken Digit Dataset), in its order."""
    return _npz("fsdd.npz")["speakers"].astype(str).tolist()


def load_real_speech(speakers=None) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Real recorded spoken digits (the Free Spoken Digit Dataset, ``fsdd.npz``: six speakers,
    each digit 10 times): (list of float32 mono waveforms at 16 kHz, labels uint8 [N], the speaker
    of each clip, str array [N]), in the file's order (speaker, digit, take).

    The 8 kHz recordings are resampled to 16 kHz with soxr (HQ, as every audio input of the
    pipeline is) and peak-normalised to :data:`REAL_SPEECH_PEAK` of full scale, as the synthetic
    clips of :func:`load_speech` were (some recordings peak at 1% of full scale). ``speakers``: a
    name or a list of names (see :func:`real_speakers`); ``None`` is all six. An unknown name is a
    ValueError naming the speakers there are."""
    from onepeace.processing.audio import resample

    z = _npz("fsdd.npz")
    names = z["speakers"].astype(str)
    if speakers is None:
        wanted = set(range(len(names)))
    else:
        asked = [speakers] if isinstance(speakers, str) else list(speakers)
        unknown = [s for s in asked if s not in names]
        if unknown:
            raise ValueError(f"no speaker {unknown[0]!r} in fsdd.npz; the speakers are {', '.join(names)}")
        wanted = {int(np.flatnonzero(names == s)[0]) for s in asked}
    idx = np.flatnonzero(np.isin(z["speaker"], sorted(wanted)))
    audio, off, rate = z["audio"], z["offsets"], int(z["sample_rate"])
    waves = []
    for i in idx:
        w = resample(audio[off[i] : off[i + 1]].astype(np.float32) / 32768.0, rate, SAMPLE_RATE)
        peak = float(np.abs(w).max())
        waves.append((w * (REAL_SPEECH_PEAK / peak) if peak > 0 else w).astype(np.float32))
    return waves, z["labels"][idx].copy(), names[z["speaker"][idx]]


def load_font_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digits rendered from handwriting-like fonts, framed like MNIST (:func:`mnist_style`): a
    held-out image source, never trained on (images uint8 [N, 28, 28], labels uint8 [N], the font
    of each image, str array [N])."""
    z = _npz("fonts.npz")
    return z["images"].copy(), z["labels"].copy(), z["fonts"][z["font"]].astype(str)


def mnist_style(image, *, size: int = 28, box: int = 20) -> np.ndarray:
    """A picture of one digit (a photo, a scan, a drawing; any size, any polarity) -> uint8
    [size, size], white ink on black, framed the way MNIST's digits are.

    The ink is found against the paper (the typical pixel is paper, ink the minority that departs
    from it, and a smooth estimate of the paper's shading is subtracted), its contrast is
    stretched to 0..255, faint specks are dropped, the ink's bounding box is scaled to fit
    ``box`` x ``box`` (aspect kept) and placed with its centre of mass at the centre of the
    canvas, as in MNIST. ``image``: a PIL image or an array [H, W] / [H, W, C]. Raises
    ValueError when no ink stands out from the paper."""
    from PIL import Image, ImageFilter

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("L")
    scale = 256 / max(img.size)
    if scale < 1:  # photos: work at about 256 px, plenty for a 20 px digit
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    a = np.asarray(img, dtype=np.float32)
    if a.mean() < np.median(a):  # ink is the minority: darker than the typical (paper) pixel
        a = 255.0 - a  # dark ink on light paper -> light ink on dark paper
    if min(a.shape) >= 64:  # a photo: the paper's shading, by a grey opening (strokes go, paper stays)
        small = Image.fromarray(a.astype(np.uint8)).resize((a.shape[1] // 8, a.shape[0] // 8), Image.BOX)
        small = small.filter(ImageFilter.MinFilter(5)).filter(ImageFilter.MaxFilter(5))  # ~1/2 of the short side
        bg = small.resize((a.shape[1], a.shape[0]), Image.BILINEAR).filter(ImageFilter.GaussianBlur(4))
        bg = np.asarray(bg, dtype=np.float32)
    else:  # a small clean image (e.g. MNIST-sized): flat paper
        bg = np.float32(np.median(a))
    ink = np.clip(a - bg, 0, None)
    hi = float(np.percentile(ink[ink > 0], 99)) if (ink > 0).any() else 0.0
    if hi < 16:  # under 16 grey levels of contrast: no ink
        raise ValueError("no digit found: nothing stands out from the background")
    ink = np.clip(ink / hi, 0, 1)
    ink[ink < 0.25] = 0  # paper texture, noise, faint shadows
    ys, xs = np.nonzero(ink)
    crop = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    f = box / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    small = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((nw, nh), Image.LANCZOS), dtype=np.float32)
    canvas = np.zeros((size, size), np.float32)
    mass = small.sum()
    cy = (small.sum(axis=1) * np.arange(nh)).sum() / mass
    cx = (small.sum(axis=0) * np.arange(nw)).sum() / mass
    top = int(round(size / 2 - 0.5 - cy))
    left = int(round(size / 2 - 0.5 - cx))
    top, left = min(max(top, 0), size - nh), min(max(left, 0), size - nw)
    canvas[top : top + nh, left : left + nw] = small
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _word(label) -> str:
    i = int(label)
    if not 0 <= i <= 9:
        raise ValueError(f"digit label must be 0..9, not {label!r}")
    return DIGIT_WORDS[i]


def _pick(templates: list[str], rng) -> str:
    if rng is None:
        return random.choice(templates)
    if isinstance(rng, np.random.Generator):
        return templates[int(rng.integers(len(templates)))]
    return templates[rng.randrange(len(templates))]  # random.Random


def image_captions(label, rng=None) -> str:
    """A caption for a digit image, from a random template (``rng``: numpy Generator, random.Random or None)."""
    return _pick(IMAGE_TEMPLATES, rng).format(word=_word(label))


def audio_captions(label, rng=None) -> str:
    """A caption for a spoken digit clip, from a random template (``rng`` as for :func:`image_captions`)."""
    return _pick(AUDIO_TEMPLATES, rng).format(word=_word(label))


def eval_caption(label, modality: str = "image") -> str:
    """The fixed zero-shot prompt for a digit: ``modality`` is "image", "audio" or "text"."""
    if modality not in EVAL_TEMPLATES:
        raise ValueError(f"modality must be one of {sorted(EVAL_TEMPLATES)}, not {modality!r}")
    return EVAL_TEMPLATES[modality].format(word=_word(label))
