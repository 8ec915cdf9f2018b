"""Streaming (text, media) pairs for training, split by rank and by worker.

``PairDataset`` reads a JSONL manifest or WebDataset-layout tar shards (local paths, ``pipe:``
commands or URLs, read with :mod:`webdataset`) and yields processed samples; ``collate_pairs``
batches them into the model's input dicts; ``make_loader`` wires both into a
:class:`torch.utils.data.DataLoader`. Every media field of a record (``image``, ``audio``,
``video``, any registered modality whose plug-in reads files) is decoded by that modality's
processor: ``processor.sample(item, train=..., rng=...)`` per sample and ``processor.collate``
per batch, with per-modality options from ``sample_options``; nothing here names a modality.

Splitting: every (rank, DataLoader worker) pair is a *slot*, ``slot = rank * workers + worker``
of ``world_size * workers``. A manifest is permuted with the epoch's seed (the same permutation
on every rank) and slot ``k`` takes positions ``k, k + n, k + 2n, ...``. Shards are permuted the
same way and dealt out whole when there are at least as many shards as slots (as webdataset's
``split_by_node`` then ``split_by_worker``); with fewer shards every slot reads them all and keeps
every n-th sample. Either way no two slots ever see the same sample. (Whole-shard dealing can give
ranks unequal sample counts; with finite epochs under DDP, balance the shard sizes or use
``repeat=True`` and a fixed number of steps.) ``resample=True`` instead has every slot draw shards
with replacement from its own seeded stream (webdataset's ``ResampledShards``): an endless stream
with no epoch boundaries, the usual choice for multi-node runs over many shards.

Bad samples (missing, empty or corrupt files, unreadable shards, invalid records: an
:class:`~onepeace.errors.InputError`) are skipped: counted in ``dataset.skipped`` (one count shared
by all DataLoader workers of the dataset, so the main process sees theirs), logged as a warning
naming the sample, and passed to ``on_skip(sample_id, reason)`` when given (in the process that
skipped it). Any other error -- a missing module, a bug, out of memory, too many open files -- is
not the sample's fault: it stops the run, named in one line (:func:`onepeace.errors.stop_in_worker`).
A training stream that skips more than ``max_skip_share`` (default
:data:`~onepeace.errors.MAX_SKIP_SHARE`, half) of the samples it has seen, once it has seen
:data:`~onepeace.errors.MIN_SKIP_SEEN`, stops with a :class:`~onepeace.errors.SkipLimitError`
(counted per DataLoader worker, each over its own share of the data).

Evaluation samples (``train=False``) also carry their identity, for retrieval metrics over
distinct items (:mod:`onepeace.tasks.retrieval`): ``"item"`` maps each media field to the media
file's resolved path (manifests) or ``"sha1:<hex>"`` of its bytes (shards, where one image with
five captions is five samples), and ``collate_pairs`` adds ``"item"`` (``{modality: [str]}``) and
``"caption"`` (the caption strings) to such batches. Training samples and batches do not have
these keys.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import multiprocessing
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import ModelConfig, get_preset
from ..errors import MAX_SKIP_SHARE, InputError, SkipGuard, stop_in_worker
from ..modalities import Processor
from ..processing import split_companions
from .augment import parse_augment
from .manifest import media_fields, read_manifest
from .shards import decode_record, expand_shards, is_url, iter_shard

log = logging.getLogger(__name__)

Source = str | os.PathLike | Sequence[str | os.PathLike]


def _check_shards(paths: list[str]) -> list[str]:
    """Local shard paths must exist now; ``pipe:`` commands and URLs are opened when read."""
    missing = [p for p in paths if not is_url(p) and not os.path.isfile(p)]
    if missing:
        raise InputError(f"shard not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return paths


def resolve_source(source: Source) -> tuple[str, list[Any]]:
    """``("manifest", samples)`` or ``("shards", addresses)`` for a manifest path, a .tar path, a
    directory of .tar files, a glob of .tar files, a list of shard paths or URLs, or a webdataset
    spec: a ``pipe:`` command or URL, brace ranges (``s-{000000..000009}.tar``), ``::``-joined lists."""
    if isinstance(source, (list, tuple)):
        paths = [os.fspath(p) for p in source]
        if not paths:
            raise InputError("empty list of shards")
        return "shards", _check_shards(paths)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"data source must be a path, a glob or a list of shard paths, got {type(source).__name__}")
    src = os.fspath(source)
    if os.path.isdir(src):
        paths = sorted(glob.glob(os.path.join(glob.escape(src), "*.tar")))
        if not paths:
            raise InputError(f"no .tar shards in directory {src}")
        return "shards", paths
    if os.path.isfile(src):
        if src.endswith(".tar"):
            return "shards", [src]
        return "manifest", read_manifest(src)
    if is_url(src) or "::" in src or ("{" in src and "}" in src):
        paths = expand_shards(src)
        if not paths:
            raise InputError(f"shard spec {src} names no shard")
        return "shards", _check_shards(paths)
    if glob.has_magic(src):
        paths = sorted(p for p in glob.glob(src) if os.path.isfile(p))
        if not paths:
            raise InputError(f"no files match {src}")
        manifests = [p for p in paths if not p.endswith(".tar")]
        if manifests:
            raise InputError(f"a glob source must match .tar shards only; it matched {manifests[0]}")
        return "shards", paths
    raise InputError(f"data source not found: {src} (give a .jsonl manifest, a .tar shard, a directory of shards, "
                     "a glob, or a webdataset spec: pipe:COMMAND, a URL, shard-{000000..000009}.tar)")


def _name(source: Source) -> str:
    if isinstance(source, (list, tuple)):
        return f"{os.fspath(source[0])} (and {len(source) - 1} more)" if len(source) > 1 else os.fspath(source[0])
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else repr(source)


def _config(config: ModelConfig | str) -> ModelConfig:
    if isinstance(config, str):
        return get_preset(config)
    if not isinstance(config, ModelConfig):
        raise InputError(f"config must be an onepeace.ModelConfig or a preset name, got {type(config).__name__}")
    return config


class SkipCount:
    """A skipped-sample count shared by a dataset's DataLoader worker processes (fork or spawn):
    each worker adds to its own slot of a shared array, so no increment is lost and the main
    process reads the total. Workers beyond ``slots`` share slots (still counted, maybe racily)."""

    def __init__(self, slots: int = 64):
        self._counts = multiprocessing.RawArray("q", slots)

    def add(self, n: int = 1) -> None:
        info = get_worker_info()
        self._counts[(info.id if info is not None else 0) % len(self._counts)] += n

    @property
    def value(self) -> int:
        return int(sum(self._counts))


def media_identity(src: Any) -> str:
    """The identity of a media item for de-duplicating retrieval galleries: a file's resolved
    path, or ``sha1:<hex>`` of in-memory bytes (shard samples)."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "sha1:" + hashlib.sha1(src).hexdigest()
    return os.path.realpath(os.fspath(src))


