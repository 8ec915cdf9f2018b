"""Task manifests and loaders for fine-tuning.

A task manifest is JSONL, one sample per line; which fields a line needs depends on the task
(see :mod:`onepeace_train.finetune.tasks` and the README). Media fields (``image``, ``image2``,
``audio``, ``mask``) hold paths, resolved against the manifest's own directory.

Loading is map-style: a sampler yields ``(epoch, index)`` pairs (a seeded permutation per epoch,
split across ranks), so augmentation randomness depends only on (seed, epoch, index) and a resumed
run sees the same stream. A sample that fails to load (an :class:`~onepeace.errors.InputError`:
missing, corrupt, mismatched mask) is skipped (logged and counted); any other error (a missing
module, a bug, out of memory) stops the run in one line, and so does a training stream that skipped
more than :data:`~onepeace.errors.MAX_SKIP_SHARE` of its samples (see :class:`onepeace.errors.SkipGuard`).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import DataLoader, Dataset, Sampler

from onepeace.data.dataset import SkipCount
from onepeace.data.manifest import iter_jsonl, resolve_media
from onepeace.errors import MAX_SKIP_SHARE, InputError, SkipGuard, stop_in_worker

log = logging.getLogger(__name__)

MEDIA_FIELDS = ("image", "image2", "audio", "mask")


def read_task_manifest(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """JSONL -> list of records with absolute media paths; every record must hold ``required``."""
    base = os.path.dirname(os.path.abspath(os.fspath(path)))
    out = []
    for where, rec in iter_jsonl(path, "task manifest"):
        if not isinstance(rec, dict):
            raise InputError(f"{where}: a sample must be a JSON object")
        missing = [k for k in required if k not in rec]
        if missing:
            raise InputError(f"{where}: missing field(s) {missing} (this task needs {list(required)})")
        for k in MEDIA_FIELDS:
            if k in rec:
                if not isinstance(rec[k], str) or not rec[k]:
                    raise InputError(f"{where}: '{k}' must be a non-empty path string")
                rec[k] = resolve_media(base, rec[k])
        rec.setdefault("id", where.rsplit("/", 1)[-1])
        rec["_where"] = where
        out.append(rec)
    if not out:
        raise InputError(f"task manifest {os.fspath(path)} has no samples")
    return out


class EpochSampler(Sampler):
    """``(epoch, index)`` pairs: a permutation per epoch (seeded by seed and epoch) when
    ``shuffle``, this rank's every ``world``-th entry; forever when ``repeat``."""

    def __init__(self, n: int, *, seed: int = 0, shuffle: bool = True, repeat: bool = True,
                 rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle, self.repeat = n, seed, shuffle, repeat
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = 0
        while True:
            order = list(range(self.n))
            if self.shuffle:
                random.Random(f"onepeace-ft-order:{self.seed}:{epoch}").shuffle(order)
            for i in order[self.rank :: self.world]:
                yield epoch, i
            if not self.repeat:
                return
            epoch += 1

    def __len__(self) -> int:
        if self.repeat:
            raise TypeError("an endless sampler has no length")
        return len(range(self.rank, self.n, self.world))


class TaskDataset(Dataset):
    """Records of one manifest, processed by ``task.sample``; a failing sample yields None.
    ``skipped`` counts failures in every DataLoader worker; ``skipped_ids`` names those of this
    process (all of them when loading in-process, as evaluation does)."""

    def __init__(self, records: list[dict[str, Any]], task, train: bool, seed: int = 0, *,
                 max_skip_share: float | None | str = "auto", name: str = "the task manifest"):
        self.records, self.task, self.train, self.seed = records, task, train, seed
        self._skipped = SkipCount()
        self.skipped_ids: list[str] = []
        if max_skip_share == "auto":  # training stops on too much bad data; evaluation reports it
            max_skip_share = MAX_SKIP_SHARE if train else None
        self._guard = SkipGuard(name, max_skip_share)  # per process (each worker its own) ...
        self._counted: set[int] = set()  # ... over distinct records: a record seen again is not more input

    @property
    def skipped(self) -> int:
        return self._skipped.value

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any] | None:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        rec = self.records[i]
        rng = random.Random(f"onepeace-ft-aug:{self.seed}:{epoch}:{i}")
        try:
            out = self.task.sample(rec, self.train, rng)
        except InputError as e:
            self._skipped.add()
            self.skipped_ids.append(str(rec.get("id")))
            log.warning("skipping sample %s (%s): %s", rec.get("id"), rec.get("_where"), e)
            if self._first(i):
                self._guard.skip()
            return None
        except Exception as e:  # a missing module, a bug, out of memory: not the sample's fault
            stop_in_worker(e, f"sample {rec.get('id')} ({rec.get('_where')})")
            raise
        if self._first(i):
            self._guard.ok()
        return out

    def _first(self, i: int) -> bool:
        new = i not in self._counted
        self._counted.add(i)
        return new


class TaskCollator:
    def __init__(self, task):
        self.task = task

    def __call__(self, samples: list[dict[str, Any] | None]) -> dict[str, Any] | None:
        kept = [s for s in samples if s is not None]
        if not kept:
            return None
        return self.task.collate(kept)


def task_loader(task, source: str, batch_size: int, *, train: bool, seed: int = 0, num_workers: int = 0,
                rank: int = 0, world: int = 1, records: list[dict[str, Any]] | None = None) -> DataLoader:
    """Training: endless shuffled stream split across ranks (last partial batch dropped);
    evaluation: one ordered pass over everything. ``records``: ``source`` already read and
    checked (by ``read_task_manifest`` and ``task.check_records``)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if records is None:
        records = read_task_manifest(source, task.required_fields)
        task.check_records(records, source)
    ds = TaskDataset(records, task, train, seed, name=f"the task manifest {source}")
    sampler = EpochSampler(len(records), seed=seed, shuffle=train, repeat=train, rank=rank if train else 0,
                           world=world if train else 1)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=TaskCollator(task), drop_last=train)


def batches(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """The loader's batches, skipping any whose every sample failed to load."""
    for b in loader:
        if b is not None:
            yield b
