"""Timestamped window embeddings of long audio and video: where in a file something happens.

``embed_windows(model, audio=[...], video=[...], window=, hop=, segment=)`` (also
:meth:`onepeace.OnePeace.embed_windows`) returns, per file, a :class:`WindowEmbeddings`: the
windows' start and end times (seconds) and their embeddings. :func:`iter_window_batches` streams
one file's windows in batches (what an index build writes as it goes).

* A **window** is a time range ``[start, end)`` in seconds of one file. Its embedding is exactly
  what ``model.embed(audio=[cut])`` gives for the clip cut out of the file over that range (the
  cut normalised with its own statistics, tiled under the processor's ``min_seconds``, as a short
  clip is); for video, what ``model.embed(video=[clip])`` gives for the frames whose timestamps
  fall in the range (``frames`` of them sampled, resized as the processor resizes) and, when the
  video branch decodes sound (its ``audio`` option), the sound over the range. So a window's vector
  lives in the same space as any other clip's and a text query finds it.
* **Fixed windows** (``segment="fixed"``): ``window`` seconds every ``hop`` seconds from 0 while
  they fit, then one more ending at the file's end (``[duration - window, duration)``) unless the
  tail left is at most :data:`TAIL` (10 ms: no near copy of the window before), so every window
  is whole and every instant is in one (:func:`onepeace.processing.stream.plan_windows`;
  HEAR's timestamp embeddings use the same rule with ``last="cut"``). A file shorter than one
  window is one window, the whole file. Defaults: :data:`DEFAULT_WINDOWS`; a ``window`` alone hops
  half of it.
* **Activity windows** (``segment="onsets"``): one window per stretch of activity found on the
  sound (:mod:`onepeace.processing.activity`: band energy over the recording's own noise floor,
  spectral flux, hysteresis, a minimum gap and duration, 50 ms of padding), and one per louder
  event inside a stretch (a word over a barking dog: segmented again against the stretch's own
  level, two levels down), a stretch longer than ``window`` cut into windows as above. A stretch shorter than the processor's ``min_seconds`` is
  not widened with its surroundings: it is tiled, as a short clip is (a word is embedded as the
  model saw words in training, not with the silence around it). A recording with no activity has
  no such windows. ``segment="both"``: the union of the two sets (``kind`` says which each is).
  A video's activity is its sound track's; a video without one gets fixed windows and a
  ``problems`` line.
* **Limits** (:func:`check_windows`, one :class:`~onepeace.errors.InputError` line each): window
  and hop are positive finite numbers of seconds; the window at most what the branch takes in one
  pass (audio: the processor's ``max_seconds``, 15 s for the official models; video:
  :data:`MAX_VIDEO_WINDOW`, or the audio cap when the branch decodes sound) and at least what the
  audio stem reads for one frame; the hop at least :data:`MIN_HOP` and at most the window (a
  longer hop leaves gaps no window covers, never searched).
* **Streamed decoding** (:mod:`onepeace.processing.stream`): audio block by block (soundfile, or
  PyAV for what libsndfile does not read), video frame by frame with each frame's own timestamp
  (a variable frame rate is timed right), frames reduced to the model's size as they arrive; only
  the windows in flight are held, so a 1-hour file is embedded in bounded memory. Activity windows
  read the sound twice: once for the envelope (16 values per 10 ms), once to cut the windows.
* **Damage**: a truncated or corrupt file keeps the windows before the damage; ``problems`` says
  where decoding stopped. A video whose branch wants its sound but that has no audio track is
  embedded from its frames alone, with a ``problems`` line. A file with nothing decodable (empty,
  not a media file) is one :class:`~onepeace.errors.DecodeError` line.
* **Batching**: the windows of all files are pooled and embedded as
  :func:`onepeace.inference.embed` embeds clips (audio: up to ``SORT_WINDOW * batch_size`` at a
  time, sorted by length into sub-batches without padding).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import progress as _progress
from ..errors import InputError
from ..processing.activity import detect_activity, envelope
from ..processing.audio import stem_samples
from ..processing.stream import AudioBlocks, Span, VideoFrames, cut_audio, cut_video, plan_windows
from ..processing.video import Clip
from .embedding import SORT_WINDOW, as_list, embed_sorted

#: default (window, hop) in seconds per modality
DEFAULT_WINDOWS: dict[str, tuple[float, float]] = {"audio": (2.0, 1.0), "video": (4.0, 2.0)}
SEGMENTS = ("fixed", "onsets", "both")
#: the shortest hop, seconds (one row of the activity envelope)
MIN_HOP = 0.01
#: seconds: a file's tail after its last whole fixed window gets a window of its own only when
#: longer than this (5.001 s in 2 s windows every 1 s: [3, 5) is the last, not also [3.001, 5.001))
TAIL = 0.01
#: the longest video window, seconds: its frames at the model's size are held until it is cut
MAX_VIDEO_WINDOW = 60.0
#: microseconds per second: video windows are planned in whole microseconds
_US = 1_000_000


@dataclass
class WindowEmbeddings:
    """The windows of one file: ``embeddings[i]`` covers ``start[i]`` to ``end[i]`` seconds."""

    modality: str
    name: str  # the file, as errors name it
    start: np.ndarray  # [W] float64 seconds
    end: np.ndarray  # [W] float64 seconds
    embeddings: torch.Tensor  # [W, D] float32 (unit rows when normalize)
    duration: float  # seconds decoded
    #: what went wrong, one line each (e.g. "decoding stopped at 61.0 s of 3600.0 s: truncated"):
    #: the windows up to the damage are kept, the rest reported here
    problems: list[str] = field(default_factory=list)
    #: "fixed" or "onsets" per window
    kind: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.start)


@dataclass
class WindowBatch:
    """Some consecutive windows of one file, embedded (what :func:`iter_window_batches` yields)."""

    start: np.ndarray
    end: np.ndarray
    kind: list[str]
    embeddings: torch.Tensor


@dataclass
class _Window:
    """One window ready for its branch: its time range, kind and the processor's sample."""

    start: float
    end: float
    kind: str
    sample: Any
    #: windows of one group collate together (video: with or without their sound)
    group: bool = False


