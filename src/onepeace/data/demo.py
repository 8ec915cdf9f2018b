"""The bundled tri-modal demo set: handwritten MNIST digits and synthetic spoken digit words.

The arrays live in ``onepeace/assets/demo`` (see its README.md; rebuilt by
``scripts/build_demo_data.py``) and need nothing beyond numpy to read::

    images, labels = load_digits("train")        # uint8 [4000, 28, 28], uint8 [4000]
    waves, labels, voices = load_speech("test")  # list of float32 16 kHz clips, labels, voice names

Speech test clips come from voices (espeak-ng voice variants) that never occur in training, so the
test split measures generalisation to unseen speakers. Captions are drawn from a few templates per
modality (:func:`image_captions`, :func:`audio_captions`); :func:`eval_caption` is the one fixed
prompt per digit for zero-shot evaluation.
"""

from __future__ import annotations

import random
from functools import lru_cache
from importlib import resources

import numpy as np

__all__ = [
    "AUDIO_TEMPLATES",
    "DIGIT_WORDS",
    "IMAGE_TEMPLATES",
    "SAMPLE_RATE",
    "audio_captions",
    "eval_caption",
    "image_captions",
    "load_digits",
    "load_speech",
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


def _asset(name: str):
    return resources.files("onepeace").joinpath("assets", "demo", name)


@lru_cache(maxsize=None)
def _npz(name: str) -> dict[str, np.ndarray]:
    with _asset(name).open("rb") as f, np.load(f) as z:
        arrays = {k: z[k] for k in z.files}
    for a in arrays.values():
        a.setflags(write=False)  # shared by every caller through the cache
    return arrays


def _mask(split_arr: np.ndarray, split: str | None) -> np.ndarray:
    if split is None:
        return np.ones(len(split_arr), dtype=bool)
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train', 'test' or None, not {split!r}")
    return split_arr == _SPLITS[split]


def load_digits(split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Handwritten digits: (images uint8 [N, 28, 28], white on black; labels uint8 [N]).

    ``split`` is ``"train"`` (4,000), ``"test"`` (1,000) or ``None`` (all 5,000)."""
    z = _npz("digits.npz")
    m = _mask(z["split"], split)
    return z["images"][m].copy(), z["labels"][m].copy()


def load_speech(split: str | None = None) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Spoken digit words: (list of float32 mono waveforms at 16 kHz in [-1, 1], labels uint8 [N],
    voices: the voice name of each clip, e.g. ``"en-gb-scotland+m3"``, str array [N]).

    ``split`` is ``"train"``, ``"test"`` or ``None``; test voices never occur in training."""
    z = _npz("speech.npz")
    m = _mask(z["split"], split)
    audio, off = z["audio"], z["offsets"]
    idx = np.flatnonzero(m)
    waves = [audio[off[i] : off[i + 1]].astype(np.float32) / 32768.0 for i in idx]
    voices = z["voices"][z["voice"][idx]].astype(str)
    return waves, z["labels"][idx].copy(), voices


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
