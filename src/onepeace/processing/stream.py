"""Streamed decoding of long audio and video, and the windows cut out of it.

A long file is never held whole: audio is read in blocks (:class:`AudioBlocks`), video frame by
frame (:class:`VideoFrames`), and the windows to embed are cut out as the stream passes them
(:func:`cut_audio`, :func:`cut_video`), keeping only the samples or frames of the windows not yet
complete. :func:`plan_windows` is the one rule for fixed windows (moments and HEAR use it).

* **Audio** (:class:`AudioBlocks`): files libsndfile reads (wav, flac, ogg/opus, mp3, aiff) are
  read with ``soundfile`` block by block, averaged to mono and resampled with soxr's streaming
  resampler (soxr HQ, the samples whole-file :func:`~onepeace.processing.audio.resample` gives,
  length fixed to ``ceil(n * ratio)`` as there). Anything else (the sound of a video, m4a, aac)
  goes through PyAV (FFmpeg's resampler to mono at the model's rate, as the video processor
  decodes a video's sound); PyAV is the ``[video]`` extra. Arrays, tensors and ``(array, rate)``
  tuples are taken as :func:`~onepeace.processing.audio.load_audio` takes them.
* **Video** (:class:`VideoFrames`): PyAV decodes frame by frame; each frame's time is its own
  presentation timestamp (so a variable frame rate is timed right), and a frame is reduced to the
  model's square image size (RGB, bicubic, as the video processor resizes) as it arrives. The
  sound, when wanted, comes in the same pass.
* **Damage**: a file that stops decoding part way (truncated, corrupt) keeps what was decoded;
  :attr:`AudioBlocks.problems` / :attr:`VideoFrames.problems` say where decoding stopped. A file
  with nothing decodable is one :class:`~onepeace.errors.DecodeError` line.
"""

from __future__ import annotations

import io
import math
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch
from PIL import Image

from ..errors import DecodeError, InputError, MissingDependencyError, not_the_input
from .audio import (
    _NO_SAMPLES_DECLARED,
    AUDIO_EXTENSIONS,
    _av,
    _declared_frames,
    _has_av,
    _ogg_ends_whole,
    _unsized,
    _why,
)
from .image import load_image
from .inputs import check_file, describe

#: seconds of audio read per block
BLOCK_SECONDS = 8.0
#: bytes of a file's start read to find a WAV's declared length, and of its end for Ogg's last page
HEADER_BYTES = 1 << 20
OGG_TAIL_BYTES = 70_000
#: seconds of video past a window's end after which its sound is no longer waited for (a track that ended)
SOUND_LAG = 2.0
#: bytes of decoded video frames held for the windows in flight before the oldest are reduced to
#: the model's size at once (a 4 s window of 640x480 at 30 fps holds 55 MB; of 1080p, 370 MB)
RAW_BYTES = 256 << 20


# --------------------------------------------------------------------------- window plans
def plan_windows(n: int, window: int, hop: int, *, last: str = "shift", slack: int = 0) -> list[tuple[int, int]]:
    """Fixed windows ``[start, end)`` over ``n`` units (samples, or any integer time unit):
    ``window`` long every ``hop`` from 0 while they fit. If they end more than ``slack`` units
    before ``n``, one more: ``last="shift"`` a whole window ending at ``n`` (``[n - window, n)``),
    ``last="cut"`` the next one cut at ``n``. ``n <= window``: one window, ``[0, n)``. Every unit
    lies in a window (for ``hop <= window``) but the last ``slack`` ones at most (a tail too short
    to be worth a window nearly the same as the one before)."""
    if window < 1 or hop < 1:
        raise InputError(f"window and hop must be at least 1 unit, got {window} and {hop}")
    if last not in ("shift", "cut"):
        raise InputError(f"last must be 'shift' or 'cut', got {last!r}")
    if n <= window:
        return [(0, max(n, 0))]
    spans = [(s, s + window) for s in range(0, n - window + 1, hop)]
    if spans[-1][1] < n - max(slack, 0):
        s = spans[-1][0] + hop
        spans.append((n - window, n) if last == "shift" else (s, n))
    return spans


def _fixed_spans(window: int, hop: int) -> Iterator[tuple[int, int]]:
    k = 0
    while True:
        yield k * hop, k * hop + window
        k += 1


