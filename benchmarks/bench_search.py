#!/usr/bin/env python
"""Query latency and ANN recall of the search index (``onepeace.search.store.Index``).

For each collection size (default 10k, 100k and 1M rows) a fresh index of synthetic unit vectors
of the released model's embedding width (``one-peace-4b``: 1536) is written through ``Index.add``
in committed batches; then

* **exact** search (``Index.search(..., exact=True)``: every row scanned) is timed, and its top 10
  compared with a float64 numpy reference (its recall should be 1.0);
* LanceDB's ANN index is built with ``Index.ensure_ann`` (IVF-PQ, the index's own choice of
  partitions and sub-vectors), and ANN search is timed and scored (recall@10 against the exact top
  10) over a grid of ``nprobes`` x ``refine_factor``, and with the ``Index.search`` defaults;
* peak RSS (``VmHWM``) after writing and at the end, the time to write and to build the index,
  and the size on disk are recorded.

Each size runs in a child process (this script with ``--_worker``), so its peak RSS is its own.
Data are generated chunk by chunk (never the whole collection in memory), and the reference top
10 is kept up to date chunk by chunk as the rows are written.

Synthetic data: real embedding collections are not uniform on the sphere (uniform random vectors
in 1536 dimensions are all nearly orthogonal, and any ANN index degenerates to a full scan on
them); learned embeddings concentrate near a space of far lower intrinsic dimension. The rows are
``normalize(U z + e)``: ``z`` a ``--latent``-dimensional Gaussian with a power-law spectrum
(variance of component i proportional to 1/(i+1)), ``U`` a random orthonormal basis, ``e``
isotropic noise with ``--noise`` times the norm of the signal. Queries are fresh draws from the
same distribution (not rows of the table). The JSON records every parameter.

Usage::

    python benchmarks/bench_search.py                      # 10k, 100k, 1M (about 10 min on 2 cores)
    python benchmarks/bench_search.py --sizes 10000 --queries 20 --out /tmp/search.json   # smoke
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
K = 10
TARGET_RECALL = 0.95
NPROBES = (16, 32, 64, 128)
REFINE = (10, 20, 40)


# ------------------------------------------------------------------------------------------------
# synthetic data
# ------------------------------------------------------------------------------------------------
class Synthetic:
    """Unit vectors near a random ``latent``-dimensional subspace; chunk ``i`` is reproducible alone."""

    def __init__(self, dim: int, latent: int, noise: float, seed: int):
        self.dim, self.latent, self.noise, self.seed = dim, latent, noise, seed
        basis = np.random.default_rng([seed, 0]).standard_normal((dim, latent))
        self.basis = np.linalg.qr(basis)[0].T.astype(np.float32)  # latent x dim, orthonormal rows
        self.scale = (1.0 / np.sqrt(np.arange(1, latent + 1))).astype(np.float32)
        # isotropic noise per coordinate: ``noise`` x the expected norm of the signal, in total
        self.noise_std = noise * float(np.sqrt((self.scale**2).sum() / dim))

    def draw(self, stream: int, index: int, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, index])
        z = rng.standard_normal((n, self.latent), dtype=np.float32) * self.scale
        x = z @ self.basis
        x += rng.standard_normal((n, self.dim), dtype=np.float32) * np.float32(self.noise_std)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def rows(self, index: int, n: int) -> np.ndarray:
        return self.draw(1, index, n)

    def queries(self, n: int) -> np.ndarray:
        return self.draw(2, 0, n)


class TopK:
    """The exact top ``k`` row numbers per query, merged chunk by chunk (float64 scores)."""

    def __init__(self, queries: np.ndarray, k: int):
        self.q = queries.astype(np.float64)
        self.k = k
        self.scores = np.full((len(queries), 0), -np.inf)
        self.ids = np.zeros((len(queries), 0), dtype=np.int64)

    def update(self, rows: np.ndarray, first: int) -> None:
        s = self.q @ rows.astype(np.float64).T
        ids = np.arange(first, first + len(rows))[None, :].repeat(len(s), 0)
        s = np.concatenate([self.scores, s], 1)
        ids = np.concatenate([self.ids, ids], 1)
        keep = np.argsort(-s, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(s, keep, 1)
        self.ids = np.take_along_axis(ids, keep, 1)


# ------------------------------------------------------------------------------------------------
# the worker: one collection size
# ------------------------------------------------------------------------------------------------
def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _row_id(i: int) -> str:
    return f"{i:09d}"


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _timed_search(idx, queries: np.ndarray, gt: np.ndarray, warmup: int = 2, budget_s: float | None = None,
                  min_queries: int = 5, **kw: Any) -> dict[str, Any]:
    """Wall-clock latency of one query at a time, its CPU time (all of the process's threads: less
    sensitive to other load on the machine than the wall clock), and recall@K against ``gt``.
    With ``budget_s``, stops once that much time is spent (after at least ``min_queries``)."""
    for q in queries[:warmup]:
        idx.search(q, k=K, **kw)
    times, hits = [], 0
    started, cpu0 = time.perf_counter(), time.process_time()
    for q, truth in zip(queries, gt):
        t = time.perf_counter()
        rows = idx.search(q, k=K, **kw)
        times.append(time.perf_counter() - t)
        found = {int(r["id"]) for r in rows}
        hits += len(found & set(truth.tolist()))
        if budget_s is not None and len(times) >= min_queries and time.perf_counter() - started > budget_s:
            break
    return {"p50_ms": round(1000 * _pct(times, 50), 2), "p95_ms": round(1000 * _pct(times, 95), 2),
            "mean_ms": round(1000 * float(np.mean(times)), 2),
            "cpu_ms_per_query": round(1000 * (time.process_time() - cpu0) / len(times), 2),
            "queries": len(times), f"recall@{K}": round(hits / (K * len(times)), 4)}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(2)
    from onepeace.search import store
    from onepeace.search.store import Index

    n, dim = args.size, args.dim
    data = Synthetic(dim, args.latent, args.noise, args.seed)
    queries = data.queries(args.queries)
    top = TopK(queries, K)
    path = os.path.join(args.work, f"index-{n}")
    shutil.rmtree(path, ignore_errors=True)
    idx = Index.create(path, fingerprint="synthetic", model_name=f"synthetic-{dim}d", dim=dim)

    t0, cpu0 = time.perf_counter(), time.process_time()
    add_s = 0.0
    for c, first in enumerate(range(0, n, args.batch)):
        x = data.rows(c, min(args.batch, n - first))
        top.update(x, first)
        rows = [{"id": _row_id(first + j), "modality": "image", "uri": "", "text": "", "metadata": "{}",
                 "content_hash": "", "vector": v} for j, v in enumerate(x)]
        t = time.perf_counter()
        idx.add(rows, replace=False)
        add_s += time.perf_counter() - t
        del rows, x
    write_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "rows": idx.count(), "write_s": round(write_s, 1), "write_cpu_s": round(time.process_time() - cpu0, 1),
        "add_s": round(add_s, 1),
        "add_rows_per_s": round(n / add_s), "rss_peak_after_write_mb": round(_vm_hwm_mb()),
    }
    gt = top.ids
    n_exact = min(len(queries), args.exact_queries)
    out["exact"] = _timed_search(idx, queries[:n_exact], gt[:n_exact], budget_s=args.exact_budget_s, exact=True)

    t, cpu0 = time.perf_counter(), time.process_time()
    out["ann_type"] = idx.ensure_ann(min_rows=0)
    out["ann_build_s"] = round(time.perf_counter() - t, 1)
    out["ann_build_cpu_s"] = round(time.process_time() - cpu0, 1)
    out["ann_build_settings"] = {"partitions_requested": max(1, min(4096, round(n**0.5))),
                                 "sub_vectors_bits": list(store._pq_layout(dim)),
                                 "sample_rate": store.PQ_SAMPLE_RATE, "max_iterations": store.PQ_MAX_ITERATIONS}
    out["ann_index"] = idx.vector_index()
    out["default_threshold_rows"] = 50_000  # Index.ensure_ann's default: below it, search stays exact
    grid = []
    for nprobes in args.nprobes:
        for refine in args.refine:
            r = _timed_search(idx, queries, gt, nprobes=nprobes, refine_factor=refine)
            grid.append({"nprobes": nprobes, "refine_factor": refine, **r})
            print(f"  n={n:,} nprobes={nprobes} refine={refine}: recall {r[f'recall@{K}']:.3f} "
                  f"p50 {r['p50_ms']} ms, {r['cpu_ms_per_query']} CPU ms", file=sys.stderr, flush=True)
    out["ann_grid"] = grid
    out["ann_defaults"] = {"nprobes": store.DEFAULT_NPROBES, "refine_factor": store.DEFAULT_REFINE,
                           **_timed_search(idx, queries, gt)}
    out["size_on_disk_mb"] = round(store._dir_size(path) / 2**20)
    out["rss_peak_mb"] = round(_vm_hwm_mb())
    shutil.rmtree(path, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------------------
# the parent
# ------------------------------------------------------------------------------------------------
def choose(sizes: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The setting with recall >= target at every size and the least CPU time per query at the
    largest size (CPU time: less disturbed by other load on the machine than the wall clock)."""
    ok = None
    for key in sizes:
        good = {(g["nprobes"], g["refine_factor"]) for g in sizes[key]["ann_grid"] if g[f"recall@{K}"] >= TARGET_RECALL}
        ok = good if ok is None else ok & good
    if not ok:
        return None
    largest = sizes[max(sizes, key=int)]["ann_grid"]
    best = min((g for g in largest if (g["nprobes"], g["refine_factor"]) in ok), key=lambda g: g["cpu_ms_per_query"])
    return {"nprobes": best["nprobes"], "refine_factor": best["refine_factor"]}