class PairDataset(IterableDataset):
    """Processed ``{"text": str, <modality>: sample, ...}`` samples, one entry per media field of
    the record (``{"text", "image": [3, S, S]}``, ``{"text", "audio": [samples]}``,
    ``{"text", "video": ..., "audio": ...}``), plus ``"label"`` when the record has one and
    ``"item"`` (``{modality: identity}``, see :func:`media_identity`) when ``train=False``.

    Each field goes through its modality's ``processor.sample(item, train=train, rng=rng,
    **sample_options.get(modality, {}))``; e.g. images get the official RandomResizedCrop when
    ``train`` (``sample_options={"image": {"scale": (0.9, 1.0)}}`` changes its options) and the plain
    square resize otherwise. ``fields`` keeps only those media fields (e.g. ``["video"]`` to train
    on clips whose records also name a soundtrack); a record with none of them is skipped.

    ``shuffle`` defaults to ``train``; ``repeat=True`` streams forever (epoch after epoch, each
    with its own permutation), else one epoch per iteration; ``resample=True`` (shards only)
    draws shards with replacement, endlessly. Call :meth:`set_epoch` before iterating each epoch
    (with ``persistent_workers=False``, the DataLoader default, workers get a fresh copy of the
    dataset per epoch). ``rank`` / ``world_size`` are used when ``torch.distributed`` is not
    initialised.

    ``max_skip_share``: the share of skipped samples that stops the stream (a
    :class:`~onepeace.errors.SkipLimitError`); ``"auto"`` is :data:`~onepeace.errors.MAX_SKIP_SHARE`
    when ``train``, and never for evaluation (which reports how many it skipped); None never.
    """

    def __init__(
        self,
        source: Source,
        config: ModelConfig | str,
        train: bool = True,
        *,
        seed: int = 0,
        shuffle: bool | None = None,
        repeat: bool = False,
        resample: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_buffer: int = 1000,
        sample_options: dict[str, dict[str, Any]] | None = None,
        fields: Sequence[str] | None = None,
        augment: dict[str, dict[str, Any]] | None = None,
        on_skip: Callable[[str, str], None] | None = None,
        max_skip_share: float | None | str = "auto",
    ):
        super().__init__()
        self.config = _config(config)
        if "text" not in self.config.modalities:
            raise InputError("PairDataset needs a model config with a text branch (captions are text)")
        self.fields = None if fields is None else tuple(fields)
        for k in self.fields or ():
            if k not in self.config.modalities:
                raise InputError(f"fields names {k!r}, but the model config has no {k} branch "
                                 f"(it has {sorted(self.config.modalities)})")
        self.sample_options = {k: dict(v) for k, v in (sample_options or {}).items()}
        # training-time augmentation options per modality (onepeace.data.augment), applied to the
        # decoded media before the processor's sample(); off for evaluation (train=False)
        self.augment = parse_augment(augment)
        for k in self.augment:
            if k not in self.config.modalities:
                raise InputError(f"augment names {k!r}, but the model config has no {k} branch")
        for k in self.sample_options:
            if k not in self.config.modalities:
                raise InputError(f"sample_options names {k!r}, but the model config has no {k} branch")
        self.kind, items = resolve_source(source)
        self._samples: list[dict[str, Any]] = items if self.kind == "manifest" else []
        self._shards: list[str] = items if self.kind == "shards" else []
        if self.kind == "manifest":
            if not items:
                raise InputError(f"manifest {os.fspath(source)} has no samples")
            kinds = {k for s in items for k in self._fields(s)}
            for k in sorted(kinds):
                if k not in self.config.modalities:
                    raise InputError(f"the manifest has {k} samples but the model config has no {k} branch")
        if resample and self.kind != "shards":
            raise InputError("resample=True draws shards with replacement: give shards, not a manifest")
        self.resample = bool(resample)
        self.train = bool(train)
        self.seed = int(seed)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.repeat = bool(repeat)
        self.rank = rank
        self.world_size = world_size
        if shuffle_buffer < 1:
            raise InputError(f"shuffle_buffer must be at least 1, got {shuffle_buffer}")
        self.shuffle_buffer = int(shuffle_buffer)
        self.on_skip = on_skip
        if max_skip_share == "auto":
            max_skip_share = MAX_SKIP_SHARE if self.train else None
        self._guard = SkipGuard(f"the data {_name(source)}", max_skip_share)  # per process
        self.epoch = 0
        self._skipped = SkipCount()  # shared by the DataLoader workers of this dataset
        self.ok = 0  # samples produced by this process
        self._proc: Processor | None = None

    # -- plumbing ---------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_proc"] = None  # rebuilt lazily in each worker
        return state

    @property
    def processor(self) -> Processor:
        if self._proc is None:
            self._proc = Processor(self.config)
        return self._proc

    @property
    def num_samples(self) -> int | None:
        """Samples in the manifest (all ranks together); None for shards."""
        return len(self._samples) if self.kind == "manifest" else None

    @property
    def skipped(self) -> int:
        """Samples skipped so far, by this process and its DataLoader workers together."""
        return self._skipped.value

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _fields(self, rec: dict[str, Any]) -> list[str]:
        kinds = media_fields(rec)
        return kinds if self.fields is None else [k for k in kinds if k in self.fields]

    def _rank_world(self) -> tuple[int, int]:
        """Explicit ``rank``/``world_size`` win (e.g. an evaluation every rank runs in full);
        otherwise the torch.distributed group's, otherwise a single process."""
        if self.rank is not None or self.world_size is not None:
            rank = 0 if self.rank is None else int(self.rank)
            world = 1 if self.world_size is None else int(self.world_size)
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
        if world < 1 or not 0 <= rank < world:
            raise InputError(f"invalid rank {rank} for world size {world}")
        return rank, world

    def slot(self) -> tuple[int, int]:
        """(this process's slot, number of slots): rank x DataLoader worker."""
        rank, world = self._rank_world()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw

    def _skip(self, sample_id: str, reason: Any) -> None:
        self._skipped.add()
        log.warning("skipping sample %s: %s", sample_id, reason)
        if self.on_skip is not None:
            self.on_skip(str(sample_id), str(reason))
        self._guard.skip()  # raises once too much of the input was bad

    # -- iteration --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot, total = self.slot()
        if self.resample:
            yield from self._resampled(slot)
            return
        epoch = self.epoch
        while True:
            produced = 0
            for sample in self._epoch(epoch, slot, total):
                produced += 1
                yield sample
            if not self.repeat:
                return
            if produced == 0:
                log.warning(
                    "slot %d of %d got no usable samples in epoch %d; stopping its stream", slot, total, epoch
                )
                return
            epoch += 1

    def _shuffled(self, raw: Iterator[dict[str, Any]], tag: str) -> Iterator[dict[str, Any]]:
        """webdataset's shuffle buffer, seeded (reproducible runs, exact resumption)."""
        if not self.shuffle:
            return raw
        from webdataset.filters import shuffle

        rng = random.Random(f"onepeace-buf:{self.seed}:{tag}")
        return shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(iter(raw))

    def _decoded(self, raw: Iterator[dict[str, Any]], aug_rng: random.Random) -> Iterator[dict[str, Any]]:
        for sample in raw:
            try:
                rec = decode_record(sample)
            except InputError as e:
                self._skip(f"{sample.get('__shard__')}:{sample.get('__key__')}", e)
                continue
            out = self._process(rec, aug_rng)
            if out is not None:
                yield out

    def _epoch(self, epoch: int, slot: int, total: int) -> Iterator[dict[str, Any]]:
        order_rng = random.Random(f"onepeace-order:{self.seed}:{epoch}")
        aug_rng = random.Random(f"onepeace-aug:{self.seed}:{epoch}:{slot}")
        if self.kind == "manifest":
            order = list(range(len(self._samples)))
            if self.shuffle:
                order_rng.shuffle(order)
            for i in order[slot::total]:
                out = self._process(self._samples[i], aug_rng)
                if out is not None:
                    yield out
            return
        shards = list(self._shards)
        if self.shuffle:
            order_rng.shuffle(shards)
        if len(shards) >= total:
            raw = self._read(shards[slot::total], 0, 1)
        else:
            raw = self._read(shards, slot, total)
        yield from self._decoded(self._shuffled(raw, f"{epoch}:{slot}"), aug_rng)

    def _resampled(self, slot: int) -> Iterator[dict[str, Any]]:
        """Shards drawn with replacement by webdataset's ``ResampledShards``, seeded by (seed,
        slot) so a run is reproducible; stops (with a warning) when a long run of draws gave no
        usable sample, so a set of broken shards cannot spin forever."""
        from webdataset.shardlists import ResampledShards

        draws = ResampledShards(self._shards, seed=self.seed, worker_seed=lambda: slot, deterministic=True)
        patience = max(10, 2 * len(self._shards))
        idle = 0

        def raw() -> Iterator[dict[str, Any]]:
            nonlocal idle
            for d in draws:
                for sample in self._read([d["url"]], 0, 1):
                    idle = 0
                    yield sample
                idle += 1
                if idle >= patience:
                    log.warning("slot %d: %d shard draws in a row gave no sample; stopping its stream", slot, idle)
                    return

        aug_rng = random.Random(f"onepeace-aug:{self.seed}:resampled:{slot}")
        for out in self._decoded(self._shuffled(raw(), f"resampled:{slot}"), aug_rng):
            idle = 0
            yield out

    def _read(self, shards: list[str], slot: int, total: int) -> Iterator[dict[str, Any]]:
        """Raw samples of ``shards``, keeping the ``slot``-th of every ``total`` (count runs across
        shards; every slot reads the same shards in the same order, so the split is exact)."""
        n = 0
        for path in shards:
            try:
                for sample in iter_shard(path):
                    if n % total == slot:
                        yield sample
                    n += 1
            except InputError as e:
                self._skip(path, e)

    def _process(self, rec: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
        kinds = self._fields(rec)
        first = rec[kinds[0]] if kinds else None
        sample_id = rec.get("id") or (first if isinstance(first, str) else "?")
        if not kinds:
            self._skip(sample_id, f"the record has none of the media fields {list(self.fields or ())}")
            return None
        procs = {k: self.processor.get(k) for k in kinds}  # a model without the branch: a setup error
        out: dict[str, Any] = {"text": rec["text"]}
        try:
            for k, proc in procs.items():
                item = rec[k]
                if self.train and self.augment.get(k):
                    item = self.augment[k].apply(proc, item, rng)
                out[k] = proc.sample(item, train=self.train, rng=rng, **self.sample_options.get(k, {}))
        except InputError as e:  # the sample's fault: one bad file must never end a training run
            self._skip(sample_id, e)
            return None
        except Exception as e:  # a missing module, a bug, out of memory: not the sample's fault
            stop_in_worker(e, f"sample {sample_id}")
            raise
        if rec.get("label") is not None:
            out["label"] = int(rec["label"])
        if not self.train:
            out["item"] = {k: media_identity(rec[k]) for k in kinds}
        self.ok += 1
        self._guard.ok()
        return out


def _media_keys(sample: dict[str, Any]) -> tuple[str, ...]:
    return tuple(k for k in sample if k not in ("text", "label", "item"))


def collate_pairs(samples: Sequence[dict[str, Any]], processor: Processor | ModelConfig) -> dict[str, Any]:
    """Per-sample dicts -> ``{"text": {"tokens"}, <modality>: processor.collate(...), ...}``
    (e.g. ``"image": {"pixels"}``, ``"audio": {"waveform", "padding_mask"}``), plus ``"label"``
    (LongTensor [B]); evaluation samples (with ``"item"``) add ``"item"`` (``{modality: [str]}``)
    and ``"caption"`` (list of str). Every sample of a batch has the same media fields. Companion
    segments a processor's ``collate`` emits (``"audio.waveform"``, see
    :func:`onepeace.processing.split_companions`) become entries of their own modality."""
    if not samples:
        raise InputError("cannot collate an empty batch")
    if isinstance(processor, ModelConfig):
        processor = Processor(processor)
    kinds = []
    for i, s in enumerate(samples):
        ks = _media_keys(s)
        if not ks or "text" not in s:
            raise InputError(f"batch sample {i} must have 'text' and a media field; keys: {sorted(s)}")
        kinds.append(ks)
    names = {k: "+".join(k) for k in kinds}
    if len(set(kinds)) > 1:
        counts = {names[k]: kinds.count(k) for k in dict.fromkeys(kinds)}
        raise InputError(
            f"a batch mixes {' and '.join(counts)} samples ({', '.join(f'{n} {k}' for k, n in counts.items())}); "
            "each batch pairs text with the same media fields: keep such data in separate "
            "manifests / shard sets and use one loader for each"
        )
    batch: dict[str, Any] = {"text": processor.get("text")([s["text"] for s in samples])}
    companions: dict[str, dict[str, Any]] = {}
    for k in kinds[0]:
        # a processor may emit companion segments ("audio.waveform": a clip's soundtrack): they
        # become that modality's own entry, unless the records name it as a field themselves
        batch[k], extra = split_companions(processor.get(k).collate([s[k] for s in samples]))
        for m, part in extra.items():
            companions.setdefault(m, part)
    for m, part in companions.items():
        batch.setdefault(m, part)
    labels = [s.get("label") for s in samples]
    if any(lb is not None for lb in labels):
        if any(lb is None for lb in labels):
            raise InputError(f"{labels.count(None)} of {len(labels)} samples in the batch have no label; label all or none")
        batch["label"] = torch.tensor(labels, dtype=torch.long)
    if all("item" in s for s in samples):
        batch["item"] = {k: [s["item"][k] for s in samples] for k in kinds[0]}
        batch["caption"] = [s["text"] for s in samples]
    return batch


class PairCollator:
    """Picklable ``collate_fn``: builds its :class:`Processor` lazily in each worker."""

    def __init__(self, config: ModelConfig | str):
        self.config = _config(config)
        self._proc: Processor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "_proc": None}

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if self._proc is None:
            self._proc = Processor(self.config)
        return collate_pairs(samples, self._proc)


