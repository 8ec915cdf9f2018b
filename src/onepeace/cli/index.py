"""``onepeace index build|info`` and ``onepeace search``.

Inputs (sources, the index directory, query files, weights) are checked before any model is
loaded; bad input raises :class:`onepeace.OnePeaceError` subclasses, printed as one line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from types import SimpleNamespace
from typing import Any

from ..checkpoints.adapter import read_adapter_card
from ..checkpoints.format import load_config
from ..checkpoints.hub import looks_like_hub_id
from ..errors import InputError
from ..inference.factory import get_processor
from ..inference.moments import DEFAULT_WINDOWS, SEGMENTS
from ..outputs import check_output_file
from ..search.fingerprint import IN_MEMORY, model_fingerprint, model_name, split_adapted_name
from ..search.ingest import build, check_sources, default_report_path, prepare_db_dir
from ..search.moment_build import DEFAULT_OVER, MomentOptions, check_model_windows, moment_options
from ..search.moments import (
    DEFAULT_PER_FILE,
    MAX_PER_FILE,
    MomentsNotBuiltError,
    MomentTable,
    has_moments,
    no_moments_message,
    time_range,
)
from ..search.query import query_inputs, resolve_weights, search
from ..search.store import Index, is_index, is_remote
from . import common
from .common import (
    add_adapter_option,
    add_max_pixels,
    add_media_options,
    add_runtime_options,
    file_modalities,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    precision,
    runtime,
)

_WEIGHTS_HELP = ("one weight per query input, in the order text, image, audio (e.g. --weights 1 -0.5), or per "
                 "modality (--weights text=1 image=0.5); negative weights subtract; default 1 each")


def _short(s: str, n: int) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _counts(modalities: dict[str, int]) -> str:
    return ", ".join(f"{m} {n:,}" for m, n in modalities.items()) or "empty"


# ---------------------------------------------------------------------------------- index build
def _moments(args: argparse.Namespace) -> MomentOptions | None:
    """The moment options of ``index build`` (checked before any work), or None (--no-moments)."""
    if args.no_moments:
        given = [f for f, v in (("--moments-over", args.moments_over), ("--window", args.window), ("--hop", args.hop),
                                ("--segment", args.segment)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)} and --no-moments contradict each other; give one or the other")
        return None
    opts = MomentOptions(over=DEFAULT_OVER if args.moments_over is None else args.moments_over, window=args.window,
                         hop=args.hop, segment=args.segment or "fixed")
    if not os.path.isfile(os.path.join(args.model, "config.json")):  # a Hub id: checked once it is loaded
        return moment_options(opts, ["audio", "video"])
    modalities = list(load_config(args.model).modalities)
    moment_options(opts, modalities)
    # the limits of the model's branches (the longest window one pass takes), from its config alone
    check_model_windows(SimpleNamespace(modality_names=modalities, processor=get_processor(None, args.model)), opts)
    return opts


def cmd_index_build(args: argparse.Namespace) -> int:
    ray_options = _ray_options(args)
    moments = _moments(args)
    srcs = check_sources(args.sources)
    if args.report:
        check_output_file(args.report, args.force, hint="--force")
    prepare_db_dir(args.db)
    if args.adapter:
        read_adapter_card(args.adapter)  # a broken adapter directory is refused before any work
    if is_index(args.db) and os.path.isdir(args.model):  # a mismatch is refused before the model loads
        Index.open(args.db).check_model(model_fingerprint(args.model, adapter=args.adapter),
                                        model_name(args.model, adapter=args.adapter))
    t0 = time.monotonic()
    if args.engine == "ray" and not args.adapter:
        model: Any = args.model  # each Ray actor loads its own copy
    else:  # with an adapter the driver loads it too: the actors load the same base and adapter
        model = common.load_model(args.model, args.dtype, runtime(args), adapter=args.adapter)  # -v: what --dtype auto chose
    result = build(args.db, model, srcs, batch_size=args.batch_size, workers=args.workers, prune=args.prune,
                   report_path=args.report, progress=None, engine=args.engine, address=args.address,
                   ann_threshold=args.ann_threshold, commit_rows=args.commit_every, ray_options=ray_options,
                   moments=moments if moments is not None else False)
    elapsed = time.monotonic() - t0
    idx = Index.open(args.db)
    report = result.get("report")
    if result.get("skipped"):
        first = _first_skipped(report)
        print(f"onepeace index: warning: skipped {result['skipped']} item(s) that could not be read or decoded"
              f"{f' (first: {first})' if first else ''}; all are listed in {report}", file=sys.stderr)
    if result.get("duplicates"):
        print(f"onepeace index: note: left out {result['duplicates']:,} duplicate(s): lines or files that list a file "
              "or text already listed (its first listing is indexed, with that line's caption and fields; give "
              f"each caption its own text line to index them all; examples in {report})", file=sys.stderr)
    if result.get("left_out"):
        print(f"onepeace index: note: left out {result['left_out']} file(s) in the folders that this model does "
              f"not read (by extension; examples in {report})", file=sys.stderr)
    if result.get("moments_note"):
        print(f"onepeace index: note: {result['moments_note']}", file=sys.stderr)
    if result.get("partial"):
        print(f"onepeace index: warning: {result['partial']} long file(s) could be decoded only in part: their windows "
              f"up to the damage are indexed (listed under 'partial' in {report})", file=sys.stderr)
    # every kind of input that gave no new row is named, with its count
    out = [f"{result['unchanged']:,} unchanged", f"{result['skipped']:,} skipped",
           f"{result.get('duplicates', 0):,} duplicate(s) left out"]
    if result.get("left_out"):
        out.append(f"{result['left_out']:,} file(s) of other types left out")
    if result.get("metadata_only"):
        out.append(f"{result['metadata_only']:,} with new captions or fields only")
    if args.prune:
        out.append(f"pruned {result['pruned']}")
    if result.get("moment_files"):
        out.append(f"{result['moment_windows']:,} window(s) of {result['moment_files']:,} long file(s) as moments")
    print(f"indexed {result['added']:,} new and {result.get('changed', 0):,} changed item(s) "
          f"({', '.join(out)}) in {elapsed:.1f} s; "
          f"{args.db} holds {idx.count():,} rows ({_counts(idx.modality_counts())}), search: {result.get('index', 'exact')}")
    print(f"report: {report}")
    return 0


def _ray_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``--engine ray`` options (checked before any work), or None for the local engine."""
    given = [flag for flag, value in (("--address", args.address), ("--actors", args.actors),
                                      ("--cpus-per-actor", args.cpus_per_actor),
                                      ("--gpus-per-actor", args.gpus_per_actor)) if value is not None]
    if args.engine != "ray":
        if given:
            raise InputError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --engine ray only")
        return None
    if args.device != "cpu":
        raise InputError("--device applies to --engine local; with --engine ray each actor takes a GPU when the "
                         "Ray cluster has GPUs (see --gpus-per-actor)")
    if args.threads:
        raise InputError("--threads applies to --engine local; with --engine ray give --cpus-per-actor (each actor "
                         "runs that many threads)")
    return {"actors": args.actors, "cpus_per_actor": args.cpus_per_actor, "gpus_per_actor": args.gpus_per_actor,
            "dtype": args.dtype}


