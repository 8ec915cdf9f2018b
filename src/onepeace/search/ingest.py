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

The stages live in :mod:`.reader`, :mod:`.decode` (the mapper and the local engine) and
:mod:`.build_run` (planner, writer, report), which :mod:`.ray_engine` shares; this module is the
entry point :func:`build`, and their names stay importable from here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from ..checkpoints.format import load_config
from ..errors import InputError
from .build_run import (  # noqa: F401  (the build's stages, importable from here as before)
    DEFAULT_ANN_THRESHOLD,
    DEFAULT_COMMIT_ROWS,
    DEFAULT_COMMIT_SECONDS,
    LOCK_NAME,
    REPORTS,
    BuildRun,
    IndexWriter,
    build_lock,
    default_report_path,
    described,
    run_build,
)
from .decode import (  # noqa: F401
    Batch,
    Decoded,
    DecodeDataset,
    Result,
    decode_batch,
    embed_decoded,
    embed_local,
    make_row,
    sha256_text,
)
from .moment_build import MOMENT_MODALITIES, MomentOptions, check_model_windows, moment_options  # noqa: F401
from .reader import (  # noqa: F401
    MANIFEST_EXTENSIONS,
    TEXT_EXTENSIONS,
    Item,
    check_sources,
    file_modalities,
    iter_items,
)
from .store import Index, SearchIndexError, is_index, is_remote

log = logging.getLogger(__name__)
#: said when the Ray engine builds an index (its long files get file rows only)
RAY_NO_MOMENTS = ("--engine ray builds no moments (time ranges in long audio and video): their files get one row "
                  "each; build the moments with --engine local")


def build(db: str | os.PathLike, model: Any, sources: Sequence[str | os.PathLike], *, batch_size: int = 32,
          workers: int | None = None, prune: bool = False, report_path: str | None = None,
          progress: bool | None = None, engine: str = "local", address: str | None = None,
          commit_rows: int | None = None, ann_threshold: int | None = DEFAULT_ANN_THRESHOLD,
          ray_options: dict[str, Any] | None = None, moments: Any = True) -> dict[str, Any]:
    """Index ``sources`` into the index ``db`` (created if absent) with ``model`` (an ``OnePeace``
    or a model directory). Returns counts: added (new rows), changed (replaced rows), unchanged,
    skipped (listed in the report), pruned, plus ``report`` (its path), ``rows`` and ``index``.

    ``workers``: decoding processes (default: 2, at most the CPU count - 1; 0 decodes in this
    process). ``engine="ray"`` runs the embedding on Ray Data (``address``: a cluster to join;
    ``ray_options``: actors, cpus_per_actor, gpus_per_actor, dtype, see
    :func:`onepeace.search.ray_engine.build_ray`).

    ``moments``: audio and video longer than 20 s also get one row per window in the index's
    ``moments`` table (see :mod:`onepeace.search.moment_build`); False: none; a
    :class:`~onepeace.search.moment_build.MomentOptions` (or a dict of its fields: ``over``,
    ``window``, ``hop``, ``segment``) for other settings. The Ray engine builds no moments (the
    result's ``moments_note`` says so)."""
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
    opts = moment_options(moments, _modalities_of(model))  # a bad window or hop: one line, before any work
    db = os.fspath(db)
    prepare_db_dir(db)
    if engine == "ray":
        from .ray_engine import build_ray

        out = build_ray(db, model, srcs, batch_size=batch_size, workers=workers, prune=prune,
                        report_path=report_path, progress=progress, address=address, commit_rows=commit_rows,
                        ann_threshold=ann_threshold, **(ray_options or {}))
        if opts is not None:
            out["moments_note"] = RAY_NO_MOMENTS
        return out
    name = model_name(model)
    if isinstance(model, (str, os.PathLike)):  # refuse a mismatch before loading the model
        from ..inference import OnePeace

        if os.path.isdir(os.fspath(model)) and is_index(db):
            Index.open(db).check_model(model_fingerprint(model), name)
        model = OnePeace.from_pretrained(model)
    check_model_windows(model, opts)  # a window the model's branch cannot take: one line, before any work
    index = Index.open_or_create(db, model, model_name=name)
    return run_build(index, model, srcs, embed=lambda batches: embed_local(model, batches, workers=workers),
                     batch_size=batch_size, prune=prune, report_path=report_path, progress=progress,
                     commit_rows=commit_rows, ann_threshold=ann_threshold, model_name=name, moments=opts)



def _modalities_of(model: Any) -> list[str]:
    """The modalities of a model (loaded, or a model directory; else all that get moments)."""
    if isinstance(model, (str, os.PathLike)) and os.path.isfile(os.path.join(os.fspath(model), "config.json")):
        return list(load_config(os.fspath(model)).modalities)
    return list(getattr(model, "modality_names", MOMENT_MODALITIES))


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
