"""The pairs ``onepeace adapt`` trains on: reading them, the held-out split, decoding and batching.

DATA is either

* a JSONL manifest (:mod:`onepeace.data.manifest`'s reader): one pair per line, two modality
  fields, e.g. ``{"audio": "clips/a.wav", "text": "a dog barks"}`` or ``{"image": ..., "text": ...}``
  (any two of ``text`` and the registered media modalities; media paths relative to the manifest's
  folder; other fields are ignored); every line pairs the same two modalities; or
* a folder: every media file under it (searched recursively, by extension) is paired with a caption:
  the text of a sidecar file of the same stem (``dog_01.wav`` + ``dog_01.txt``) or, failing that,
  the name of the folder holding it, with ``_`` and ``-`` read as spaces (``dog_bark/01.wav`` ->
  ``"dog bark"``). A file directly in DATA needs a sidecar. One kind of media per folder.

A pair whose file is missing, empty or corrupt is skipped and counted (each bad file once) by a
:class:`~onepeace.errors.SkipGuard`: once :data:`~onepeace.errors.MIN_SKIP_SEEN` pairs were seen,
more than :data:`~onepeace.errors.MAX_SKIP_SHARE` (half) of them bad stops the run with a
:class:`~onepeace.errors.SkipLimitError`. Missing files are found before any training.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from onepeace.data.dataset import media_identity
from onepeace.data.manifest import iter_jsonl, media_modalities, resolve_media
from onepeace.errors import ConfigError, InputError, SkipGuard
from onepeace.modalities import Processor, get_modality
from onepeace.processing import split_companions

log = logging.getLogger(__name__)

#: at least this many usable pairs on each side of the split
MIN_PAIRS = 2


@dataclass
class Pairs:
    """Rows of one pair of modalities ``(a, b)`` (media first, text last): ``rows[i][a]`` is a
    path (media) or a caption (text). ``source`` names where they came from."""

    modalities: tuple[str, str]
    rows: list[dict[str, str]]
    source: str

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, index: list[int]) -> Pairs:
        return Pairs(self.modalities, [self.rows[i] for i in index], self.source)

    def files(self, row: dict[str, str]) -> list[str]:
        return [row[m] for m in self.modalities if m != "text"]


def _ordered(fields: list[str]) -> tuple[str, ...]:
    """Media first (registration order), text last: metric names read ``audio->text``."""
    return tuple(sorted(fields, key=lambda m: m == "text"))


def _manifest_pairs(path: str) -> Pairs:
    base = os.path.dirname(os.path.abspath(path))
    known = ("text", *media_modalities())
    rows: list[dict[str, str]] = []
    kinds: tuple[str, ...] | None = None
    for where, rec in iter_jsonl(path, "pairs manifest"):
        if not isinstance(rec, dict):
            raise InputError(f"{where}: a pair must be a JSON object, got {type(rec).__name__}")
        fields = _ordered([k for k in known if k in rec])
        if len(fields) != 2:
            raise InputError(f"{where}: a pair needs exactly two modality fields of {', '.join(known)}; it has "
                             f"{len(fields)}{' (' + ', '.join(fields) + ')' if fields else ''}")
        if kinds is None:
            kinds = fields
        elif fields != kinds:
            raise InputError(f"{where}: pairs {' and '.join(fields)}, but the lines before pair {' and '.join(kinds)}; "
                             "adapt trains one pair of modalities: split the manifest")
        row = {}
        for m in fields:
            value = rec[m]
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{where}: '{m}' must be a non-empty string, got {value!r}")
            row[m] = value if m == "text" else resolve_media(base, value)
        rows.append(row)
    if kinds is None:
        raise InputError(f"the pairs manifest {path} holds no pairs; give at least {2 * MIN_PAIRS} lines")
    return Pairs(kinds, rows, path)


def _caption(path: str, root: str) -> str | None:
    """A folder file's caption: its sidecar ``.txt``, else its folder's name (None directly in root)."""
    sidecar = os.path.splitext(path)[0] + ".txt"
    if os.path.isfile(sidecar):
        with open(sidecar, encoding="utf-8", errors="replace") as f:
            text = " ".join(f.read().split())
        if text:
            return text
    parent = os.path.dirname(path)
    if os.path.abspath(parent) == os.path.abspath(root):
        return None
    return " ".join(os.path.basename(parent).replace("_", " ").replace("-", " ").split()) or None


def _folder_pairs(root: str) -> Pairs:
    by_ext = {ext: m for m in media_modalities() for ext in get_modality(m).file_extensions}
    found: dict[str, list[str]] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            kind = by_ext.get(os.path.splitext(name)[1].lower())
            if kind and not name.startswith("."):
                found.setdefault(kind, []).append(os.path.join(folder, name))
    if not found:
        raise InputError(f"the folder {root} holds no media files ({', '.join(sorted(by_ext))}); give a folder of "
                         "media files with captions, or a JSONL manifest of pairs")
    if len(found) > 1:
        counts = ", ".join(f"{len(v)} {k}" for k, v in found.items())
        raise InputError(f"the folder {root} mixes media ({counts}); adapt trains one pair of modalities: "
                         "keep one kind of file per folder")
    (kind, files), = found.items()
    rows = []
    for path in files:
        caption = _caption(path, root)
        if caption is None:
            raise InputError(f"{path} has no caption: give it a sidecar {os.path.splitext(path)[0]}.txt, or put it "
                             "in a folder named after its label")
        rows.append({kind: os.path.abspath(path), "text": caption})
    return Pairs((kind, "text"), rows, root)


def read_pairs(source: str | os.PathLike) -> Pairs:
    """The pairs of a JSONL manifest or a folder (see the module docstring)."""
    src = os.fspath(source)
    if os.path.isdir(src):
        return _folder_pairs(src)
    if os.path.isfile(src):
        return _manifest_pairs(src)
    raise InputError(f"pairs not found: {src} (give a JSONL manifest of pairs or a folder of media files)")


def check_modalities(pairs: Pairs, model_modalities: list[str], what: str = "the pairs") -> None:
    lacking = [m for m in pairs.modalities if m not in model_modalities]
    if lacking:
        raise ConfigError(f"{what} ({pairs.source}) hold {lacking[0]}, but the model has no {lacking[0]} branch "
                          f"(it has {', '.join(model_modalities)}); adapt trains the branches a model has")


def split(pairs: Pairs, val: float | str | os.PathLike, seed: int) -> tuple[Pairs, Pairs]:
    """(train, held-out): a seeded fraction ``val`` of the pairs, or the pairs of ``val`` (a path)."""
    if not is_fraction(val):
        held = read_pairs(val)
        if held.modalities != pairs.modalities:
            raise InputError(f"the held-out pairs {held.source} pair {' and '.join(held.modalities)}, the training "
                             f"pairs {' and '.join(pairs.modalities)}: give held-out pairs of the same modalities")
        return pairs, held
    share = float(val)
    if not 0.0 < share < 1.0:
        raise ConfigError(f"--val must be a fraction between 0 and 1 (e.g. 0.1) or a file or folder, got {val}")
    order = list(range(len(pairs)))
    random.Random(f"onepeace-adapt-split:{seed}").shuffle(order)
    n_val = max(MIN_PAIRS, round(share * len(pairs)))
    return pairs.subset(sorted(order[n_val:])), pairs.subset(sorted(order[:n_val]))


def is_fraction(val: Any) -> bool:
    """Whether ``--val`` is a number (a share of the pairs), not a path (a file named "0.1" is a path)."""
    if isinstance(val, (int, float)):
        return True
    try:
        float(os.fspath(val))
    except (TypeError, ValueError):
        return False
    return not os.path.exists(os.fspath(val))


@dataclass
class Skips:
    """Bad files, each counted once, under one :class:`SkipGuard` for the whole run."""

    guard: SkipGuard
    bad: dict[str, str] = field(default_factory=dict)  # path -> reason

    def check_present(self, pairs: Pairs) -> Pairs:
        """``pairs`` without those whose files are missing (counted as skipped)."""
        kept = []
        for row in pairs.rows:
            missing = [f for f in pairs.files(row) if not os.path.isfile(f) and f not in self.bad]
            known_bad = any(f in self.bad for f in pairs.files(row))
            if missing:
                self.mark(missing[0], "file not found", counted=False)
            elif not known_bad:
                self.guard.ok()
            if not missing and not known_bad:
                kept.append(row)
        return Pairs(pairs.modalities, kept, pairs.source)

    def mark(self, path: str, reason: Any, *, counted: bool = True, quiet: bool = False) -> None:
        if path in self.bad:
            return
        self.bad[path] = str(reason)
        if not quiet:
            log.warning("skipping %s: %s", path, reason)
        self.guard.skip(counted=counted)


class Decoder:
    """Decodes one pair of modalities for the model and batches them."""

    def __init__(self, config, modalities: tuple[str, str], skips: Skips):
        self.proc = Processor(config)
        self.modalities = modalities
        self.skips = skips

    def decode(self, row: dict[str, str], train: bool, rng: random.Random) -> dict[str, Any] | None:
        """The processed pair, or None (counted) when one of its files cannot be read."""
        if any(row[m] in self.skips.bad for m in self.modalities if m != "text"):
            return None
        out = {}
        for m in self.modalities:
            try:
                p = self.proc.get(m)
                out[m] = p.encode(row[m]) if m == "text" else p.sample(row[m], train=train, rng=rng)
            except InputError as e:
                if m == "text":
                    raise
                self.skips.mark(row[m], e)
                return None
        return out

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, dict[str, torch.Tensor]]:
        batch = {}
        for m in self.modalities:
            items = [s[m] for s in samples]
            batch[m] = split_companions(self.proc.get(m).collate(items))[0]
        return batch


def identity(modality: str, value: str) -> str:
    """A row's item for retrieval: the caption itself, or the media file's resolved path."""
    return value if modality == "text" else media_identity(value)


class Stream:
    """Training batches in a seeded order, epoch after epoch; its position (``state``) is saved with
    each checkpoint, so a resumed run reads the same batches as an uninterrupted one."""

    def __init__(self, pairs: Pairs, decoder: Decoder, seed: int):
        self.pairs, self.decoder, self.seed = pairs, decoder, seed
        self.epoch, self.pos = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.pairs)))
        random.Random(f"onepeace-adapt-order:{self.seed}:{epoch}").shuffle(order)
        return order

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation(self.epoch)

    def next_batch(self, size: int) -> dict[str, dict[str, torch.Tensor]]:
        samples, tried = [], 0
        while len(samples) < size:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            i = self._order[self.pos]
            self.pos += 1
            tried += 1
            rng = random.Random(f"onepeace-adapt-aug:{self.seed}:{self.epoch}:{i}")
            s = self.decoder.decode(self.pairs.rows[i], True, rng)
            if s is not None:
                samples.append(s)
            elif tried > len(self._order) and not samples:
                raise InputError(f"none of the training pairs of {self.pairs.source} could be read")
        return self.decoder.collate(samples)