def _first_skipped(report: str | None) -> str | None:
    try:
        with open(report, encoding="utf-8") as f:
            s = json.load(f)["skipped"][0]
        return _short(f"{s.get('uri') or s.get('item')}: {s['reason']}", 160)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


# ---------------------------------------------------------------------------------- index info
def _last_report(db: str) -> tuple[str, dict[str, Any]] | None:
    folder = os.path.dirname(default_report_path(db))
    try:
        names = sorted(n for n in os.listdir(folder) if n.startswith("build-") and n.endswith(".json"))
    except OSError:
        return None
    for name in reversed(names):
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as f:
                return path, json.load(f)
        except (OSError, ValueError):
            continue
    return None


def cmd_index_info(args: argparse.Namespace) -> int:
    idx = Index.open(args.db)
    info = idx.info()
    table = MomentTable.open(idx)
    if table is not None:
        info["moments"] = {"windows": table.count(), "files": table.file_count()}
    last = _last_report(args.db)
    if args.json:
        if last:
            info["last_build"] = {"report": last[0], "started": last[1].get("started"), **last[1].get("counts", {})}
        print(json.dumps(info, indent=1))
        return 0
    ann = info["ann"]
    search = (f"{info['index']} ANN index ({ann['indexed_rows']:,} rows indexed, {ann['unindexed_rows']:,} not yet: "
              "those are searched exactly)" if ann else "exact (every row is compared; an ANN index is built from "
              "50,000 rows)")
    where = "object storage" if info["size_bytes"] is None else f"{_human_bytes(info['size_bytes'])} on disk"
    print(f"index:   {info['path']} ({where}, version {info['version']})")
    print(f"model:   {info['model']} (fingerprint {info['fingerprint'][:12]}, {info['dim']} dimensions)")
    print(f"rows:    {info['rows']:,} ({_counts(info['modalities'])})")
    print(f"search:  {search}")
    if table is not None:
        print(f"moments: {info['moments']['windows']:,} windows of {info['moments']['files']:,} long audio/video "
              "file(s) (onepeace search --moments)")
    if last:
        c = last[1].get("counts", {})
        state = "" if c.get("finished", True) else " (interrupted)"
        print(f"last build{state}: {last[1].get('started', '?')}: added {c.get('added', 0):,}, changed "
              f"{c.get('changed', 0):,}, unchanged {c.get('unchanged', 0):,}, skipped {c.get('skipped', 0):,}, "
              f"duplicates {c.get('duplicates', 0):,}, pruned {c.get('pruned', 0):,} ({last[0]})")
    return 0


