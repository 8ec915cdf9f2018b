"""Moments: the time ranges of long audio and video in an index, and the search that finds them.

**The table.** A second Lance table, ``moments``, in the index directory beside ``items``: one row
per window of a long file (see :mod:`onepeace.search.moment_build`): ``id`` (SHA-1 of the file's
id, start, end and kind: a window is the same row in every build), ``file_id`` (the id of the
file's row in ``items``), ``modality``, ``uri``, ``kind`` (``fixed`` or ``onsets``),
``content_hash`` (SHA-256 of the file, as its file row), ``start`` and ``end`` (float64 seconds)
and ``vector`` (float32, L2-normalised). Its schema metadata names the model as the items table's
does; a moments table of another model is refused.

A file's windows count once its **file row** (in ``items``) carries the same ``content_hash``: the
build writes that row last, after every window of the file is committed. Windows of a file whose
row is missing or holds another hash (a build killed half-way, a file changed since) are never
returned.

**The search** (:func:`find_moments`): the windows nearest the query (over-fetched), grouped by
file; within a file, :func:`merge_windows` grows a range from the best window over the windows
that overlap or touch it and score within ``margin`` of it (the range's score is the best
window's), then the next range from the best window left, up to ``per_file`` ranges per file, so
one file's neighbouring windows do not crowd out other files. Ranges of all files, best first, the
top ``k``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from .store import (
    DEFAULT_NPROBES,
    DEFAULT_REFINE,
    FORMAT_VERSION,
    META_DIM,
    META_FINGERPRINT,
    META_MODEL,
    META_VERSION,
    MOMENTS_TABLE,
    Index,
    SearchIndexError,
    compile_filter,
    table_ensure_ann,
    table_vector_index,
    table_write,
)

MOMENTS = MOMENTS_TABLE
#: the string columns of a moment row (then ``start``, ``end`` and ``vector``)
MOMENT_COLUMNS = ("id", "file_id", "modality", "uri", "kind", "content_hash")
#: ranges kept per file by default
DEFAULT_PER_FILE = 1
#: windows within this much (cosine) of a range's best window join the range
DEFAULT_MARGIN = 0.05
#: windows fetched per range wanted (k x per_file x this; more when too few files come back)
OVERFETCH = 8
MAX_PER_FILE = 20


class MomentsNotBuiltError(InputError):
    """The index has no moments table (no long audio or video was indexed with moments)."""


def moment_id(file_id: str, start: float, end: float, kind: str) -> str:
    """The stable id of a window: SHA-1 of its file's id, start and end (to the millisecond) and kind."""
    return hashlib.sha1(f"{file_id}\0{start:.3f}\0{end:.3f}\0{kind}".encode()).hexdigest()


def window_key(start: float, end: float, kind: str) -> tuple[int, int, str]:
    """A window as the build compares them: start and end in milliseconds, and its kind."""
    return int(round(float(start) * 1000)), int(round(float(end) * 1000)), str(kind)


def _schema(dim: int, fingerprint: str, model_name: str):
    import pyarrow as pa

    return pa.schema(
        [pa.field(c, pa.string(), nullable=False) for c in MOMENT_COLUMNS]
        + [pa.field("start", pa.float64(), nullable=False), pa.field("end", pa.float64(), nullable=False),
           pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)],
        metadata={META_FINGERPRINT: fingerprint, META_MODEL: model_name, META_DIM: str(dim),
                  META_VERSION: FORMAT_VERSION},
    )


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def has_moments(index: Index) -> bool:
    """Whether the index holds a moments table (cheap for a local index: no table opened)."""
    if os.path.isdir(index.path):
        return os.path.isdir(os.path.join(index.path, f"{MOMENTS}.lance", "_versions"))
    names = index._db.list_tables() if hasattr(index._db, "list_tables") else index._db.table_names()
    return MOMENTS in list(getattr(names, "tables", names))


