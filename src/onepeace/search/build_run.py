"""One index build, engine aside: the **planner**, the **writer** and the report.

:class:`BuildRun` drops items the index already holds unchanged and groups the rest into
single-modality batches; an engine (the local one of :mod:`onepeace.search.ingest`, or
:mod:`onepeace.search.ray_engine`) turns them into rows; :class:`IndexWriter` commits the rows in
batches (one Lance commit each), so a killed build loses at most the rows not yet committed.
:func:`run_build` drives it all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..errors import InputError, OnePeaceError, SkipGuard
from .decode import Batch, Result, make_row
from .moment_build import (
    BUILD_KEYS,
    MOMENT_MODALITIES,
    MomentBuilder,
    MomentOptions,
    drop_stale_windows,
    probe_duration,
    prune_windows,
    stored_marks,
)
from .moments import MomentTable
from .reader import Item, iter_items
from .store import Index, SearchIndexError, is_remote

#: rows per commit (at least the batch size); a killed build loses at most this many
DEFAULT_COMMIT_ROWS = 256
#: a commit at least this often (seconds), however slow the model
DEFAULT_COMMIT_SECONDS = 30.0
#: rows from which build() creates an ANN index (below it, search is exact)
DEFAULT_ANN_THRESHOLD = 50_000
LOCK_NAME = ".build.lock"
REPORTS = "reports"

# ---------------------------------------------------------------------------------- writer
class IndexWriter:
    """Buffers rows and commits them in batches of ``commit_rows`` (or every ``commit_seconds``):
    each commit is atomic, so after a kill the index holds whole commits only."""

    def __init__(self, index: Index, existing: set[str] | dict[str, Any], *, commit_rows: int = DEFAULT_COMMIT_ROWS,
                 commit_seconds: float = DEFAULT_COMMIT_SECONDS):
        self.index = index
        self.existing = existing
        self.commit_rows = max(1, int(commit_rows))
        self.commit_seconds = commit_seconds
        self._new: list[dict[str, Any]] = []
        self._changed: list[dict[str, Any]] = []
        self._last = time.monotonic()
        self.added = 0
        self.changed = 0
        self.commits = 0
        #: told of the rows that replaced others, once committed (their old windows go)
        self.on_changed: Callable[[list[dict[str, Any]]], None] = lambda rows: None

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        for r in rows:
            (self._changed if r["id"] in self.existing else self._new).append(r)
        if (len(self._new) + len(self._changed) >= self.commit_rows
                or time.monotonic() - self._last >= self.commit_seconds):
            self.flush()

    def flush(self) -> None:
        if self._new:
            self.index.add(self._new, replace=False)
            self.added += len(self._new)
            self.commits += 1
        if self._changed:
            self.index.add(self._changed, replace=True)  # replaces the old rows in the same commit
            self.changed += len(self._changed)
            self.commits += 1
            self.on_changed(self._changed)
        self._new, self._changed = [], []
        self._last = time.monotonic()


# ---------------------------------------------------------------------------------- a build run
@contextlib.contextmanager
def build_lock(db: str):
    """An exclusive lock on the index directory for one build (released when the process ends,
    even by SIGKILL); a second concurrent build is refused. A POSIX record lock (``lockf``), not
    ``flock``: the DataLoader workers forked during the build do not inherit it, so a killed
    build's orphaned workers cannot keep refusing the rerun. An object-storage index
    (``s3://...``) has no lock: run one build at a time on it."""
    if is_remote(db):
        yield
        return
    path = os.path.join(db, LOCK_NAME)
    key = os.path.realpath(path)
    with _HELD_LOCK:  # record locks never conflict within one process: builds in threads check here
        held = key in _HELD
        _HELD.add(key)
    f = None
    try:
        f = open(path, "a+")  # noqa: SIM115 - held for the whole build
        try:
            if held:
                raise OSError("held by this process")
            import fcntl

            fcntl.lockf(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except OSError:
            f.seek(0)
            holder = f.read().strip()
            raise SearchIndexError(f"another `onepeace index build` is writing to {db}"
                                   f"{f' (pid {holder})' if holder else ''}; wait for it to finish") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        if f is not None:
            f.close()
        if not held:
            with _HELD_LOCK:
                _HELD.discard(key)


_HELD: set[str] = set()
_HELD_LOCK = threading.Lock()


_STAT_KEYS = ("file_size", "file_mtime_ns")
#: metadata the build writes itself, kept when a row is relabelled, left out of :func:`described`
_OWN_KEYS = (*_STAT_KEYS, *BUILD_KEYS)


def described(text: str, metadata: dict[str, Any]) -> str:
    """A digest of what a row says about its item (text and metadata, file stat left out): a
    manifest edit that changes only these updates the row without embedding the file again."""
    meta = {k: v for k, v in metadata.items() if k not in _OWN_KEYS}
    return hashlib.sha1(json.dumps([text, meta], sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def _stored_state(index: Index, rows: list[dict[str, Any]] | None = None) -> dict[str, tuple[str, int, int, str]]:
    """id -> (content_hash, file size, file mtime_ns, digest of text and metadata) of every row."""
    out = {}
    for r in rows if rows is not None else index.rows(["id", "content_hash", "text", "metadata"]):
        try:
            meta = json.loads(r["metadata"]) if r["metadata"] else {}
        except ValueError:
            meta = {}
        out[r["id"]] = (r["content_hash"], int(meta.get("file_size", -1)), int(meta.get("file_mtime_ns", -1)),
                        described(r["text"], meta))
    return out


def default_report_path(db: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    if is_remote(db):  # the report stays on this machine: ./index-reports/<bucket>-<path>/
        return os.path.join("index-reports", re.sub(r"[^\w.-]+", "-", db.split("://", 1)[1]).strip("-"),
                            f"build-{stamp}.json")
    return os.path.join(db, REPORTS, f"build-{stamp}.json")


class BuildRun:
    """One build of ``index`` from ``sources``: plans the work, consumes results, writes the
    report. :func:`run_build` drives it; an engine only turns planned batches into results."""

    def __init__(self, index: Index, modalities: Sequence[str], sources: Sequence[str], *, batch_size: int = 32,
                 commit_rows: int | None = None, report_path: str | None = None, model_name: str = "",
                 engine: str = "local", model: Any = None, moments: MomentOptions | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
        self.index = index
        self.modalities = list(modalities)
        self.sources = list(sources)
        self.batch_size = batch_size
        self.report_path = report_path or default_report_path(index.path)
        stored = index.rows(["id", "content_hash", "text", "metadata"])
        self.state = _stored_state(index, stored)
        #: id -> the duration and window settings recorded in a file row (moments)
        self.marks = stored_marks(stored) if moments is not None else {}
        del stored
        self.writer = IndexWriter(index, self.state, commit_rows=max(batch_size, commit_rows or DEFAULT_COMMIT_ROWS))
        self.writer.on_changed = self._changed_rows
        self.moments = moments
        self.long_items: list[Item] = []  # files that get moments, indexed after the others
        self.moment_builder = MomentBuilder(self, model, moments) if moments is not None else None
        self.stale_windows = 0
        self.pruned_windows = 0
        self.seen: set[str] = set()
        self.read_sources: set[str] = set()  # sources read to the end without a read error
        self.failed_sources: set[str] = set()
        self.unchanged = 0
        self.relabel: list[Item] = []  # unchanged files whose text or metadata changed
        self.duplicates = 0
        self.duplicate_examples: list[dict[str, Any]] = []  # the first few, for the report
        self.skipped: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.left_out: list[str] = []
        self.left_out_count = 0
        self.pruned = 0
        self.planned = 0
        self.started = time.time()
        self.model_name = model_name
        self.engine = engine
        self.on_progress: Callable[[int], None] = lambda n: None
        # every listed item counts as used when planned; one set aside (then or when decoded)
        # counts as skipped, and too many of those stop the build
        self.guard = SkipGuard(f"the index build of {', '.join(self.sources)}")

    # ---- planning (runs in this process; the DataLoader pulls from it)
    def _left_out(self, path: str) -> None:
        self.left_out_count += 1
        if len(self.left_out) < 20:
            self.left_out.append(path)

    def items(self) -> Iterator[Item]:
        for src in self.sources:
            ok = True
            for item in iter_items([src], self.modalities, left_out=self._left_out):
                ok = ok and not item.source_error
                yield item
            (self.read_sources if ok else self.failed_sources).add(src)

    def plan(self) -> Iterator[Batch]:
        """Single-modality batches of the items that need embedding (new or changed)."""
        buffers: dict[str, Batch] = {}
        for item in self.items():
            if item.error or item.modality not in self.modalities:
                self.on_progress(1)
                self._skip(item, item.error or f"this model has no {item.modality} branch", counted=False)
                continue
            self.guard.ok()
            iid = item.id
            if iid in self.seen:
                self._duplicate(item)
                self.on_progress(1)
                continue
            self.seen.add(iid)
            old = self.state.get(iid)
            if self._is_long(item, old):
                self.long_items.append(item)
                continue
            if old is not None and self._unchanged(item, old):
                if described(item.text, item.metadata) == old[3]:
                    self.unchanged += 1
                else:  # same content, new caption or fields: the row is updated, not re-embedded
                    self.relabel.append(item)
                self.on_progress(1)
                continue
            b = buffers.setdefault(item.modality, Batch(item.modality, []))
            b.items.append(item)
            if old is not None:
                b.known[iid] = old[0]
            if len(b.items) >= self.batch_size:
                self.planned += len(b.items)
                yield buffers.pop(item.modality)
        for b in buffers.values():
            self.planned += len(b.items)
            yield b

    def _is_long(self, item: Item, old: tuple[str, int, int, str] | None) -> bool:
        """Whether a file gets moments (audio or video over ``moments.over`` seconds) and needs
        its windows built: new, changed, or indexed with other window settings. Its duration is
        probed from its header, and recorded in its row: in every build of a new or changed audio
        or video file, moments or none, so that both engines and every moment setting give the same
        file rows."""
        if not item.uri or item.modality not in MOMENT_MODALITIES or item.error:
            return False
        mark = self.marks.get(item.id, {})
        if old is not None and self._unchanged(item, old):
            if self.moments is None:
                return False
            if "moments" in mark:  # rebuilt only when the window settings changed
                settings = self.moments.settings(item.modality)
                return {k: mark["moments"].get(k) for k in settings} != settings
            if "duration" in mark:
                return float(mark["duration"]) > self.moments.over
        duration = probe_duration(item.uri, item.modality)
        if duration is None:
            return False  # unreadable: the decoding workers say why, as for any file
        item.metadata["duration"] = round(duration, 3)
        return self.moments is not None and duration > self.moments.over

    @staticmethod
    def _unchanged(item: Item, old: tuple[str, int, int, str]) -> bool:
        if not item.uri:
            return True  # a text's id is its content
        try:
            st = os.stat(item.uri)
        except OSError:
            return False  # the mapper reports it
        return (st.st_size, st.st_mtime_ns) == (old[1], old[2])

    def _duplicate(self, item: Item) -> None:
        """An item listed again (the same file, or the same text): its first listing is indexed."""
        self.duplicates += 1
        if len(self.duplicate_examples) < 20:
            where = f"{item.source}:{item.metadata['line']}" if "line" in item.metadata else item.source
            self.duplicate_examples.append({"modality": item.modality, "source": where,
                                            "uri" if item.uri else "item": item.name})

    # ---- consuming results
    def _skip(self, item: Item, reason: str, *, counted: bool = True) -> None:
        entry = {"modality": item.modality, "source": item.source, "reason": reason}
        entry["uri" if item.uri else "item"] = item.name
        self.skipped.append(entry)
        self.guard.skip(counted=counted)  # raises once too many items were set aside

    def consume(self, result: Result) -> None:
        self.writer.add(result.rows)
        for item, reason in result.skipped:
            self._skip(item, reason)
        self.unchanged += len(result.unchanged)
        for w in result.warnings:
            if w not in self.warnings:
                self.warnings.append(w)
        self.on_progress(len(result.rows) + len(result.skipped) + len(result.unchanged))

    # ---- moments
    def index_long(self) -> None:
        """Windows and file rows of the long files (in this process: streamed decoding)."""
        for item in self.long_items:
            self.moment_builder.index_file(item)  # type: ignore[union-attr]
            self.on_progress(1)

    def writer_for(self, table: Any) -> IndexWriter:
        """A writer of new rows into another table, committing as often as the build's own."""
        return IndexWriter(table, set(), commit_rows=self.writer.commit_rows,  # type: ignore[arg-type]
                           commit_seconds=self.writer.commit_seconds)

    def finish_moments(self, ann_threshold: int | None) -> None:
        """Compact the moments table after this build's windows, and give it an ANN index from
        ``ann_threshold`` windows (as the items table)."""
        mb = self.moment_builder
        changed = (mb.windows + mb.deleted if mb else 0) + self.stale_windows + self.pruned_windows
        table = MomentTable.open(self.index) if changed or ann_threshold else None
        if table is None:
            return
        if changed:
            table.optimize()
        if ann_threshold:
            table.ensure_ann(ann_threshold)

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def _changed_rows(self, rows: list[dict[str, Any]]) -> None:
        self.stale_windows += drop_stale_windows(self.index, rows)

    # ---- finishing
    def apply_relabels(self) -> int:
        """Rewrite the rows of ``relabel`` with their new text and metadata and their stored
        vectors (through the writer: same commits, same atomicity)."""
        for i in range(0, len(self.relabel), 256):
            chunk = {it.id: it for it in self.relabel[i : i + 256]}
            where = f"id IN ({', '.join(repr(k) for k in chunk)})"  # ids are hex digests
            for r in self.index.rows(["id", "content_hash", "metadata", "vector"], where=where):
                item = chunk[r["id"]]
                stored = json.loads(r["metadata"]) if r["metadata"] else {}
                item.metadata.update({k: stored[k] for k in _OWN_KEYS if k in stored})
                self.writer.add([make_row(item, r["content_hash"], np.asarray(r["vector"], np.float32))])
        self.writer.flush()
        return len(self.relabel)

    def prune(self) -> int:
        """Delete rows whose file is gone, whose source is gone, or that a source read whole in
        this run no longer lists."""
        gone = []
        for r in self.index.rows(["id", "uri", "metadata"]):
            try:
                source = str(json.loads(r["metadata"]).get("source", "")) if r["metadata"] else ""
            except ValueError:
                source = ""
            if ((r["uri"] and not os.path.exists(r["uri"]))
                    or (source and not os.path.exists(source))
                    or (source in self.read_sources and r["id"] not in self.seen)):
                gone.append(r["id"])
        self.pruned = self.index.delete(gone) if gone else 0
        self.pruned_windows = prune_windows(self.index)  # windows of files without a row
        return self.pruned

    def summary(self, finished: bool = True) -> dict[str, Any]:
        mb = self.moment_builder
        return {"added": self.writer.added, "changed": self.writer.changed, "unchanged": self.unchanged,
                "metadata_only": len(self.relabel),
                "skipped": len(self.skipped), "pruned": self.pruned, "duplicates": self.duplicates,
                "left_out": self.left_out_count, "warnings": len(self.warnings), "commits": self.writer.commits,
                "moment_files": mb.files if mb else 0, "moment_windows": mb.windows if mb else 0,
                "partial": len(mb.partial) if mb else 0,
                "windows_deleted": (mb.deleted if mb else 0) + self.stale_windows + self.pruned_windows,
                "finished": finished}

    def write_report(self, finished: bool, extra: dict[str, Any] | None = None) -> str:
        from ..checkpoints.format import write_text_atomic

        report = {
            "index": self.index.path if is_remote(self.index.path) else os.path.abspath(self.index.path), "model": self.model_name, "engine": self.engine,
            "sources": self.sources,
            "started": datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds"),
            "elapsed_s": round(time.time() - self.started, 3),
            "counts": self.summary(finished), **(extra or {}),
            "skipped": self.skipped, "warnings": self.warnings,
            "partial": self.moment_builder.partial if self.moment_builder else [],
            "left_out_examples": self.left_out, "duplicate_examples": self.duplicate_examples,
        }
        os.makedirs(os.path.dirname(self.report_path) or ".", exist_ok=True)
        write_text_atomic(self.report_path, json.dumps(report, indent=1, ensure_ascii=False))
        return self.report_path


def _count_items(sources: Sequence[str], modalities: Sequence[str]) -> int | None:
    """How many items the sources list (for the progress bar's total); None if it takes long."""
    n, t0 = 0, time.monotonic()
    with contextlib.suppress(OnePeaceError):
        for _ in iter_items(sources, modalities):
            n += 1
            if time.monotonic() - t0 > 30:
                return None
    return n


def run_build(index: Index, model: Any, sources: Sequence[str], *,
              embed: Callable[[Iterable[Batch]], Iterable[Result]], batch_size: int = 32, prune: bool = False,
              report_path: str | None = None, progress: bool | None = None, commit_rows: int | None = None,
              ann_threshold: int | None = DEFAULT_ANN_THRESHOLD, model_name: str = "",
              modalities: Sequence[str] | None = None, engine: str = "local",
              moments: MomentOptions | None = None) -> dict[str, Any]:
    """Plan, embed (``embed``: planned batches -> results, in any engine), write, index the long
    files' moments (``moments``: which files and windows; None: none, the long files are rows as
    any other), prune, report. Holds the build lock of the index for the whole run."""
    from ..progress import progress_bar

    modalities = list(modalities if modalities is not None else model.modality_names)
    with build_lock(index.path):
        run = BuildRun(index, modalities, sources, batch_size=batch_size, commit_rows=commit_rows,
                       report_path=report_path, model_name=model_name, engine=engine, model=model, moments=moments)
        total = _count_items(sources, modalities) if _bar_shown(progress) else None
        finished = False
        try:
            with progress_bar(progress, total=total, desc="indexing") as bar:
                run.on_progress = bar.update
                for result in embed(run.plan()):
                    run.consume(result)
                    bar.set_postfix(new=run.writer.added + len(run.writer._new), changed=run.writer.changed,
                                    skipped=len(run.skipped), refresh=False)
                run.writer.flush()
                run.index_long()
            run.apply_relabels()
            if prune:
                run.prune()
            if run.writer.commits or run.pruned:
                index.optimize()  # compacts the small commits (readers keep working meanwhile)
            ann = index.ensure_ann(ann_threshold) if ann_threshold else None
            run.finish_moments(ann_threshold)
            finished = True
        finally:
            path = run.write_report(finished)
    out = run.summary()
    out.update(report=path, rows=index.count(), index=ann or "exact")
    return out


def _bar_shown(progress: bool | None) -> bool:
    return bool(progress) or (progress is None and sys.stderr.isatty())