@dataclass
class Span:
    """A window to cut: ``[start, end)`` in samples (audio) or seconds (video), and its kind."""

    start: Any
    end: Any
    kind: str = "fixed"


# --------------------------------------------------------------------------- audio
def _mono(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:  # channels x samples (torch style) or samples x channels, as load_audio
        a = a.mean(axis=0) if a.shape[0] < a.shape[1] else a.mean(axis=1)
    if a.ndim != 1:
        raise InputError(f"audio array of shape {a.shape} is not [samples] or 2-D channels")
    return a.astype(np.float32)


class _Resampler:
    """Block-wise soxr HQ from ``rate`` to ``target``: the same samples as whole-clip
    :func:`~onepeace.processing.audio.resample` (length ``ceil(n * ratio)`` at the end)."""

    def __init__(self, rate: int, target: int):
        self.rate, self.target = int(rate), int(target)
        self.stream = None if self.rate == self.target else soxr.ResampleStream(
            self.rate, self.target, 1, dtype="float32", quality="HQ")
        self.n_in = self.n_out = 0

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        self.n_in += x.size
        if self.stream is None:
            out = x
        else:
            out = self.stream.resample_chunk(np.ascontiguousarray(x, dtype=np.float32), last=last)
            if last:
                want = math.ceil(self.n_in * self.target / self.rate) - self.n_out
                out = np.pad(out, (0, max(0, want - out.size)))[: max(want, 0)]
        self.n_out += out.size
        return np.ascontiguousarray(out, dtype=np.float32)


class AudioBlocks:
    """One audio input as mono float32 blocks at ``sample_rate``; iterate to decode (each
    iteration decodes from the start again: a second pass needs no copy). After an iteration,
    :attr:`samples` is how many samples it gave and :attr:`problems` what stopped it early.

    ``item``: a path, bytes, a binary file object, an array/tensor (at ``sample_rate``) or
    ``(array, rate)``. ``video_time``: the sound of a video file placed as it plays with the
    video, counted from the video stream's start (silence before a track that starts late, its
    samples before the video dropped), the sound :class:`VideoFrames` gives; otherwise counted
    from the sound's own first sample."""

    def __init__(self, item: Any, sample_rate: int = 16000, block_seconds: float = BLOCK_SECONDS, *,
                 video_time: bool = False):
        self.item, self.sample_rate, self.video_time = item, int(sample_rate), video_time
        self.name = describe(item[0] if _is_pair(item) else item)
        self.block = max(1, int(block_seconds * self.sample_rate))
        self.samples = 0
        self.problems: list[str] = []
        if isinstance(item, (bytes, bytearray, memoryview)) and not len(item):
            raise InputError("audio input is empty (0 bytes)")
        if isinstance(item, (str, os.PathLike)):
            check_file(item, "audio")
        elif not (_is_pair(item) or isinstance(item, (np.ndarray, torch.Tensor, bytes, bytearray, memoryview))
                  or hasattr(item, "read")):
            raise InputError(f"unsupported audio input {self.name}: give a path, bytes, a binary file object, "
                             "a numpy array or a torch tensor")

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    def __iter__(self) -> Iterator[np.ndarray]:
        self.samples, self.problems = 0, []
        for block in self._decoded():
            if block.size:
                if not np.isfinite(block).all():
                    raise InputError(f"audio {self.name} contains NaN or infinite samples "
                                     f"(near {self.samples / self.sample_rate:.1f} s)")
                self.samples += block.size
                yield block
        if self.samples == 0:
            raise DecodeError(f"audio {self.name} has no samples" + (f" ({self.problems[0]})" if self.problems else ""))

    def _decoded(self) -> Iterator[np.ndarray]:
        item = self.item
        if _is_pair(item) or isinstance(item, (np.ndarray, torch.Tensor)):
            yield from self._array(*(item if _is_pair(item) else (item, self.sample_rate)))
            return
        source = self._source()
        try:
            f = sf.SoundFile(source)
        except Exception as e:  # noqa: BLE001 - libsndfile says "not a format I read" in many ways
            if not_the_input(e):
                raise
            yield from self._with_av(str(e))
            return
        with f:
            declared = f.frames
            if not _unsized(declared) or not _has_av():
                yield from self._soundfile(f)
                return
        # a header that declares no samples (a recording never finished) or an unknown length (a FLAC
        # written to a pipe; libsndfile's reads then fail part way): FFmpeg reads to the end of the file
        before, got = len(self.problems), 0
        for block in self._with_av("its header declares no samples"):
            got += block.size
            yield block
        if got and declared == 0:
            self.problems.insert(before, _NO_SAMPLES_DECLARED)

    def _source(self) -> Any:
        item = self.item
        if isinstance(item, (str, os.PathLike)):
            return os.fspath(item)
        if isinstance(item, (bytes, bytearray, memoryview)):
            return io.BytesIO(bytes(item))
        if hasattr(item, "seek"):
            item.seek(0)
        return item

    def _array(self, a: Any, rate: int) -> Iterator[np.ndarray]:
        a = _mono(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a))
        rs = _Resampler(int(rate), self.sample_rate)
        for i in range(0, max(a.size, 1), self.block):
            yield rs(a[i : i + self.block], last=i + self.block >= a.size)

    def _soundfile(self, f: sf.SoundFile) -> Iterator[np.ndarray]:
        rate, container, declared = f.samplerate, f.format, f.frames
        rs = _Resampler(rate, self.sample_rate)
        read, block = 0, max(1, int(self.block * rate / self.sample_rate))
        while True:
            try:
                data = f.read(block, dtype="float32", always_2d=True)
            except Exception as e:  # noqa: BLE001 - a damaged block part way through
                if not_the_input(e):
                    raise
                self.problems.append(f"decoding stopped at {read / rate:.1f} s: {str(e).rstrip('.')}")
                data = np.zeros((0, 1), np.float32)
            read += len(data)
            last = len(data) < block
            mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
            yield rs(mono, last=last)
            if last:
                break
        if not self.problems:
            self._check_whole(container, declared, read, rate)

    def _check_whole(self, container: str, declared: int, read: int, rate: int) -> None:
        """A problem line when decoding stopped before the end the file declares (as
        :func:`~onepeace.processing.audio.load_audio` warns)."""
        head, tail = self._ends()
        declared = _declared_frames(container, declared, head)
        if read < declared:
            self.problems.append(f"decoding stopped at {read / rate:.1f} s of {declared / rate:.1f} s: "
                                 "the file is truncated or corrupt")
        elif container == "OGG" and read and not _ogg_ends_whole(tail):
            self.problems.append(f"decoding stopped at {read / rate:.1f} s, before the end of its stream: "
                                 "the file is truncated or corrupt")

    def _ends(self) -> tuple[bytes, bytes]:
        """The first :data:`HEADER_BYTES` and the last :data:`OGG_TAIL_BYTES` of the file."""
        item = self.item
        if isinstance(item, (bytes, bytearray, memoryview)):
            raw = bytes(item)
            return raw[:HEADER_BYTES], raw[-OGG_TAIL_BYTES:]
        if isinstance(item, (str, os.PathLike)):
            with open(item, "rb") as fh:
                head = fh.read(HEADER_BYTES)
                fh.seek(max(0, os.path.getsize(item) - OGG_TAIL_BYTES))
                return head, fh.read()
        if hasattr(item, "seek"):
            item.seek(0)
            head = item.read(HEADER_BYTES)
            item.seek(0, io.SEEK_END)
            item.seek(max(0, item.tell() - OGG_TAIL_BYTES))
            return head, item.read()
        return b"", b""

    def _with_av(self, why: str) -> Iterator[np.ndarray]:
        """Anything libsndfile does not read, through FFmpeg (the sound of a video, m4a, aac)."""
        try:
            av = _av()
        except MissingDependencyError:
            ext = os.path.splitext(self.name)[1].lower()
            if isinstance(self.item, (str, os.PathLike)) and ext and ext not in AUDIO_EXTENSIONS:
                raise
            raise DecodeError(f"cannot decode audio {self.name}: {why.split(': ', 1)[-1].rstrip('.')}. Give a file "
                              f"in one of the formats {', '.join(x.lstrip('.') for x in AUDIO_EXTENSIONS)}") from None
        source = self._source()
        try:
            container = av.open(source, mode="r")
        except av.error.FFmpegError as e:
            raise DecodeError(f"cannot decode audio {self.name}: not an audio file libsndfile or FFmpeg reads, or "
                              f"a truncated one ({_why(e)})") from None
        with container:
            if not container.streams.audio:
                raise InputError(f"{self.name} has no audio track")
            origin = _video_origin(container) if self.video_time else None
            yield from _av_sound(av, container, self.sample_rate, self.problems, origin)


