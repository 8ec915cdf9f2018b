"""Building an index: reader -> planner -> mapper (decode in workers, embed) -> writer.

* **reader** (:func:`iter_items`): sources -> :class:`Item` records. A folder is searched
  recursively for the files of the model's modalities (by extension: the image and audio formats
  the processors read); a ``.jsonl`` manifest gives one item per line (a media path with an
  optional caption, or a text alone, plus any other fields as metadata); a ``.txt`` file gives one
  text item per non-blank line; a single media file is one item.
* **planner** (:meth:`BuildRun.plan`): drops items the index already holds unchanged (same id and
  file size/mtime, or same content hash) and groups the rest into single-modality batches.
* **mapper**: :func:`decode_batch` reads, hashes and decodes one batch (run in DataLoader
  workers, in parallel with the model); a file that cannot be read or decoded (an
  :class:`~onepeace.errors.InputError`) is set aside with its reason and the job goes on. Any other
  error (a missing module, a bug, out of memory, too many open files) stops the build in one line,
  and so does a build that set aside more than :data:`~onepeace.errors.MAX_SKIP_SHARE` of the
  items it listed (see :class:`~onepeace.errors.SkipGuard`). :func:`embed_decoded` runs the model
  and makes the rows.
* **writer** (:class:`IndexWriter`): commits rows in batches (one Lance commit each), so a
  killed build loses at most the rows not yet committed, and a rerun adds exactly those.

:func:`build` runs them in this process; ``engine="ray"`` hands the same run to
:func:`onepeace.search.ray_engine.build_ray`, which may reuse :func:`run_build` with its own
embedding stage (``embed=``) and keep the planning, writing, pruning and report identical.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..errors import InputError, OnePeaceError, SkipGuard, not_the_input, stop_in_worker
from .store import Index, SearchIndexError, is_index, is_remote, item_id

log = logging.getLogger(__name__)

MANIFEST_EXTENSIONS = (".jsonl",)
TEXT_EXTENSIONS = (".txt",)
#: rows per commit (at least the batch size); a killed build loses at most this many
DEFAULT_COMMIT_ROWS = 256
#: a commit at least this often (seconds), however slow the model
DEFAULT_COMMIT_SECONDS = 30.0
#: rows from which build() creates an ANN index (below it, search is exact)
DEFAULT_ANN_THRESHOLD = 50_000
LOCK_NAME = ".build.lock"
REPORTS = "reports"


# ---------------------------------------------------------------------------------- reader
@dataclass
class Item:
    """One thing to index: a file (``uri`` set) or a text (``uri`` empty)."""

    modality: str
    uri: str = ""
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    #: set when the reader already knows the item is unusable (bad manifest line, odd file name)
    error: str = ""
    #: the error stopped the reading of its source (the source's remaining items are unknown)
    source_error: bool = False

    @property
    def id(self) -> str:
        return item_id(self.modality, self.uri, "" if self.uri else self.text)

    @property
    def name(self) -> str:
        """How reports and messages name the item."""
        return self.uri or (self.text if len(self.text) <= 80 else self.text[:79] + "…")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        return cls(**{k: d[k] for k in ("modality", "uri", "text", "metadata", "source", "error", "source_error")
                      if k in d})


def file_modalities(model_modalities: Iterable[str]) -> dict[str, str]:
    """Lower-case extension -> modality, for the model's modalities that are read from files."""
    from ..modalities import get_modality

    out: dict[str, str] = {}
    for m in model_modalities:
        for ext in get_modality(m).file_extensions:
            out.setdefault(ext.lower(), m)
    return out


def check_sources(sources: Sequence[str | os.PathLike]) -> list[str]:
    """The sources as absolute paths, each checked to exist (before any work)."""
    if not sources:
        raise InputError("nothing to index: give folders, .jsonl manifests or .txt files as sources")
    out = []
    for s in sources:
        p = os.path.expanduser(os.fspath(s))
        if not os.path.exists(p):
            raise InputError(f"source not found: {p}")
        if not os.path.isdir(p) and not os.path.isfile(p):
            raise InputError(f"source is not a folder or a file: {p}")
        if not os.access(p, os.R_OK):
            raise InputError(f"source is not readable: {p}")
        out.append(os.path.abspath(p))
    return out


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def iter_items(sources: Sequence[str], modalities: Iterable[str], *,
               left_out: Callable[[str], None] | None = None) -> Iterator[Item]:
    """The items of the sources, in order (folders walked sorted, hidden entries left out).
    ``left_out(path)`` is told of each file in a folder that no modality reads."""
    modalities = list(modalities)
    exts = file_modalities(modalities)
    for src in sources:
        src = os.path.abspath(os.fspath(src))
        if os.path.isdir(src):
            yield from _folder(src, exts, left_out)
        elif src.lower().endswith(MANIFEST_EXTENSIONS):
            yield from _manifest(src, exts, modalities)
        elif src.lower().endswith(TEXT_EXTENSIONS):
            yield from _text_file(src, modalities)
        elif os.path.splitext(src)[1].lower() in exts:
            yield _file_item(src, exts[os.path.splitext(src)[1].lower()], src, {})
        else:
            raise InputError(
                f"source {src} is not a folder, a .jsonl manifest, a .txt file (one text per line) or a "
                f"file this model reads ({', '.join(sorted(exts))})"
            )


