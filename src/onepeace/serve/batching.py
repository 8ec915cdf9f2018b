"""Micro-batching: concurrent requests share one forward pass per modality.

Request handlers (asyncio or threads) submit jobs — one modality, a list of already-decoded inputs —
to a :class:`MicroBatcher`. One worker thread owns the model: it takes the first waiting job, keeps
collecting jobs for up to ``max_wait_ms`` or until ``max_batch`` inputs are waiting, and embeds each
modality's inputs in forward passes of at most ``max_batch`` rows, then hands every job its own rows.
While a forward pass runs, new jobs queue up and form the next batch, so under load the batches
fill without waiting, and a lone request waits at most ``max_wait_ms``.

A batch gives each job the rows it would get alone: the model's embeddings are batch-invariant
(padding is masked), up to float rounding of kernels that see another batch shape. A job that
fails inside a batch is retried alone, so one bad input fails only its own request. A job whose
future was cancelled before its batch started (the client went away, the request timed out) is
skipped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: ``embed(modality, items) -> float32 array [len(items), dim]``, one forward pass
EmbedFn = Callable[[str, list[Any]], np.ndarray]


@dataclass
class _Job:
    modality: str
    items: list[Any]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass
class BatchStats:
    """Counters of the batcher's work since it started (read for /health and the benchmark)."""

    jobs: int = 0
    items: int = 0
    batches: int = 0
    largest_batch: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, float]:
        d = dict(vars(self))
        d["mean_batch"] = round(self.items / self.batches, 2) if self.batches else 0.0
        return d


class MicroBatcher:
    """Collects concurrent embedding jobs into batches run by one worker thread.

    ``max_batch``: most inputs per forward pass (1 gives one-at-a-time). ``max_wait_ms``: how long
    a job waits for company when the worker is idle.
    """

    _STOP = object()

    def __init__(self, embed: EmbedFn, *, max_batch: int = 16, max_wait_ms: float = 5.0, name: str = "onepeace-batcher"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self._embed = embed
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.stats = BatchStats()
        self._name = name
        self._queue: queue.Queue = queue.Queue()
        self._held: list[_Job] = []  # jobs taken from the queue that did not fit the last batch
        self._lock = threading.Lock()
        self._closed = True
        self._thread: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        """Start the worker thread (again, after :meth:`close`); a no-op while it runs."""
        with self._lock:
            if not self._closed:
                return
            self._closed = False
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ submitting
    def submit(self, modality: str, items: Sequence[Any]) -> concurrent.futures.Future:
        """Queue a job; the future's result is a float32 array ``[len(items), dim]``."""
        job = _Job(modality, list(items))
        if not job.items:
            raise ValueError("a job needs at least one input")
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.put(job)
        return job.future

    async def embed(self, modality: str, items: Sequence[Any]) -> np.ndarray:
        """``submit`` for asyncio code: cancelling the awaiting task cancels a job not yet started."""
        return await asyncio.wrap_future(self.submit(modality, items))

    def embed_sync(self, modality: str, items: Sequence[Any], timeout: float | None = None) -> np.ndarray:
        """``submit`` for threads, blocking until the rows are ready."""
        return self.submit(modality, items).result(timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        """Finish the jobs already queued, then stop the worker thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(self._STOP)
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # ------------------------------------------------------------------ the worker
    def _collect(self) -> list[_Job] | None:
        """The next batch of jobs (``None``: stop). Blocks for the first job, then gathers more for
        up to ``max_wait`` seconds or until ``max_batch`` inputs are waiting."""
        jobs, n = [], 0
        while self._held and n < self.max_batch:
            job = self._held.pop(0)
            jobs.append(job)
            n += len(job.items)
        if not jobs:
            first = self._queue.get()
            if first is self._STOP:
                return None
            jobs, n = [first], len(first.items)
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            timeout = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is self._STOP:
                self._queue.put(job)  # stop after this batch
                break
            if n + len(job.items) > self.max_batch and n > 0:
                self._held.append(job)  # next batch, first in line
                break
            jobs.append(job)
            n += len(job.items)
        return jobs

    def _run(self) -> None:
        while True:
            jobs = self._collect()
            if jobs is None:
                return
            live = []
            for job in jobs:
                if job.future.set_running_or_notify_cancel():
                    live.append(job)
                else:
                    self.stats.skipped += 1
            by_modality: dict[str, list[_Job]] = {}
            for job in live:
                by_modality.setdefault(job.modality, []).append(job)
            for modality, group in by_modality.items():
                self._run_group(modality, group)

    def _forward(self, modality: str, items: list[Any]) -> np.ndarray:
        rows = []
        for start in range(0, len(items), self.max_batch):
            chunk = items[start : start + self.max_batch]
            out = np.asarray(self._embed(modality, chunk), dtype=np.float32)
            if out.shape[0] != len(chunk):
                raise RuntimeError(f"embed returned {out.shape[0]} rows for {len(chunk)} inputs")
            rows.append(out)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(chunk))
        return np.concatenate(rows)

    def _run_group(self, modality: str, group: list[_Job]) -> None:
        items = [x for job in group for x in job.items]
        try:
            out = self._forward(modality, items)
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the requests
            if len(group) == 1:
                self._finish(group[0], error=e)
                return
            log.info("a batch of %d %s jobs failed (%s); retrying each alone", len(group), modality, e)
            for job in group:
                try:
                    self._finish(job, self._forward(modality, job.items))
                except BaseException as e1:  # noqa: BLE001
                    self._finish(job, error=e1)
            return
        start = 0
        for job in group:
            self._finish(job, out[start : start + len(job.items)])
            start += len(job.items)

    def _finish(self, job: _Job, rows: np.ndarray | None = None, error: BaseException | None = None) -> None:
        self.stats.jobs += 1
        if error is not None:
            job.future.set_exception(error)
        else:
            self.stats.items += len(job.items)
            job.future.set_result(rows)
