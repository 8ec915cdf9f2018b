"""``Index``: one embedded LanceDB table ("items") of embedded images, audio and texts.

Columns: ``id`` (stable: sha1 of modality + uri for files, of modality + text for texts),
``modality``, ``uri`` (absolute path, "" for texts), ``text`` (the text, or a caption), ``metadata``
(a JSON object: source, label, manifest fields, ...), ``content_hash`` (sha256 of the file bytes or
the text) and ``vector`` (float32, L2-normalised). The schema metadata names the model the vectors
came from (``onepeace.fingerprint``, ``onepeace.model``, ``onepeace.dim``): adding vectors of
another model, which would silently mix two embedding spaces, is refused.

Every ``add`` is one Lance commit (atomic: after a crash the table holds the batch whole or not at
all). Readers see committed versions only, so searching while another process adds is safe; an
open ``Index`` picks up other processes' commits at its next read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np

from ..errors import InputError, OnePeaceError

TABLE = "items"
#: the table of the windows of long audio and video (:mod:`onepeace.search.moments`)
MOMENTS_TABLE = "moments"
META_FINGERPRINT = "onepeace.fingerprint"
META_MODEL = "onepeace.model"
META_DIM = "onepeace.dim"
META_VERSION = "onepeace.index"
FORMAT_VERSION = "1"
COLUMNS = ("id", "modality", "uri", "text", "metadata", "content_hash")
#: ANN search settings: IVF partitions probed, and candidates re-ranked with the exact vectors
#: (``refine_factor`` x k); chosen by benchmarks/bench_search.py (recall@10 >= 0.95 against exact
#: search at 10k, 100k and 1M rows of 1536-d vectors), see the README's table
DEFAULT_NPROBES = 64
DEFAULT_REFINE = 20
#: IVF-PQ build: 4-bit codes (16 centroids per sub-space) over 4-dimensional sub-vectors, k-means on
#: 64 samples per centroid for at most 20 iterations: about 2 min for 1M 1536-d rows on 2 cores,
#: where LanceDB's defaults (8-bit codes, 256 samples, 50 iterations) take over 10x longer
PQ_BITS = 4
PQ_SAMPLE_RATE = 64
PQ_MAX_ITERATIONS = 20
METADATA_CACHE_BYTES = 64 * 1024**2
_MODALITY = re.compile(r"^[a-z][a-z0-9_]*$")
_TYPE_NAMES = {"IvfPq": "IVF_PQ", "IvfHnswSq": "IVF_HNSW_SQ", "IvfHnswPq": "IVF_HNSW_PQ", "IvfFlat": "IVF_FLAT",
               "IvfSq": "IVF_SQ", "IvfRq": "IVF_RQ", "IvfHnswFlat": "IVF_HNSW_FLAT"}


class SearchIndexError(OnePeaceError):
    """An index could not be opened, created or used."""


class StorageUnavailableError(SearchIndexError):
    """The object storage of a remote index (``s3://...``) cannot be reached now (the server
    answers 503; retrying later may work)."""


class IndexNotFoundError(SearchIndexError):
    """The path holds no onepeace index."""


class ModelMismatchError(SearchIndexError):
    """The index was built with another model than the one given."""


_REMOTE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)
#: the standard environment variables (as boto and LanceDB read them) -> LanceDB storage options
_AWS_ENV = (("AWS_ENDPOINT_URL", "aws_endpoint"), ("AWS_ENDPOINT_URL_S3", "aws_endpoint"),
            ("AWS_ACCESS_KEY_ID", "aws_access_key_id"), ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
            ("AWS_SESSION_TOKEN", "aws_session_token"), ("AWS_DEFAULT_REGION", "aws_region"),
            ("AWS_REGION", "aws_region"), ("AWS_ALLOW_HTTP", "allow_http"))
#: seconds a request to the object storage may retry before the storage is reported unavailable
STORAGE_TIMEOUT_ENV = "ONEPEACE_STORAGE_TIMEOUT"
_STORAGE_DOWN = re.compile(r"error sending request|connect(ion)? ?(error|refused|reset)|tcp connect|timed? ?out|"
                           r"dns error|RetryError|HTTP error|broken pipe|Service ?Unavailable|SlowDown", re.I)


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an object-storage URI (``s3://bucket/path``, ``gs://``, ``az://``)."""
    return isinstance(path, str) and bool(_REMOTE.match(path))