def _file_item(path: str, modality: str, source: str, metadata: dict[str, Any]) -> Item:
    item = Item(modality, uri=path, metadata={**metadata, "source": source}, source=source)
    if not _utf8(path):
        item.uri = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        item.error = "the file name is not valid UTF-8; rename the file"
    return item


def _folder(root: str, exts: dict[str, str], left_out: Callable[[str], None] | None) -> Iterator[Item]:
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith("."):
                continue
            path = os.path.join(dirpath, f)
            modality = exts.get(os.path.splitext(f)[1].lower())
            if modality is None:
                if left_out is not None:
                    left_out(path)
                continue
            yield _file_item(path, modality, root, {})


def _jsonl_lines(path: str) -> Iterator[tuple[str, Any, str]]:
    """(``file:line``, record, error) per non-blank line; a bad line is an error for that line
    only (invalid JSON, not UTF-8); an unreadable file ends the listing with an error."""
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                where = f"{path}:{n}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield where, None, f"{where}: not UTF-8 text ({e.reason} at byte {e.start})"
                    continue
                if not line.strip():
                    continue
                try:
                    yield where, json.loads(line), ""
                except json.JSONDecodeError as e:
                    yield where, None, f"{where}: invalid JSON ({e.msg} at column {e.colno})"
    except OSError as e:
        yield path, None, f"cannot read {path}: {e.strerror or e} (the rest of this manifest is skipped)"


def _manifest(path: str, exts: dict[str, str], modalities: list[str]) -> Iterator[Item]:
    from ..data.manifest import resolve_media

    base = os.path.dirname(path)
    media_keys = [m for m in modalities if m in set(exts.values())]
    for where, rec, error in _jsonl_lines(path):
        if error:
            yield Item("?", text=where, source=path, error=error, source_error=where == path)
            continue
        if not isinstance(rec, dict):
            yield Item("?", text=where, source=path, error=f"{where}: a line must be a JSON object")
            continue
        line = int(where.rsplit(":", 1)[1])
        media = [k for k in rec if k in media_keys]
        caption = rec.get("text", "")
        meta = {k: v for k, v in rec.items() if k not in media and k != "text"}
        meta["line"] = line
        if len(media) > 1 or not isinstance(caption, str):
            what = (f"several media fields ({', '.join(media)})" if len(media) > 1
                    else f"'text' is not a string ({type(caption).__name__})")
            yield Item(media[0] if media else "text", text=where, source=path, error=f"{where}: {what}")
        elif media:
            value = rec[media[0]]
            if not isinstance(value, str) or not value:
                yield Item(media[0], text=where, source=path,
                           error=f"{where}: '{media[0]}' must be a non-empty path, got {value!r}")
                continue
            item = _file_item(resolve_media(base, value), media[0], path, meta)
            item.text = caption
            yield item
        elif caption.strip():
            yield Item("text", text=caption.strip(), metadata={**meta, "source": path}, source=path)
        else:
            yield Item("text", text=where, source=path,
                       error=f"{where}: no media field ({', '.join(media_keys)}) and no text")


def _text_file(path: str, modalities: list[str]) -> Iterator[Item]:
    if "text" not in modalities:
        raise InputError(f"{path}: this model has no text branch to embed texts with")
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                text = line.strip()
                if text:
                    yield Item("text", text=text, metadata={"source": path, "line": n}, source=path)
    except UnicodeDecodeError as e:
        yield Item("text", text=path, source=path, error=f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); "
                   "the rest of this file is skipped", source_error=True)
    except OSError as e:
        yield Item("text", text=path, source=path, error=f"cannot read {path}: {e.strerror or e}", source_error=True)


