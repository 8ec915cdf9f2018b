"""Audio preprocessing identical to the official hub (``OnePeaceHubInterface.process_audio`` in
one_peace/models/one_peace/hub_interface.py of github.com/OFA-Sys/ONE-PEACE).

Any format soundfile reads, any rate and channel count -> 16 kHz mono (channel mean, soxr HQ as
librosa 0.10 does, length fixed to ceil(n * ratio)), whole-clip normalisation, *then* the length
cap, clips under the minimum tiled. A file whose header gives no length (a WAV declaring 0 samples,
a recording never finished; a FLAC of unknown length, as written to a pipe) is read to its end by
FFmpeg (PyAV, the ``[video]`` extra) when installed, as :mod:`onepeace.processing.stream` reads it. Arrays and tensors are taken as 16 kHz mono unless a rate is
given as ``(array, rate)``.

Clips over the cap (15 s) are handled by one of :data:`LONG_AUDIO_MODES`:

* ``"truncate"`` (the default, as the official code): only the first 15 s count, and a
  :class:`~onepeace.errors.OnePeaceWarning` names the clip and its length;
* ``"chunk"``: the normalised clip is cut into consecutive, non-overlapping 15 s windows; a final
  remainder of at least the minimum length (1 s) is kept as a shorter window, a shorter one is
  dropped (under a second, it is below what the model takes without tiling). The caller embeds the
  windows and averages them weighted by their duration (:meth:`AudioProcessor.windows` returns the
  weights). A clip within the cap gives exactly one window, identical to ``"truncate"``.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F

from ..errors import DecodeError, InputError, MissingDependencyError, OnePeaceWarning, not_the_input
from .inputs import describe, open_binary

LONG_AUDIO_MODES = ("truncate", "chunk")


def check_long_audio(mode: str) -> str:
    """``mode`` if it is one of :data:`LONG_AUDIO_MODES`; an InputError otherwise."""
    if mode not in LONG_AUDIO_MODES:
        raise InputError(f"long_audio must be one of {', '.join(LONG_AUDIO_MODES)}, got {mode!r}")
    return mode


#: file name extensions of the audio formats read (through libsndfile); folders are searched for these
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
#: libsndfile's frame count for a file whose length it does not know (SF_COUNT_MAX, e.g. a FLAC
#: whose header leaves its total samples 0, as one written to a pipe does)
_UNKNOWN_FRAMES = 1 << 62
#: what is said of a WAV whose header declares no samples once FFmpeg has read it to its end
_NO_SAMPLES_DECLARED = "its header declares no samples (a recording that was never finished?): read to the end of the file"


def _av():
    try:
        import av
    except ImportError:
        raise MissingDependencyError("decoding this file needs PyAV (FFmpeg): pip install 'onepeace[video]'") from None
    return av


def _has_av() -> bool:
    try:
        _av()
    except MissingDependencyError:
        return False
    return True


def _why(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return str(msg).split(": '")[0].rstrip(".")


def _unsized(frames: int) -> bool:
    """Whether libsndfile's frame count says nothing of a file's length: 0 (a header that declares
    no samples, a recording never finished) or endless (a length the header leaves unknown; its
    reads then fail part way). FFmpeg reads such a file to its end."""
    return frames == 0 or frames >= _UNKNOWN_FRAMES


def stem_frames(num_samples: int, stem: list[tuple[int, int, int]] | list[list[int]]) -> int:
    """Frames the conv stem makes from ``num_samples`` (no padding in the convs)."""
    t = num_samples
    for _, k, s in stem:
        t = (t - k) // s + 1
    return t


def stem_samples(num_frames: int, stem: list[tuple[int, int, int]] | list[list[int]]) -> int:
    """The fewest samples from which the conv stem makes ``num_frames`` frames: frame ``i`` reads
    only samples the first ``stem_samples(i + 1)`` hold, so cutting a padded waveform there leaves
    its frames unchanged."""
    n = num_frames
    for _, k, s in reversed(stem):
        n = (n - 1) * s + k
    return n


def resample(wav: np.ndarray, sr: int, target: int) -> np.ndarray:
    """librosa 0.10 ``resample(res_type='soxr_hq')``: soxr HQ, then pad/trim to ceil(n*ratio)."""
    if sr == target:
        return wav
    out = soxr.resample(wav, sr, target, quality="HQ")
    n = int(math.ceil(wav.shape[-1] * float(target) / sr))
    if out.shape[-1] < n:
        out = np.pad(out, (0, n - out.shape[-1]))
    return np.ascontiguousarray(out[:n], dtype=np.float32)


def load_audio(item: Any, sample_rate: int = 16000) -> np.ndarray:
    """Any accepted audio input -> float32 mono waveform at ``sample_rate``."""
    rate = sample_rate
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], (int, np.integer)):
        item, rate = item
    if isinstance(item, (np.ndarray, torch.Tensor)):
        a = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        if a.ndim == 2:  # channels x samples (torch style) or samples x channels
            a = a.mean(axis=0) if a.shape[0] < a.shape[1] else a.mean(axis=1)
        if a.ndim != 1:
            raise InputError(f"audio array of shape {a.shape} is not [samples] or 2-D channels")
        wav = a.astype(np.float32)
    else:
        wav, rate = _decode_file(item)
    if wav.size == 0:
        raise InputError(f"audio {describe(item)} has no samples")
    if not np.isfinite(wav).all():
        raise InputError(f"audio {describe(item)} contains NaN or infinite samples")
    return resample(np.ascontiguousarray(wav), int(rate), sample_rate)


def _decode_file(item: Any) -> tuple[np.ndarray, int]:
    """A path, bytes or binary file object -> (float32 mono waveform, its rate), through
    libsndfile, or FFmpeg for a file whose header gives no length (:func:`_unsized`)."""
    stream = open_binary(item, "audio")
    try:
        with sf.SoundFile(stream) as f:
            declared, rate, container = f.frames, f.samplerate, f.format
            by_av = _unsized(declared) and _has_av()
            data = None if by_av else _read_all(f, item)
    except Exception as e:  # noqa: BLE001 - libsndfile reports many kinds of bad files
        if not_the_input(e):  # out of memory, a missing module: not the file's fault
            raise
        reason = str(e).removeprefix(f"Error opening {stream!r}: ").rstrip(".")
        raise DecodeError(
            f"cannot decode audio {describe(item)}: {reason}. Give a file in one of the formats "
            f"{', '.join(x.lstrip('.') for x in AUDIO_EXTENSIONS)}"
        ) from None
    if data is None:
        data, rate = _read_with_av(item, stream.getvalue())
        if declared == 0 and data.size:
            warnings.warn(f"audio {describe(item)}: {_NO_SAMPLES_DECLARED}", OnePeaceWarning, stacklevel=3)
    else:
        _warn_if_cut_short(item, stream.getvalue(), container, declared, len(data), rate)
    return (data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]), rate


def _read_all(f: sf.SoundFile, item: Any) -> np.ndarray:
    """All of an open file, [frames, channels]. Of unknown length (without PyAV to read it whole):
    block by block up to where libsndfile's reads fail, with a warning saying where."""
    if f.frames < _UNKNOWN_FRAMES:
        return f.read(dtype="float32", always_2d=True)
    parts, block = [], 1 << 16
    while True:
        try:
            parts.append(f.read(block, dtype="float32", always_2d=True))
        except Exception as e:  # noqa: BLE001 - libsndfile's reads of a file of unknown length fail part way
            if not_the_input(e):
                raise
            read = sum(len(p) for p in parts)
            warnings.warn(f"audio {describe(item)}: libsndfile stopped at {read / f.samplerate:.1f} s of a file "
                          f"of unknown length ({str(e).rstrip('.')}); to read all of it install PyAV: "
                          "pip install 'onepeace[video]'", OnePeaceWarning, stacklevel=4)
            break
        if len(parts[-1]) < block:
            break
    return np.concatenate(parts) if parts else np.zeros((0, f.channels), np.float32)


