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
skipped, and its inputs leave the queue's count at once.

The queue is bounded: ``max_queue`` inputs may wait for a forward pass; a job that would take the
queue past it is refused at once with :class:`QueueFullError` (a lone job is always admitted, so a
request is never refused for its size alone). One worker thread at most: :meth:`start` after a
:meth:`close` whose join timed out waits for the old worker, and refuses if it is still running.
The counters are written and read under a lock (:meth:`snapshot`).
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


class QueueFullError(RuntimeError):
    """The batcher's queue holds ``max_queue`` inputs already: try again shortly (HTTP 503)."""


@dataclass
class _Job:
    modality: str
    items: list[Any]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    queued: bool = True  # its inputs are counted in the queue's depth


@dataclass
class BatchStats:
    """Counters of the batcher's work since it started (read for /health and the benchmark)."""

    jobs: int = 0
    items: int = 0
    batches: int = 0
    largest_batch: int = 0
    skipped: int = 0
    rejected: int = 0

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

    def __init__(self, embed: EmbedFn, *, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int | None = None, name: str = "onepeace-batcher",
                 on_batch: Callable[[str, int, float], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self._embed = embed
        self.max_queue = None if max_queue is None else int(max_queue)
        self._on_batch = on_batch  # (modality, rows, seconds) of each forward pass: the metrics
        self._depth = 0  # inputs waiting for a forward pass (queued or held, not cancelled)
        self._stats_lock = threading.Lock()
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

    def start(self, timeout: float | None = 5.0) -> None:
        """Start the worker thread (again, after :meth:`close`); a no-op while it runs. If a
        closed worker is still finishing its last batch, wait up to ``timeout`` seconds for it,
        then refuse (RuntimeError): two workers never share the queue."""
        with self._lock:
            if not self._closed:
                return
            old = self._thread
            if old is not None and old.is_alive():
                old.join(timeout)
                if old.is_alive():
                    raise RuntimeError("the batcher's previous worker is still finishing a batch; start it again later")
            self._closed = False
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ submitting
    def submit(self, modality: str, items: Sequence[Any]) -> concurrent.futures.Future:
        """Queue a job; the future's result is a float32 array ``[len(items), dim]``."""
        job = _Job(modality, list(items))
        if not job.items:
            raise ValueError("a job needs at least one input")
        n = len(job.items)
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            with self._stats_lock:
                if self.max_queue is not None and self._depth > 0 and self._depth + n > self.max_queue:
                    self.stats.rejected += 1
                    raise QueueFullError(f"the server's queue is full ({self._depth} inputs waiting, at most "
                                         f"{self.max_queue}: --max-queue); retry in a moment")
                self._depth += n
            self._queue.put(job)
        job.future.add_done_callback(lambda f, job=job: self._dequeue(job) if f.cancelled() else None)
        return job.future

    def _dequeue(self, job: _Job) -> None:
        """The job's inputs no longer wait (its batch started, or it was cancelled)."""
        with self._stats_lock:
            if job.queued:
                job.queued = False
                self._depth -= len(job.items)

    @property
    def depth(self) -> int:
        """Inputs waiting for a forward pass now."""
        with self._stats_lock:
            return self._depth

    def snapshot(self) -> dict[str, float]:
        """The counters (and the queue's depth) read together, under the lock."""
        with self._stats_lock:
            out = self.stats.as_dict()
            out["queued"] = self._depth
        return out

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
                self._dequeue(job)
                if job.future.set_running_or_notify_cancel():
                    live.append(job)
                else:
                    with self._stats_lock:
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
            t0 = time.perf_counter()
            out = np.asarray(self._embed(modality, chunk), dtype=np.float32)
            took = time.perf_counter() - t0
            if out.shape[0] != len(chunk):
                raise RuntimeError(f"embed returned {out.shape[0]} rows for {len(chunk)} inputs")
            rows.append(out)
            with self._stats_lock:
                self.stats.batches += 1
                self.stats.largest_batch = max(self.stats.largest_batch, len(chunk))
            if self._on_batch is not None:
                try:
                    self._on_batch(modality, len(chunk), took)
                except Exception:  # noqa: BLE001 - metrics never fail a batch
                    log.exception("the batch observer failed")
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
        with self._stats_lock:
            self.stats.jobs += 1
            if error is None:
                self.stats.items += len(job.items)
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(rows)