def _video_origin(container) -> float | None:
    """Where a video's times start (its video stream's start, as :class:`VideoFrames` counts
    them; 0 when the stream does not say), or None for a file without video."""
    if not container.streams.video:
        return None
    vs = container.streams.video[0]
    return float(vs.start_time * vs.time_base) if vs.start_time is not None and vs.time_base else 0.0


def _av_sound(av, container, rate: int, problems: list[str], origin: float | None = None) -> Iterator[np.ndarray]:
    """The first audio track of an open PyAV container, mono float32 at ``rate``, frame by frame;
    with ``origin`` (seconds), placed from that time on as :class:`_SoundAligner` places it."""
    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    aligner = _SoundAligner(rate) if origin is not None else None
    done = 0
    try:
        for frame in container.decode(stream):
            pieces = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
            if aligner is not None:
                t = None if frame.time is None else float(frame.time) - origin
                pieces = [a for _, a in aligner.add(t, pieces)]
            for a in pieces:
                done += a.size
                yield a
        for out in resampler.resample(None):
            yield out.to_ndarray().reshape(-1)
    except av.error.FFmpegError as e:
        problems.append(f"decoding stopped at {done / rate:.1f} s: {_why(e)}")
        return
    declared = (container.duration or 0) / 1e6
    if declared > 0 and done / rate < 0.9 * declared - 0.1:
        problems.append(f"decoding stopped at {done / rate:.1f} s of {declared:.1f} s: the file is truncated or corrupt")