def make_loader(
    source: Source,
    config: ModelConfig | str,
    batch_size: int,
    num_workers: int = 0,
    train: bool = True,
    seed: int = 0,
    *,
    repeat: bool = False,
    shuffle: bool | None = None,
    drop_last: bool | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    **dataset_kwargs: Any,
) -> DataLoader:
    """A DataLoader over a :class:`PairDataset` with :func:`collate_pairs` batching.

    ``drop_last`` defaults to ``train`` (each worker drops its own last partial batch). Reach
    the dataset as ``loader.dataset`` (e.g. ``loader.dataset.set_epoch(e)`` before each epoch).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if num_workers < 0:
        raise InputError(f"num_workers must be >= 0, got {num_workers}")
    ds = PairDataset(
        source, config, train, seed=seed, shuffle=shuffle, repeat=repeat, rank=rank,
        world_size=world_size, **dataset_kwargs,
    )
    extra: dict[str, Any] = {}
    if num_workers > 0 and prefetch_factor is not None:
        extra["prefetch_factor"] = prefetch_factor
    return DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=PairCollator(ds.config),
        drop_last=train if drop_last is None else drop_last,
        pin_memory=pin_memory,
        **extra,
    )


__all__ = ["PairCollator", "PairDataset", "SkipCount", "collate_pairs", "make_loader", "media_identity", "resolve_source"]