class MomentTable:
    """The moments table of ``index`` (see the module doc): add, delete, read, search."""

    def __init__(self, index: Index, table: Any):
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        if meta.get(META_FINGERPRINT) != index.fingerprint:
            raise SearchIndexError(f"the moments table of {index.path} was built with another model "
                                   f"({meta.get(META_MODEL, '?')}) than its items ({index.model_name}); rebuild "
                                   "the index")
        self.index = index
        self.dim = index.dim
        self._table = table

    @classmethod
    def open(cls, index: Index) -> MomentTable | None:
        """The moments table of ``index``, or None when it has none."""
        if not has_moments(index):
            return None
        return cls(index, index._db.open_table(MOMENTS))

    @classmethod
    def open_or_create(cls, index: Index) -> MomentTable:
        found = cls.open(index)
        if found is not None:
            return found
        schema = _schema(index.dim, index.fingerprint, index.model_name)
        try:
            table = index._db.create_table(MOMENTS, schema=schema, mode="create")
        except (OSError, ValueError, RuntimeError) as e:
            found = cls.open(index)  # another process created it meanwhile
            if found is None:
                raise SearchIndexError(f"cannot create the moments table in {index.path}: {e}") from None
            return found
        return cls(index, table)

    # ---------------------------------------------------------------------------- writing
    def _arrow(self, rows: Sequence[Mapping[str, Any]]):
        import pyarrow as pa

        vecs = np.empty((len(rows), self.dim), dtype=np.float32)
        for i, row in enumerate(rows):
            vec = np.asarray(row["vector"], dtype=np.float64).reshape(-1)
            norm = float(np.linalg.norm(vec))
            if vec.shape != (self.dim,) or not math.isfinite(norm) or norm == 0:
                raise InputError(f"window {row.get('id')}: the vector is not {self.dim} finite values, not all zero")
            vecs[i] = vec / norm
        arrays = [pa.array([str(r[c]) for r in rows], pa.string()) for c in MOMENT_COLUMNS]
        arrays += [pa.array([float(r["start"]) for r in rows], pa.float64()),
                   pa.array([float(r["end"]) for r in rows], pa.float64()),
                   pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), self.dim)]
        return pa.Table.from_arrays(arrays, schema=_schema(self.dim, self.index.fingerprint, self.index.model_name))

    def add(self, rows: Sequence[Mapping[str, Any]], *, replace: bool | None = False) -> None:
        """Add window rows in one commit (``replace``: upsert by id, else a plain append)."""
        if not rows:
            return
        table_write(self._table, self._arrow(rows), replace=bool(replace), where=self.index.path)

    def delete_where(self, where: str) -> int:
        """Delete the windows matching SQL ``where``; returns how many there were."""
        n = self.count(where)
        if n:
            self._table.delete(where)
        return n

    def delete_files(self, file_ids: Sequence[str]) -> int:
        """Delete every window of these files."""
        n = 0
        ids = list(dict.fromkeys(file_ids))
        for i in range(0, len(ids), 500):
            n += self.delete_where(f"file_id IN ({', '.join(_quote(f) for f in ids[i:i + 500])})")
        return n

    # ---------------------------------------------------------------------------- reading
    def count(self, where: str | None = None) -> int:
        return int(self._table.count_rows(where) if where else self._table.count_rows())

    def scan(self, columns: Sequence[str], where: str | None = None):
        """An Arrow table of these columns of the latest version (optionally filtered)."""
        self._table.checkout_latest()
        return self._table.to_lance().to_table(columns=list(columns), filter=where)

    def batches(self, columns: Sequence[str], where: str | None = None) -> Iterator[Any]:
        """The same as Arrow record batches (bounded memory however many rows match)."""
        self._table.checkout_latest()
        yield from self._table.to_lance().to_batches(columns=list(columns), filter=where, batch_size=1024)

    def file_windows(self, file_id: str, content_hash: str | None = None) -> dict[tuple[int, int, str], str]:
        """window key -> id of the windows of one file (of one content hash)."""
        where = f"file_id = {_quote(file_id)}"
        if content_hash is not None:
            where += f" AND content_hash = {_quote(content_hash)}"
        t = self.scan(["id", "start", "end", "kind"], where)
        return {window_key(s, e, k): i for i, s, e, k in zip(*(t.column(c).to_pylist()
                                                               for c in ("id", "start", "end", "kind")))}

    def file_count(self) -> int:
        import pyarrow.compute as pc

        return len(pc.unique(self.scan(["file_id"]).column("file_id")))

    def search(self, vector: np.ndarray, limit: int, *, where: str | None = None, exact: bool | None = None,
               nprobes: int = DEFAULT_NPROBES, refine_factor: int = DEFAULT_REFINE) -> list[dict[str, Any]]:
        """The ``limit`` windows nearest ``vector`` (cosine), best first, with ``score``."""
        query = (self._table.search(np.asarray(vector, np.float32), vector_column_name="vector")
                 .distance_type("cosine").limit(int(limit))
                 .select([*MOMENT_COLUMNS, "start", "end", "_distance"]))
        if where:
            query = query.where(where, prefilter=True)
        query = query.bypass_vector_index() if exact else query.nprobes(int(nprobes)).refine_factor(int(refine_factor))
        out = []
        for h in query.to_list():
            h["score"] = min(1.0, max(-1.0, 1.0 - float(h.pop("_distance"))))
            out.append(h)
        out.sort(key=lambda r: -r["score"])
        return out

    def vector_index(self) -> dict[str, Any] | None:
        return table_vector_index(self._table)

    def ensure_ann(self, min_rows: int = 50_000) -> str:
        return table_ensure_ann(self._table, self.dim, self.count(), min_rows)

    def optimize(self) -> None:
        self._table.optimize()