def _is_pair(item: Any) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], (int, np.integer))


def cut_audio(blocks: Iterable[np.ndarray], window: int, hop: int, spans: Sequence[Span] | None = None, *,
              slack: int = 0) -> Iterator[tuple[Span, np.ndarray]]:
    """Windows cut out of a stream of blocks, in order of their start, each as soon as the stream
    has passed its end; only the samples from the first window not yet cut are held.

    ``spans=None``: the fixed windows of :func:`plan_windows` (``last="shift"``, ``slack``) over
    however many samples the stream turns out to have. Otherwise the given spans (sorted by
    start), cut at the stream's end (a span starting past it is dropped)."""
    plan = iter(spans) if spans is not None else (Span(s, e) for s, e in _fixed_spans(window, hop))
    nxt: Span | None = next(plan, None)
    buf, base, total, last_end = np.zeros(0, np.float32), 0, 0, 0
    for block in blocks:
        buf = np.concatenate([buf, block]) if buf.size else block
        total += block.size
        while nxt is not None and nxt.end <= total:
            yield nxt, buf[nxt.start - base : nxt.end - base].copy()
            last_end = nxt.end
            nxt = next(plan, None)
        keep = min(nxt.start if nxt is not None else total, total - window if spans is None else total)
        if keep > base:
            buf, base = buf[keep - base :], keep
    if spans is not None:
        while nxt is not None and nxt.start < total:
            yield Span(nxt.start, total, nxt.kind), buf[nxt.start - base :].copy()
            nxt = next(plan, None)
    elif total and (last_end == 0 or last_end < total - max(slack, 0)):
        s = max(0, total - window)
        yield Span(s, total), buf[s - base :].copy()


