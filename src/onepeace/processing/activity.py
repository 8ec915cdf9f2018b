"""Where the sound is: onsets and offsets of activity in a recording (words, events), so that
windows can follow them (:mod:`onepeace.inference.moments`, ``segment="onsets"``).

Two steps, so that a long file is read as a stream and only its small envelope is kept:

1. :func:`envelope`: from a stream of mono blocks, one row per ``hop`` (10 ms) of the energy in
   ``bands`` log-spaced frequency bands (dB, over a ``frame`` of 20 ms with a Hann window): 16
   values per 10 ms, float16 (an hour is about 11 MB).
2. :func:`detect_activity`: the segments where the sound stands out of the recording's own
   background, scored :data:`CHUNK_ROWS` envelope rows (a minute) at a time, so that besides the
   envelope only a few values per row are held.

   * **Adaptive noise floor**: per band, the 10th percentile of its (lightly smoothed) energy in
     pieces of about ``floor_block`` seconds, interpolated between their centres: the floor follows
     a background that changes along an hour, and a steady hum or a noise bed is the floor in its
     own bands. The band's *spread* (its median minus that floor) says how much its background
     wavers (a band of a few FFT bins wavers more). Never below ``floor_range`` dB under the
     loudest band energy (digital silence).
   * **Scores** per frame: *broad*, the mean over bands of the energy above the floor in dB (a
     noise burst, a voice: every band rises a little), *peak*, the largest band's excess in spreads
     of its background (a tone or a whistle over a broadband bed: one band rises a lot), and the
     *spectral flux*, the mean positive change of the band energies from one frame to the next (a
     sudden event).
   * **Thresholds** from the scores' own background level and spread (their 25th and 5th
     percentiles): ``on`` and ``off`` are that level plus ``max(*_db, k * spread)``.
   * **Hysteresis**: a segment is a run of frames over an ``off`` threshold that holds at least one
     frame over an ``on`` threshold (or, within the run, a flux onset or a band ``band_on_db`` over
     its floor); so it starts and ends where the sound leaves the background, not where it is
     loudest.
   * Segments closer than ``min_gap`` are merged, shorter than ``min_duration`` dropped, then
     widened by ``pad`` on each side (within the recording).
   * **Inner segments** (``nested=True``, as the moment windows use it): over a bed of real sound
     (a dog, rain, a chainsaw) much of a recording is active, and a word inside seconds of bed is
     one stretch with it. A stretch of at least ``nest_min`` is segmented again against its *own*
     level: per row the level (its power in dB) over the stretch's median level (in
     ~``floor_block`` s pieces, interpolated); a run over ``nest_off_db`` that holds a row
     ``nest_on_db`` over it is a segment too (merged, dropped and padded as above), and so on
     ``nest_depth`` levels down. A steady stretch has none; the stretch stays a segment.

Times are in seconds from the recording's start; a frame ``t`` covers ``[t * hop, t * hop +
frame)`` and stands for its centre, so an onset or offset is placed within about ``frame / 2 +
1.5 hop`` of the truth (plus the ``pad``; tests/test_activity.py checks 3 hops).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class ActivityOptions:
    """The detector's settings (see the module docstring); the defaults suit speech and sound events."""

    hop: float = 0.01  # seconds between envelope rows
    frame: float = 0.02  # seconds of sound each row measures
    bands: int = 16  # log-spaced frequency bands
    low_hz: float = 60.0  # lowest band edge
    smooth: int = 3  # rows averaged (centred) before scoring
    floor_block: float = 5.0  # seconds per noise-floor block (the floor is interpolated between their centres)
    floor_percentile: float = 10.0
    floor_range: float = 90.0  # dB: the floor is never lower than the loudest band minus this
    min_spread: float = 0.5  # dB: the least spread a band's background is given
    broad_on_db: float = 2.5  # the mean over bands of the energy over the floor (dB)
    broad_off_db: float = 1.25
    peak_on: float = 4.0  # the largest band's energy over its floor, in spreads of its background
    peak_off: float = 2.0
    band_on_db: float = 15.0  # a band this far over its floor starts a segment (a few bins' noise never is)
    flux_on_db: float = 3.0
    spread_on: float = 6.0  # thresholds are at least this many spreads over the background level
    spread_off: float = 3.0
    min_gap: float = 0.1  # seconds: closer segments merge
    min_duration: float = 0.05  # seconds: shorter segments are dropped
    pad: float = 0.05  # seconds added on each side
    nest_min: float = 0.5  # seconds: a stretch this long is segmented again against its own level
    nest_on_db: float = 8.0  # an inner segment holds a frame this far over its stretch's median level
    nest_off_db: float = 4.0  # and ends where the level falls under its stretch's median plus this
    nest_depth: int = 2  # levels of inner segments (inside a stretch, inside those)


