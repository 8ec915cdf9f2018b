"""WebDataset-layout tar shards: written here with :mod:`tarfile`, read with :mod:`webdataset`.

A sample is a run of consecutive tar members sharing a key: ``{key}.{ext}`` holds the bytes of one
media field per modality (the original file, copied as-is, or PNG / 16 kHz FLAC for in-memory image
and audio arrays) and ``{key}.json`` holds the caption and metadata (``{"text": ..., "label": ...,
"id": ..., ...}``). A member's extension names its modality: any that a registered modality's
plug-in lists in ``file_extensions``, or the modality's own name (``.image``, ``.video``). Shards
are named ``{prefix}-000000.tar``, ``{prefix}-000001.tar``, ... and each is written to a temporary
name first; all are renamed once the last one is complete (and shards of an earlier, longer run
with the same prefix removed), so a crash never leaves a half-written shard under a real name, nor
a new data set mixed with an old one (but for the instant of the renames).

Reading goes through webdataset's opener and tar iterator, so a shard may be a local path, a
``pipe:COMMAND`` whose standard output is the tar (``pipe:aws s3 cp s3://b/s-0.tar -``), or a
URL (``https://...``), and a source may use webdataset's brace notation
(``shard-{000000..000099}.tar``).
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from ..errors import InputError, not_the_input
from .manifest import media_modalities, read_manifest

log = logging.getLogger(__name__)

AUDIO_RATE = 16000


@dataclass
class ShardStats:
    """What a shard writer did: shard paths, samples written, samples skipped (missing files)."""

    paths: list[str] = field(default_factory=list)
    samples: int = 0
    skipped: int = 0


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def sniff_ext(data: bytes) -> str | None:
    """The file type of media bytes from their magic number, or None."""
    head = bytes(data[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[4:8] == b"ftyp":
        return "mov" if head[8:10] == b"qt" else "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "mkv"  # Matroska / WebM
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def _pick_ext(kind: str, data: bytes, filename: str | None = None) -> str:
    """Extension for a member: the file's own when the modality's plug-in reads it, else the
    sniffed type when it does, else the modality's name (the processor decodes by content)."""
    own = {e for e, m in media_extensions().items() if m == kind}
    if filename:
        ext = os.path.splitext(filename)[1].lower().lstrip(".")
        if ext in own:
            return ext
    ext = sniff_ext(data)
    return ext if ext in own else kind