def _read_with_av(item: Any, raw: bytes) -> tuple[np.ndarray, int]:
    """A whole file through FFmpeg at its own rate and channels: ([frames, channels] float32, rate).
    Decoding that fails part way keeps what was decoded, with a warning."""
    av = _av()
    try:
        container = av.open(io.BytesIO(raw), mode="r")
    except av.error.FFmpegError as e:
        raise DecodeError(f"cannot decode audio {describe(item)}: its header gives no length and FFmpeg "
                          f"cannot read it ({_why(e)})") from None
    parts, rate = [], 0
    with container:
        if not container.streams.audio:
            raise DecodeError(f"cannot decode audio {describe(item)}: FFmpeg finds no audio track in it")
        resampler = av.AudioResampler(format="flt")  # packed float32, the file's own rate and channels
        try:
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    rate = out.sample_rate
                    parts.append(out.to_ndarray().reshape(-1, len(out.layout.channels)))
        except av.error.FFmpegError as e:
            read = sum(len(p) for p in parts) / (rate or 1)
            warnings.warn(f"audio {describe(item)}: decoding stopped at {read:.1f} s ({_why(e)}); the file is "
                          "truncated or corrupt (only what was read is used)", OnePeaceWarning, stacklevel=4)
        rate = rate or container.streams.audio[0].rate or 1
    return (np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)), int(rate)


