"""Audio preprocessing identical to the official hub (``OnePeaceHubInterface.process_audio`` in
one_peace/models/one_peace/hub_interface.py of github.com/OFA-Sys/ONE-PEACE).

Any format soundfile reads, any rate and channel count -> 16 kHz mono (channel mean, soxr HQ as
librosa 0.10 does, length fixed to ceil(n * ratio)), whole-clip normalisation, *then* the length
cap, clips under the minimum tiled. Arrays and tensors are taken as 16 kHz mono unless a rate is
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

import math
import warnings
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F

from ..errors import DecodeError, InputError, OnePeaceWarning, not_the_input
from .inputs import describe, open_binary

LONG_AUDIO_MODES = ("truncate", "chunk")


def check_long_audio(mode: str) -> str:
    """``mode`` if it is one of :data:`LONG_AUDIO_MODES`; an InputError otherwise."""
    if mode not in LONG_AUDIO_MODES:
        raise InputError(f"long_audio must be one of {', '.join(LONG_AUDIO_MODES)}, got {mode!r}")
    return mode


#: file name extensions of the audio formats read (through libsndfile); folders are searched for these
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")


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
        stream = open_binary(item, "audio")
        try:
            with sf.SoundFile(stream) as f:
                declared, rate, container = f.frames, f.samplerate, f.format
                data = f.read(dtype="float32", always_2d=True)
        except Exception as e:  # noqa: BLE001 - libsndfile reports many kinds of bad files
            if not_the_input(e):  # out of memory, a missing module: not the file's fault
                raise
            reason = str(e).removeprefix(f"Error opening {stream!r}: ").rstrip(".")
            raise DecodeError(
                f"cannot decode audio {describe(item)}: {reason}. Give a file in one of the formats "
                f"{', '.join(x.lstrip('.') for x in AUDIO_EXTENSIONS)}"
            ) from None
        _warn_if_cut_short(item, stream.getvalue(), container, declared, len(data), rate)
        wav = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if wav.size == 0:
        raise InputError(f"audio {describe(item)} has no samples")
    if not np.isfinite(wav).all():
        raise InputError(f"audio {describe(item)} contains NaN or infinite samples")
    return resample(np.ascontiguousarray(wav), int(rate), sample_rate)


def _warn_if_cut_short(item: Any, raw: bytes, container: str, declared: int, read: int, rate: int) -> None:
    """Warn (:class:`OnePeaceWarning`) when decoding stopped before the end the file declares: the
    length in its header (libsndfile's frame count; a WAV's data chunk size, which libsndfile
    clamps to the bytes present), or, for Ogg (no length in any header), the end-of-stream page
    every complete Ogg stream ends with."""
    if container == "WAV":
        declared = max(declared, _wav_declared_frames(raw) or 0)
    if read < declared:
        cut = f"decoding stopped at {read / rate:.1f} s of {declared / rate:.1f} s"
    elif container == "OGG" and read and not _ogg_ends_whole(raw):
        cut = f"decoding stopped at {read / rate:.1f} s, before the end of its stream"
    else:
        return
    warnings.warn(f"audio {describe(item)}: {cut}; the file is truncated or corrupt (only what was read is used)",
                  OnePeaceWarning, stacklevel=3)


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