def storage_options() -> dict[str, str]:
    """LanceDB's storage options for a remote index, from the standard environment variables
    (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
    ``AWS_REGION``, ``AWS_ALLOW_HTTP``), with bounded retries: a request gives up after
    ``ONEPEACE_STORAGE_TIMEOUT`` seconds (default 10) instead of minutes."""
    opts = {key: os.environ[env] for env, key in _AWS_ENV if os.environ.get(env)}
    raw = os.environ.get(STORAGE_TIMEOUT_ENV, "10")
    try:
        timeout = float(raw)
    except ValueError:
        timeout = -1.0
    if not 0 < timeout < 86400:
        raise InputError(f"{STORAGE_TIMEOUT_ENV}={raw!r}: give the seconds a storage request may retry, e.g. 10")
    opts.update(connect_timeout=f"{max(1, int(timeout))}s", client_retry_timeout=str(max(1, int(timeout))),
                client_max_retries="3")
    return opts


def _storage_failure(path: str, e: BaseException) -> StorageUnavailableError | None:
    """A StorageUnavailableError naming the storage of a remote index, when ``e`` says it cannot
    be reached (else None: another failure)."""
    if not is_remote(path) or not _STORAGE_DOWN.search(str(e)):
        return None
    return StorageUnavailableError(f"the index storage {path} cannot be reached ({_first_line(e)[:160]}); "
                                   "check the object store and AWS_ENDPOINT_URL, then retry")


def item_id(modality: str, uri: str = "", text: str = "") -> str:
    """The stable row id: sha1 of the modality and the file's absolute path (files) or the text."""
    key = uri if uri else f"text:{text}"
    return hashlib.sha1(f"{modality}\0{key}".encode()).hexdigest()