# --------------------------------------------------------------------------- video
class Frame:
    """A decoded frame and its time in seconds from the video's start; :attr:`image` is the frame
    at the model's size. A frame straight from the decoder (``raw``, a PyAV frame) is converted
    and resized (``small``) only when its image is first asked for: most frames of a window are
    never among the few the video processor samples, and converting and resizing a 640x480 frame
    costs nine times what decoding it does."""

    __slots__ = ("time", "_image", "_raw", "_small")

    def __init__(self, time: float, image: Image.Image | None = None, *, raw: Any = None, small: Any = None):
        if image is None and (raw is None or small is None):
            raise ValueError("a Frame needs its image, or a raw frame and the function that makes the image")
        self.time, self._image, self._raw, self._small = time, image, raw, small

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            if self._raw is None:
                raise RuntimeError(f"the frame at {self.time} s was let go before its image was made")
            self._image, self._raw, self._small = self._small(self._raw.to_image()), None, None
        return self._image

    @property
    def raw_bytes(self) -> int:
        """Bytes of the decoded frame still held (0 once its image is made or it is let go)."""
        return 0 if self._raw is None else sum(p.buffer_size for p in self._raw.planes)

    def release(self) -> None:
        """Let go of the decoded frame (its image will not be needed)."""
        self._raw = self._small = None

    def __repr__(self) -> str:
        return f"Frame(time={self.time}, {'image' if self._image is not None else 'raw'})"


class _Images(Sequence):
    """The images of some frames, each made when it is first read (see :class:`Frame`)."""

    def __init__(self, frames: list[Frame]):
        self._frames = frames

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [f.image for f in self._frames[i]]
        return self._frames[i].image


class VideoFrames:
    """One video as a stream of frames reduced to ``image_size`` (and, with ``sample_rate``, its
    sound as mono float32 at that rate), decoded once per iteration. Iterating yields
    :class:`Frame` items and ``(start_seconds, samples)`` pieces of sound, in decoding order.
    After an iteration: :attr:`duration` (seconds), :attr:`problems`, :attr:`has_audio`.

    ``item``: a path, bytes or binary file object (PyAV), or decoded frames given as
    ``(frames, fps)`` (a uint8 array ``[T, H, W, 3]`` or a list of images, at a constant rate)."""

    def __init__(self, item: Any, image_size: int, sample_rate: int | None = None):
        self.item, self.image_size, self.sample_rate = item, int(image_size), sample_rate
        self.name = describe(item[0] if isinstance(item, tuple) else item)
        self.problems: list[str] = []
        self.duration = 0.0
        self.has_audio = False
        if isinstance(item, (str, os.PathLike)):
            check_file(item, "video")
        elif isinstance(item, (bytes, bytearray, memoryview)) and not len(item):
            raise InputError("video input is empty (0 bytes)")

    def small(self, img: Image.Image) -> Image.Image:
        s = self.image_size
        return img.convert("RGB").resize((s, s), Image.BICUBIC)

    def __iter__(self) -> Iterator[Frame | tuple[float, np.ndarray]]:
        self.problems, self.duration, self.has_audio = [], 0.0, False
        if isinstance(self.item, tuple) and len(self.item) == 2 and not hasattr(self.item[0], "read"):
            yield from self._frames_at(*self.item)
        else:
            yield from self._decode()

    def _frames_at(self, frames: Any, fps: float) -> Iterator[Frame]:
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise InputError(f"decoded video frames need their rate as (frames, fps), got fps {fps!r}")
        n = len(frames)
        if n == 0:
            raise InputError("the video has no frames")
        for i in range(n):
            yield Frame(i / fps, self.small(load_image(frames[i])))
        self.duration = n / fps

    def _decode(self) -> Iterator[Frame | tuple[float, np.ndarray]]:
        av = _av()
        item = self.item
        source = os.fspath(item) if isinstance(item, (str, os.PathLike)) else \
            io.BytesIO(bytes(item)) if isinstance(item, (bytes, bytearray, memoryview)) else item
        try:
            container = av.open(source, mode="r")
        except av.error.FFmpegError as e:
            raise DecodeError(f"cannot decode video {self.name}: not a video file FFmpeg reads, or a truncated "
                              f"one ({_why(e)})") from None
        with container:
            vs = _video_stream(container, self.name)
            vs.thread_type = "AUTO"
            audio = self.sample_rate is not None and bool(container.streams.audio)
            self.has_audio = audio
            yield from self._demux(av, container, vs, audio)

    def _demux(self, av, container, vs, audio: bool) -> Iterator[Frame | tuple[float, np.ndarray]]:
        streams = [vs, container.streams.audio[0]] if audio else [vs]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate) if audio else None
        # times count from the video stream's start (its first frame when the stream does not say), kept
        # exact (pts x time base) and rounded to whole µs only when given out: no rounding adds up
        origin = Fraction(vs.start_time) * vs.time_base if vs.start_time is not None and vs.time_base else None
        rate = Fraction(vs.average_rate or vs.guessed_rate or 0)
        period = 1 / rate if rate > 0 else Fraction(0)  # between frames without timestamps (a raw .h264)
        last, step, seen, sound = Fraction(0), Fraction(0), False, _SoundAligner(self.sample_rate or 1)
        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    t = _exact_time(frame)
                    if packet.stream.type == "video":
                        origin = t if origin is None and t is not None else origin
                        t = t - origin if t is not None else last + (step or period) if seen else Fraction(0)
                        step, last, seen = (max(t - last, Fraction(0)) or step) if seen else step, t, True
                        yield Frame(_us(t), raw=frame, small=self.small)
                    else:
                        yield from sound.add(None if t is None else float(t - (origin or 0)),
                                             [o.to_ndarray().reshape(-1) for o in resampler.resample(frame)])
            if resampler is not None:
                yield from sound.add(None, [o.to_ndarray().reshape(-1) for o in resampler.resample(None)])
        except av.error.FFmpegError as e:
            self.problems.append(f"decoding stopped at {float(last):.1f} s: {_why(e)}")
        if not seen:
            raise DecodeError(f"video {self.name} has no decodable frames (the file may be truncated or damaged)")
        self.duration = _us(last + (step or period))
        declared = (container.duration or 0) / 1e6
        if not self.problems and declared > 0 and self.duration < 0.9 * declared - 0.1:
            self.problems.append(f"decoding stopped at {self.duration:.1f} s of {declared:.1f} s: the file is "
                                 "truncated or corrupt")


