"""Training-time augmentation with Pillow and NumPy only.

The official ONE-PEACE pretraining image transform (:func:`random_resized_crop` ->
:func:`to_normalized_tensor`, defined in :mod:`onepeace.processing.transforms` and importable from
here) and the recipes' ``[data.augment.audio]`` / ``[data.augment.image]`` options.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# the image transform lives in the processing layer; these names stay importable from here
from ..processing.transforms import crop_params, random_resized_crop, to_normalized_tensor  # noqa: F401

# ==================================================================================================
# Recipe augmentation options: ``[data.augment.audio]`` and ``[data.augment.image]``
# ==================================================================================================
#
# Each option is a table ``{ p = probability, <parameter> = [low, high] }`` (``true`` takes the
# defaults; an absent option is off). Every sample draws its own values, from the dataset's
# per-(seed, epoch, slot) ``random.Random``, so a run is reproducible from its seed. Audio ops
# work on the 16 kHz mono waveform before the processor's normalisation; image ops on the decoded
# picture before the crop/resize (they assume light strokes on a dark ground, as MNIST; put
# ``invert`` last if the data is the other way round).


@dataclass(frozen=True)
class _Op:
    param: str  # the range's name in the table ("" for ops without one)
    default: tuple[float, float]
    bounds: tuple[float, float]  # what a range may span
    p: float  # default probability
    integer: bool = False


AUDIO_OPS: dict[str, _Op] = {
    # in order of application
    "speed": _Op("factor", (0.85, 1.15), (0.5, 2.0), 0.5),  # resampling: tempo and pitch together
    "pitch": _Op("semitones", (-2.0, 2.0), (-12.0, 12.0), 0.3),  # phase vocoder + resampling: pitch only
    "crop": _Op("keep", (0.85, 1.0), (0.1, 1.0), 0.2),  # keep this fraction of the clip, at a random offset
    "reverb": _Op("rt60", (0.1, 0.6), (0.01, 3.0), 0.3),  # synthetic room: decaying noise impulse response
    "lowpass": _Op("hz", (2500.0, 7000.0), (100.0, 48000.0), 0.3),  # a duller microphone or codec: cut-off frequency
    "envelope": _Op("db", (-12.0, -3.0), (-60.0, 0.0), 0.3),  # a slowly varying gain: each 80 ms point in [db, 0]
    "tilt": _Op("db_per_octave", (-4.0, 2.0), (-24.0, 24.0), 0.3),  # spectral slope about 1 kHz (voice, mic, room)
    "pad": _Op("seconds", (0.0, 0.8), (0.0, 10.0), 0.5),  # total silence added, split at random before/after
    # the word inside a longer recording: this much silence in all, split at random before/after;
    # half the time not digital zeros but a faint noise floor (40-70 dB under the word) over the whole clip
    "silence": _Op("seconds", (0.2, 1.2), (0.0, 10.0), 0.5),
    # a procedural background (BED_KINDS: noise, hum, rain, wind, engine, fan) under the whole clip,
    # at a random SNR to the word (its power before any silence was added)
    "bed": _Op("snr_db", (5.0, 30.0), (-20.0, 100.0), 0.3),
    "telephone": _Op("", (0.0, 0.0), (0.0, 0.0), 0.2),  # through 8 kHz and back, 300 Hz high-pass
    "noise": _Op("snr_db", (5.0, 35.0), (-20.0, 100.0), 0.5),  # white or pink noise at a random SNR
    "gain": _Op("db", (-12.0, 6.0), (-60.0, 40.0), 0.5),
}
IMAGE_OPS: dict[str, _Op] = {
    "stroke": _Op("width", (-1, 1), (-3, 3), 0.3, integer=True),  # <0 thinner (min filter), >0 thicker (max filter)
    "scale": _Op("factor", (0.6, 1.1), (0.1, 4.0), 0.5),  # about the centre
    "rotate": _Op("degrees", (-15.0, 15.0), (-180.0, 180.0), 0.5),
    "shift": _Op("fraction", (-0.15, 0.15), (-0.5, 0.5), 0.5),  # of the width/height, each axis
    "lowres": _Op("factor", (0.3, 0.7), (0.05, 1.0), 0.2),  # down to this fraction of the size and back up
    "blur": _Op("radius", (0.3, 1.5), (0.0, 10.0), 0.2),  # Gaussian, in pixels
    "contrast": _Op("factor", (0.4, 1.0), (0.0, 2.0), 0.3),
    "invert": _Op("", (0.0, 0.0), (0.0, 0.0), 0.1),
}


@dataclass(frozen=True)
class Augment:
    """Parsed augmentation options of one modality: ``{op: (p, low, high)}`` in application order."""

    modality: str
    ops: dict[str, tuple[float, float, float]]

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __call__(self, x, rng: random.Random, sample_rate: int = 16000):
        """Augment a decoded waveform (audio: float mono at ``sample_rate``) or PIL image."""
        return (augment_audio if self.modality == "audio" else augment_image)(x, self, rng, sample_rate)

    def apply(self, processor: Any, item: Any, rng: random.Random):
        """Decode ``item`` with the modality's ``processor.load`` and augment it: what the
        processor's ``sample()`` then takes in place of the file."""
        return self(processor.load(item), rng, getattr(processor, "sample_rate", 16000))


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_augment(spec: Any, where: str = "data.augment") -> dict[str, Augment]:
    """``{"audio": {...}, "image": {...}}`` (the recipe's ``[data.augment]``) -> ``{modality: Augment}``;
    a ConfigError naming the key for anything unknown or out of range."""
    from ..errors import ConfigError

    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a table with 'audio' and/or 'image' options, got {spec!r}")
    tables = {"audio": AUDIO_OPS, "image": IMAGE_OPS}
    out = {}
    for modality, ops in spec.items():
        if modality not in tables:
            raise ConfigError(f"unknown {where}.{modality}; known: audio, image")
        known = tables[modality]
        if not isinstance(ops, dict):
            raise ConfigError(f"{where}.{modality} must be a table of options ({', '.join(known)}), got {ops!r}")
        parsed: dict[str, tuple[float, float, float]] = {}
        for name, opt in ops.items():
            key = f"{where}.{modality}.{name}"
            if name not in known:
                raise ConfigError(f"unknown option {key}; known: {', '.join(known)}")
            op = known[name]
            if opt is False:
                continue
            if opt is True:
                opt = {}
            if not isinstance(opt, dict):
                raise ConfigError(f"{key} must be true, false or a table like {{ p = {op.p}"
                                  + (f", {op.param} = [{op.default[0]}, {op.default[1]}]" if op.param else "") + f" }}, got {opt!r}")
            extra = set(opt) - {"p", op.param} - {""}
            if extra:
                raise ConfigError(f"unknown key {key}.{sorted(extra)[0]}; known: p" + (f", {op.param}" if op.param else ""))
            p = opt.get("p", op.p)
            if not _num(p) or not 0 <= p <= 1:
                raise ConfigError(f"{key}.p must be a probability in [0, 1], got {p!r}")
            lo, hi = op.default
            if op.param and op.param in opt:
                r = opt[op.param]
                if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(_num(v) for v in r)):
                    raise ConfigError(f"{key}.{op.param} must be [low, high] (two numbers), got {r!r}")
                lo, hi = float(r[0]), float(r[1])
                if op.integer and (lo != int(lo) or hi != int(hi)):
                    raise ConfigError(f"{key}.{op.param} must be whole numbers, got {r!r}")
                if not op.bounds[0] <= lo <= hi <= op.bounds[1]:
                    raise ConfigError(f"{key}.{op.param} must satisfy {op.bounds[0]} <= low <= high <= {op.bounds[1]}, "
                                      f"got {r!r}")
            parsed[name] = (float(p), float(lo), float(hi))
        out[modality] = Augment(modality, {n: parsed[n] for n in known if n in parsed})
    return out