# ---------------------------------------------------------------------------------- merging
def merge_windows(windows: Sequence[Mapping[str, Any]], *, per_file: int = DEFAULT_PER_FILE,
                  margin: float = DEFAULT_MARGIN) -> list[dict[str, Any]]:
    """The best ranges of one file's windows (dicts with ``start``, ``end``, ``score``), best
    first, at most ``per_file``: a range grows from the best window left over the windows that
    overlap or touch it and score at least its score minus ``margin``; the windows it overlaps
    are then used up. Each range: ``start``, ``end``, ``score`` (its best window's), ``windows``
    (how many it merged)."""
    left = sorted(windows, key=lambda w: (-float(w["score"]), float(w["start"])))
    ranges: list[dict[str, Any]] = []
    while left and len(ranges) < per_file:
        seed = left[0]
        start, end, best = float(seed["start"]), float(seed["end"]), float(seed["score"])
        members = {0}
        grown = True
        while grown:
            grown = False
            for i, w in enumerate(left):
                if i in members or float(w["score"]) < best - margin:
                    continue
                if float(w["start"]) <= end + 1e-6 and float(w["end"]) >= start - 1e-6:
                    start, end = min(start, float(w["start"])), max(end, float(w["end"]))
                    members.add(i)
                    grown = True
        ranges.append({"start": start, "end": end, "score": best, "windows": len(members)})
        # windows overlapping the range are used up: the next range is elsewhere in the file
        left = [w for i, w in enumerate(left) if i not in members
                and not (float(w["start"]) < end - 1e-6 and float(w["end"]) > start + 1e-6)]
    return ranges


def rank_moments(windows: Sequence[Mapping[str, Any]], k: int, *, per_file: int = DEFAULT_PER_FILE,
                 margin: float = DEFAULT_MARGIN) -> list[dict[str, Any]]:
    """Windows of many files (with ``file_id``) -> the ``k`` best ranges across files, at most
    ``per_file`` per file (each range carries its file's ``file_id``)."""
    by_file: dict[str, list[Mapping[str, Any]]] = {}
    for w in windows:
        by_file.setdefault(str(w["file_id"]), []).append(w)
    ranges = [{"file_id": f, **r} for f, ws in by_file.items()
              for r in merge_windows(ws, per_file=per_file, margin=margin)]
    ranges.sort(key=lambda r: (-r["score"], r["file_id"], r["start"]))
    return ranges[:k]


def clock(seconds: float, tenths: bool | None = None) -> str:
    """Seconds as m:ss (h:mm:ss from an hour), tenths shown when not whole (``tenths``: always or
    never): 41 -> 0:41, 3725.5 -> 1:02:05.5."""
    count = int(round(float(seconds) * 10))
    whole, frac = divmod(count, 10)
    h, rest = divmod(whole, 3600)
    m, sec = divmod(rest, 60)
    text = f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
    return text + (f".{frac}" if (frac if tenths is None else tenths) else "")


def time_range(start: float, end: float) -> str:
    """A moment's range, both ends at one precision: 0:17.2–0:18.0, 0:16–0:19."""
    tenths = any(int(round(float(x) * 10)) % 10 for x in (start, end))
    return f"{clock(start, tenths)}–{clock(end, tenths)}"