# ---------------------------------------------------------------------------------- search
def parse_weights(values: list[str] | None) -> dict[str, float] | list[float] | None:
    """``--weights`` values: numbers (one per input) or ``modality=number`` pairs."""
    if not values:
        return None
    named = [v for v in values if "=" in v]
    if named and len(named) != len(values):
        raise InputError(f"--weights: give either numbers (one per input) or modality=number pairs, not both: {values}")
    try:
        if named:
            out: dict[str, float] = {}
            for v in values:
                k, _, w = v.partition("=")
                out[k.strip()] = float(w)
            return out
        return [float(v) for v in values]
    except ValueError:
        raise InputError(f"--weights: not a number in {values}") from None


def _query_file(path: str, modality: str) -> str:
    if not os.path.exists(path):
        raise InputError(f"{modality} query file not found: {path}")
    if not os.path.isfile(path):
        raise InputError(f"{modality} query is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{modality} query file is not readable: {path}")
    return path


def _check_modality(modality: str | None, known: list[str]) -> None:
    """``--modality`` names a modality of the model (as the server's 400 for the same request)."""
    if modality is not None and modality not in known:
        raise InputError(f"--modality {modality!r}: unknown modality; this model has {', '.join(known)}")


def cmd_search(args: argparse.Namespace) -> int:
    idx = Index.open(args.db)
    if args.per_file is not None and not args.moments:
        raise InputError("--per-file applies to --moments (time ranges of long audio and video)")
    if args.per_file is not None and args.per_file > MAX_PER_FILE:
        raise InputError(f"--per-file {args.per_file}: give 1 to {MAX_PER_FILE} ranges per file")
    if args.moments and not has_moments(idx):  # before the model loads
        raise MomentsNotBuiltError(no_moments_message(idx))
    text = args.text or None
    files = {m: [_query_file(p, m) for p in getattr(args, m, None) or []] or None for m in file_modalities()}
    image, audio = files.pop("image", None), files.pop("audio", None)
    others = {m: v for m, v in files.items() if v}
    inputs = query_inputs(text, image, audio, **others)
    if not inputs:
        raise InputError("nothing to search for: give --text or " + ", ".join(f"--{m}" for m in file_modalities())
                         + " (several combine into one query)")
    weights = resolve_weights(inputs, parse_weights(args.weights))
    path, adapter = args.model, args.adapter
    if not path and idx.model_name:  # the index's own model, with the adapter it was built with
        path, recorded = split_adapted_name(idx.model_name)
        adapter = adapter or recorded
    if not path or path == IN_MEMORY:
        raise InputError(f"the index {args.db} was built with a model that was never saved; give it with --model DIR")
    if adapter:
        read_adapter_card(adapter)
    if os.path.isdir(path):
        idx.check_model(model_fingerprint(path, adapter=adapter), model_name(path, adapter=adapter))  # before loading it
        _check_modality(args.modality, list(load_config(path).modalities))
    elif args.model is None and not looks_like_hub_id(path):
        raise InputError(f"the model the index {args.db} was built with is gone ({path}); give it with --model")
    model = common.load_model(path, args.dtype, runtime(args), adapter=adapter)  # -v says what --dtype auto chose
    _check_modality(args.modality, model.modality_names)
    moments = {"moments": True, "per_file": args.per_file or DEFAULT_PER_FILE} if args.moments else {}
    hits = search(idx, model, text=text, image=image, audio=audio, weights=weights, modality=args.modality,
                  k=args.k, where=args.where, exact=True if args.exact else None, **moments, **others)
    if args.json:
        query = [{"modality": m, "input": str(x), "weight": w} for (m, x), w in zip(inputs, weights)]
        print(json.dumps({"schema_version": 1, "index": idx.path if is_remote(idx.path) else os.path.abspath(args.db), "model": idx.model_name, "query": query,
                          "dtype": precision(model), **({"moments": True} if moments else {}), "hits": hits},
                         indent=1, ensure_ascii=False))
        return 0
    terms = [f"{w:g} x {m} {_short(repr(x) if m == 'text' else x, 40)}" for (m, x), w in zip(inputs, weights)]
    print(f"query: {' + '.join(terms)}")
    if not hits:
        print("no rows match" + (f" --where {args.where!r}" if args.where else "") +
              (f" --modality {args.modality}" if args.modality else ""))
        return 0
    if moments:
        _print_moments(hits)
        return 0
    print(f"{'#':>3}  {'score':>6}  {'prob':>6}  {'modality':<8}  item")
    for i, h in enumerate(hits, 1):
        prob = f"{h['prob']:.3f}" if h.get("prob") is not None else "-"
        what = h["uri"] or repr(h["text"])
        extra = f"  ({_short(h['text'], 50)})" if h["uri"] and h["text"] else ""
        print(f"{i:>3}  {h['score']:>6.3f}  {prob:>6}  {h['modality']:<8}  {what}{extra}")
    return 0