def _quote(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


#: the columns a structured filter may name (``name``: the file's name, the last part of ``uri``;
#: ``uri`` and ``metadata`` hold the server's paths and are not filterable from a structured filter)
FILTER_COLUMNS = ("id", "modality", "text", "name")
#: filter operators (``name`` takes eq, ne, in, not_in and ends_with), see :func:`compile_filter`
FILTER_OPS = ("eq", "ne", "in", "not_in", "contains", "starts_with", "ends_with")
_NAME_OPS = ("eq", "ne", "in", "not_in", "ends_with")
FILTER_MAX_DEPTH = 8
FILTER_MAX_TERMS = 64
FILTER_MAX_VALUES = 256
FILTER_MAX_CHARS = 1000


def _like(value: str) -> str:
    """``value`` as a LIKE pattern matching itself literally (with ``ESCAPE '\\'``)."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def compile_filter(spec: Any) -> str:
    """A structured filter (JSON-like) as a LanceDB SQL filter, built only from this module's
    own SQL: columns from :data:`FILTER_COLUMNS`, values as quoted string literals (``%`` and
    ``_`` escaped in patterns), so no value can close a parenthesis or add a condition.

    Grammar: ``{"column": C, "op": OP, "value": V}``, ``{"and": [F, ...]}``, ``{"or": [F, ...]}``,
    ``{"not": F}``. OP is ``eq`` (the default), ``ne``, ``in`` / ``not_in`` (V a list of strings),
    ``contains``, ``starts_with``, ``ends_with`` (V a string; ``name`` takes eq, ne, in, not_in,
    ends_with). Raises InputError (``filter: ...``) on anything else."""
    return _FilterCompiler().node(spec, "", 0)


def _filter_error(where: str, what: str) -> InputError:
    return InputError(f"filter{where}: {what}")


def _filter_string(v: Any, where: str) -> str:
    """A filter value, checked: a string of at most FILTER_MAX_CHARS characters, with no NUL."""
    if not isinstance(v, str):
        raise _filter_error(where, f"a value must be a string, got {type(v).__name__}")
    if len(v) > FILTER_MAX_CHARS:
        raise _filter_error(where, f"a value of {len(v):,} characters; at most {FILTER_MAX_CHARS:,}")
    if "\0" in v:
        raise _filter_error(where, "a value contains a NUL character")
    return v


def _filter_leaf(node: dict, where: str) -> str:
    """One condition ``{"column", "op", "value"}``, checked, as SQL."""
    unknown = sorted(set(node) - {"column", "op", "operator", "value"})
    if unknown:
        raise _filter_error(where, f"unknown key {unknown[0]!r}; a condition is {{\"column\", \"op\", \"value\"}}")
    column = node.get("column")
    if column not in FILTER_COLUMNS:
        raise _filter_error(where, f"unknown column {column!r}; filter on one of {', '.join(FILTER_COLUMNS)}")
    op = node.get("op", node.get("operator", "eq"))
    if op not in FILTER_OPS or (column == "name" and op not in _NAME_OPS):
        allowed = _NAME_OPS if column == "name" else FILTER_OPS
        raise _filter_error(where, f"unknown operator {op!r} for {column}; use one of {', '.join(allowed)}")
    if "value" not in node:
        raise _filter_error(where, "a condition needs a value")
    value = node["value"]
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise _filter_error(where, f"{op} takes a non-empty list of strings")
        if len(value) > FILTER_MAX_VALUES:
            raise _filter_error(where, f"{len(value)} values; at most {FILTER_MAX_VALUES}")
        values = [_filter_string(v, f"{where}.value[{i}]") for i, v in enumerate(value)]
    else:
        values = [_filter_string(value, where + ".value")]
    if column == "name":
        return _name_sql(op, values, where)
    return _column_sql(column, op, values)


def _name_sql(op: str, values: list[str], where: str) -> str:
    """A condition on the file name (the end of ``uri`` after its last ``/``), as SQL."""
    for v in values:
        if "/" in v or "\\" in v or not v:
            raise _filter_error(where, f"a file name cannot be empty or contain a path separator: {v!r}")
    eq = [f"uri LIKE {_quote('%/' + _like(v))} ESCAPE '\\'" for v in values]
    if op == "ends_with":
        return f"(uri LIKE {_quote('%' + _like(values[0]))} ESCAPE '\\' AND uri <> '')"
    sql = "(" + " OR ".join(eq) + ")"
    return f"(NOT {sql} AND uri <> '')" if op in ("ne", "not_in") else sql


def _column_sql(column: str, op: str, values: list[str]) -> str:
    """A condition on one of the stored columns, as SQL (values quoted, patterns escaped)."""
    if op == "eq":
        return f"({column} = {_quote(values[0])})"
    if op == "ne":
        return f"({column} <> {_quote(values[0])})"
    if op in ("in", "not_in"):
        listed = ", ".join(_quote(v) for v in values)
        return f"({column} {'NOT IN' if op == 'not_in' else 'IN'} ({listed}))"
    pattern = {"contains": "%{}%", "starts_with": "{}%", "ends_with": "%{}"}[op].format(_like(values[0]))
    return f"({column} LIKE {_quote(pattern)} ESCAPE '\\')"


class _FilterCompiler:
    """Walks a filter's and/or/not tree, counting its conditions against FILTER_MAX_TERMS."""

    def __init__(self) -> None:
        self.terms = 0

    def node(self, n: Any, where: str, depth: int) -> str:
        if depth > FILTER_MAX_DEPTH:
            raise _filter_error(where, f"nested deeper than {FILTER_MAX_DEPTH} levels")
        if not isinstance(n, dict):
            raise _filter_error(where, f"a filter is a JSON object, got {type(n).__name__}")
        self.terms += 1
        if self.terms > FILTER_MAX_TERMS:
            raise _filter_error("", f"more than {FILTER_MAX_TERMS} conditions")
        logic = [k for k in ("and", "or", "not") if k in n]
        if not logic:
            return _filter_leaf(n, where)
        if len(n) != 1:
            raise _filter_error(where, f"{logic[0]!r} must be the only key of its object")
        key = logic[0]
        if key == "not":
            return f"(NOT {self.node(n['not'], where + '.not', depth + 1)})"
        parts = n[key]
        if not isinstance(parts, list) or not parts:
            raise _filter_error(where, f"{key!r} takes a non-empty list of filters")
        sql = f" {key.upper()} ".join(self.node(x, f"{where}.{key}[{i}]", depth + 1) for i, x in enumerate(parts))
        return f"({sql})"


def _schema(dim: int, fingerprint: str, model_name: str):
    import pyarrow as pa

    return pa.schema(
        [pa.field(c, pa.string(), nullable=False) for c in COLUMNS]
        + [pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)],
        metadata={META_FINGERPRINT: fingerprint, META_MODEL: model_name, META_DIM: str(dim),
                  META_VERSION: FORMAT_VERSION},
    )