# ---------------------------------------------------------------------------------- searching
def check_per_file(per_file: Any) -> int:
    if isinstance(per_file, bool) or not isinstance(per_file, (int, np.integer)) or not 1 <= per_file <= MAX_PER_FILE:
        raise InputError(f"per_file must be an integer from 1 to {MAX_PER_FILE}, got {per_file!r}")
    return int(per_file)


def no_moments_message(index: Index) -> str:
    return (f"the index {index.path} has no moments (time ranges in long audio and video); build them with "
            f"`onepeace index build {index.path} SOURCE... --model MODEL`: audio and video over "
            "--moments-over seconds (default 20) get one row per window")


def _file_filter(modality: str | None, filter: Any, where: str | None) -> str | None:
    """The conditions on the file rows (items) that a moment's file must meet."""
    parts = []
    if modality is not None:
        parts.append(f"modality = {_quote(modality)}")
    if filter is not None:
        parts.append(compile_filter(filter))
    if where:
        parts.append(f"({where})")
    return " AND ".join(parts) or None


def _files(index: Index, file_ids: Sequence[str], extra: str | None) -> dict[str, dict[str, Any]]:
    """The file rows (in ``items``) of these ids that meet ``extra``, by id."""
    out: dict[str, dict[str, Any]] = {}
    ids = list(dict.fromkeys(file_ids))
    for i in range(0, len(ids), 500):
        where = f"id IN ({', '.join(_quote(f) for f in ids[i:i + 500])})" + (f" AND {extra}" if extra else "")
        try:
            rows = index.rows(["id", "modality", "uri", "text", "metadata", "content_hash"], where=where)
        except Exception as e:  # noqa: BLE001 - DataFusion reports bad SQL in many types
            raise InputError(f"the filter (--where) {extra!r} is not a valid filter on the columns "
                             f"id, modality, uri, text, metadata, content_hash: {str(e).splitlines()[0][:200]}") from None
        out.update((r["id"], r) for r in rows)
    return out


def find_moments(index: Index, vector: np.ndarray, *, k: int = 10, per_file: int = DEFAULT_PER_FILE,
                 margin: float = DEFAULT_MARGIN, modality: str | None = None, where: str | None = None,
                 filter: Any = None, exact: bool | None = None) -> list[dict[str, Any]]:
    """The ``k`` best time ranges for the query ``vector`` (see the module doc), best first. Each:
    ``id`` and ``file_id`` (the file's row), ``modality``, ``uri``, ``name``, ``text``,
    ``metadata``, ``start``, ``end`` (seconds), ``score``, ``windows``. ``modality``, ``filter``
    and ``where`` select files as they select rows in :meth:`Index.search`."""
    import json

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    per_file = check_per_file(per_file)
    table = MomentTable.open(index)
    if table is None:
        raise MomentsNotBuiltError(no_moments_message(index))
    q = np.asarray(vector, dtype=np.float64).reshape(-1)
    if q.shape != (index.dim,) or not np.isfinite(q).all() or not np.linalg.norm(q):
        raise InputError(f"the query vector must be {index.dim} finite values, not all zero")
    extra = _file_filter(modality, filter, where)
    total = table.count()
    fetch = max(64, int(k) * per_file * OVERFETCH)
    while True:
        windows = table.search(q / np.linalg.norm(q), min(fetch, max(total, 1)), exact=exact,
                               where=f"modality = {_quote(modality)}" if modality else None)
        files = _files(index, [w["file_id"] for w in windows], extra)
        # a window counts once its file row carries its content hash (the file's windows are complete)
        windows = [w for w in windows if w["file_id"] in files
                   and files[w["file_id"]]["content_hash"] == w["content_hash"]]
        ranges = rank_moments(windows, int(k), per_file=per_file, margin=margin)
        if len(ranges) >= k or fetch >= total:  # (at most per_file of them from one file)
            break
        fetch *= 4  # too few files among the nearest windows: look further
    out = []
    for r in ranges:
        f = files[r["file_id"]]
        meta = json.loads(f["metadata"]) if f["metadata"] else {}
        out.append({"id": f["id"], "file_id": f["id"], "modality": f["modality"], "uri": f["uri"],
                    "name": os.path.basename(f["uri"]), "text": f["text"], "metadata": meta,
                    "start": r["start"], "end": r["end"], "score": r["score"], "windows": r["windows"],
                    "duration": meta.get("duration")})
    return out