@dataclass
class Envelope:
    """Band energies in dB, ``db[t, b]`` for the frame starting at ``t * hop`` seconds."""

    db: np.ndarray  # [frames, bands] float16
    hop: float
    frame: float
    duration: float  # seconds of sound the envelope was made from
    widths: np.ndarray | None = None  # FFT bins per band (None: equal), to weigh a row's level by


def _band_edges(n_fft: int, sample_rate: int, bands: int, low_hz: float) -> np.ndarray:
    """FFT-bin edges of ``bands`` log-spaced bands from ``low_hz`` to Nyquist, each at least one bin."""
    top = n_fft // 2 + 1
    lo = max(1, int(round(low_hz * n_fft / sample_rate)))
    edges = np.round(np.geomspace(lo, top, bands + 1)).astype(int)
    for i in range(1, len(edges)):
        edges[i] = max(edges[i], edges[i - 1] + 1)
    return np.minimum(edges, top + bands)  # (past Nyquist only when there are more bands than bins)


def envelope(blocks: Iterable[np.ndarray], sample_rate: int, options: ActivityOptions | None = None) -> Envelope:
    """The band-energy envelope of a stream of mono float blocks at ``sample_rate`` (see the module
    docstring); only one frame of sound is carried from one block to the next."""
    o = options or ActivityOptions()
    hop, frame = int(round(o.hop * sample_rate)), int(round(o.frame * sample_rate))
    if hop < 1 or frame < hop:
        raise InputError(f"activity hop {o.hop} s and frame {o.frame} s do not fit a {sample_rate} Hz recording")
    n_fft = 1 << max(frame - 1, 1).bit_length()
    edges = _band_edges(n_fft, sample_rate, o.bands, o.low_hz)
    window = np.hanning(frame + 2)[1:-1].astype(np.float32)
    carry = np.zeros(0, np.float32)
    rows, total = [], 0
    for block in blocks:
        total += block.size
        x = np.concatenate([carry, np.asarray(block, np.float32)])
        count = (x.size - frame) // hop + 1 if x.size >= frame else 0
        if count:
            idx = np.arange(frame)[None, :] + hop * np.arange(count)[:, None]
            spec = np.abs(np.fft.rfft(x[idx] * window, n_fft)) ** 2
            padded = np.pad(spec, ((0, 0), (0, max(0, edges[-1] - spec.shape[1]))))
            power = np.add.reduceat(padded, edges[:-1], axis=1) / np.diff(edges)
            rows.append((10 * np.log10(power + 1e-20)).astype(np.float16))
        carry = x[count * hop :]
    if total and not rows:  # shorter than one frame: the frame zero-padded
        x = np.pad(carry, (0, frame - carry.size)) * window
        power = np.add.reduceat(np.abs(np.fft.rfft(x, n_fft)) ** 2, edges[:-1]) / np.diff(edges)
        rows.append((10 * np.log10(power + 1e-20)).astype(np.float16)[None])
    db = np.concatenate(rows) if rows else np.zeros((0, o.bands), np.float16)
    return Envelope(db, hop / sample_rate, frame / sample_rate, total / sample_rate, np.diff(edges).astype(np.float64))


def _smoothed_db(db: np.ndarray, a: int, b: int, size: int) -> np.ndarray:
    """Rows ``a:b`` of the band energies in dB after a centred moving average of ``size`` rows of
    their power (edges repeated), float32, made from those rows and ``size - 1`` around them only:
    any stretch of an hour comes out the same, to the last bit, whichever piece it is made in (a
    running sum over the whole recording would lose a quiet stretch's power after a loud one)."""
    left = (size - 1) // 2
    rows = np.clip(np.arange(a - left, b + size - 1 - left), 0, db.shape[0] - 1)
    power = 10 ** (db[rows].astype(np.float32) / 10)
    total = np.zeros((b - a, db.shape[1]), np.float64)
    for k in range(size):
        total += power[k : k + b - a]
    return 10 * np.log10((total / size).astype(np.float32) + np.float32(1e-20))