def _dir_size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:  # removed meanwhile (a concurrent commit's temp file)
                pass
    return total


def is_index(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding an onepeace index (cheap: no database opened), or
    an object-storage URI (``s3://...``) holding one (one listing request)."""
    path = os.fspath(path)
    if is_remote(path):
        try:
            db = Index._connect(path)
            names = db.list_tables() if hasattr(db, "list_tables") else db.table_names()
            names = getattr(names, "tables", names)
        except SearchIndexError:
            raise
        except Exception as e:  # noqa: BLE001 - lance reports storage errors in many types
            raise _storage_failure(path, e) or SearchIndexError(f"cannot read {path}: {_first_line(e)}") from None
        return TABLE in list(names)
    return os.path.isdir(os.path.join(path, f"{TABLE}.lance", "_versions"))


class Index:
    """An onepeace search index in the directory ``path`` (create, open, add, delete, search).

    >>> idx = Index.open_or_create("photos.db", model)        # doctest: +SKIP
    >>> idx.search(vector, k=5, modality="image")              # doctest: +SKIP
    """

    def __init__(self, path: str, db: Any, table: Any):
        self.path = path
        self._db = db
        self._table = table
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        if META_FINGERPRINT not in meta or META_DIM not in meta:
            raise IndexNotFoundError(
                f"{path} holds a LanceDB table '{TABLE}' that onepeace did not create (no model fingerprint "
                "in its metadata); give a directory built with `onepeace index build`"
            )
        self.fingerprint: str = meta[META_FINGERPRINT]
        self.model_name: str = meta.get(META_MODEL, "")
        self.dim: int = int(meta[META_DIM])
        self._ann_type: str | None = None

    # ------------------------------------------------------------------ opening
    @staticmethod
    def _connect(path: str):
        try:
            import lancedb
        except ImportError:
            raise SearchIndexError("search indexes need LanceDB: pip install 'onepeace[search]'") from None
        # interval 0: every read checks for commits of other processes (a server sees new rows);
        # file metadata cached up to METADATA_CACHE_BYTES (with LanceDB's default cache, 1 GiB,
        # a long build's memory grew with its number of commits)
        kwargs: dict[str, Any] = {}
        if hasattr(lancedb, "Session"):
            kwargs["session"] = lancedb.Session(metadata_cache_size_bytes=METADATA_CACHE_BYTES)
        if is_remote(path):  # object storage: credentials and endpoint from the environment
            kwargs["storage_options"] = storage_options()
        return lancedb.connect(path, read_consistency_interval=timedelta(0), **kwargs)

    @classmethod
    def create(cls, path: str | os.PathLike, *, fingerprint: str, model_name: str, dim: int) -> Index:
        """A new, empty index in ``path`` (created; or an existing empty directory)."""
        path = os.fspath(path)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InputError(f"index dimension must be a positive integer, got {dim!r}")
        if is_remote(path):
            return cls._create_remote(path, _schema(dim, fingerprint, model_name))
        if os.path.exists(path) and not os.path.isdir(path):
            raise SearchIndexError(f"{path} is a file, not an index directory; give a new or empty directory")
        if is_index(path):
            raise SearchIndexError(f"{path} already holds an index; open it (Index.open) instead of creating it")
        if os.path.isdir(path) and [e for e in os.listdir(path) if not e.startswith(".")]:
            raise SearchIndexError(
                f"{path} is not an onepeace index and not empty ({', '.join(sorted(os.listdir(path))[:3])}); "
                "give a new or empty directory"
            )
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise SearchIndexError(f"cannot create the index {path}: its folder {parent} does not exist")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise SearchIndexError(f"cannot create the index directory {path}: {e.strerror or e}") from None
        db = cls._connect(path)
        try:
            table = db.create_table(TABLE, schema=_schema(dim, fingerprint, model_name), mode="create")
        except (OSError, ValueError, RuntimeError) as e:
            if is_index(path):  # another process created it at the same moment
                return cls.open(path)
            raise SearchIndexError(f"cannot create the index in {path}: {e}") from None
        return cls(path, db, table)

    @classmethod
    def _create_remote(cls, path: str, schema: Any) -> Index:
        if is_index(path):
            raise SearchIndexError(f"{path} already holds an index; open it (Index.open) instead of creating it")
        try:
            db = cls._connect(path)
            table = db.create_table(TABLE, schema=schema, mode="create")
        except SearchIndexError:
            raise
        except Exception as e:  # noqa: BLE001
            if is_index(path):
                return cls.open(path)
            raise _storage_failure(path, e) or SearchIndexError(
                f"cannot create the index in {path}: {_first_line(e)}") from None
        return cls(path, db, table)

    @classmethod
    def _open_remote(cls, path: str) -> Index:
        if not is_index(path):
            raise IndexNotFoundError(f"{path} holds no onepeace index; build one with `onepeace index build {path} "
                                     "--model MODEL SOURCE...`")
        try:
            return cls(path, (db := cls._connect(path)), db.open_table(TABLE))
        except SearchIndexError:
            raise
        except Exception as e:  # noqa: BLE001
            raise _storage_failure(path, e) or IndexNotFoundError(
                f"{path}: cannot open the index table: {_first_line(e)}") from None

    @classmethod
    def open(cls, path: str | os.PathLike) -> Index:
        """The index in ``path`` (a directory or an ``s3://`` URI); :class:`IndexNotFoundError`
        when there is none, :class:`StorageUnavailableError` when its object storage is down."""
        path = os.fspath(path)
        if is_remote(path):
            return cls._open_remote(path)
        if not os.path.exists(path):
            raise IndexNotFoundError(f"index not found: {path} (build one with `onepeace index build {path} "
                                     "--model MODEL SOURCE...`)")
        if not os.path.isdir(path):
            raise IndexNotFoundError(f"{path} is a file, not an index directory")
        if not is_index(path):
            raise IndexNotFoundError(f"{path} is not an onepeace index (no '{TABLE}' table in it); build one "
                                     f"with `onepeace index build {path} --model MODEL SOURCE...`")
        db = cls._connect(path)
        try:
            table = db.open_table(TABLE)
        except Exception as e:  # noqa: BLE001 - lance reports corrupt tables with many types
            raise IndexNotFoundError(f"{path}: cannot open the index table: {_first_line(e)}") from None
        return cls(path, db, table)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, model: Any, *, model_name: str | None = None) -> Index:
        """The index in ``path`` built with ``model`` (an ``OnePeace``), created when absent.

        An index built with another model is refused (:class:`ModelMismatchError`) naming both."""
        from .fingerprint import model_fingerprint
        from .fingerprint import model_name as name_of

        fp = model_fingerprint(model)
        name = model_name or name_of(model)
        path = os.fspath(path)
        if is_index(path):
            idx = cls.open(path)
            idx.check_model(fp, name)
            return idx
        return cls.create(path, fingerprint=fp, model_name=name, dim=int(model.config.dim))

    def check_model(self, fingerprint: str, name: str) -> None:
        """Refuse a model whose fingerprint is not the index's, naming both."""
        if fingerprint != self.fingerprint:
            raise ModelMismatchError(
                f"the index {self.path} was built with the model {self.model_name or '?'} "
                f"(fingerprint {self.fingerprint[:12]}), not with {name} (fingerprint {fingerprint[:12]}); "
                f"use that model, or build a new index for this one"
            )

    # ------------------------------------------------------------------ writing
    def _arrow(self, rows: Sequence[dict[str, Any]]):
        import pyarrow as pa

        schema = _schema(self.dim, self.fingerprint, self.model_name)
        cols: dict[str, list[str]] = {c: [] for c in COLUMNS}
        vecs = np.empty((len(rows), self.dim), dtype=np.float32)
        for i, row in enumerate(rows):
            for c in COLUMNS:
                v = row.get(c, "")
                if c == "metadata" and not isinstance(v, str):
                    v = json.dumps(v or {}, ensure_ascii=False, sort_keys=True)
                elif c == "id" and not v:
                    v = item_id(row.get("modality", ""), row.get("uri", ""), row.get("text", ""))
                elif not isinstance(v, str):
                    raise InputError(f"row {i}: {c!r} must be a string, got {type(v).__name__}")
                cols[c].append(v)
            if not cols["modality"][-1]:
                raise InputError(f"row {i} ({cols['id'][-1]}): no modality")
            vec = np.asarray(row.get("vector"), dtype=np.float64).reshape(-1)
            if vec.shape != (self.dim,):
                raise InputError(f"row {i} ({cols['id'][-1]}): the vector has {vec.size} values, the index holds "
                                 f"{self.dim}-dimensional vectors")
            norm = float(np.linalg.norm(vec))
            if not math.isfinite(norm) or norm == 0:
                raise InputError(f"row {i} ({cols['id'][-1]}): the vector is zero or not finite")
            vecs[i] = vec / norm
        if len(set(cols["id"])) != len(rows):
            raise InputError("rows of one batch must have distinct ids")
        arrays = [pa.array(cols[c], pa.string()) for c in COLUMNS]
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), self.dim))
        return pa.Table.from_arrays(arrays, schema=schema)

    def add(self, rows: Sequence[dict[str, Any]], *, replace: bool | None = None) -> None:
        """Add rows (dicts with the columns; ``metadata`` may be a dict) in one commit.

        A row whose id is already in the table replaces it (in the same commit). ``replace=False``
        promises that no id exists yet (a plain append, skipping the lookup: what ``build`` does
        for new files); ``True`` always upserts."""
        if not rows:
            return
        data = self._arrow(rows)
        if replace is None:
            replace = self._any_exists([r for r in data.column("id").to_pylist()])
        table_write(self._table, data, replace=replace, where=self.path)

    def _any_exists(self, ids: list[str]) -> bool:
        return any(self._count_where(self._in("id", chunk)) for chunk in _chunks(ids, 500))

    @staticmethod
    def _in(column: str, values: Iterable[str]) -> str:
        return f"{column} IN ({', '.join(_quote(v) for v in values)})"

    def delete(self, ids: Iterable[str]) -> int:
        """Delete the rows with these ids; returns how many there were."""
        ids = list(dict.fromkeys(ids))
        n = 0
        for chunk in _chunks(ids, 500):
            where = self._in("id", chunk)
            found = self._count_where(where)
            if found:
                self._table.delete(where)
                n += found
        return n

    # ------------------------------------------------------------------ reading
    @contextlib.contextmanager
    def _storage(self):
        """Reads of a remote index: an unreachable object store raises StorageUnavailableError."""
        try:
            yield
        except OnePeaceError:
            raise
        except Exception as e:  # noqa: BLE001 - lance reports storage errors in many types
            down = _storage_failure(self.path, e)
            if down is None:
                raise
            raise down from None

    def _count_where(self, where: str | None) -> int:
        with self._storage():
            return int(self._table.count_rows(where) if where else self._table.count_rows())

    def count(self, modality: str | None = None) -> int:
        """Rows in the index (of one modality)."""
        return self._count_where(None if modality is None else f"modality = {_quote(_check_modality(modality))}")

    def _scan(self, columns: list[str], where: str | None = None):
        """An Arrow table of these columns of the latest version (optionally filtered)."""
        with self._storage():
            self._table.checkout_latest()
            return self._table.to_lance().to_table(columns=columns, filter=where)

    def get(self, id: str) -> dict[str, Any] | None:
        """The row ``id`` (without its vector; ``metadata`` parsed), or None."""
        rows = self._scan(list(COLUMNS), f"id = {_quote(id)}").to_pylist()
        return _public(rows[0]) if rows else None

    def hashes(self) -> dict[str, str]:
        """id -> content_hash of every row (what an incremental build compares)."""
        t = self._scan(["id", "content_hash"])
        return dict(zip(t.column("id").to_pylist(), t.column("content_hash").to_pylist()))

    def rows(self, columns: Sequence[str] = COLUMNS, where: str | None = None) -> list[dict[str, Any]]:
        """Rows (these columns, optionally filtered by SQL ``where``), metadata as stored (JSON text)."""
        return self._scan(list(columns), where).to_pylist()

    def modality_counts(self) -> dict[str, int]:
        import pyarrow.compute as pc

        counts = pc.value_counts(self._scan(["modality"]).column("modality"))
        return dict(sorted((str(c["values"]), int(c["counts"])) for c in counts.to_pylist()))

    def vector_index(self) -> dict[str, Any] | None:
        """The ANN index on ``vector`` (type, rows indexed / not yet), or None (exact search)."""
        return table_vector_index(self._table)

    def info(self) -> dict[str, Any]:
        """Counts per modality, the model, the search type and the size on disk."""
        ann = self.vector_index()
        return {
            "path": self.path if is_remote(self.path) else os.path.abspath(self.path),
            "rows": self.count(),
            "modalities": self.modality_counts(),
            "model": self.model_name,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "index": ann["type"] if ann else "exact",
            "ann": ann,
            "version": int(self._table.version),
            "size_bytes": None if is_remote(self.path) else _dir_size(self.path),
        }

    # ------------------------------------------------------------------ search
    def search(self, vector: np.ndarray | Sequence[float], k: int = 10, modality: str | None = None,
               where: str | None = None, exact: bool | None = None, *, nprobes: int = DEFAULT_NPROBES,
               refine_factor: int = DEFAULT_REFINE, filter: Any = None) -> list[dict[str, Any]]:
        """The ``k`` rows nearest ``vector`` (cosine), best first: rows without the vector, with
        ``score`` (cosine similarity) and ``metadata`` parsed. ``modality`` keeps one modality,
        ``where`` is a SQL filter on the columns (e.g. ``"uri LIKE '%/cats/%'"``, for local use),
        ``filter`` a structured one (:func:`compile_filter`; what the network API takes). ``exact``:
        None (or False) uses the ANN index when there is one, True always compares every row."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        q = np.asarray(vector, dtype=np.float64).reshape(-1)
        if q.shape != (self.dim,):
            raise InputError(f"the query vector has {q.size} values; this index holds {self.dim}-dimensional "
                             f"vectors (model {self.model_name})")
        norm = float(np.linalg.norm(q))
        if not math.isfinite(norm) or norm == 0:
            raise InputError("the query vector is zero or not finite")
        filters = []
        if modality is not None:
            filters.append(f"modality = {_quote(_check_modality(modality))}")
        if filter is not None:
            filters.append(compile_filter(filter))
        if where:
            filters.append(f"({where})")
        with self._storage():  # (builds the query from the table's schema: a remote read)
            query = (self._table.search((q / norm).astype(np.float32), vector_column_name="vector")
                     .distance_type("cosine").limit(int(k)).select([*COLUMNS, "_distance"]))
        if filters:
            query = query.where(" AND ".join(filters), prefilter=True)
        if exact:
            query = query.bypass_vector_index()
        else:  # the ANN index when there is one (these settings are then used), else every row
            query = query.nprobes(int(nprobes)).refine_factor(int(refine_factor))
        try:
            hits = query.to_list()
        except Exception as e:  # noqa: BLE001 - DataFusion / lance report bad SQL in many types
            down = _storage_failure(self.path, e)
            if down is not None:
                raise down from None
            if where:
                raise InputError(f"the filter (--where) {where!r} is not a valid filter on the columns {', '.join(COLUMNS)}: "
                                 f"{_first_line(e)}") from None
            raise SearchIndexError(f"search in {self.path} failed: {_first_line(e)}") from None
        out = []
        for h in hits:
            row = _public(h)
            row["score"] = min(1.0, max(-1.0, 1.0 - float(h["_distance"])))  # float32 rounding
            out.append(row)
        out.sort(key=lambda r: -r["score"])
        return out

    def ensure_ann(self, min_rows: int = 50_000, *, index_type: str = "IVF_PQ") -> str:
        """Build LanceDB's ANN index on ``vector`` once the table holds ``min_rows`` rows (an
        existing one is brought up to date with the rows added since); returns the search type
        now in use: "exact" below the threshold, else the index type ("IVF_PQ", "IVF_HNSW_SQ")."""
        return table_ensure_ann(self._table, self.dim, self.count(), min_rows, index_type=index_type)

    def optimize(self) -> None:
        """Compact the table's fragments (many small commits) and update its indexes."""
        self._table.optimize()

    def __repr__(self) -> str:
        return f"Index({self.path!r}, model={self.model_name!r}, dim={self.dim})"