def _declared_frames(container: str, frames: int, head: bytes) -> int:
    """The length a file's header declares, in frames, where it is evidence of where decoding
    should stop: libsndfile's frame count; a WAV's data chunk size (which libsndfile clamps to the
    bytes present); 0 for an MP3 without a Xing/Info/VBRI header, whose count libsndfile guesses
    from the file size and the first frame's bit rate, and for a length left unknown (endless).
    ``head``: the file's first bytes."""
    if frames >= _UNKNOWN_FRAMES:
        return 0
    if container == "WAV":
        frames = max(frames, _wav_declared_frames(head) or 0)
    if container == "MP3" and not _mp3_tells_length(head):
        frames = 0
    return frames


def _mp3_tells_length(head: bytes) -> bool:
    """Whether an MP3 says how long it is: a Xing/Info (LAME) or VBRI header in its first frame,
    after any ID3v2 tag (False when the tag is longer than ``head``)."""
    i = 0
    if head[:3] == b"ID3" and len(head) >= 10:
        size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F)
        i = 10 + size + (10 if head[5] & 0x10 else 0)
    while 0 <= i < len(head) - 1 and not (head[i] == 0xFF and head[i + 1] & 0xE0 == 0xE0):  # the frame sync
        i = head.find(b"\xff", i + 1)
    if i < 0 or i >= len(head) - 1:
        return False
    first = head[i : i + 200]  # the tag sits after the side information (at most 36 bytes in)
    return any(tag in first for tag in (b"Xing", b"Info", b"VBRI"))


def _warn_if_cut_short(item: Any, raw: bytes, container: str, declared: int, read: int, rate: int) -> None:
    """Warn (:class:`OnePeaceWarning`) when decoding stopped before the end the file declares
    (:func:`_declared_frames`), or, for Ogg (no length in any header), the end-of-stream page
    every complete Ogg stream ends with."""
    declared = _declared_frames(container, declared, raw)
    if read < declared:
        cut = f"decoding stopped at {read / rate:.1f} s of {declared / rate:.1f} s"
    elif container == "OGG" and read and not _ogg_ends_whole(raw):
        cut = f"decoding stopped at {read / rate:.1f} s, before the end of its stream"
    else:
        return
    warnings.warn(f"audio {describe(item)}: {cut}; the file is truncated or corrupt (only what was read is used)",
                  OnePeaceWarning, stacklevel=4)


def _wav_declared_frames(raw: bytes) -> int | None:
    """Frames a RIFF/WAVE header declares (its data chunk size over the block size), or None."""
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return None
    pos, block = 12, 0
    while pos + 8 <= len(raw):
        cid, size = raw[pos : pos + 4], int.from_bytes(raw[pos + 4 : pos + 8], "little")
        if cid == b"fmt " and pos + 22 <= len(raw):
            block = int.from_bytes(raw[pos + 20 : pos + 22], "little")
        elif cid == b"data":
            # 0 and 0xFFFFFFFF: a stream written without knowing its length
            return size // block if block and size not in (0, 0xFFFFFFFF) else None
        pos += 8 + size + (size & 1)
    return None


def _ogg_crc(page: bytes) -> int:
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_TABLE[((crc >> 24) ^ byte) & 0xFF]
    return crc


def _ogg_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if r & 0x80000000 else (r << 1) & 0xFFFFFFFF
        table.append(r)
    return table


_OGG_TABLE = _ogg_table()


def _ogg_ends_whole(raw: bytes) -> bool:
    """Whether an Ogg file ends with a whole page (its checksum right) that closes its stream (the
    end-of-stream flag): the last valid page found from the end must be both."""
    end = len(raw)
    while (i := raw.rfind(b"OggS", 0, end)) >= 0:
        end = i
        if i + 27 > len(raw) or raw[i + 4] != 0:
            continue
        nseg = raw[i + 26]
        stop = i + 27 + nseg + sum(raw[i + 27 : i + 27 + nseg])
        if stop > len(raw):
            continue  # a page cut short
        page = raw[i:stop]
        if _ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) != int.from_bytes(page[22:26], "little"):
            continue  # "OggS" inside a packet, or a damaged page
        return stop == len(raw) and bool(raw[i + 5] & 0x04)
    return False