@dataclass
class _FileState:
    """What decoding one file told besides its windows."""

    name: str = ""
    duration: float = 0.0
    problems: list[str] = field(default_factory=list)


def _seconds(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{what} must be a number of seconds, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{what} must be a positive number of seconds, got {value!r}")
    return v


def check_windows(modality: str, window: float | None, hop: float | None, segment: str = "fixed", *,
                  max_seconds: float | None = None, min_seconds: float | None = None) -> tuple[float, float]:
    """The (window, hop) to use (defaults from :data:`DEFAULT_WINDOWS`), or one InputError line.

    A window is a positive number of seconds, at most ``max_seconds`` (what the branch takes in
    one pass: the audio processor's cap; :data:`MAX_VIDEO_WINDOW` for video) and at least
    ``min_seconds`` (what the audio stem reads for one frame); the hop is at least
    :data:`MIN_HOP` and at most the window (a longer hop would leave gaps no window covers, never
    searched)."""
    if modality not in DEFAULT_WINDOWS:
        raise InputError(f"windows are for {' and '.join(DEFAULT_WINDOWS)}, not {modality!r}")
    if segment not in SEGMENTS:
        raise InputError(f"segment must be one of {', '.join(SEGMENTS)}, got {segment!r}")
    dw, dh = DEFAULT_WINDOWS[modality]
    w = dw if window is None else _seconds("window", window)
    h = (dh if window is None else w / 2) if hop is None else _seconds("hop", hop)
    cap = MAX_VIDEO_WINDOW if max_seconds is None and modality == "video" else max_seconds
    if cap is not None and w > cap + 1e-9:
        raise InputError(f"window {w:g} s is longer than the {cap:g} s the {modality} branch takes in one pass; "
                         f"give a window of at most {cap:g} s")
    if min_seconds is not None and w < min_seconds:
        raise InputError(f"window {w:g} s is shorter than the {min_seconds:g} s the {modality} branch needs")
    if w < MIN_HOP:
        raise InputError(f"window {w:g} s is shorter than {MIN_HOP:g} s")
    if h < MIN_HOP:
        half = " (half the window)" if hop is None and window is not None else ""
        raise InputError(f"hop {h:g} s{half} is shorter than {MIN_HOP:g} s")
    if h > w + 1e-9:
        raise InputError(f"hop {h:g} s is longer than the window {w:g} s: the {h - w:g} s between windows would "
                         "never be searched; give a hop of at most the window")
    return w, h


def _checked(model: Any, modality: str, window: float | None, hop: float | None, segment: str) -> tuple[float, float]:
    """check_windows with the limits of ``model``'s branch (an InputError if it has none)."""
    if modality not in DEFAULT_WINDOWS:
        raise InputError(f"windows are for {' and '.join(DEFAULT_WINDOWS)}, not {modality!r}")
    if modality not in model.modality_names:
        raise InputError(f"this model has no {modality} branch; it has {', '.join(model.modality_names)}")
    proc = model.processor.get(modality)
    if modality == "audio":
        sr = proc.sample_rate
        return check_windows(modality, window, hop, segment, max_seconds=proc.max_samples / sr,
                             min_seconds=stem_samples(1, proc.stem) / sr)
    sound = getattr(proc, "audio", False) and getattr(proc, "audio_processor", None) is not None
    cap = min(MAX_VIDEO_WINDOW, proc.audio_processor.max_samples / proc.sample_rate) if sound else None
    return check_windows(modality, window, hop, segment, max_seconds=cap)


# --------------------------------------------------------------------------- which windows
def _activity_spans(segments: list[tuple[float, float]], total: int, w: int, h: int, segment: str,
                    per_second: float, slack: int) -> list[tuple[int, int, str]]:
    """Windows in integer units (``per_second`` a second) for the activity ``segments``: a stretch
    longer than the window is cut into windows of :func:`plan_windows`; with ``segment="both"``
    the fixed windows of the whole file too. Sorted by start, each once (an inner segment's window
    may be one of its stretch's)."""
    spans: list[tuple[int, int, str]] = []
    for s, e in segments:
        a, b = round(s * per_second), min(total, round(e * per_second))
        if b > a:
            spans += [(a + x, a + y, "onsets") for x, y in plan_windows(b - a, w, h, slack=slack)]
    if segment == "both" and total > 0:
        spans += [(x, y, "fixed") for x, y in plan_windows(total, w, h, slack=slack)]
    return sorted(set(spans))


def _audio_windows(model: Any, item: Any, window: float, hop: float, segment: str,
                   skip: Callable | None, state: _FileState) -> Iterator[_Window]:
    proc = model.processor.get("audio")
    sr = proc.sample_rate
    blocks = AudioBlocks(item, sr)
    state.name = blocks.name
    w, h = round(window * sr), round(hop * sr)
    spans = None
    if segment != "fixed":  # pass 1: the envelope (one row per 10 ms), then the windows it gives
        env = envelope(blocks, sr)
        segs = detect_activity(env, nested=True)
        spans = [Span(a, b, k) for a, b, k in _activity_spans(segs, blocks.samples, w, h, segment, sr, round(TAIL * sr))]
    for span, cut in cut_audio(blocks, w, h, spans, slack=round(TAIL * sr)):
        start, end = span.start / sr, span.end / sr
        if skip is not None and skip(start, end, span.kind):
            continue
        # exactly what embed(audio=[(cut, sr)]) makes of the clip: normalised alone, tiled under min_seconds
        yield _Window(start, end, span.kind, proc.windows((cut, sr))[0][0])
    state.duration, state.problems = blocks.seconds, list(blocks.problems)


def _video_activity(item: Any, sr: int, window: float, hop: float, segment: str,
                    state: _FileState) -> list[Span] | None:
    """The activity windows of a video's sound (pass 1), or None (fixed windows, with a problem
    line) when it has no sound to follow."""
    if isinstance(item, tuple):
        state.problems.append(f"video {state.name} is decoded frames with no sound: fixed windows instead of "
                              f"segment={segment!r}")
        return None
    try:
        blocks = AudioBlocks(item, sr, video_time=True)  # the sound as it plays with the frames
        env = envelope(blocks, sr)
    except InputError as e:
        if "no audio track" not in str(e):
            raise
        state.problems.append(f"video {state.name} has no audio track to find onsets in: fixed windows instead of "
                              f"segment={segment!r}")
        return None
    total = round(blocks.seconds * _US)
    spans = _activity_spans(detect_activity(env, nested=True), total, round(window * _US), round(hop * _US), segment,
                            _US, round(TAIL * _US))
    return [Span(a / _US, b / _US, k) for a, b, k in spans]


def _video_windows(model: Any, item: Any, window: float, hop: float, segment: str,
                   skip: Callable | None, state: _FileState) -> Iterator[_Window]:
    proc = model.processor.get("video")
    sound = bool(getattr(proc, "audio", False)) and getattr(proc, "audio_processor", None) is not None
    sr = proc.sample_rate
    frames = VideoFrames(item, proc.image_size, sample_rate=sr if sound else None)
    state.name = frames.name
    spans = _video_activity(item, sr, window, hop, segment, state) if segment != "fixed" else None
    for cut in cut_video(frames, window, hop, spans, sr if sound else None, slack=TAIL):
        span = cut.span
        if skip is not None and skip(span.start, span.end, span.kind):
            continue
        with_sound = sound and frames.has_audio
        wave = None
        if with_sound:  # the sound over the window, silence where the track ended early
            want = max(1, round((span.end - span.start) * sr))
            got = cut.sound if cut.sound is not None else np.zeros(0, np.float32)
            wave = np.pad(got, (0, max(0, want - got.size)))
        clip = Clip(cut.frames, len(cut.frames), 0.0, wave, sr, frames.name)
        # exactly what embed(video=[clip]) makes of the window's frames (T of them sampled, resized)
        yield _Window(span.start, span.end, span.kind, proc.sample(clip, audio=with_sound), with_sound)
    state.duration = frames.duration
    state.problems += frames.problems
    if sound and not frames.has_audio:
        state.problems.append(f"video {frames.name} has no audio track: its windows are embedded from the frames "
                              "alone")


def _windows(model: Any, modality: str, item: Any, window: float, hop: float, segment: str,
             skip: Callable | None, state: _FileState) -> Iterator[_Window]:
    make = _audio_windows if modality == "audio" else _video_windows
    return make(model, item, window, hop, segment, skip, state)


# --------------------------------------------------------------------------- embedding them
def _embed_samples(model: Any, modality: str, samples: list[Any], normalize: bool, batch_size: int) -> torch.Tensor:
    """Window samples of one branch embedded as :func:`onepeace.inference.embed` embeds clips
    (audio: sorted by length into sub-batches without padding)."""
    proc = model.processor.get(modality)
    batch = proc.collate(samples)
    if model._schedulable(modality):
        z = embed_sorted(model, modality, batch, normalize, batch_size, None)
    else:
        z = model.embed_batch(modality, batch, normalize)
    return z.float().cpu()


def _pool_size(model: Any, modality: str, batch_size: int) -> int:
    return batch_size * (SORT_WINDOW if model._schedulable(modality) else 1)


def iter_window_batches(model: Any, modality: str, item: Any, *, window: float | None = None,
                        hop: float | None = None, segment: str = "fixed", batch_size: int = 16,
                        skip: Any = None, problems: list[str] | None = None, normalize: bool = True,
                        info: dict | None = None) -> Iterator[WindowBatch]:
    """One file's window embeddings, streamed in batches of up to ``batch_size`` windows (bounded
    memory whatever the file's length), in order of their start. ``skip(start, end, kind) -> bool``
    leaves windows out (already indexed: a resumed build); they are decoded, not embedded.
    Problems (truncation, a missing sound track) are appended to ``problems`` and, with ``info``
    (a dict), ``info["duration"]`` (seconds decoded) and ``info["name"]`` are set, once the file
    is done. Window and hop as :func:`embed_windows`."""
    window, hop = _checked(model, modality, window, hop, segment)
    if batch_size < 1:
        raise InputError("batch_size must be at least 1")
    state = _FileState()
    pending: list[_Window] = []

    def flush() -> WindowBatch:
        z = _embed_samples(model, modality, [p.sample for p in pending], normalize, batch_size)
        out = WindowBatch(np.array([p.start for p in pending], np.float64), np.array([p.end for p in pending], np.float64),
                          [p.kind for p in pending], z)
        pending.clear()
        return out

    with torch.inference_mode():
        for win in _windows(model, modality, item, window, hop, segment, skip, state):
            if pending and win.group != pending[-1].group:
                yield flush()
            pending.append(win)
            if len(pending) >= batch_size:
                yield flush()
        if pending:
            yield flush()
    if problems is not None:
        problems.extend(state.problems)
    if info is not None:
        info.update(duration=state.duration, name=state.name)


def _as_files(items: Any) -> list[Any]:
    """One file or a list of them (an ``(array, rate)`` or ``(frames, fps)`` pair is one file)."""
    if isinstance(items, tuple) and len(items) == 2 and isinstance(items[1], (int, float, np.integer, np.floating)) \
            and not isinstance(items[1], bool):
        return [items]
    return as_list(items)


def _embed_files(model: Any, modality: str, items: list[Any], window: float, hop: float, segment: str,
                 batch_size: int, normalize: bool, bar: Any) -> list[WindowEmbeddings]:
    """Every file's windows, pooled across files into batches (see :func:`embed_windows`)."""
    metas: list[list[tuple[float, float, str]]] = []
    rows: list[dict[int, torch.Tensor]] = []
    states: list[_FileState] = []
    pending: dict[bool, list[tuple[int, int, Any]]] = {False: [], True: []}
    limit = _pool_size(model, modality, batch_size)

    def flush(group: bool) -> None:
        todo = pending[group]
        z = _embed_samples(model, modality, [s for _, _, s in todo], normalize, batch_size)
        for (f, k, _), row in zip(todo, z):
            rows[f][k] = row
        todo.clear()

    for f, item in enumerate(items):
        metas.append([])
        rows.append({})
        states.append(_FileState())
        for win in _windows(model, modality, item, window, hop, segment, None, states[-1]):
            pending[win.group].append((f, len(metas[f]), win.sample))
            metas[f].append((win.start, win.end, win.kind))
            if len(pending[win.group]) >= limit:
                flush(win.group)
        bar.update(1)
    for group in (False, True):
        if pending[group]:
            flush(group)
    out = []
    for meta, got, state in zip(metas, rows, states):
        z = torch.stack([got[k] for k in range(len(meta))]) if meta else torch.empty(0, model.config.dim)
        out.append(WindowEmbeddings(modality, state.name, np.array([m[0] for m in meta], np.float64),
                                    np.array([m[1] for m in meta], np.float64), z, state.duration,
                                    state.problems, [m[2] for m in meta]))
    return out


def embed_windows(model: Any, *, audio: Sequence[Any] | Any = None, video: Sequence[Any] | Any = None,
                  window: float | None = None, hop: float | None = None, segment: str = "fixed",
                  batch_size: int = 16, normalize: bool = True, progress: bool | None = False,
                  ) -> dict[str, list[WindowEmbeddings]]:
    """Per modality given, one :class:`WindowEmbeddings` per file, in input order (see the module
    docstring). Windows of all files are pooled into batches (audio: up to ``SORT_WINDOW *
    batch_size`` sorted by length, computed without padding, as :func:`~onepeace.inference.embed`)."""
    given = {m: _as_files(v) for m, v in (("audio", audio), ("video", video)) if v is not None}
    if not given:
        raise InputError("nothing to embed in windows: pass audio= or video=")
    if batch_size < 1:
        raise InputError("batch_size must be at least 1")
    plans = {m: _checked(model, m, window, hop, segment) for m in given}
    result: dict[str, list[WindowEmbeddings]] = {}
    total = sum(map(len, given.values()))
    with torch.inference_mode(), _progress.progress_bar(progress, total=total, desc="windows", unit="file") as bar:
        for m, items in given.items():
            result[m] = _embed_files(model, m, items, *plans[m], segment, batch_size, normalize, bar)
    return result


__all__ = ["DEFAULT_WINDOWS", "MAX_VIDEO_WINDOW", "MIN_HOP", "SEGMENTS", "TAIL", "WindowBatch", "WindowEmbeddings",
           "check_windows", "embed_windows", "iter_window_batches"]