def _draw(rng: random.Random, lo: float, hi: float, integer: bool = False) -> float:
    return float(rng.randint(int(lo), int(hi))) if integer else rng.uniform(lo, hi)


# ---- audio ---------------------------------------------------------------------------------------

def _resample(x: np.ndarray, sr_in: float, sr_out: float) -> np.ndarray:
    import soxr

    return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32)


def time_stretch(x: np.ndarray, rate: float, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Phase-vocoder time stretch: ``rate`` > 1 faster (shorter), pitch unchanged (``n_fft`` a
    multiple of ``hop``)."""
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    win = np.hanning(n_fft).astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, (n_fft // 2, n_fft // 2)), n_fft)[::hop]
    spec = np.fft.rfft(frames * win, axis=1)  # [T, F]
    steps = np.arange(0, spec.shape[0] - 1, rate)
    omega = 2 * np.pi * hop * np.arange(spec.shape[1]) / n_fft
    i = steps.astype(int)
    frac = (steps - i)[:, None]
    mag = (1 - frac) * np.abs(spec[i]) + frac * np.abs(spec[i + 1])
    dphi = np.angle(spec[i + 1]) - np.angle(spec[i]) - omega
    dphi -= 2 * np.pi * np.round(dphi / (2 * np.pi))
    phase = np.angle(spec[0]) + np.concatenate([np.zeros((1, spec.shape[1])), np.cumsum(omega + dphi, axis=0)[:-1]])
    out_frames = np.fft.irfft(mag * np.exp(1j * phase), n=n_fft, axis=1).astype(np.float32) * win
    # overlap-add, hop-sized blocks at a time (n_fft is a multiple of hop)
    per = n_fft // hop
    blocks = np.zeros((len(steps) + per - 1, hop), np.float32)
    norm = np.zeros_like(blocks)
    wins = (win**2).reshape(per, hop)
    for j in range(per):
        blocks[j: j + len(steps)] += out_frames[:, j * hop: (j + 1) * hop]
        norm[j: j + len(steps)] += wins[j]
    y = (blocks / np.maximum(norm, 1e-3)).reshape(-1)
    return y[n_fft // 2: n_fft // 2 + int(round(len(x) / rate))]


def pitch_shift(x: np.ndarray, semitones: float, sr: int) -> np.ndarray:
    """Shift the pitch by ``semitones`` keeping the duration (stretch, then resample)."""
    f = 2.0 ** (semitones / 12.0)
    return _resample(time_stretch(x, 1.0 / f), sr * f, sr)[: len(x)]


def gain_envelope(x: np.ndarray, depth_db: float, sr: int, rng: np.random.Generator,
                  every_s: float = 0.08) -> np.ndarray:
    """Multiply by a smooth random gain curve: points ``every_s`` apart, each drawn in
    [``depth_db``, 0] dB, joined by cosine steps. Consonants and vowels, onsets and endings come
    out louder or softer against each other, as between speakers, microphones and distances."""
    n = len(x)
    if n < 2 or depth_db == 0:
        return np.asarray(x, np.float32)
    step = max(1, int(every_s * sr))
    k = n // step + 2
    pts = 10.0 ** (rng.uniform(depth_db, 0.0, size=k) / 20.0)
    t = np.arange(n) / step
    i = t.astype(int)
    w = 0.5 - 0.5 * np.cos(np.pi * (t - i))
    return (x * ((1 - w) * pts[i] + w * pts[i + 1])).astype(np.float32)


def spectral_tilt(x: np.ndarray, db_per_octave: float, sr: int, pivot_hz: float = 1000.0) -> np.ndarray:
    """Tilt the spectrum by ``db_per_octave`` about ``pivot_hz`` (zero phase; the gain is held
    flat below 100 Hz), keeping the clip's energy: < 0 darker (less hiss and fricative), > 0 brighter."""
    if len(x) < 2 or db_per_octave == 0:
        return np.asarray(x, np.float32)
    spec = np.fft.rfft(x)
    f = np.maximum(np.fft.rfftfreq(len(x), 1.0 / sr), 100.0)
    spec *= 10.0 ** (db_per_octave * np.log2(f / pivot_hz) / 20.0)
    y = np.fft.irfft(spec, n=len(x))
    e_in, e_out = float(np.sum(np.square(x, dtype=np.float64))), float(np.sum(y**2))
    return (y * np.sqrt(e_in / e_out) if e_out > 0 else y).astype(np.float32)


def room_impulse(rt60: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response: direct path, then exponentially decaying noise (60 dB in ``rt60``)."""
    n = max(2, int(rt60 * sr))
    t = np.arange(n) / sr
    h = rng.standard_normal(n).astype(np.float32) * np.exp(-6.9078 * t / rt60).astype(np.float32)
    pre = int(rng.uniform(0.002, 0.02) * sr)  # the first reflections arrive a little after the direct sound
    h[:pre] = 0
    h *= float(rng.uniform(0.2, 1.0)) / (np.sqrt((h**2).sum()) + 1e-9)  # direct-to-reverberant ratio
    h[0] = 1.0
    return h


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    w = rng.standard_normal(n)
    if rng.random() < 0.5:  # pink: 1/f power
        spec = np.fft.rfft(w)
        spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1))
        w = np.fft.irfft(spec, n=n)
    return (w / (w.std() + 1e-12)).astype(np.float32)


def surround_with_silence(x: np.ndarray, before: int, after: int, rng: np.random.Generator,
                          power: float | None = None, floor_db: float | None = None) -> np.ndarray:
    """``x`` with ``before`` and ``after`` samples of silence: digital zeros, or with ``floor_db``
    a noise floor (white or pink, :func:`_noise`) that many dB under ``power`` (default: the power
    of ``x``) over the whole result, the word included, as a microphone's own noise lies under it."""
    x = np.asarray(x, np.float32)
    y = np.concatenate([np.zeros(before, np.float32), x, np.zeros(after, np.float32)])
    if floor_db is not None and len(y):
        ref = float(np.mean(x**2)) if power is None else power
        y = y + _noise(len(y), rng) * np.float32(math.sqrt(ref / 10 ** (floor_db / 10)))
    return y.astype(np.float32)


# ---- procedural background beds: environmental sound made from the seed (no recordings) ------------

def _shaped(n: int, rng: np.random.Generator, exponent: float, lo_hz: float, sr: int) -> np.ndarray:
    """Noise with power falling as 1/f**exponent above ``lo_hz`` (flat below, no DC)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1.0 / sr), lo_hz)
    spec *= f ** (-exponent / 2)
    spec[0] = 0
    return np.fft.irfft(spec, n=n)


def _smooth_curve(n: int, every: int, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    """A slowly varying curve over ``n`` samples: random points in [lo, hi] ``every`` samples
    apart, joined by cosine steps."""
    pts = rng.uniform(lo, hi, size=n // max(1, every) + 2)
    t = np.arange(n) / max(1, every)
    i = t.astype(int)
    w = 0.5 - 0.5 * np.cos(np.pi * (t - i))
    return (1 - w) * pts[i] + w * pts[i + 1]


def _harmonics(n: int, f0: np.ndarray | float, amps: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """The sum of ``amps[k] * sin(k+1 times the phase of f0)`` (``f0`` constant or per sample), random
    phases, harmonics at or above the Nyquist frequency left out."""
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(np.asarray(f0, np.float64), (n,))) / sr
    top = float(np.max(f0))
    out = np.zeros(n)
    for k, a in enumerate(amps, start=1):
        if k * top < sr / 2:
            out += a * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return out


def _bed_hum(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum: 50 or 60 Hz, drifting slightly, with a buzz of odd and even harmonics."""
    f0 = (50.0 if rng.random() < 0.5 else 60.0) * (1 + 0.002 * _smooth_curve(n, sr // 2, -1, 1, rng))
    amps = rng.uniform(0.1, 1.0, 12) / np.arange(1, 13) ** rng.uniform(0.3, 1.5)
    y, hiss = _harmonics(n, f0, amps, sr, rng), _shaped(n, rng, 1.0, 20.0, sr)
    return y / (y.std() + 1e-12) + rng.uniform(0.01, 0.1) * hiss / (hiss.std() + 1e-12)


def _bed_rain(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Rain-like: many short decaying noise clicks (drops) at random times and strengths, high-passed,
    over a soft hiss."""
    from scipy.signal import butter, fftconvolve, sosfilt

    count = int(rng.uniform(300, 3000) * n / sr)
    drops = np.zeros(n)
    np.add.at(drops, rng.integers(0, n, count), rng.lognormal(0.0, 0.8, count) * rng.choice([-1.0, 1.0], count))
    k = max(8, int(rng.uniform(0.001, 0.005) * sr))
    kernel = rng.standard_normal(k) * np.exp(-np.arange(k) / (k / 4))
    y = sosfilt(butter(2, rng.uniform(400, 2000), "highpass", fs=sr, output="sos"), fftconvolve(drops, kernel)[:n])
    hiss = _shaped(n, rng, 1.0, 20.0, sr)
    return y / (y.std() + 1e-12) + rng.uniform(0.1, 0.5) * hiss / (hiss.std() + 1e-12)


def _bed_wind(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Wind: low-passed noise whose loudness swells and falls over a fraction of a second to seconds."""
    from scipy.signal import butter, sosfilt

    y = sosfilt(butter(2, rng.uniform(150, 800), "lowpass", fs=sr, output="sos"), _shaped(n, rng, 1.0, 20.0, sr))
    return y * _smooth_curve(n, int(rng.uniform(0.3, 1.5) * sr), 0.1, 1.0, rng)


def _bed_engine(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """An engine's low drone: a 20-70 Hz firing rate with many harmonics, wavering a little, and a
    pulsing low rumble."""
    from scipy.signal import butter, sosfilt

    f0 = rng.uniform(20, 70) * (1 + 0.03 * _smooth_curve(n, sr // 3, -1, 1, rng))
    y = _harmonics(n, f0, 1.0 / np.arange(1, 41) ** rng.uniform(0.8, 1.6), sr, rng)
    rumble = sosfilt(butter(2, rng.uniform(200, 600), "lowpass", fs=sr, output="sos"), rng.standard_normal(n))
    pulse = 1 + 0.5 * np.sin(2 * np.pi * np.cumsum(f0) / sr)
    return y / (y.std() + 1e-12) + rng.uniform(0.2, 1.0) * rumble * pulse / (rumble.std() + 1e-12)


def _bed_fan(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A fan or air conditioner: broadband band-passed noise with a steady blade-pass tone."""
    from scipy.signal import butter, sosfilt

    lo = rng.uniform(100, 600)
    y = sosfilt(butter(2, [lo, lo * rng.uniform(4, 12)], "bandpass", fs=sr, output="sos"), rng.standard_normal(n))
    tone = _harmonics(n, rng.uniform(80, 300), rng.uniform(0.2, 1.0, 3) / np.arange(1, 4), sr, rng)
    return y / (y.std() + 1e-12) + rng.uniform(0.1, 0.6) * tone / (tone.std() + 1e-12)


#: the procedural beds of the ``bed`` option, drawn with equal chance
BED_KINDS: dict[str, Any] = {
    "pink": lambda n, sr, rng: _shaped(n, rng, 1.0, 20.0, sr),  # broadband 1/f noise
    "brown": lambda n, sr, rng: _shaped(n, rng, 2.0, 20.0, sr),  # rumbling 1/f^2 noise
    "hum": _bed_hum,
    "rain": _bed_rain,
    "wind": _bed_wind,
    "engine": _bed_engine,
    "fan": _bed_fan,
}


def procedural_bed(n: int, sr: int, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """``n`` samples of a background sound made from ``rng`` alone (``kind``: one of
    :data:`BED_KINDS`, default drawn), float32 with unit RMS."""
    if kind is None:
        kind = list(BED_KINDS)[int(rng.integers(len(BED_KINDS)))]
    if n < 1:
        return np.zeros(max(0, n), np.float32)
    y = np.asarray(BED_KINDS[kind](max(n, 64), sr, rng), np.float64)[:n]
    return (y / (np.sqrt(np.mean(y**2)) + 1e-12)).astype(np.float32)


def augment_audio(x: np.ndarray, aug: Augment, rng: random.Random, sr: int = 16000) -> np.ndarray:
    """Apply the drawn audio options to a mono float waveform at ``sr`` (a new array)."""
    from scipy.signal import butter, fftconvolve, sosfilt

    x = np.asarray(x, dtype=np.float32)
    nrng = np.random.default_rng(rng.getrandbits(64))  # drawn every time: one op's use never shifts another's
    power = None
    for name, (p, lo, hi) in aug.ops.items():
        if rng.random() >= p:
            continue
        v = _draw(rng, lo, hi)
        if name == "speed":
            x = _resample(x, sr * v, sr)
        elif name == "pitch":
            x = pitch_shift(x, v, sr)
        elif name == "crop":
            keep = max(1, int(round(len(x) * v)))
            start = rng.randint(0, len(x) - keep)
            x = x[start: start + keep]
        elif name == "reverb":
            y = fftconvolve(x, room_impulse(v, sr, nrng))[: len(x) + int(v * sr / 2)]
            x = (y * (np.abs(x).max() / (np.abs(y).max() + 1e-9))).astype(np.float32)
        elif name == "lowpass":
            if v < sr / 2:
                x = sosfilt(butter(4, v, "lowpass", fs=sr, output="sos"), x).astype(np.float32)
        elif name == "envelope":
            x = gain_envelope(x, v, sr, nrng)
        elif name == "tilt":
            x = spectral_tilt(x, v, sr)
        elif name == "pad":
            power = float(np.mean(x**2)) if power is None else power  # noise SNR: of the speech, not the silence
            total = int(v * sr)
            before = rng.randint(0, total)
            x = np.concatenate([np.zeros(before, np.float32), x, np.zeros(total - before, np.float32)])
        elif name == "silence":
            power = float(np.mean(x**2)) if power is None else power
            total = int(v * sr)
            before = rng.randint(0, total)
            floor_db = rng.uniform(40.0, 70.0) if rng.random() < 0.5 else None  # drawn alike every time
            x = surround_with_silence(x, before, total - before, nrng, power, floor_db)
        elif name == "bed":
            ref = float(np.mean(x**2)) if power is None else power
            x = x + procedural_bed(len(x), sr, nrng) * np.float32(math.sqrt(ref / 10 ** (v / 10)))
        elif name == "telephone":
            y = _resample(_resample(x, sr, 8000), 8000, sr)
            y = np.pad(y, (0, max(0, len(x) - len(y))))[: len(x)]
            x = sosfilt(butter(2, 300, "highpass", fs=sr, output="sos"), y).astype(np.float32)
        elif name == "noise":
            ref = float(np.mean(x**2)) if power is None else power
            x = x + _noise(len(x), nrng) * np.float32(math.sqrt(ref / 10 ** (v / 10)))
        elif name == "gain":
            x = x * np.float32(10 ** (v / 20))
    return np.ascontiguousarray(x, dtype=np.float32)


# ---- images --------------------------------------------------------------------------------------

def augment_image(img: Image.Image, aug: Augment, rng: random.Random, sr: int = 0) -> Image.Image:
    """Apply the drawn image options to a PIL image (a new image, same size and mode): stroke
    width, then scale, rotation and shift as one affine map (the uncovered canvas filled with the
    typical border colour), then low resolution, blur, contrast and inversion."""
    from PIL import ImageEnhance, ImageFilter, ImageOps

    mode = img.mode
    img = img if mode in ("L", "RGB") else img.convert("RGB")
    w, h = img.size
    drawn = {}
    for name, (p, lo, hi) in aug.ops.items():  # draw everything first, in a fixed order
        if rng.random() < p:
            drawn[name] = ((_draw(rng, lo, hi), _draw(rng, lo, hi)) if name == "shift"
                           else _draw(rng, lo, hi, IMAGE_OPS[name].integer))
    if drawn.get("stroke"):
        k = 2 * int(abs(drawn["stroke"])) + 1
        img = img.filter(ImageFilter.MaxFilter(k) if drawn["stroke"] > 0 else ImageFilter.MinFilter(k))
    if {"scale", "rotate", "shift"} & drawn.keys():
        a = np.asarray(img)
        edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).reshape(-1, 1 if a.ndim == 2 else a.shape[2])
        fill = tuple(int(v) for v in np.median(edge, axis=0))
        s = drawn.get("scale", 1.0)
        fx, fy = drawn.get("shift", (0.0, 0.0))
        # PIL's affine maps output to input pixels: the inverse of scale-about-centre then shift
        inv = 1.0 / s
        cx, cy = w / 2, h / 2
        img = img.transform((w, h), Image.AFFINE, (inv, 0, cx - inv * (cx + fx * w), 0, inv, cy - inv * (cy + fy * h)),
                            Image.BILINEAR, fillcolor=fill[0] if img.mode == "L" else fill)
        if drawn.get("rotate"):
            img = img.rotate(drawn["rotate"], Image.BILINEAR, fillcolor=fill[0] if img.mode == "L" else fill)
    if "lowres" in drawn:
        v = drawn["lowres"]
        img = img.resize((max(1, round(w * v)), max(1, round(h * v))), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    if "blur" in drawn:
        img = img.filter(ImageFilter.GaussianBlur(drawn["blur"]))
    if "contrast" in drawn:
        img = ImageEnhance.Contrast(img).enhance(drawn["contrast"])
    if "invert" in drawn:
        img = ImageOps.invert(img)
    return img if img.mode == mode else img.convert(mode)