def _floor_points(db: np.ndarray, o: ActivityOptions, hop: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The noise floor's points (see the module docstring): the centres of ~``floor_block`` s
    pieces, per piece and band the ``floor_percentile`` and median of the smoothed energy
    ([pieces, 2, bands]), and the loudest smoothed band energy. Piece by piece: a few seconds
    of envelope held at a time."""
    n = db.shape[0]
    count = max(1, int(round(n * hop / o.floor_block)))
    edges = [i * (n // count) + min(i, n % count) for i in range(count + 1)]  # as np.array_split cuts
    centres, per, top = [], [], -np.inf
    for a, b in zip(edges[:-1], edges[1:]):
        s = _smoothed_db(db, a, b, max(1, o.smooth))
        per.append(np.percentile(s, [o.floor_percentile, 50], axis=0))
        centres.append((a + b - 1) / 2)
        top = max(top, float(s.max()))
    return np.array(centres), np.stack(per), top


#: envelope rows scored at a time (60 s): what :func:`activity_frames` holds besides one value per row
CHUNK_ROWS = 6000


def _scores(env: Envelope, o: ActivityOptions) -> tuple[np.ndarray, ...]:
    """Per envelope row: the *broad* and *peak* scores, the spectral *flux*, whether a band is
    ``band_on_db`` over its floor (see the module docstring) and the level (dB of the power, bands weighed by their widths), computed :data:`CHUNK_ROWS` rows at
    a time (an hour of envelope is 11 MB; its per-band floors, scores and differences in float64
    would be twenty times that)."""
    db, n = env.db, env.db.shape[0]
    centres, per, top = _floor_points(db, o, env.hop)
    lowest = top - o.floor_range
    weights = np.ones(db.shape[1]) if env.widths is None else np.asarray(env.widths, np.float64)
    weights = weights / weights.sum()  # a row's level: its power, the bands weighed by their widths
    broad, peak, flux, level = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n, np.float32)
    loud = np.zeros(n, bool)
    for a in range(0, n, CHUNK_ROWS):
        b = min(n, a + CHUNK_ROWS)
        s = _smoothed_db(db, max(0, a - 1), b, max(1, o.smooth))  # and the row before, for the flux
        rows = np.arange(a, b)
        floor = np.stack([np.interp(rows, centres, per[:, 0, j]) for j in range(db.shape[1])], axis=1)
        spread = np.stack([np.interp(rows, centres, per[:, 1, j] - per[:, 0, j]) for j in range(db.shape[1])],
                          axis=1)
        excess = np.maximum(s[s.shape[0] - (b - a) :] - np.maximum(floor, lowest), 0.0)
        broad[a:b] = excess.mean(axis=1)
        peak[a:b] = (excess / np.maximum(spread, o.min_spread)).max(axis=1)
        loud[a:b] = excess.max(axis=1) >= o.band_on_db
        diff = np.maximum(np.diff(s, axis=0), 0.0).mean(axis=1)
        flux[b - diff.size : b] = diff  # row 0 has no row before it: 0
        level[a:b] = 10 * np.log10(10 ** (s[s.shape[0] - (b - a) :] / 10) @ weights + 1e-20)
    return broad, peak, flux, loud, level


def _thresholds(x: np.ndarray, on_db: float, off_db: float, o: ActivityOptions) -> tuple[float, float]:
    """(on, off) for a score: its background level (25th percentile) plus the larger of the
    fixed margin and a multiple of its spread (25th minus 5th percentile, about one standard
    deviation of a Gaussian background)."""
    p5, p25 = np.percentile(x, [5, 25])
    spread = max(float(p25 - p5), 1e-3)
    return float(p25 + max(on_db, o.spread_on * spread)), float(p25 + max(off_db, o.spread_off * spread))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index ranges where ``mask`` holds."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def _frames(env: Envelope, o: ActivityOptions) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The active runs (see :func:`activity_frames`) and every row's level (dB of its power)."""
    broad, peak, flux, loud, level = _scores(env, o)
    b_on, b_off = _thresholds(broad, o.broad_on_db, o.broad_off_db, o)
    p_on, p_off = _thresholds(peak, o.peak_on, o.peak_off, o)
    f_on, _ = _thresholds(flux, o.flux_on_db, 0.0, o)
    sustain = (broad >= b_off) | (peak >= p_off)
    # ``loud``: a band far over its floor, however noisy the band
    core = (broad >= b_on) | (peak >= p_on) | ((loud | (flux >= f_on)) & sustain)
    return [(a, b) for a, b in _runs(sustain) if core[a:b].any()], level


def activity_frames(env: Envelope, options: ActivityOptions | None = None) -> list[tuple[int, int]]:
    """The runs of active envelope rows ``[first, stop)`` (hysteresis, before merging and padding)."""
    o = options or ActivityOptions()
    if env.db.shape[0] == 0:
        return []
    return _frames(env, o)[0]


def _stretch_level(level: np.ndarray, hop: float, o: ActivityOptions) -> np.ndarray:
    """A stretch's own level per row: the median of its rows' levels in pieces of about
    ``floor_block`` seconds, interpolated between their centres (a long stretch, a conversation
    or an hour of traffic, has a level that changes)."""
    n = level.size
    count = max(1, int(round(n * hop / o.floor_block)))
    edges = [i * (n // count) + min(i, n % count) for i in range(count + 1)]
    centres = [(a + b - 1) / 2 for a, b in zip(edges[:-1], edges[1:])]
    medians = [float(np.median(level[a:b])) for a, b in zip(edges[:-1], edges[1:])]
    return np.interp(np.arange(n), centres, medians)


def inner_frames(level: np.ndarray, a: int, b: int, hop: float,
                 options: ActivityOptions | None = None) -> list[tuple[int, int]]:
    """The louder events inside the active stretch ``[a, b)`` of rows: runs over the stretch's own
    level (:func:`_stretch_level`) plus ``nest_off_db`` that hold a row ``nest_on_db`` over it,
    so a word over a dog's barking or the rain is found apart from the stretch around it. None
    in a stretch shorter than ``nest_min``; a run as long as the stretch is not repeated."""
    o = options or ActivityOptions()
    if (b - a) * hop < o.nest_min:
        return []
    x = level[a:b].astype(np.float64) - _stretch_level(level[a:b], hop, o)
    on = x >= o.nest_on_db
    runs = [(a + i, a + j) for i, j in _runs(x >= o.nest_off_db) if on[i:j].any()]
    return [r for r in runs if r != (a, b)]


def _merged(runs: list[tuple[int, int]], env: Envelope, o: ActivityOptions) -> list[tuple[int, int, float, float]]:
    """Runs of rows merged when closer than ``min_gap``: ``(first, stop, start, end)``, rows and
    seconds (a row stands for its frame's centre, see the module docstring)."""
    segs: list[list] = []
    for a, b in runs:
        start = max(0.0, a * env.hop + env.frame / 2 - env.hop / 2)
        end = min(env.duration, (b - 1) * env.hop + env.frame / 2 + env.hop / 2)
        if segs and start - segs[-1][3] < o.min_gap:
            segs[-1][1], segs[-1][3] = b, max(segs[-1][3], end)
        else:
            segs.append([a, b, start, end])
    return [(a, b, s, e) for a, b, s, e in segs]


def _nested(level: np.ndarray, stretch: tuple[int, int], env: Envelope, o: ActivityOptions,
            depth: int) -> list[tuple[int, int, float, float]]:
    """The merged inner segments of a stretch of rows, and theirs in turn, ``depth`` levels down."""
    if depth < 1:
        return []
    out = []
    for seg in _merged(inner_frames(level, *stretch, env.hop, o), env, o):
        out += [seg, *_nested(level, seg[:2], env, o, depth - 1)]
    return out


def detect_activity(env: Envelope, options: ActivityOptions | None = None, *,
                    pad: float | None = None, nested: bool = False) -> list[tuple[float, float]]:
    """Segments ``(start, end)`` in seconds where the recording is active, in order (see the module
    docstring); ``pad`` overrides the options' padding. ``nested``: besides each stretch, the
    louder events inside it (:func:`inner_frames`, and inside those, ``nest_depth`` levels) as
    segments of their own, sorted in with the stretches (a segment may then lie inside another)."""
    o = options or ActivityOptions()
    pad = o.pad if pad is None else pad
    if env.db.shape[0] == 0:
        return []
    runs, level = _frames(env, o)
    segs = _merged(runs, env, o)
    if nested:
        segs += [x for seg in segs for x in _nested(level, seg[:2], env, o, o.nest_depth)]
    out = {(max(0.0, s - pad), min(env.duration, e + pad)) for _, _, s, e in segs if e - s >= o.min_duration}
    return sorted(out)


def find_activity(wave: np.ndarray, sample_rate: int, options: ActivityOptions | None = None, *,
                  pad: float | None = None, nested: bool = False) -> list[tuple[float, float]]:
    """:func:`detect_activity` of a waveform held in memory (mono float)."""
    a = np.asarray(wave, np.float32)
    if a.ndim != 1:
        raise InputError(f"find_activity takes a mono waveform [samples], got shape {a.shape}")
    return detect_activity(envelope([a], sample_rate, options), options, pad=pad, nested=nested)


__all__ = ["ActivityOptions", "Envelope", "activity_frames", "detect_activity", "envelope", "find_activity",
           "inner_frames"]