def table_write(table: Any, data: Any, *, replace: bool, where: str) -> None:
    """Write Arrow ``data`` to a Lance ``table`` in one commit: upserted by ``id`` (``replace``)
    or appended; a failing disk or store is one :class:`SearchIndexError` naming the index ``where``."""
    try:
        if replace:
            table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
        else:
            table.add(data)
    except OSError as e:
        raise SearchIndexError(f"cannot write to the index {where}: {e}") from None


def table_vector_index(table: Any) -> dict[str, Any] | None:
    """The ANN index on the ``vector`` column of a LanceDB table (type, rows indexed / not yet),
    or None (exact search)."""
    for cfg in table.list_indices():
        if "vector" in list(getattr(cfg, "columns", [])):
            stats = table.index_stats(cfg.name)
            return {"name": cfg.name, "type": _TYPE_NAMES.get(str(cfg.index_type), str(cfg.index_type)),
                    "indexed_rows": int(getattr(stats, "num_indexed_rows", 0) or 0),
                    "unindexed_rows": int(getattr(stats, "num_unindexed_rows", 0) or 0)}
    return None


def table_ensure_ann(table: Any, dim: int, n: int, min_rows: int = 50_000, *, index_type: str = "IVF_PQ") -> str:
    """:meth:`Index.ensure_ann` on any LanceDB table of ``n`` rows of ``dim``-dimensional vectors
    (the items table, or the moments table of :mod:`onepeace.search.moments`)."""
    from lancedb.index import IvfHnswSq, IvfPq

    ann = table_vector_index(table)
    if ann is None and n < min_rows:
        return "exact"
    if ann is not None:
        if ann["unindexed_rows"]:
            table.optimize()  # folds new rows into the index (and compacts fragments)
        return ann["type"]
    parts = max(1, min(4096, int(round(math.sqrt(n)))))
    if index_type == "IVF_PQ":
        sub_vectors, bits = _pq_layout(dim)
        config: Any = IvfPq(distance_type="cosine", num_partitions=parts, num_sub_vectors=sub_vectors,
                            num_bits=bits, sample_rate=PQ_SAMPLE_RATE, max_iterations=PQ_MAX_ITERATIONS)
    elif index_type == "IVF_HNSW_SQ":
        config = IvfHnswSq(distance_type="cosine", num_partitions=max(1, parts // 16))
    else:
        raise InputError(f"index_type must be IVF_PQ or IVF_HNSW_SQ, got {index_type!r}")
    table.create_index("vector", config=config, replace=True)
    ann = table_vector_index(table)
    return ann["type"] if ann else index_type


def _pq_layout(dim: int) -> tuple[int, int]:
    """(PQ sub-vectors, bits per code): ``PQ_BITS``-bit codes over about 4 dimensions each (``dim``
    must divide evenly; 4-bit codes need an even number of sub-vectors), else 8-bit codes."""
    for target in (dim // 4, dim // 2, dim // 8):
        if target >= 2 and target % 2 == 0 and dim % target == 0:
            return target, PQ_BITS
    for target in (dim // 4, dim // 2, dim // 8, dim):
        if target >= 1 and dim % target == 0:
            return target, 8
    return 1, 8


def _check_modality(name: str) -> str:
    if not isinstance(name, str) or not _MODALITY.match(name):
        raise InputError(f"modality must be a name like image, audio or text, got {name!r}")
    return name


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = {c: row.get(c, "") for c in COLUMNS}
    try:
        out["metadata"] = json.loads(out["metadata"]) if out["metadata"] else {}
    except ValueError:
        out["metadata"] = {"raw": out["metadata"]}
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def _chunks(items: list[Any], n: int):
    for i in range(0, len(items), n):
        yield items[i : i + n]


def remove_index(path: str) -> None:
    """Delete an index directory (only one that is an index)."""
    if not is_index(path):
        raise SearchIndexError(f"{path} is not an onepeace index; not removed")
    if is_remote(path):
        db = Index._connect(path)
        with contextlib.suppress(Exception):  # an index without moments has no such table
            db.drop_table(MOMENTS_TABLE)
        db.drop_table(TABLE)
        return
    shutil.rmtree(path)