# ---------------------------------------------------------------------------------- mapper
@dataclass
class Batch:
    """Items of one modality to decode and embed; ``known``: id -> content hash already indexed."""

    modality: str
    items: list[Item]
    known: dict[str, str] = field(default_factory=dict)


@dataclass
class Decoded:
    """A decoded batch: the model inputs for ``items`` (in order) and what was set aside."""

    modality: str
    items: list[Item]
    hashes: list[str]
    inputs: dict[str, Any] | None
    skipped: list[tuple[Item, str]] = field(default_factory=list)
    unchanged: list[Item] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Result:
    """Rows (with vectors) ready for the writer, and what was set aside."""

    modality: str
    rows: list[dict[str, Any]]
    skipped: list[tuple[Item, str]] = field(default_factory=list)
    unchanged: list[Item] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read(item: Item) -> bytes:
    """The file's bytes; its size and mtime (taken before reading) go into the item's metadata,
    so a file changed while being read is re-read by the next build."""
    try:
        with open(item.uri, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
        item.metadata["file_size"], item.metadata["file_mtime_ns"] = st.st_size, st.st_mtime_ns
    except FileNotFoundError:
        raise InputError(f"file not found: {item.uri}") from None
    except IsADirectoryError:
        raise InputError(f"is a directory: {item.uri}") from None
    except OSError as e:
        if not_the_input(e):  # too many open files, ...: the machine's fault, the build stops
            raise
        raise InputError(f"cannot read {item.uri}: {e.strerror or e}") from None
    if not data:
        raise InputError(f"file is empty: {item.uri}")
    return data


def _reason(e: BaseException) -> str:
    if isinstance(e, OnePeaceError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def decode_batch(batch: Batch, processor: Any) -> Decoded:
    """Read, hash and decode a batch (a DataLoader worker runs this): files whose content hash is
    already indexed come back as ``unchanged``; unreadable or undecodable ones as ``skipped``."""
    from ..processing.inputs import NamedBytes

    proc = processor.get(batch.modality)
    items, hashes, payloads = [], [], []
    skipped: list[tuple[Item, str]] = []
    unchanged: list[Item] = []
    for item in batch.items:
        if item.error:
            skipped.append((item, item.error))
            continue
        if item.uri:
            try:
                data = _read(item)
            except InputError as e:
                skipped.append((item, str(e)))
                continue
            except Exception as e:  # too many open files, ...: not the file's fault, the build stops
                stop_in_worker(e, item.name)
                raise
            digest = hashlib.sha256(data).hexdigest()
            payload: Any = NamedBytes(data, item.uri)
        else:
            digest, payload = sha256_text(item.text), item.text
        if batch.known.get(item.id) == digest:
            unchanged.append(item)
            continue
        items.append(item)
        hashes.append(digest)
        payloads.append(payload)
    caught: list[str] = []
    inputs = None
    if items:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:
                inputs = proc([_rewind(p) for p in payloads])
            except InputError:  # find the culprits one by one
                keep = []
                for i, (item, p) in enumerate(zip(items, payloads)):
                    try:
                        proc([_rewind(p)])
                        keep.append(i)
                    except InputError as e:  # the file's fault: set it aside
                        skipped.append((item, _reason(e)))
                    except Exception as e:  # a missing module, a bug: not the file's, the build stops
                        stop_in_worker(e, item.name)
                        raise
                items = [items[i] for i in keep]
                hashes = [hashes[i] for i in keep]
                payloads = [payloads[i] for i in keep]
                if items:
                    inputs = proc([_rewind(p) for p in payloads])
            caught = [str(x.message) for x in w]
    return Decoded(batch.modality, items, hashes, inputs, skipped, unchanged, caught)


def _rewind(p: Any) -> Any:
    if hasattr(p, "seek"):
        p.seek(0)
    return p


def make_row(item: Item, content_hash: str, vector: np.ndarray) -> dict[str, Any]:
    """The index row of an embedded item."""
    return {"id": item.id, "modality": item.modality, "uri": item.uri, "text": item.text,
            "metadata": dict(item.metadata), "content_hash": content_hash, "vector": vector}


def embed_decoded(model: Any, decoded: Decoded) -> Result:
    """Run the model on a decoded batch: rows with L2-normalised float32 vectors."""
    import torch

    rows = []
    if decoded.items:
        with torch.inference_mode():
            # bucket: a batch of captions or clips of mixed lengths skips its padding
            z = model.embed_batch(decoded.modality, decoded.inputs, bucket=True).float().cpu().numpy()
        rows = [make_row(it, h, v) for it, h, v in zip(decoded.items, decoded.hashes, z)]
    return Result(decoded.modality, rows, decoded.skipped, decoded.unchanged, decoded.warnings)


class _DecodeDataset:
    """Map-style dataset whose "indices" are the planned batches themselves (a DataLoader with
    ``sampler=plan`` and ``batch_size=None`` streams them to its workers without a full list).
    It travels to the workers as the model config (JSON) and Pillow's pixel limit; each worker
    builds its own processors."""

    def __init__(self, config_json: str):
        from PIL import Image

        self.config_json = config_json
        self.max_pixels = Image.MAX_IMAGE_PIXELS  # --max-pixels, which a fresh worker would not see
        self._processor = None

    def __getstate__(self) -> dict[str, Any]:
        return {"config_json": self.config_json, "max_pixels": self.max_pixels, "_processor": None}

    def __getitem__(self, batch: Batch) -> Decoded:
        if self._processor is None:
            from PIL import Image

            from ..config import ModelConfig
            from ..modalities import Processor

            Image.MAX_IMAGE_PIXELS = self.max_pixels
            self._processor = Processor(ModelConfig.from_dict(json.loads(self.config_json)))
        try:
            return decode_batch(batch, self._processor)
        except Exception as e:  # not an input's fault (those are set aside): the build stops
            first = batch.items[0].name if batch.items else "?"
            stop_in_worker(e, f"a batch of {len(batch.items)} {batch.modality} item(s) from {first}")
            raise


def embed_local(model: Any, batches: Iterable[Batch], *, workers: int = 2) -> Iterator[Result]:
    """The in-process engine: decoding in ``workers`` DataLoader processes (0: in this one),
    overlapping the model; results in plan order."""
    import multiprocessing as mp

    from torch.utils.data import DataLoader

    if workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked workers tokenize too
    # fork (where there is one): no start-up cost, and unlike spawn/forkserver it never re-runs
    # the caller's script in the workers (a script without a __main__ guard would run again).
    # LanceDB and Lance warn about forking a process that uses them; the workers only read and
    # decode files and never call into either, so those two warnings are silenced here.
    context = "fork" if workers > 0 and "fork" in mp.get_all_start_methods() else None
    loader = DataLoader(_DecodeDataset(model.config.to_json()), sampler=_Once(batches), batch_size=None,
                        num_workers=workers, collate_fn=_identity, multiprocessing_context=context,
                        prefetch_factor=2 if workers > 0 else None,
                        pin_memory=str(model.device).startswith("cuda"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"lance is not fork-safe")
        warnings.filterwarnings("ignore", message=r"lancedb fork support is experimental")
        it = iter(loader)  # the workers are forked here
    for decoded in it:
        yield embed_decoded(model, decoded)


class _Once:
    """An iterable over a one-shot iterator (the DataLoader asks for ``iter(sampler)`` once)."""

    def __init__(self, it: Iterable[Batch]):
        self.it = it

    def __iter__(self):
        return iter(self.it)


def _identity(x: Any) -> Any:
    return x


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


def described(text: str, metadata: dict[str, Any]) -> str:
    """A digest of what a row says about its item (text and metadata, file stat left out): a
    manifest edit that changes only these updates the row without embedding the file again."""
    meta = {k: v for k, v in metadata.items() if k not in _STAT_KEYS}
    return hashlib.sha1(json.dumps([text, meta], sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def _stored_state(index: Index) -> dict[str, tuple[str, int, int, str]]:
    """id -> (content_hash, file size, file mtime_ns, digest of text and metadata) of every row."""
    out = {}
    for r in index.rows(["id", "content_hash", "text", "metadata"]):
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
                 engine: str = "local"):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
        self.index = index
        self.modalities = list(modalities)
        self.sources = list(sources)
        self.batch_size = batch_size
        self.report_path = report_path or default_report_path(index.path)
        self.state = _stored_state(index)
        self.writer = IndexWriter(index, self.state, commit_rows=max(batch_size, commit_rows or DEFAULT_COMMIT_ROWS))
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
                item.metadata.update({k: stored[k] for k in _STAT_KEYS if k in stored})
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
        return self.pruned

    def summary(self, finished: bool = True) -> dict[str, Any]:
        return {"added": self.writer.added, "changed": self.writer.changed, "unchanged": self.unchanged,
                "metadata_only": len(self.relabel),
                "skipped": len(self.skipped), "pruned": self.pruned, "duplicates": self.duplicates,
                "left_out": self.left_out_count, "warnings": len(self.warnings), "commits": self.writer.commits,
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
              modalities: Sequence[str] | None = None, engine: str = "local") -> dict[str, Any]:
    """Plan, embed (``embed``: planned batches -> results, in any engine), write, prune, report.
    Holds the build lock of the index for the whole run."""
    from ..progress import progress_bar

    modalities = list(modalities if modalities is not None else model.modality_names)
    with build_lock(index.path):
        run = BuildRun(index, modalities, sources, batch_size=batch_size, commit_rows=commit_rows,
                       report_path=report_path, model_name=model_name, engine=engine)
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
            run.apply_relabels()
            if prune:
                run.prune()
            if run.writer.commits or run.pruned:
                index.optimize()  # compacts the small commits (readers keep working meanwhile)
            ann = index.ensure_ann(ann_threshold) if ann_threshold else None
            finished = True
        finally:
            path = run.write_report(finished)
    out = run.summary()
    out.update(report=path, rows=index.count(), index=ann or "exact")
    return out


def _bar_shown(progress: bool | None) -> bool:
    return bool(progress) or (progress is None and sys.stderr.isatty())


def build(db: str | os.PathLike, model: Any, sources: Sequence[str | os.PathLike], *, batch_size: int = 32,
          workers: int | None = None, prune: bool = False, report_path: str | None = None,
          progress: bool | None = None, engine: str = "local", address: str | None = None,
          commit_rows: int | None = None, ann_threshold: int | None = DEFAULT_ANN_THRESHOLD,
          ray_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Index ``sources`` into the index ``db`` (created if absent) with ``model`` (an ``OnePeace``
    or a model directory). Returns counts: added (new rows), changed (replaced rows), unchanged,
    skipped (listed in the report), pruned, plus ``report`` (its path), ``rows`` and ``index``.

    ``workers``: decoding processes (default: 2, at most the CPU count - 1; 0 decodes in this
    process). ``engine="ray"`` runs the embedding on Ray Data (``address``: a cluster to join;
    ``ray_options``: actors, cpus_per_actor, gpus_per_actor, dtype, see
    :func:`onepeace.search.ray_engine.build_ray`)."""
    from .fingerprint import model_fingerprint, model_name

    if engine not in ("local", "ray"):
        raise InputError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine != "ray" and (address or ray_options):
        raise InputError("a Ray address or Ray options apply to engine='ray' only")
    if workers is None:
        workers = max(0, min(2, (os.cpu_count() or 1) - 1))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InputError(f"workers must be a non-negative integer, got {workers!r}")
    srcs = check_sources(sources)
    db = os.fspath(db)
    prepare_db_dir(db)
    if engine == "ray":
        from .ray_engine import build_ray

        return build_ray(db, model, srcs, batch_size=batch_size, workers=workers, prune=prune,
                         report_path=report_path, progress=progress, address=address, commit_rows=commit_rows,
                         ann_threshold=ann_threshold, **(ray_options or {}))
    name = model_name(model)
    if isinstance(model, (str, os.PathLike)):  # refuse a mismatch before loading the model
        from ..model.onepeace import OnePeace

        if os.path.isdir(os.fspath(model)) and is_index(db):
            Index.open(db).check_model(model_fingerprint(model), name)
        model = OnePeace.from_pretrained(model)
    index = Index.open_or_create(db, model, model_name=name)
    return run_build(index, model, srcs, embed=lambda batches: embed_local(model, batches, workers=workers),
                     batch_size=batch_size, prune=prune, report_path=report_path, progress=progress,
                     commit_rows=commit_rows, ann_threshold=ann_threshold, model_name=name)



def prepare_db_dir(db: str) -> None:
    """Check that ``db`` can be an index (absent, empty or an index) before any work."""
    if is_remote(db):
        is_index(db)  # the storage answers (else StorageUnavailableError), before any work
        return
    if os.path.exists(db) and not os.path.isdir(db):
        raise SearchIndexError(f"{db} is a file, not an index directory")
    if os.path.isdir(db) and not is_index(db):
        entries = sorted(e for e in os.listdir(db) if not e.startswith("."))
        if entries:
            raise SearchIndexError(f"{db} is not an onepeace index and not empty ({', '.join(entries[:3])}"
                                   f"{' ...' if len(entries) > 3 else ''}); give a new or empty directory, or an index")
    parent = os.path.dirname(os.path.abspath(db))
    if not os.path.isdir(parent):
        raise SearchIndexError(f"cannot create the index {db}: its folder {parent} does not exist")
    os.makedirs(db, exist_ok=True)