def _print_moments(hits: list[dict[str, Any]]) -> None:
    print(f"{'#':>3}  {'score':>6}  {'prob':>6}  {'modality':<8}  {'time':<15}  file")
    for i, h in enumerate(hits, 1):
        prob = f"{h['prob']:.3f}" if h.get("prob") is not None else "-"
        span = time_range(h['start'], h['end'])
        extra = f"  ({_short(h['text'], 50)})" if h["text"] else ""
        print(f"{i:>3}  {h['score']:>6.3f}  {prob:>6}  {h['modality']:<8}  {span:<15}  {h['uri']}{extra}")


# ---------------------------------------------------------------------------------- parsers
def _add_index(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("index", help="build a searchable index (LanceDB) of images, audio, video and texts; info")
    sub = p.add_subparsers(dest="index_command", required=True)

    b = sub.add_parser("build", help="embed folders, JSONL manifests and text files into an index (incremental)")
    b.add_argument("db", metavar="DB", help="index directory (created if absent; an existing index is updated)")
    b.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folders (searched recursively for the files of the model's modalities: images, audio, video, ...), .jsonl manifests "
                        "({\"image\"|\"audio\": path, \"text\": caption, ...} or {\"text\": ...} per line), "
                        ".txt files (one text per line) or single media files")
    b.add_argument("--model", required=True, help="an onepeace model directory (or hub id)")
    b.add_argument("--batch-size", type=positive_int, default=32, help="items per model batch (default 32)")
    b.add_argument("--workers", type=nonnegative_int, default=None,
                   help="decoding processes running beside the model (default 2, fewer on small machines; "
                        "0: decode in the main process)")
    b.add_argument("--commit-every", type=positive_int, default=None, metavar="N",
                   help="rows per commit (default 256, at least the batch size): a killed build loses at most "
                        "the rows not yet committed, and a rerun adds exactly those")
    b.add_argument("--prune", action="store_true",
                   help="also delete rows whose file or source is gone, or that a source no longer lists")
    b.add_argument("--report", metavar="FILE", help="write the build report (counts, skipped files and why) here "
                                                    "(default DB/reports/build-<time>.json)")
    b.add_argument("--force", action="store_true", help="overwrite an existing --report file (default: refuse it, "
                                                        "before any work)")
    b.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local (this process and its decoding workers; default) or ray (Ray Data actors, "
                        "pip install 'onepeace[scale]')")
    b.add_argument("--address", help="with --engine ray: the Ray cluster to join (auto: the cluster of this node; "
                                     "default: a new local one)")
    b.add_argument("--actors", type=positive_int, metavar="N",
                   help="with --engine ray: models embedding in parallel, one per Ray actor (default: one per "
                        "GPU of the cluster, else one per CPU)")
    b.add_argument("--cpus-per-actor", type=positive_int, metavar="N",
                   help="with --engine ray: CPUs (torch threads) per actor (default 1)")
    b.add_argument("--gpus-per-actor", type=nonnegative_float, metavar="G",
                   help="with --engine ray: GPUs per actor, e.g. 0.5 for two models per GPU (default: 1 when "
                        "the cluster has GPUs, else 0)")
    b.add_argument("--ann-threshold", type=nonnegative_int, default=50_000, metavar="N",
                   help="build an ANN index (IVF-PQ) once the index holds N rows (default 50000; 0: never)")
    defaults = ", ".join(f"{m} {w:g}/{h:g} s" for m, (w, h) in DEFAULT_WINDOWS.items())
    b.add_argument("--moments-over", type=nonnegative_float, metavar="SECONDS",
                   help=f"audio and video longer than this also get one row per window, their moments, for "
                        f"`search --moments` (default {DEFAULT_OVER:g})")
    b.add_argument("--no-moments", action="store_true", help="no moments: long files get one row each")
    b.add_argument("--window", type=nonnegative_float, metavar="SECONDS",
                   help=f"moment window length (default per modality: {defaults} window/hop)")
    b.add_argument("--hop", type=nonnegative_float, metavar="SECONDS", help="moment window stride (see --window)")
    b.add_argument("--segment", choices=SEGMENTS,
                   help="moment windows: fixed (every --hop seconds; default), onsets (one per stretch of "
                        "sound activity) or both")
    add_runtime_options(b)
    add_adapter_option(b)
    add_max_pixels(b)
    b.set_defaults(func=cmd_index_build)

    i = sub.add_parser("info", help="rows per modality, model, search type, size on disk, last build")
    i.add_argument("db", metavar="DB")
    i.add_argument("--json", action="store_true", help="print the information as JSON")
    i.set_defaults(func=cmd_index_info)


def _add_search(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser("search", help="search an index with a text, image, audio or video query, or a weighted mix")
    s.add_argument("db", metavar="DB", help="an index built with `onepeace index build`")
    s.add_argument("--text", nargs="+", action="extend", default=[], metavar="TEXT", help="query texts")
    s.add_argument("--image", nargs="+", action="extend", default=[], metavar="FILE", help="query images")
    s.add_argument("--audio", nargs="+", action="extend", default=[], metavar="FILE", help="query audio clips")
    add_media_options(s, metavar="FILE")
    s.add_argument("--weights", nargs="+", metavar="W", help=_WEIGHTS_HELP)
    s.add_argument("--modality", help="return only rows of this modality (image, audio, video, text, ...)")
    s.add_argument("-k", "--top-k", dest="k", type=positive_int, default=10, help="results (default 10)")
    s.add_argument("--where", metavar="SQL",
                   help="filter on the columns id, modality, uri, text, metadata, content_hash, e.g. "
                        "\"uri LIKE '%%/cats/%%'\"")
    s.add_argument("--exact", action="store_true", help="compare every row even where an ANN index exists")
    s.add_argument("--json", action="store_true", help="print the hits as JSON (score, prob, metadata)")
    s.add_argument("--moments", action="store_true",
                   help="find time ranges in long audio and video (built by `index build`): each hit has the "
                        "file's uri, start and end (seconds) and score")
    s.add_argument("--per-file", type=positive_int, metavar="N",
                   help=f"with --moments: at most N ranges of one file (default {DEFAULT_PER_FILE}, at most "
                        f"{MAX_PER_FILE})")
    s.add_argument("--model", help="the model to embed the query with (default: the one the index was built "
                                   "with; another one is refused)")
    add_runtime_options(s)
    s.add_argument("--adapter", metavar="DIR",
                   help="a LoRA adapter merged into --model (default: the one the index was built with, if any)")
    add_max_pixels(s)
    s.set_defaults(func=cmd_search)


def register(subparsers: argparse._SubParsersAction) -> None:
    """``index build``, ``index info`` and ``search``."""
    _add_index(subparsers)
    _add_search(subparsers)