def _encode_image(item: Any) -> bytes:
    from PIL import Image

    from ..processing.image import load_image

    if isinstance(item, Image.Image):
        img = item if item.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16") else item.convert("RGB")
    else:
        img = load_image(item)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _encode_audio(item: Any) -> bytes:
    """Array / tensor / ``(array, rate)`` -> 16 kHz mono FLAC (16-bit). Clips louder than full
    scale are scaled down (the model normalises every clip, so the gain does not matter)."""
    import soundfile as sf

    from ..processing.audio import load_audio

    wav = load_audio(item, AUDIO_RATE)
    peak = float(np.abs(wav).max())
    if peak > 1.0:
        wav = wav / peak
    buf = io.BytesIO()
    sf.write(buf, wav, AUDIO_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


#: in-memory values (arrays, PIL images, tensors) the writer can encode, per modality; any
#: modality's files and raw bytes are copied as they are
ENCODERS = {"image": (_encode_image, "png"), "audio": (_encode_audio, "flac")}


def _media_bytes(kind: str, item: Any) -> tuple[bytes, str]:
    """(bytes, extension) for one media value of a sample."""
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{kind} file not found: {path}")
        with open(path, "rb") as f:
            data = f.read()
        if not data:
            raise FileNotFoundError(f"{kind} file is empty: {path}")
        return data, _pick_ext(kind, data, path)
    if isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
        if not data:
            raise InputError(f"{kind} bytes are empty")
        return data, _pick_ext(kind, data)
    if kind in ENCODERS and (kind == "image" or isinstance(item, (np.ndarray, torch.Tensor, tuple))):
        encode, ext = ENCODERS[kind]
        return encode(item), ext
    what = {"image": "a PIL image or an array", "audio": "an array or (array, sample_rate)"}.get(kind)
    raise InputError(f"unsupported {kind} value of type {type(item).__name__}: give a path or bytes"
                     + (f", {what}" if what else f" (the shard writer encodes no in-memory {kind})"))


def _sample_record(sample: Any, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """({modality: media value}, json metadata) of one in-memory sample, with clear errors."""
    where = f"sample {index}"
    if not isinstance(sample, dict):
        raise InputError(f"{where}: a sample must be a dict, got {type(sample).__name__}")
    names = media_modalities()
    media = {k: sample[k] for k in names if k in sample}
    if not media:
        raise InputError(f"{where}: a sample needs a media field (one of {', '.join(names)}); it has none")
    meta = {k: v for k, v in sample.items() if k not in media}
    if not isinstance(meta.get("text"), str):
        raise InputError(f"{where}: 'text' must be a string caption, got {meta.get('text')!r}")
    label = meta.get("label")
    if "label" in meta and (isinstance(label, bool) or not isinstance(label, (int, np.integer))):
        raise InputError(f"{where}: 'label' must be an integer, got {label!r}")
    if "label" in meta:
        meta["label"] = int(label)
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: metadata is not JSON-serialisable: {e}") from None
    return media, meta


def _existing_shards(out_dir: str, prefix: str) -> list[str]:
    pat = os.path.join(glob.escape(out_dir), f"{glob.escape(prefix)}-[0-9][0-9][0-9][0-9][0-9][0-9].tar")
    return sorted(glob.glob(pat))


def check_shard_output(out_dir: str | os.PathLike, prefix: str = "shard", overwrite: bool = False) -> list[str]:
    """Check, before any work, that shards ``{prefix}-*.tar`` may be written into ``out_dir``
    (created if absent; other files are left alone); returns the existing shards of that prefix.
    Temporary shards left by a killed writer are deleted."""
    from ..outputs import check_creatable, process_alive

    out_dir = os.fspath(out_dir)
    if not prefix or os.sep in prefix or "." in prefix:
        raise InputError(f"shard prefix must be a plain name without '.' or '{os.sep}', got {prefix!r}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"shard output is not a directory: {out_dir}")
    check_creatable(out_dir)
    if not os.path.isdir(out_dir):
        return []
    old = _existing_shards(out_dir, prefix)
    if old and not overwrite:
        raise InputError(
            f"{out_dir} already holds {len(old)} shard(s) named {prefix}-*.tar; choose another "
            "directory or prefix, or replace them (--force / overwrite=True)"
        )
    pat = os.path.join(glob.escape(out_dir), f"{glob.escape(prefix)}-[0-9][0-9][0-9][0-9][0-9][0-9].tar.tmp-*")
    for tmp in glob.glob(pat):
        pid = tmp.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            os.remove(tmp)
    return old


class _ShardWriter:
    def __init__(self, out_dir: str, prefix: str, samples_per_shard: int):
        self.out_dir, self.prefix, self.per = out_dir, prefix, samples_per_shard
        self.stats = ShardStats()
        self._tar: tarfile.TarFile | None = None
        self._tmp = self._final = ""
        self._in_shard = 0
        self._done: list[tuple[str, str]] = []  # complete shards: (temporary name, final name)

    def _open(self) -> None:
        self._final = os.path.join(self.out_dir, shard_name(self.prefix, len(self._done)))
        self._tmp = f"{self._final}.tmp-{os.getpid()}"
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT)
        self._in_shard = 0

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0  # reproducible shards
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, key: str, media: list[tuple[bytes, str]], meta: dict[str, Any]) -> None:
        if self._tar is None:
            self._open()
        for data, ext in media:
            self._add(f"{key}.{ext}", data)
        self._add(f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        self._in_shard += 1
        self.stats.samples += 1
        if self._in_shard >= self.per:
            self.close()

    def close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tar = None
        self._done.append((self._tmp, self._final))

    def commit(self) -> None:
        """Rename every complete shard to its real name."""
        for tmp, final in self._done:
            os.replace(tmp, final)
            self.stats.paths.append(final)
        self._done = []

    def abort(self) -> None:
        try:
            if self._tar is not None:
                self._tar.close()
        finally:
            self._tar = None
            for tmp in [t for t, _ in self._done] + [self._tmp]:
                if tmp and os.path.exists(tmp):
                    os.remove(tmp)
            self._done = []


def write_shards_stats(
    samples: Iterable[dict[str, Any]],
    out_dir: str | os.PathLike,
    samples_per_shard: int = 1000,
    prefix: str = "shard",
    *,
    overwrite: bool = False,
    skip_missing: bool = False,
) -> ShardStats:
    """:func:`write_shards_from_samples`, returning a :class:`ShardStats` (paths and counts)."""
    out_dir = os.fspath(out_dir)
    if isinstance(samples_per_shard, bool) or not isinstance(samples_per_shard, int) or samples_per_shard < 1:
        raise InputError(f"samples_per_shard must be a positive integer, got {samples_per_shard!r}")
    old = check_shard_output(out_dir, prefix, overwrite)
    os.makedirs(out_dir, exist_ok=True)
    writer = _ShardWriter(out_dir, prefix, samples_per_shard)
    try:
        for i, sample in enumerate(samples):
            items, meta = _sample_record(sample, i)
            try:
                media = []
                for kind, item in items.items():
                    media.append(_media_bytes(kind, item))
            except (FileNotFoundError, OSError) as e:
                msg = str(e) if isinstance(e, FileNotFoundError) else f"cannot read {kind} {item}: {e.strerror or e}"
                if not skip_missing:
                    raise InputError(f"sample {i}: {msg} (skip such samples with skip_missing=True / --skip-missing)") from None
                log.warning("skipping sample %d: %s", i, msg)
                writer.stats.skipped += 1
                continue
            exts = [ext for _, ext in media]
            if len(set(exts)) < len(exts):
                raise InputError(f"sample {i}: two media fields would share the member extension "
                                 f"{exts}; give files whose extensions tell their modality apart")
            writer.write(f"{writer.stats.samples:09d}", media, meta)
        writer.close()
        if writer.stats.samples == 0:
            raise InputError("no samples to write" + (f" ({writer.stats.skipped} skipped)" if writer.stats.skipped else ""))
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    stale = sorted(set(old) - set(writer.stats.paths))
    for p in stale:  # overwrite=True: shards of an earlier, longer run would otherwise be read too
        os.remove(p)
    return writer.stats


def write_shards_from_samples(
    samples: Iterable[dict[str, Any]],
    out_dir: str | os.PathLike,
    samples_per_shard: int = 1000,
    prefix: str = "shard",
    *,
    overwrite: bool = False,
    skip_missing: bool = False,
) -> list[str]:
    """Write samples (dicts with ``text`` and one of ``image`` / ``audio``) as tar shards.

    A media value may be a path (bytes copied as-is), raw bytes (copied; extension sniffed), a
    PIL image or an image array (encoded as PNG), or an audio array / tensor, optionally as
    ``(array, sample_rate)`` (resampled and encoded as 16 kHz FLAC; bare arrays are taken as
    16 kHz). Every other key (``text``, ``label``, ``id``, ...) goes into ``{key}.json``.
    Returns the shard paths. Existing ``{prefix}-*.tar`` in ``out_dir`` are an error unless
    ``overwrite``; a missing media file is an error unless ``skip_missing``.
    """
    return write_shards_stats(
        samples, out_dir, samples_per_shard, prefix, overwrite=overwrite, skip_missing=skip_missing
    ).paths


def write_shards(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    samples_per_shard: int = 1000,
    prefix: str = "shard",
    *,
    overwrite: bool = False,
    skip_missing: bool = False,
) -> list[str]:
    """Pack the samples of a JSONL manifest into tar shards (media bytes copied as-is)."""
    samples = read_manifest(manifest_path)
    if not samples:
        raise InputError(f"manifest {os.fspath(manifest_path)} has no samples")
    return write_shards_from_samples(
        samples, out_dir, samples_per_shard, prefix, overwrite=overwrite, skip_missing=skip_missing
    )


def media_extensions() -> dict[str, str]:
    """Shard member extension (no dot, lower case) -> modality, for every registered modality that
    reads files: its plug-in's ``file_extensions`` plus its name as a generic extension."""
    from ..modalities import get_modality, registered_modalities

    out: dict[str, str] = {}
    for m in registered_modalities():
        exts = get_modality(m).file_extensions
        if exts:
            for e in (*exts, m):
                out.setdefault(e.lower().lstrip("."), m)
    return out


def is_url(spec: str) -> bool:
    """True for a shard address webdataset opens itself: ``pipe:COMMAND``, ``http(s)://``,
    ``s3://``, ``gs://``, ``file:``... (one-letter schemes are Windows drives, not URLs)."""
    if os.path.exists(spec):  # a local file whose name has a colon is still a file
        return False
    scheme = urlparse(spec).scheme
    return len(scheme) > 1 or spec.startswith("pipe:")


def expand_shards(spec: str) -> list[str]:
    """A webdataset shard spec -> shard addresses: ``::`` separates lists, braces expand
    (``data/shard-{000000..000009}.tar``, ``pipe:curl -s https://host/s-{0..3}.tar``)."""
    from webdataset.shardlists import expand_urls

    return [u for u in expand_urls(spec) if u]


def _open_shard(url: str):
    from webdataset.gopen import gopen

    local = not is_url(url)
    if local and not os.path.isfile(url):
        raise InputError(f"shard not found: {url}")
    try:
        return open(url, "rb") if local else gopen(url, "rb")
    except Exception as e:  # noqa: BLE001 - gopen raises what the scheme's opener raises
        if not_the_input(e):  # too many open files, out of memory: the machine's fault, not the shard's
            raise
        raise InputError(f"cannot open shard {url}: {e}") from None


def _close_quietly(stream: Any) -> str | None:
    """Close a shard stream; a ``pipe:`` command's failure (exit status) comes back as a string."""
    try:
        stream.close()
    except Exception as e:  # noqa: BLE001 - webdataset's Pipe raises IOError on a bad exit status
        return str(e)
    return None


def iter_shard(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield the samples of one shard as ``{"__key__", "__shard__", ext: bytes, ...}``.

    The shard is read by :mod:`webdataset` (a local path, a ``pipe:`` command or a URL) and its
    members grouped by key (the member name up to the first dot of its base name); the ``json``
    member stays raw bytes (see :func:`decode_record`). A missing, unopenable, corrupt or
    truncated shard, or a ``pipe:`` command that fails, raises :class:`InputError` naming the
    shard, after the samples read before the fault.
    """
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    url = os.fspath(path)
    stream = _open_shard(url)
    status = None
    try:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
        for sample in group_by_keys(files):
            sample["__shard__"] = sample.pop("__url__", url)
            yield sample
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        if not_the_input(e):
            raise
        status = _close_quietly(stream)
        raise InputError(f"corrupt or truncated shard {url}: {status or e}") from None
    finally:
        # closing twice is harmless; a reader that stopped early ends a pipe on SIGPIPE: no error
        status = _close_quietly(stream)
    if status:
        raise InputError(f"shard {url} could not be read to the end: {status}")


def decode_record(sample: dict[str, Any]) -> dict[str, Any]:
    """A raw shard sample -> a record like a manifest line, the media as bytes:
    ``{"text": str, <modality>: bytes, ..., "label"?: int, "id": str, ...}``. Every member whose
    extension belongs to a registered modality (:func:`media_extensions`) becomes that modality's
    field; two members of one modality are an error."""
    where = f"{sample.get('__shard__', '?')}:{sample.get('__key__', '?')}"
    if "json" not in sample:
        raise InputError(f"sample {where} has no .json member (caption)")
    try:
        meta = json.loads(sample["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"sample {where}: invalid .json member ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("text"), str):
        raise InputError(f"sample {where}: .json member has no 'text' string")
    exts = media_extensions()
    found: dict[str, str] = {}
    for ext in sorted(k for k in sample if not k.startswith("__") and k != "json"):
        kind = exts.get(ext)
        if kind is None:
            continue
        if kind in found:
            raise InputError(f"sample {where} has two {kind} members (.{found[kind]}, .{ext})")
        found[kind] = ext
    if not found:
        other = sorted(k for k in sample if not k.startswith("__") and k != "json")
        raise InputError(f"sample {where} has no media member of a registered modality "
                         f"({', '.join(sorted(set(exts.values())))}; members: {other or 'none'})")
    label = meta.get("label")
    if "label" in meta and (isinstance(label, bool) or not isinstance(label, int)):
        raise InputError(f"sample {where}: 'label' must be an integer, got {label!r}")
    rec = dict(meta)
    for kind, ext in found.items():
        rec[kind] = sample[ext]
    rec.setdefault("id", where)
    return rec