def _exact_time(frame) -> Fraction | None:
    """A decoded frame's presentation time in seconds, exactly (None when it has none)."""
    if frame.pts is not None and frame.time_base:
        return Fraction(frame.pts) * frame.time_base
    return None if frame.time is None else Fraction(frame.time)


def _us(t: Fraction) -> float:
    """Seconds rounded to whole microseconds (video times and windows are planned in µs)."""
    return round(t * 1_000_000) / 1_000_000


class _SoundAligner:
    """Sound pieces as ``(0.0, samples)`` counted from the video's start: the track's first
    sample placed at its own time (silence before it, or its samples before the video dropped)."""

    def __init__(self, rate: int):
        self.rate, self.started, self.drop = rate, False, 0

    def add(self, t: float | None, pieces: list[np.ndarray]) -> Iterator[tuple[float, np.ndarray]]:
        if not self.started:
            self.started = True
            shift = round((t or 0.0) * self.rate)
            if shift > 0:
                yield (0.0, np.zeros(shift, np.float32))
            self.drop = max(0, -shift)
        for a in pieces:
            if self.drop:
                cut = min(self.drop, a.size)
                a, self.drop = a[cut:], self.drop - cut
            if a.size:
                yield (0.0, a)


def _video_stream(container, name: str):
    fmt = container.format.name or ""
    if fmt.endswith("_pipe") or fmt == "image2":
        raise InputError(f"{name} is an image ({fmt.removesuffix('_pipe')}), not a video; embed it as an image")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise InputError(f"{name} has no video stream (streams: {', '.join(kinds)}); give a video file")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise DecodeError(f"cannot decode video {name}: its video codec is not one FFmpeg (PyAV) can decode")
    return stream


@dataclass
class VideoCut:
    """One window of a video: its frames (images at the model's size, each made when first read)
    and, when decoded, its sound."""

    span: Span
    frames: Sequence[Image.Image]
    sound: np.ndarray | None = None