def main() -> int:
    from onepeace.config import get_preset

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=None, help="vector width (default: the one-peace-4b preset's)")
    p.add_argument("--queries", type=int, default=100, help="queries for recall and ANN latency")
    p.add_argument("--exact-queries", type=int, default=30, help="queries timed for exact search (at most)")
    p.add_argument("--exact-budget-s", type=float, default=60.0,
                   help="stop timing exact search after this many seconds (at least 5 queries)")
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=20_000, help="rows per Index.add (one commit)")
    p.add_argument("--nprobes", type=int, nargs="+", default=list(NPROBES))
    p.add_argument("--refine", type=int, nargs="+", default=list(REFINE))
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="where the indexes are written (deleted after)")
    p.add_argument("--out", default=str(RESULTS / "search.json"))
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.dim is None:
        args.dim = get_preset("one-peace-4b").dim  # the width of the released model's embeddings
    if args._worker:
        print(json.dumps(worker(args)))
        return 0

    from onepeace.checkpoints.format import write_text_atomic

    work = tempfile.mkdtemp(prefix="bench-search-", dir=args.tmp)
    results: dict[str, Any] = {}
    started = time.time()
    try:
        for n in args.sizes:
            print(f"{n:,} rows ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--_worker", "--size", str(n), "--work", work]
            for name in ("dim", "queries", "exact_queries", "exact_budget_s", "latent", "noise", "seed", "batch"):
                cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            cmd += ["--nprobes", *map(str, args.nprobes), "--refine", *map(str, args.refine)]
            load = os.getloadavg()[0]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
            if proc.returncode:
                print(f"bench_search: the {n:,}-row run failed (exit {proc.returncode})", file=sys.stderr)
                return 1
            results[str(n)] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_avg_1m_before": load,
                               "load_avg_1m_after": os.getloadavg()[0]}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    chosen = choose(results)
    report = {
        "what": "query latency (ms, one query at a time, k=10) and ANN recall@10 against exact search, "
                "onepeace.search.store.Index on synthetic unit vectors",
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "versions": _versions(),
        "data": {"dim": args.dim, "latent": args.latent, "noise": args.noise, "spectrum": "var_i ~ 1/(i+1)",
                 "seed": args.seed, "queries": args.queries, "exact_queries": args.exact_queries,
                 "batch_rows": args.batch, "k": K},
        "target_recall": TARGET_RECALL,
        "chosen": chosen,
        "index_defaults": {
            "nprobes": next(iter(results.values()))["ann_defaults"]["nprobes"],
            "refine_factor": next(iter(results.values()))["ann_defaults"]["refine_factor"],
            "meet_target_at_every_size": all(r["ann_defaults"][f"recall@{K}"] >= TARGET_RECALL for r in results.values()),
        },
        "sizes": results,
        "total_s": round(time.time() - started),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    _summary(report)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("lancedb", "pylance", "pyarrow", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _summary(report: dict[str, Any]) -> None:
    print(f"{'rows':>10} {'exact p50/p95 ms':>18} {'ANN p50/p95 ms':>16} {'recall@10':>9} {'build s':>8} "
          f"{'peak RSS MB':>11}")
    for n, r in report["sizes"].items():
        a = r["ann_defaults"]
        print(f"{int(n):>10,} {r['exact']['p50_ms']:>8}/{r['exact']['p95_ms']:<9} {a['p50_ms']:>7}/{a['p95_ms']:<8} "
              f"{a[f'recall@{K}']:>9} {r['ann_build_s']:>8} {r['rss_peak_mb']:>11}")
    print(f"chosen ANN settings (recall >= {TARGET_RECALL} at every size): {report['chosen']}")
    print(f"Index.search defaults: {report['index_defaults']}")


if __name__ == "__main__":
    sys.exit(main())
