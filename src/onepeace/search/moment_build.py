"""Moments at build time: long audio and video indexed as one row per window.

The planner (:meth:`onepeace.search.build_run.BuildRun.plan`) probes the duration of each new or
changed audio and video file (the container's header: ``soundfile.info``, PyAV); a file longer
than :attr:`MomentOptions.over` seconds is taken out of the decoding workers (which read whole
files) and indexed here, in the main process, after the other items:

1. its SHA-256 is computed by streaming the file (never read whole);
2. its windows (:func:`onepeace.inference.moments.iter_window_batches`: streamed decoding, bounded
   memory) go into the ``moments`` table (:mod:`onepeace.search.moments`) in commits of
   ``commit_rows``; windows already committed with this content hash (a build killed half-way)
   are skipped, windows of another content hash (the file changed) deleted first, and windows of
   other settings (``--window``/``--hop``/``--segment`` changed) deleted after;
3. **last**, the file's row in ``items``: its vector is the duration-weighted mean of its windows'
   vectors, renormalised (so building it decodes nothing more), its metadata records
   ``duration`` and ``moments`` (the window settings, the number of windows, any problem).

So "the file row holds this content hash" means "its windows are complete": a rerun skips such a
file, and a search ignores windows whose file row does not match them. A file the decoder gives up
on part-way (truncated) keeps the windows up to the damage; the problem is listed in the build
report (``partial``) and in its warnings.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, not_the_input
from ..inference.moments import SEGMENTS, _checked, check_windows, iter_window_batches
from .decode import make_row
from .moments import MOMENTS, MomentTable, has_moments, moment_id, window_key

#: files longer than this many seconds get moments (``--moments-over``)
DEFAULT_OVER = 20.0
#: the modalities whose long files get moments
MOMENT_MODALITIES = ("audio", "video")
#: metadata keys the build writes itself (left out when comparing what a manifest says)
BUILD_KEYS = ("duration", "moments")


@dataclass
class MomentOptions:
    """Which files get moments (longer than ``over`` seconds) and their windows (``window``,
    ``hop`` in seconds, default per modality from ``DEFAULT_WINDOWS``; ``segment``: fixed,
    onsets or both)."""

    over: float = DEFAULT_OVER
    window: float | None = None
    hop: float | None = None
    segment: str = "fixed"

    def settings(self, modality: str) -> dict[str, Any]:
        """What a file row records of its windows (a change of these rebuilds them)."""
        window, hop = check_windows(modality, self.window, self.hop, self.segment)
        return {"window": float(window), "hop": float(hop), "segment": self.segment}


def moment_options(moments: Any, modalities: list[str]) -> MomentOptions | None:
    """``build(moments=...)``: True (the defaults), False / None (none), a :class:`MomentOptions`
    or a dict of its fields; checked for each modality of the model that gets moments (one
    InputError line, before any work)."""
    if moments is None or moments is False:
        return None
    if moments is True:
        opts = MomentOptions()
    elif isinstance(moments, MomentOptions):
        opts = moments
    elif isinstance(moments, Mapping):
        unknown = sorted(set(moments) - {"over", "window", "hop", "segment"})
        if unknown:
            raise InputError(f"moments: unknown option {unknown[0]!r}; give over, window, hop, segment")
        opts = MomentOptions(**moments)
    else:
        raise InputError(f"moments must be True, False or MomentOptions, got {type(moments).__name__}")
    over = opts.over
    if isinstance(over, bool) or not isinstance(over, (int, float)) or not math.isfinite(over) or over < 0:
        raise InputError(f"--moments-over must be a number of seconds >= 0, got {over!r}")
    if opts.segment not in SEGMENTS:
        raise InputError(f"--segment must be one of {', '.join(SEGMENTS)}, got {opts.segment!r}")
    for m in MOMENT_MODALITIES:
        if m in modalities:
            opts.settings(m)  # a window or hop that does not fit: one line now
    return opts


def check_model_windows(model: Any, options: MomentOptions | None) -> None:
    """The window settings against the limits of ``model``'s branches (the longest window the
    branch takes in one pass, the shortest its stem reads): one InputError line, before any work."""
    if options is None:
        return
    for m in MOMENT_MODALITIES:
        if m in model.modality_names:
            _checked(model, m, options.window, options.hop, options.segment)


def probe_duration(path: str, modality: str) -> float | None:
    """A file's duration in seconds from its header (no decoding), or None when it cannot be read."""
    if modality == "audio":
        import soundfile as sf

        try:
            info = sf.info(path)
            if info.samplerate > 0 and info.frames > 0:
                return float(info.frames) / float(info.samplerate)
        except Exception:  # noqa: BLE001 - libsndfile reports unreadable files in several types
            pass
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(path) as container:
            if container.duration:
                return float(container.duration) / 1_000_000
            streams = [s for s in container.streams if s.duration and s.time_base]
            return max((float(s.duration * s.time_base) for s in streams), default=None)
    except Exception:  # noqa: BLE001 - PyAV reports unreadable files in many types
        return None