def cut_video(stream: Iterable[Frame | tuple[float, np.ndarray]], window: float, hop: float,
              spans: Sequence[Span] | None = None, sample_rate: int | None = None, *,
              slack: float = 0.0) -> Iterator[VideoCut]:
    """Windows (seconds) cut out of a :class:`VideoFrames` stream as it passes them: a frame
    belongs to a window when its time is in ``[start, end)``. ``spans=None``: the fixed windows
    of :func:`plan_windows` over the video's duration (in microseconds, so times are exact to
    1 µs; a tail of at most ``slack`` seconds gets no window of its own); otherwise the given
    spans. Only the frames (and sound) from the first window not yet cut are held."""
    us = 1_000_000
    plan = iter(spans) if spans is not None else (
        Span(s / us, e / us) for s, e in _fixed_spans(round(window * us), round(hop * us)))
    cutter = _VideoCutter(sample_rate, window if spans is None else 0.0)
    nxt = next(plan, None)
    for item in stream:
        cutter.add(item)
        while nxt is not None and cutter.passed(nxt.end):
            yield cutter.cut(nxt)
            cutter.last_end = nxt.end
            nxt = next(plan, None)
        cutter.trim(nxt)
    end = getattr(stream, "duration", 0.0) or cutter.newest
    if spans is not None:
        while nxt is not None and nxt.start < end:
            yield cutter.cut(Span(nxt.start, min(nxt.end, end), nxt.kind))
            nxt = next(plan, None)
        return
    while nxt is not None and nxt.end <= end + 1e-9:  # whole windows the last frames did not pass
        yield cutter.cut(nxt)
        cutter.last_end, nxt = nxt.end, next(plan, None)
    if cutter.frames and (cutter.last_end == 0.0 or cutter.last_end < end - max(slack, 1e-6)):
        yield cutter.cut(Span(max(0, round(end * us) - round(window * us)) / us, end))


class _VideoCutter:
    """The frames and sound of the windows in flight (see :func:`cut_video`)."""

    def __init__(self, sample_rate: int | None, tail: float):
        self.frames: deque[Frame] = deque()
        self.rate, self.tail = sample_rate, tail
        self.sound = np.zeros(0, np.float32)
        self.sound_base = 0  # sample index of sound[0]
        self.sound_total = 0
        self.newest, self.last_end = 0.0, 0.0
        self.any_sound = False
        self.made = 0  # the first frames, whose images are made (so hold no decoded frame)

    def add(self, item: Frame | tuple[float, np.ndarray]) -> None:
        if isinstance(item, Frame):
            self.frames.append(item)
            self.newest = max(self.newest, item.time)
            # decoded frames are held until a window samples them, up to RAW_BYTES (a long window of a
            # large video): past that the oldest are made into images now (counted as if none were made since)
            size = item.raw_bytes
            while self.made < len(self.frames) and (len(self.frames) - self.made) * size > RAW_BYTES:
                self.frames[self.made].image  # noqa: B018 - made now, the decoded frame let go
                self.made += 1
            return
        _, samples = item
        self.any_sound = True
        self.sound = np.concatenate([self.sound, samples]) if self.sound.size else samples
        self.sound_total += samples.size

    def passed(self, end: float) -> bool:
        """Whether every frame (and sample) before ``end`` has arrived."""
        if self.newest < end:
            return False
        # the sound may lag the frames a little in the file; a track that ended stops being waited for
        return not self.any_sound or self.rate is None or self.sound_total >= round(end * self.rate) \
            or self.newest >= end + SOUND_LAG

    def cut(self, span: Span) -> VideoCut:
        frames = [f for f in self.frames if span.start - 1e-9 <= f.time < span.end - 1e-9]
        if not frames:  # a window between two frames of a sparse video: the frame shown then
            before = [f for f in self.frames if f.time < span.start]
            frames = [before[-1] if before else self.frames[0]] if self.frames else []
        sound = None
        if self.any_sound and self.rate is not None:
            s0, s1 = round(span.start * self.rate), round(span.end * self.rate)
            sound = self.sound[max(0, s0 - self.sound_base) : max(0, s1 - self.sound_base)].copy()
        return VideoCut(span, _Images(frames), sound)

    def trim(self, nxt: Span | None) -> None:
        keep = min(nxt.start if nxt is not None else self.newest, self.newest - self.tail if self.tail else self.newest)
        # keep the last frame before ``keep`` too: it is the one shown at ``keep``
        while len(self.frames) > 1 and self.frames[1].time <= keep:
            self.frames.popleft()
            self.made = max(0, self.made - 1)
        if self.rate is not None and self.sound.size:
            k = round(keep * self.rate) - self.sound_base
            if k > 0:
                self.sound, self.sound_base = self.sound[k:], self.sound_base + k


__all__ = ["AudioBlocks", "BLOCK_SECONDS", "Frame", "Span", "VideoCut", "VideoFrames", "cut_audio", "cut_video",
           "plan_windows"]
