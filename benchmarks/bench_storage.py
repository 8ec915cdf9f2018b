#!/usr/bin/env python
"""An index on object storage against one in a local directory: build (write) and query latency.

The object store is moto's S3-compatible server, started by this script in its own thread on
127.0.0.1 (no network beyond this machine; its objects live in this process's memory), reached
through LanceDB's object store exactly as ``onepeace index build s3://...`` reaches a real one
(the ``AWS_*`` environment variables). So the figures are the cost of the S3 protocol and
LanceDB's object-store layer on loopback (HTTP requests, no page cache), not of a network or a
real bucket; a remote store adds its round-trip time to every request.

For each target (a local directory, then ``s3://bucket/bench``), ``--rows`` synthetic rows of
width ``--dim`` are written through ``Index.add`` in commits of ``--batch`` rows (``onepeace index
build`` writes the same way); then a fresh ``Index.open`` is timed, its first query (cold), and
``--queries`` exact top-10 queries (every row scanned; p50 / p95 ms), unfiltered and restricted
to one modality. Both targets get the same rows and queries, and their top 10s are compared.

Writes ``benchmarks/results/storage.json`` (``--out``). Usage::

    python benchmarks/bench_storage.py                      # 10,000 rows of 512, about a minute
    python benchmarks/bench_storage.py --rows 2000 --out /tmp/storage.json   # smoke
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BUCKET = "onepeace-bench"


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 1)


def start_s3() -> tuple[Any, str]:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per S3 request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{server._server.server_address[1]}"
    os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"})
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return server, url


def measure(path: str, vectors: np.ndarray, queries: np.ndarray, batch: int) -> dict[str, Any]:
    from onepeace.search.store import Index

    n, dim = vectors.shape
    idx = Index.create(path, fingerprint="synthetic", model_name=f"synthetic-{dim}d", dim=dim)
    commits: list[float] = []
    t0 = time.perf_counter()
    for first in range(0, n, batch):
        rows = [{"id": f"row-{first + j:08d}", "modality": "image" if (first + j) % 2 else "text", "uri": "",
                 "text": "", "metadata": "{}", "content_hash": "", "vector": v}
                for j, v in enumerate(vectors[first:first + batch])]
        t = time.perf_counter()
        idx.add(rows, replace=False)
        commits.append(time.perf_counter() - t)
    write_s = time.perf_counter() - t0
    t = time.perf_counter()
    fresh = Index.open(path)
    open_s = time.perf_counter() - t
    t = time.perf_counter()
    first_hits = fresh.search(queries[0], k=10, exact=True)
    cold_s = time.perf_counter() - t
    out: dict[str, Any] = {
        "rows": fresh.count(), "write_s": round(write_s, 2), "rows_per_s": round(n / write_s),
        "commit_ms_p50": _pct(commits, 50), "commit_ms_max": _pct(commits, 100),
        "open_ms": round(open_s * 1000, 1), "first_query_ms": round(cold_s * 1000, 1),
    }
    tops = [[h["id"] for h in first_hits]]
    for name, modality in (("query", None), ("query_one_modality", "image")):
        times = []
        for q in queries:
            t = time.perf_counter()
            hits = fresh.search(q, k=10, exact=True, modality=modality)
            times.append(time.perf_counter() - t)
            if modality is None:
                tops.append([h["id"] for h in hits])
        out[name] = {"queries": len(queries), "p50_ms": _pct(times, 50), "p95_ms": _pct(times, 95)}
    out["_tops"] = tops
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=1_000, help="rows per commit")
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "storage.json"))
    args = p.parse_args(argv)
    if args.rows < 1 or args.rows > 200_000 or args.queries < 1 or args.batch < 1:
        p.error("bounded: 1 to 200,000 rows, at least one query and one row per commit")
    import lancedb
    import moto

    rng = np.random.default_rng(args.seed)
    vectors = rng.standard_normal((args.rows, args.dim)).astype(np.float32)
    queries = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    load = os.getloadavg()[0]
    server, url = start_s3()
    try:
        with tempfile.TemporaryDirectory(prefix="onepeace-storage-") as work:
            local = measure(os.path.join(work, "local.db"), vectors, queries, args.batch)
            s3 = measure(f"s3://{BUCKET}/bench.db", vectors, queries, args.batch)
    finally:
        server.stop()
    same = local.pop("_tops") == s3.pop("_tops")
    for name, r in (("local", local), ("s3", s3)):
        print(f"{name:>5}: write {r['rows_per_s']:,} rows/s (commit p50 {r['commit_ms_p50']} ms), open "
              f"{r['open_ms']} ms, first query {r['first_query_ms']} ms, query p50/p95 {r['query']['p50_ms']}/"
              f"{r['query']['p95_ms']} ms", file=sys.stderr)
    result = {
        "benchmark": "bench_storage", "date": _dt.date.today().isoformat(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "lancedb": lancedb.__version__, "moto": moto.__version__,
        "load_average_at_start": round(load, 2),
        "setup": {"rows": args.rows, "dim": args.dim, "rows_per_commit": args.batch, "queries": args.queries,
                  "k": 10, "search": "exact", "store": "moto's S3 server on 127.0.0.1 (in memory)"},
        "local": local, "s3": s3, "same_top10": same,
        "ratio_s3_over_local": {"write_s": round(s3["write_s"] / local["write_s"], 2),
                                "query_p50": round(s3["query"]["p50_ms"] / local["query"]["p50_ms"], 2)},
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
