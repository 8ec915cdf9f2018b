"""Try the demo model on your own voice or handwriting: ``onepeace try --audio REC.wav --image PHOTO.jpg``.

A recording (any rate, channel count and format soundfile reads) is mixed to mono at 16 kHz and
trimmed of its leading and trailing silence, so what the model hears is the spoken word as the
training clips were (silence-trimmed words); a photo of a handwritten digit is framed the way the
MNIST training digits are (:func:`onepeace_train.demo.data.mnist_style`: paper and ink found, white ink
on black, the digit scaled into 20 x 20 and centred by mass in 28 x 28). Each is then classified
zero-shot against the ten digits' captions (every caption template of its modality, averaged),
with the model's own temperature giving the probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from onepeace.errors import InputError

__all__ = ["MAX_SECONDS", "TRIM", "classify_digit", "prepare_audio", "prepare_image", "trim_silence"]

#: whether :func:`prepare_audio` (and ``onepeace try``) trims the silence around the word by default
TRIM = True
#: the longest recording taken (before trimming); the demo's words are under a second
MAX_SECONDS = 10.0
#: the longest speech kept after trimming: one digit word
MAX_SPEECH_SECONDS = 3.0
SAMPLE_RATE = 16000


#: a stretch of silence (a noise floor) is measured only over at least this much of the recording
MIN_SILENCE_S = 0.2
#: one end alone is trusted as silence only when it is at least this long (a word has no steady
#: stretch this long; the other end may be cut tight)
LONG_SILENCE_S = 0.5
#: a stretch is steady (noise, not speech) when its 10 ms levels stay within this many dB (10th..90th
#: percentile)
STEADY_DB = 6.0


def _steady(db: np.ndarray) -> bool:
    return float(np.percentile(db, 90) - np.percentile(db, 10)) <= STEADY_DB


def _noise_floor(db: np.ndarray) -> float | None:
    """The recording's noise level in dB, measured where it really has silence, else None.

    Silence is a steady stretch at the recording's ends: its first and last ``MIN_SILENCE_S`` both
    steady and within ``STEADY_DB`` of each other (the same room before and after the word), or one
    end steady over ``LONG_SILENCE_S``. A quiet stretch *inside* a tightly cut word (the /s/ of
    "six", the /n/ of "nine", a fade) lies at one end only and is shorter than that, so it is never
    taken for the floor: a recording without silence has no floor, and is trimmed only of what lies
    ``floor_db`` below its loudest frame. The floor returned is the louder end's 90th percentile
    (the noise's own loud frames), so a gate just above it clears both ends."""
    n, w, long = len(db), round(MIN_SILENCE_S * 100), round(LONG_SILENCE_S * 100)
    ends = []
    if n >= 2 * w:
        a, b = db[:w], db[-w:]
        if _steady(a) and _steady(b) and abs(float(np.median(a) - np.median(b))) <= STEADY_DB:
            ends = [a, b]
    if not ends and n >= 2 * long:
        ends = [e for e in (db[:long], db[-long:]) if _steady(e)]
    return max(float(np.percentile(e, 90)) for e in ends) if ends else None


def trim_silence(wave: np.ndarray, sr: int = SAMPLE_RATE, *, floor_db: float = 35.0, pad_s: float = 0.015) -> np.ndarray:
    """``wave`` without its leading and trailing silence, ``pad_s`` of context kept either side
    (with 5 ms fades).

    10 ms frames count as silence when they are ``floor_db`` below the loudest frame or, in a
    recording that has real silence at its ends (see :func:`_noise_floor`), within 3 dB of that
    noise's loud frames. A recording with no silence at its ends (a clip cut tight around the word)
    is left whole but for frames ``floor_db`` down. Raises InputError when the recording is silent
    or nothing in it stands 10 dB out of its noise."""
    hop = sr // 100
    n = len(wave) // hop
    if n < 3:
        raise InputError(f"the recording is too short ({len(wave) / sr * 1000:.0f} ms); say one digit")
    rms = np.sqrt((wave[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(axis=1) + 1e-12)
    db = 20 * np.log10(rms)
    peak = float(db.max())
    noise = _noise_floor(db)
    if peak < -60 or (noise is not None and peak - noise < 10):
        raise InputError("no speech found in the recording (it is silent or only noise); record one spoken digit")
    gate = peak - floor_db if noise is None else max(peak - floor_db, noise + 3.0)
    loud = np.flatnonzero(db > gate)
    pad = int(pad_s * sr)
    a, b = max(0, loud[0] * hop - pad), min(len(wave), (loud[-1] + 1) * hop + pad)
    out = wave[a:b].astype(np.float32).copy()
    fade = min(int(0.005 * sr), len(out) // 4)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        out[:fade] *= ramp
        out[-fade:] *= ramp[::-1]
    return out


def prepare_audio(item: Any, trim: bool = TRIM) -> np.ndarray:
    """A recording (path, bytes, file object, or ``(array, rate)``) -> the 16 kHz mono word, trimmed
    of its leading and trailing silence (:func:`trim_silence`) when ``trim``; untrimmed, only a
    silent recording is refused."""
    from onepeace.processing.audio import load_audio

    wave = load_audio(item, SAMPLE_RATE)
    if len(wave) > MAX_SECONDS * SAMPLE_RATE:
        raise InputError(f"the recording is {len(wave) / SAMPLE_RATE:.1f} s long; give at most {MAX_SECONDS:.0f} s "
                         "with one spoken digit")
    if not trim:
        peak = float(np.abs(wave).max()) if len(wave) else 0.0
        if peak < 1e-3:  # -60 dB full scale: about where trim_silence calls a recording silent
            raise InputError("no speech found in the recording (it is silent); record one spoken digit")
        return wave.astype(np.float32) * np.float32(0.8 / peak)
    word = trim_silence(wave)
    if len(word) > MAX_SPEECH_SECONDS * SAMPLE_RATE:
        raise InputError(f"the recording has {len(word) / SAMPLE_RATE:.1f} s of sound between its silences; "
                         f"say one digit (at most {MAX_SPEECH_SECONDS:.0f} s), in a quiet room")
    peak = float(np.abs(word).max())
    return word * (0.8 / peak) if peak > 0 else word


def prepare_image(item: Any) -> np.ndarray:
    """A picture of one handwritten digit (path, bytes, file object, PIL image or array) -> uint8
    [28, 28], white ink on black, framed as MNIST."""
    from onepeace.processing.image import load_image
    from onepeace_train.demo.data import mnist_style

    try:
        return mnist_style(load_image(item))
    except ValueError as e:
        raise InputError(f"{e}; photograph one digit, dark on light paper (or light on dark), filling much of the frame") from None


@torch.no_grad()
def _prototypes(model, modality: str) -> torch.Tensor:
    """[10, D] the digits' caption embeddings, averaged over the caption templates of ``modality``."""
    from onepeace_train.demo.data import AUDIO_TEMPLATES, DIGIT_WORDS, EVAL_TEMPLATES, IMAGE_TEMPLATES

    templates = list(dict.fromkeys([EVAL_TEMPLATES[modality], *(AUDIO_TEMPLATES if modality == "audio" else IMAGE_TEMPLATES)]))
    texts = [t.format(word=w) for w in DIGIT_WORDS for t in templates]
    z = model.embed_batch("text", model.processor.get("text")(texts)).float()
    z = z.view(len(DIGIT_WORDS), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(z, dim=-1)


@torch.no_grad()
def classify_digit(model, modality: str, media: Any) -> torch.Tensor:
    """Probabilities [10] of the digits 0..9 for one prepared input (:func:`prepare_audio` /
    :func:`prepare_image`) of ``modality`` ("audio" or "image")."""
    if modality not in ("audio", "image"):
        raise InputError(f"modality must be audio or image, not {modality!r}")
    if modality not in model.modality_names:
        raise InputError(f"the model has no {modality} branch (it has {', '.join(model.modality_names)})")
    item = media if modality == "audio" else np.repeat(np.asarray(media)[..., None], 3, axis=2)
    z = model.embed_batch(modality, model.processor.get(modality)([item])).float()
    scale = model.logit_scale_exp().float() if model.logit_scale is not None else torch.tensor(100.0)
    return (scale * z @ _prototypes(model, modality).T).softmax(-1)[0]