def stream_sha256(item: Any, block: int = 1 << 20) -> str:
    """The SHA-256 of a file read block by block; its size and mtime (taken first) go into the
    item's metadata, as the decoding workers do for the files they read whole."""
    h = hashlib.sha256()
    try:
        with open(item.uri, "rb") as f:
            st = os.fstat(f.fileno())
            while chunk := f.read(block):
                h.update(chunk)
    except FileNotFoundError:
        raise InputError(f"file not found: {item.uri}") from None
    except OSError as e:
        if not_the_input(e):
            raise
        raise InputError(f"cannot read {item.uri}: {e.strerror or e}") from None
    if st.st_size == 0:
        raise InputError(f"file is empty: {item.uri}")
    item.metadata["file_size"], item.metadata["file_mtime_ns"] = st.st_size, st.st_mtime_ns
    return h.hexdigest()


def stored_marks(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """id -> the build's own keys (duration, moments) of file rows' metadata that hold them."""
    out = {}
    for r in rows:
        try:
            meta = json.loads(r["metadata"]) if r["metadata"] else {}
        except ValueError:
            continue
        if isinstance(meta, dict) and any(k in meta for k in BUILD_KEYS):
            out[r["id"]] = {k: meta[k] for k in BUILD_KEYS if k in meta}
    return out


class MomentBuilder:
    """Indexes the long files of one build run (see the module doc)."""

    def __init__(self, run: Any, model: Any, options: MomentOptions):
        self.run = run
        self.model = model
        self.options = options
        self._table: MomentTable | None = None
        self.files = 0
        self.windows = 0
        self.deleted = 0
        self.partial: list[dict[str, Any]] = []

    def table(self) -> MomentTable:
        if self._table is None:
            self._table = MomentTable.open_or_create(self.run.index)
        return self._table

    def index_file(self, item: Any) -> None:
        """Windows, then the file row, of one long file (or its reason in the skip list)."""
        run = self.run
        try:
            digest = stream_sha256(item)
        except InputError as e:
            run._skip(item, str(e))
            return
        settings = self.options.settings(item.modality)
        old = run.state.get(item.id)
        mark = run.marks.get(item.id, {}).get("moments") or {}
        if old is not None and old[0] == digest and {k: mark.get(k) for k in settings} == settings:
            run.unchanged += 1  # touched but identical, windows complete
            return
        table = self.table()
        q = item.id.replace("'", "''")
        self.deleted += table.delete_where(f"file_id = '{q}' AND content_hash <> '{digest}'")  # the file changed
        have = table.file_windows(item.id, digest)  # committed by a killed build: kept
        planned, problems = self._embed(item, digest, settings, have)
        if planned is None:
            return
        stale = [i for key, i in have.items() if key not in planned]  # of other window settings
        if stale:
            self.deleted += table.delete_where(f"id IN ({', '.join(repr(s) for s in stale)})")
        if not planned:
            why = ("no sound activity found to cut windows at (--segment onsets)" if settings["segment"] == "onsets"
                   else "no window could be decoded")
            run._skip(item, "; ".join(problems) or why)
            return
        duration = item.metadata.get("duration")
        item.metadata["moments"] = {**settings, "windows": len(planned), **({"problems": problems} if problems else {})}
        if problems:
            self.partial.append({"uri": item.uri, "windows": len(planned), "problems": problems})
            for p in problems:
                run.warn(f"{item.uri}: {p} (the windows before are indexed)")
        if duration is None:
            item.metadata["duration"] = round(max(k[1] for k in planned) / 1000, 3)
        run.writer.add([make_row(item, digest, self.file_vector(item.id, digest))])
        run.writer.flush()  # the file row last: its windows are complete
        self.files += 1

    def _embed(self, item: Any, digest: str, settings: dict[str, Any],
               have: dict[tuple[int, int, str], str]) -> tuple[set | None, list[str]]:
        """Embed and commit the windows not in ``have``; the keys of every window of the file
        (None when the file could not be decoded: it is then in the skip list)."""
        planned: set[tuple[int, int, str]] = set()
        problems: list[str] = []
        info: dict[str, Any] = {}

        def skip(start: float, end: float, kind: str) -> bool:
            key = window_key(start, end, kind)
            planned.add(key)
            return key in have

        writer = self.run.writer_for(self.table())  # commits as often as the build's own
        try:
            for b in iter_window_batches(self.model, item.modality, item.uri, window=settings["window"],
                                         hop=settings["hop"], segment=settings["segment"],
                                         batch_size=self.run.batch_size, skip=skip, problems=problems, info=info):
                z = b.embeddings.float().cpu().numpy()
                rows = []
                for s, e, kind, v in zip(b.start, b.end, b.kind, z):
                    key = window_key(s, e, kind)
                    if key in have:
                        continue
                    planned.add(key)
                    rows.append({"id": moment_id(item.id, float(s), float(e), kind), "file_id": item.id,
                                 "modality": item.modality, "uri": item.uri, "kind": kind, "content_hash": digest,
                                 "start": float(s), "end": float(e), "vector": v})
                writer.add(rows)
                self.windows += len(rows)
        except InputError as e:  # undecodable from the start: the file is skipped (its commits stay)
            writer.flush()
            self.run._skip(item, str(e))
            return None, problems
        writer.flush()
        if info.get("duration"):
            item.metadata["duration"] = round(float(info["duration"]), 3)  # as decoded
        return planned, problems

    def file_vector(self, file_id: str, digest: str) -> np.ndarray:
        """The file row's vector: the duration-weighted mean of its windows' vectors, renormalised
        (read back in batches: bounded memory)."""
        total = np.zeros(self.run.index.dim, dtype=np.float64)
        q = file_id.replace("'", "''")
        for batch in self.table().batches(["start", "end", "vector"], f"file_id = '{q}' AND content_hash = '{digest}'"):
            start = batch.column("start").to_numpy()
            end = batch.column("end").to_numpy()
            vecs = batch.column("vector").flatten().to_numpy().reshape(len(start), -1).astype(np.float64)
            total += ((end - start)[:, None] * vecs).sum(axis=0)
        norm = float(np.linalg.norm(total))
        if not math.isfinite(norm) or norm == 0:  # windows cancelling out: their plain mean direction
            raise InputError(f"{file_id}: the windows' vectors sum to zero")
        return (total / norm).astype(np.float32)



# ---------------------------------------------------------------------------------- changed and vanished files
def drop_stale_windows(index: Any, rows: list[dict[str, Any]]) -> int:
    """After file rows were written by the ordinary path (a changed file, now short, or embedded
    by the Ray engine): their windows of another content hash are deleted. Returns how many."""
    keep = [r for r in rows if r.get("modality") in MOMENT_MODALITIES and r.get("uri")]
    if not keep or not has_moments(index):
        return 0
    table = MomentTable(index, index._db.open_table(MOMENTS))
    n = 0
    for i in range(0, len(keep), 200):
        n += table.delete_where(" OR ".join(f"(file_id = '{r['id']}' AND content_hash <> '{r['content_hash']}')"
                                            for r in keep[i:i + 200]))
    return n


def prune_windows(index: Any) -> int:
    """Delete the windows whose file has no row any more (``--prune``); returns how many."""
    table = MomentTable.open(index)
    if table is None:
        return 0
    import pyarrow.compute as pc

    rows = {r["id"] for r in index.rows(["id"])}
    files = set(pc.unique(table.scan(["file_id"]).column("file_id")).to_pylist())
    gone = sorted(files - rows)
    return table.delete_files(gone) if gone else 0