class AudioProcessor:
    """Batch of clips -> ``{"waveform": [B, S], "padding_mask": [B, T+1]}`` (True = padding)."""

    def __init__(
        self,
        stem: list[tuple[int, int, int]],
        sample_rate: int = 16000,
        max_seconds: float = 15.0,
        min_seconds: float = 1.0,
    ):
        self.stem = [tuple(s) for s in stem]
        self.sample_rate = sample_rate
        self.max_samples = int(sample_rate * max_seconds)
        self.min_samples = int(sample_rate * min_seconds)

    def normalized(self, item: Any) -> torch.Tensor:
        """The whole clip at the model's rate, normalised with its own statistics (no cap)."""
        wav = torch.from_numpy(load_audio(item, self.sample_rate))
        return F.layer_norm(wav, wav.shape)  # statistics of the whole clip, before the cap

    def _fit(self, wav: torch.Tensor, item: Any) -> torch.Tensor:
        """Tile a window under the minimum; refuse one the conv stem cannot take."""
        if wav.numel() < self.min_samples:
            wav = wav.repeat(math.ceil(self.min_samples / wav.numel()))[: self.min_samples]
        if stem_frames(wav.numel(), self.stem) < 1:
            raise InputError(f"audio {describe(item)} is too short for the conv stem")
        return wav

    def load(self, item: Any) -> np.ndarray:
        """Decode one input now (checking it): a mono waveform at the model's rate, which the
        processor takes later."""
        return load_audio(item, self.sample_rate)

    def one(self, item: Any) -> torch.Tensor:
        """One clip, capped at ``max_seconds`` silently (training data loaders use this)."""
        return self._fit(self.normalized(item)[: self.max_samples], item)

    def sample(self, item: Any, *, train: bool = False, rng: Any = None) -> torch.Tensor:
        """One clip for a data loader (the data-loader protocol with :meth:`collate`): :meth:`one`."""
        return self.one(item)

    def windows(self, item: Any, long_audio: str = "truncate") -> tuple[list[torch.Tensor], list[float]]:
        """The windows to embed for one clip and their weights (seconds of audio each covers).

        ``"truncate"``: one window, the first ``max_seconds``, with a warning when the clip is
        longer. ``"chunk"``: consecutive ``max_seconds`` windows; a final remainder shorter than
        ``min_seconds`` is dropped unless it is the whole clip.
        """
        check_long_audio(long_audio)
        wav = self.normalized(item)
        n, cap = wav.numel(), self.max_samples
        if n <= cap:
            return [self._fit(wav, item)], [n / self.sample_rate]
        if long_audio == "truncate":
            warnings.warn(
                f"audio {describe(item)} is {n / self.sample_rate:.1f} s long; only its first "
                f"{cap / self.sample_rate:g} s are used (the model's cap). To use all of it, average "
                f"{cap / self.sample_rate:g} s windows: embed/zeroshot --long-audio chunk (Python: long_audio='chunk')",
                OnePeaceWarning,
                stacklevel=2,
            )
            return [self._fit(wav[:cap], item)], [cap / self.sample_rate]
        starts = [s for s in range(0, n, cap) if s == 0 or n - s >= self.min_samples]
        parts = [wav[s : s + cap] for s in starts]
        return [self._fit(p, item) for p in parts], [p.numel() / self.sample_rate for p in parts]

    def collate(self, wavs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        longest = max(w.numel() for w in wavs)
        frames = [stem_frames(w.numel(), self.stem) for w in wavs]
        t_max = stem_frames(longest, self.stem)
        wave = torch.zeros(len(wavs), longest)
        mask = torch.ones(len(wavs), t_max + 1, dtype=torch.bool)
        for i, (w, t) in enumerate(zip(wavs, frames)):
            wave[i, : w.numel()] = w
            mask[i, : t + 1] = False
        return {"waveform": wave, "padding_mask": mask}

    # -- variable-length batches (onepeace.model.packing): real lengths, and sub-batches without padding
    def lengths(self, batch: dict[str, torch.Tensor]) -> list[int]:
        """Encoder tokens of each row of a processed batch (the CLS and the clip's frames)."""
        mask = batch.get("padding_mask")
        if mask is None:
            wave = batch["waveform"]
            return [stem_frames(wave.shape[1], self.stem) + 1] * wave.shape[0]
        return (~mask).sum(1).tolist()

    def select(self, batch: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
        """Rows ``rows`` of a processed batch, the waveforms cut to the samples the longest of them
        needs (:func:`stem_samples`) and the mask to its frames: the stem computes no padding."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        wave = batch["waveform"][idx]
        mask = batch.get("padding_mask")
        if mask is None:
            return {"waveform": wave}
        mask = mask[idx]
        t = int((~mask).sum(1).max())
        return {"waveform": wave[:, : stem_samples(t - 1, self.stem)], "padding_mask": mask[:, :t]}

    def __call__(self, items: list[Any]) -> dict[str, torch.Tensor]:
        """One window per clip (the first ``max_seconds``; longer clips warn)."""
        if not items:
            raise InputError("no audio given")
        return self.collate([self.windows(i)[0][0] for i in items])
