"""Video preprocessing: decode with PyAV (FFmpeg), sample T frames, resize them as images are.

* **Decoding**: any container and codec the PyAV wheel's FFmpeg reads (mp4/H.264, webm/VP8/VP9,
  mkv, avi, mov, ...), from a path, bytes or a binary file object. Already decoded clips are
  accepted too: a uint8 array or tensor ``[T, H, W, 3]`` (float in [0, 1] also), a list of frames
  (PIL images or arrays), or a :class:`Clip`.
* **Sampling** (``sampling``): ``"uniform"`` takes the centre frame of T equal segments of the
  whole clip (TSN-style; covers the clip whatever its length); ``"stride"`` takes T frames
  ``stride`` frames apart, centred in the clip (a fixed frame rate, for motion).
* **Short clips**: a clip with fewer frames than T is *not* an error. Uniform sampling holds each
  of its frames for an even share of the T slots (3 frames at T=8: 0 0 0 1 1 2 2 2), so the clip
  keeps its time order and its pace; stride sampling repeats the last frame once the clip ends.
  Either way the model always sees T frames, so clips batch without padding. A clip with no
  decodable frame is an error.
* **Frames** are RGB, resized to a square ``image_size`` with a bicubic filter, [0, 1], CLIP
  mean/std — exactly the image processor's treatment of a still image.
* **Sound** (optional): the audio track over the time the sampled frames span, decoded to mono at
  the audio branch's rate and handed to the model's audio processor (normalisation, the 15 s cap,
  tiling of clips under a second). A video without an audio track is an error when its sound is
  asked for.

Every failure is an :class:`~onepeace.errors.InputError` naming the file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DecodeError, InputError, MissingDependencyError
from . import COMPANION_SEP
from .image import CLIP_MEAN, CLIP_STD, IMAGE_EXTENSIONS
from .inputs import NamedBytes, describe, open_binary

#: file name extensions of common video containers (all read by FFmpeg); folders are searched for these
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".webm", ".mkv", ".avi", ".mov", ".mpg", ".mpeg", ".ogv", ".wmv", ".flv",
                    ".3gp", ".ts")
SAMPLING = ("uniform", "stride")


def _av():
    try:
        import av
    except ImportError:
        raise MissingDependencyError("reading video files needs PyAV: pip install 'onepeace[video]'") from None
    return av


@dataclass
class Clip:
    """A decoded video: the sampled frames, and the sound over the time they span."""

    frames: list[Image.Image]
    #: frames the source had (decoded), before sampling
    source_frames: int = 0
    fps: float = 0.0
    #: mono float32 waveform at ``sample_rate`` (None: not decoded)
    audio: np.ndarray | None = None
    sample_rate: int = 16000
    name: str = ""
    #: source frame index of each sampled frame
    indices: list[int] = field(default_factory=list)


def sample_indices(n: int, frames: int, sampling: str = "uniform", stride: int = 4) -> list[int]:
    """The ``frames`` source-frame indices to keep from a clip of ``n`` frames (see the module doc)."""
    if n < 1:
        raise ValueError("a clip needs at least one frame")
    if sampling == "uniform":
        return [min(n - 1, int((i + 0.5) * n / frames)) for i in range(frames)]
    if sampling == "stride":
        span = stride * (frames - 1) + 1
        start = max(0, (n - span) // 2)
        return [min(n - 1, start + i * stride) for i in range(frames)]
    raise InputError(f"video sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")


def _is_file_like(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(item, "read")


def _frames_from_array(item: Any) -> list[Image.Image]:
    """Decoded frames: an array/tensor [T, H, W, 3] (uint8, or float in [0, 1]) or a list of frames."""
    from .image import load_image

    if isinstance(item, (list, tuple)):
        if not item:
            raise InputError("a video given as a list of frames needs at least one frame")
        return [load_image(f) for f in item]
    a = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
    if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
        raise InputError(f"a video array must be [frames, height, width, 3], got shape {a.shape}")
    if a.shape[0] == 0:
        raise InputError("the video array has no frames")
    return [load_image(f) for f in a]


def read_video(item: Any, frames: int = 8, sampling: str = "uniform", stride: int = 4, *,
               audio: bool = False, sample_rate: int = 16000) -> Clip:
    """Decode ``item`` and keep ``frames`` frames (and with ``audio``, the sound they span)."""
    if isinstance(item, Clip):
        if audio and item.audio is None:
            raise InputError(f"video {item.name or '<clip>'} was decoded without its sound; decode it with audio=True")
        # a clip decoded with this sampling already (a processor's load()) is taken as it is
        same = len(item.frames) == frames
        idx = list(range(frames)) if same else sample_indices(len(item.frames), frames, sampling, stride)
        return Clip([item.frames[i] for i in idx], item.source_frames, item.fps, item.audio, item.sample_rate,
                    item.name, [item.indices[i] if item.indices else i for i in idx])
    if not _is_file_like(item):
        if audio:
            raise InputError(f"video {describe(item)} is an array of frames with no sound; give the video file "
                             "to embed its sound")
        pics = _frames_from_array(item)
        idx = sample_indices(len(pics), frames, sampling, stride)
        return Clip([pics[i] for i in idx], len(pics), 0.0, None, sample_rate, describe(item), idx)
    stream = open_binary(item, "video")
    return _decode(stream, describe(item), frames, sampling, stride, audio, sample_rate)


def _open(av, data: bytes, name: str):
    try:
        return av.open(io.BytesIO(data), mode="r")
    except av.error.FFmpegError as e:
        raise DecodeError(f"cannot decode video {name}: not a video file FFmpeg reads, or a truncated one "
                         f"({_why(e)}). Give a file in one of the formats "
                         f"{', '.join(x.lstrip('.') for x in VIDEO_EXTENSIONS)}") from None


def _why(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return str(msg).split(": '")[0].rstrip(".")


def _video_stream(container, name: str):
    fmt = container.format.name or ""
    if fmt.endswith("_pipe") or fmt == "image2":
        kind = fmt.removesuffix("_pipe")
        raise InputError(f"{name} is an image ({kind}), not a video; embed it as an image "
                         f"({', '.join(IMAGE_EXTENSIONS[:4])}, ...)")
    streams = list(container.streams.video)
    if not streams:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise InputError(f"{name} has no video stream (streams: {', '.join(kinds)}); give a video file")
    stream = streams[0]
    if stream.codec_context is None:
        raise DecodeError(f"cannot decode video {name}: its video codec is not one FFmpeg (PyAV) can decode; "
                         "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`")
    return stream


def _decode(stream: NamedBytes, name: str, frames: int, sampling: str, stride: int, audio: bool,
            sample_rate: int) -> Clip:
    av = _av()
    data = stream.getvalue()
    n, fps = _count_frames(av, data, name, audio)
    want = sample_indices(n, frames, sampling, stride)
    got = _decode_frames(av, data, name, set(want), max(want), audio, sample_rate)
    if not got.kept:
        raise DecodeError(f"video {name} has no decodable frames (the file may be truncated or damaged)")
    # frames the demuxer counted but the decoder did not deliver: hold the last decoded one
    order = sorted(got.kept)
    pics = [got.kept[i] if i in got.kept else got.kept[max((k for k in order if k <= i), default=order[0])]
            for i in want]
    wave = _clip_sound(got, fps, sample_rate, name) if audio else None
    return Clip(pics, n, fps, wave, sample_rate, name, want)


def _count_frames(av, data: bytes, name: str, audio: bool) -> tuple[int, float]:
    """Pass 1: (frames, fps), counting the frames by demuxing alone (no decoding); containers such
    as webm/mkv do not store the count, and sampling needs it before decoding."""
    container = _open(av, data, name)
    with container:
        vs = _video_stream(container, name)
        if audio and not container.streams.audio:
            raise InputError(f"video {name} has no audio track, so its sound cannot be embedded; embed the "
                             "video alone (without fuse_audio / --fuse-audio)")
        n, end = 0, 0.0
        start = (container.start_time or 0) / 1e6
        try:
            for p in container.demux(*container.streams.video[:1], *container.streams.audio[:1]):
                if not p.size:
                    continue
                if p.stream.type == "video":
                    n += 1
                if p.pts is not None and p.time_base is not None:
                    end = max(end, float((p.pts + (p.duration or 0)) * p.time_base) - start)
        except av.error.FFmpegError as e:
            raise DecodeError(f"cannot decode video {name}: the file is truncated or damaged ({_why(e)})") from None
        fps = float(vs.average_rate or vs.guessed_rate or 0)
        declared = (container.duration or 0) / 1e6
    if n == 0:
        raise DecodeError(f"video {name} has no frames")
    # streaming containers (webm, mkv, avi) cut short still demux; their header keeps the length
    if declared > 0 and end < 0.9 * declared - 0.1:
        raise DecodeError(f"video {name} is truncated: its header says {declared:.2f} s, its data ends at "
                         f"{end:.2f} s (an interrupted download or copy?)")
    return n, fps


@dataclass
class _Decoded:
    """What pass 2 collected: the kept frames (and their times) by source index, and the sound."""

    wanted: set[int]
    kept: dict[int, Image.Image] = field(default_factory=dict)
    times: dict[int, float] = field(default_factory=dict)
    pieces: list[np.ndarray] = field(default_factory=list)
    audio_start: float | None = None
    #: video frames decoded so far
    count: int = 0

    def frame(self, frame) -> None:
        """One decoded video frame, converted only when it is kept."""
        if self.count in self.wanted:
            self.kept[self.count] = frame.to_image()
            self.times[self.count] = float(frame.time or 0.0)
        self.count += 1


def _decode_frames(av, data: bytes, name: str, wanted: set[int], last: int, audio: bool,
                   sample_rate: int) -> _Decoded:
    """Pass 2: decode up to frame ``last``, converting only the ``wanted`` frames (with ``audio``,
    the whole sound track too, as mono float32 at ``sample_rate``)."""
    got = _Decoded(wanted)
    container = _open(av, data, name)
    with container:
        vs = _video_stream(container, name)
        vs.thread_type = "AUTO"
        streams = [vs]
        resampler = None
        if audio:
            a_stream = container.streams.audio[0]
            if a_stream.codec_context is None:
                raise InputError(f"cannot decode the sound of video {name}: its audio codec is not one FFmpeg reads")
            streams.append(a_stream)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        try:
            for packet in container.demux(*streams):
                if packet.stream.type == "video":
                    if got.count > last:
                        if not audio:
                            break
                        continue
                    for frame in packet.decode():
                        got.frame(frame)
                else:
                    for frame in packet.decode():
                        if got.audio_start is None:
                            got.audio_start = float(frame.time or 0.0)
                        for out in resampler.resample(frame):
                            got.pieces.append(out.to_ndarray().reshape(-1))
            if got.count <= last:  # flush the decoder's delayed frames
                for frame in vs.decode(None):
                    got.frame(frame)
            if resampler is not None:
                for out in resampler.resample(None):
                    got.pieces.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as e:
            raise DecodeError(f"cannot decode video {name}: the file is truncated or damaged ({_why(e)})") from None
    return got


def _clip_sound(got: _Decoded, fps: float, sample_rate: int, name: str) -> np.ndarray:
    """The decoded sound over the time the kept frames span (all of it if that span is empty)."""
    wave = np.concatenate(got.pieces).astype(np.float32) if got.pieces else np.zeros(0, np.float32)
    if wave.size == 0:
        raise InputError(f"video {name} has an audio track with no decodable sound")
    t0 = min(got.times.values()) if got.times else 0.0
    t1 = max(got.times.values()) + (1.0 / fps if fps > 0 else 0.0)
    s0 = max(0, int(round((t0 - (got.audio_start or 0.0)) * sample_rate)))
    s1 = max(s0 + 1, int(round((t1 - (got.audio_start or 0.0)) * sample_rate)))
    part = wave[s0:s1]
    return part if part.size else wave


def middle_frame(item: Any) -> Image.Image:
    """The middle frame of a video: its thumbnail (a first frame is often black, a title or a fade)."""
    return read_video(item, frames=1, sampling="uniform").frames[0]


class VideoProcessor:
    """Batch of videos -> ``{"frames": [B, T, 3, S, S]}``; with the sound, also the audio
    processor's batch under ``"audio.waveform"`` / ``"audio.padding_mask"`` (a companion segment
    for a fused audio-visual pass; the video adapter ignores those keys).

    ``audio``: decode the sound by default (the option ``audio`` of the video branch); each call
    may override it. The audio processor is the model's own (:meth:`bind`)."""

    #: modalities a processed video batch can carry besides its own (see :meth:`__call__`)
    companions = ("audio",)

    def __init__(self, frames: int = 8, sampling: str = "uniform", stride: int = 4, image_size: int = 256,
                 audio: bool = False, audio_processor: Any = None):
        if sampling not in SAMPLING:
            raise InputError(f"video sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
        if frames < 1 or stride < 1:
            raise InputError(f"video frames and stride must be at least 1, got {frames} and {stride}")
        self.frames, self.sampling, self.stride, self.image_size = frames, sampling, stride, image_size
        self.audio = audio
        self.audio_processor = audio_processor
        self._mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    def bind(self, processors: Any) -> None:
        """Called by :class:`onepeace.modalities.Processor` with the model's processors: the sound
        of a video goes through the model's own audio processor."""
        try:
            self.audio_processor = processors.get("audio")
        except InputError:
            self.audio_processor = None

    @property
    def sample_rate(self) -> int:
        return getattr(self.audio_processor, "sample_rate", 16000)

    def read(self, item: Any, audio: bool | None = None) -> Clip:
        """Decode one video (its T sampled frames; with ``audio``, its sound)."""
        want_audio = self.audio if audio is None else audio
        if want_audio and self.audio_processor is None:
            raise InputError("this model has no audio branch to embed the sound of a video with")
        return read_video(item, self.frames, self.sampling, self.stride, audio=want_audio,
                          sample_rate=self.sample_rate)

    def load(self, item: Any) -> Clip:
        """Decode one input now (checking it) into a :class:`Clip` the processor takes later."""
        return self.read(item)

    def pixels(self, clip: Clip) -> torch.Tensor:
        """[T, 3, S, S]: the frames resized and normalised exactly as the image processor does."""
        s = self.image_size
        out = torch.empty(len(clip.frames), 3, s, s)
        for i, img in enumerate(clip.frames):
            img = img.convert("RGB").resize((s, s), Image.BICUBIC)
            out[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255.0)
        return (out - self._mean) / self._std

    def one(self, item: Any) -> torch.Tensor:
        """One video's frames [T, 3, S, S] (without the sound; data loaders use this)."""
        return self.pixels(self.read(item, audio=False))

    def sample(self, item: Any, *, train: bool = False, rng: Any = None,
               audio: bool | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One clip for a data loader (the data-loader protocol with :meth:`collate`): its frames
        (:meth:`one`), or with ``audio`` (default: the option) its frames and sound
        (:meth:`one_with_audio`), which :meth:`collate` turns into ``audio.*`` companion keys."""
        want_audio = self.audio if audio is None else audio
        if want_audio:
            if self.audio_processor is None:
                raise InputError("this model has no audio branch to embed the sound of a video with")
            return self.one_with_audio(item)
        return self.one(item)

    def one_with_audio(self, item: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One video's frames and its sound window as the audio processor makes it (1-D)."""
        clip = self.read(item, audio=True)
        wav = self.audio_processor.windows((clip.audio, clip.sample_rate))[0][0]
        return self.pixels(clip), wav

    def collate(self, frames: Sequence[Any], sounds: Sequence[torch.Tensor] | None = None) -> dict:
        """Clips of :meth:`one` (and their sounds), or of :meth:`sample` (frames, or (frames, sound)
        pairs) -> ``{"frames": [B, T, 3, S, S]}`` (+ ``audio.*``: the audio processor's batch)."""
        frames = list(frames)
        if frames and isinstance(frames[0], tuple):
            if not all(isinstance(f, tuple) for f in frames):
                raise InputError("a batch mixes clips with and without their sound")
            frames, sounds = [f for f, _ in frames], [w for _, w in frames]
        batch: dict[str, torch.Tensor] = {"frames": torch.stack(frames)}
        if sounds is not None:
            for k, v in self.audio_processor.collate(list(sounds)).items():
                batch[f"audio{COMPANION_SEP}{k}"] = v
        return batch

    def __call__(self, items: Sequence[Any], audio: bool | None = None,
                 companions: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """``audio`` (or ``companions=("audio",)``): also the sound, as ``audio.*`` keys."""
        if not items:
            raise InputError("no videos given")
        if companions is not None:
            unknown = sorted(set(companions) - set(self.companions))
            if unknown:
                raise InputError(f"a video carries no {', '.join(unknown)} segment; it can carry {self.companions}")
            audio = "audio" in companions
        want_audio = self.audio if audio is None else audio
        if not want_audio:
            return self.collate([self.one(i) for i in items])
        pairs = [self.one_with_audio(i) for i in items]
        return self.collate([p for p, _ in pairs], [w for _, w in pairs])

    def thumbnail(self, item: Any, size: int = 256) -> tuple[bytes, str]:
        """A JPEG of the middle frame, at most ``size`` pixels on its longer side."""
        img = middle_frame(item).convert("RGB")
        img.thumbnail((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return buf.getvalue(), "image/jpeg"


def write_video(path: str | os.PathLike, frames: Any, fps: int = 8, audio: np.ndarray | None = None,
                sample_rate: int = 16000, codec: str = "libx264") -> None:
    """Encode ``frames`` (uint8 [T, H, W, 3], even H and W) and an optional mono float ``audio``
    (in [-1, 1]) into a video file (container from the extension: .mp4 with H.264 + AAC by
    default, .webm with ``codec="libvpx-vp9"``, .mkv ...). Written to a temporary name and moved
    into place, so a crash never leaves half a file. For tests, demos and synthetic data."""
    av = _av()
    a = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or a.shape[0] == 0:
        raise InputError(f"write_video takes uint8 frames [T, H, W, 3], got {a.dtype} {a.shape}")
    path = os.fspath(path)
    ext = os.path.splitext(path)[1]
    tmp = f"{path}.tmp{os.getpid()}{ext}"
    try:
        with av.open(tmp, mode="w") as out:
            vs = out.add_stream(codec, rate=int(fps))
            vs.width, vs.height, vs.pix_fmt = a.shape[2], a.shape[1], "yuv420p"
            aus = None
            if audio is not None:
                aus = out.add_stream("libopus" if ext.lower() == ".webm" else "aac", rate=int(sample_rate))
                aus.layout = "mono"
            for img in a:
                for packet in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                    out.mux(packet)
            for packet in vs.encode():
                out.mux(packet)
            if aus is not None:
                wav = np.asarray(audio, dtype=np.float32).reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav), format="fltp", layout="mono")
                frame.sample_rate = int(sample_rate)
                for packet in aus.encode(frame):
                    out.mux(packet)
                for packet in aus.encode(None):
                    out.mux(packet)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
