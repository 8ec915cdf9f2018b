#!/usr/bin/env python
"""CPU benchmark of the onepeace package: speed, memory of loading and converting, bf16 accuracy.

Writes ``benchmarks/results/model.json`` (``model-quick.json`` with ``--quick``) and prints a short
summary. What is measured, and how it lines up with the official code's measurements
(``../shared/research/upstream-perf.md``, next to the repository), is described in ``benchmarks/README.md``.

Every heavy step runs in a child process (this same script with ``--_worker``) so that each one
starts from a clean heap, its peak RSS (``VmHWM``) belongs to that step alone, and the parent can
watch the child's RSS and stop it before the machine runs out of memory.

This file parses the options and dispatches; the parts live in ``_model_speed.py`` (speed, cosine),
``_model_memory.py`` (load, convert; the official-format writer is ``_official_ckpt.py``) and
``_model_sidebyside.py``; the helpers shared with the other benchmarks in ``_bench.py``.

Usage::

    python benchmarks/bench_model.py                   # everything (20-40 min, peaks near 16 GB)
    python benchmarks/bench_model.py --quick           # smoke run on the tiny preset (~1 min)
    python benchmarks/bench_model.py --only speed --sizes base --dtypes fp32
    python benchmarks/bench_model.py --only load,convert
    python benchmarks/bench_model.py --only sidebyside  # ours vs upstream-style, same run (~10 min)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from _bench import (  # this folder is sys.path[0] when run as a script
    GB,
    RESULTS,
    THREADS,
    UPSTREAM,
    UPSTREAM_PEAK,
    WARMUP,
    WORKLOADS,
    gemm_peak,
    machine_facts,
    r,
    worker_main,
    write_json_atomic,
)
from _model_memory import (
    part_convert,
    part_load,
    worker_check_converted,
    worker_convert,
    worker_gen_official,
    worker_load,
    worker_make_ckpt,
)
from _model_sidebyside import part_sidebyside, sidebyside_rows, worker_malloc, worker_sidebyside
from _model_speed import part_speed_and_cosine, worker_model

WORKERS = {"model": worker_model, "make_ckpt": worker_make_ckpt, "load": worker_load,
           "convert": worker_convert, "gen_official": worker_gen_official,
           "check_converted": worker_check_converted, "sidebyside": worker_sidebyside,
           "malloc": worker_malloc}


def add_notes(results: dict) -> None:
    """Caveats derived from the measurements themselves."""
    notes = []
    m = results.get("machine", {})
    if not m.get("has_avx512_bf16") and not m.get("has_amx_bf16"):
        notes.append(
            "This CPU exposes neither avx512_bf16 nor AMX, unlike the upstream measurement machine "
            "(AMD EPYC with avx512_bf16): bf16 GEMMs run emulated here, so the bf16 matmul peak is far "
            "below fp32 and the bf16 % peak figures are not comparable to upstream's.")
    g = results.get("gemm_peak", {})
    if "start" in g and "end" in g:
        a, b = g["start"]["fp32"]["median_gflops"], g["end"]["fp32"]["median_gflops"]
        if abs(a - b) / max(a, b) > 0.15:
            notes.append(
                f"The fp32 GEMM peak moved from {a} GFLOP/s at the start to {b} at the end: the shared "
                "host's speed drifts (it was seen alternating between ~345 and ~155 GFLOP/s, with small "
                "ops then taking ~8 ms instead of ~50 us). Compare pct_local_peak, measured in each "
                "worker just before and after its forwards, and check the workers' op_latency_us.")
    for size, by_dt in results.get("speed", {}).items():
        for dt, v in by_dt.items():
            if "local_peak_start" in v:
                a, b = v["local_peak_start"], v["local_peak_end"]
                lat = max(v.get("op_latency_us_start") or 0, v.get("op_latency_us_end") or 0)
                if abs(a - b) / max(a, b) > 0.15 or lat > 1000:
                    notes.append(f"{size}/{dt}: the host was contended around this worker (GEMM peak "
                                 f"{a} -> {b} GFLOP/s, small-op latency up to {lat} us); its timings "
                                 "are unreliable, re-run that part.")
    results["notes"] = notes


def summary_rows(results: dict) -> list[str]:
    lines = []
    peak = results.get("gemm_peak", {}).get("start", {})
    if peak:
        lines.append(f"GEMM peak (2048^3, {THREADS} threads): fp32 {peak['fp32']['median_gflops']} GFLOP/s, "
                     f"bf16 {peak['bf16']['median_gflops']} GFLOP/s "
                     f"(upstream machine: {UPSTREAM_PEAK['fp32']} / {UPSTREAM_PEAK['bf16']})")
    for size, by_dt in results.get("speed", {}).items():
        for dt, v in by_dt.items():
            if "modalities" not in v:
                lines.append(f"{size:13s} {dt}: {v.get('error')}")
                continue
            for name, e in v["modalities"].items():
                up = (e.get("upstream") or {}).get("pct_peak")
                ups = "-" if "upstream" not in e else f"{up}%" if up is not None else "fails"
                lines.append(f"{size:13s} {dt} {name:5s} {e['median_s']:8.3f} s/batch {e['items_per_s']:8.2f} items/s "
                             f"{e['gflops_median']:6.1f} GFLOP/s {e['pct_peak']:5.1f}% peak "
                             f"({e['pct_local_peak']:5.1f}% local)  upstream {ups}")
    if "load" in results and "peak_over_weights" in results["load"]:
        ld = results["load"]
        lines.append(f"load {ld['model']} bf16: peak {ld['peak_rss_bytes'] / GB:.2f} GB / weights "
                     f"{ld['weight_bytes'] / GB:.2f} GB = {ld['peak_over_weights']:.3f} (goal <= 1.2)")
    if "convert" in results and "peak_over_output" in results["convert"]:
        c = results["convert"]
        lines.append(f"convert fp32: peak {c['peak_rss_bytes'] / GB:.2f} GB / output {c['output_bytes'] / GB:.2f} GB"
                     f" = {c['peak_over_output']:.3f} (goal <= 1.3), {c['convert_s']:.0f} s")
    for size, c in results.get("cosine", {}).items():
        lines.append(f"cosine bf16 vs fp32 {size}: " + ", ".join(
            f"{k} min {v['min']:.6f}" for k, v in c["per_modality"].items()))
    return lines


# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="gemm,speed,load,convert,cosine",
                    help="comma list of parts: gemm, speed, load, convert, cosine (default: these five), "
                         "sidebyside (only when named: ours vs an upstream-style forward, same run)")
    ap.add_argument("--wait-quiet", type=float, default=150.0,
                    help="sidebyside: seconds to wait at most, before each child, for the GEMM check to "
                         "read a quiet host (then it measures anyway and says so in notes)")
    ap.add_argument("--malloc-pairs", type=int, default=3,
                    help="sidebyside: default/tuned child pairs for the glibc malloc A/B (0: skip)")
    ap.add_argument("--sizes", default=None, help="comma list of presets for speed/cosine "
                                                  "(default base,one-peace-4b; tiny with --quick)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma list for speed (cosine needs both)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny preset, tiny checkpoints")
    ap.add_argument("--out", default=None, help="JSON path (default results/model.json, model-quick.json)")
    ap.add_argument("--tmp", default="/tmp", help="where the large temporary checkpoints go")
    ap.add_argument("--rss-limit-gb", type=float, default=19.5, help="kill a child above this RSS")
    ap.add_argument("--fresh", action="store_true", help="do not merge into an existing results file")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_spec", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        worker_main(WORKERS, args._worker, args._spec, args._out)
        return 0

    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    bad = parts - {"gemm", "speed", "load", "convert", "cosine", "sidebyside"}
    if bad:
        ap.error(f"unknown parts {sorted(bad)}")
    args.sizes = [s.strip() for s in (args.sizes or ("tiny" if args.quick else "base,one-peace-4b")).split(",")]
    for s in args.sizes:
        if s not in WORKLOADS:
            ap.error(f"unknown size {s!r}; choose from {sorted(WORKLOADS)}")
    args.dtypes = [d.strip() for d in args.dtypes.split(",")]
    args.rss_limit = args.rss_limit_gb * GB
    out = Path(args.out) if args.out else RESULTS / ("model-quick.json" if args.quick else "model.json")

    import torch

    torch.set_num_threads(THREADS)
    results: dict[str, Any] = {}
    if out.exists() and not args.fresh and parts != {"gemm", "speed", "load", "convert", "cosine"}:
        try:
            results = json.loads(out.read_text())
        except ValueError:
            results = {}
    t_start = time.time()
    if parts == {"sidebyside"}:  # merge only the new key; the other parts' figures stay as they were
        part_sidebyside(args, results, lambda: write_json_atomic(out, results))
        print("\n".join(["", "Summary"] + sidebyside_rows(results["sidebyside"])))
        print(f"\nwrote {out}")
        return 0
    results.update({
        "schema": 1,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine_facts(),
        "method": {
            "timing": f"time.perf_counter around model.embed_batch(name, batch) under torch.inference_mode(); "
                      f"{WARMUP} untimed warm-ups, then median (and min) of {WORKLOADS['base']['runs']} runs "
                      f"(base) / {WORKLOADS['one-peace-4b']['runs']} (4B); preprocessing not included; "
                      f"torch.set_num_threads({THREADS}); each (size, dtype) in a fresh process",
            "flops": "2 per multiply-add over GEMMs and convolutions only (upstream-perf.md): transformer "
                     "L*B*T*(8D^2+6DF) + 4*L*B*T^2*D, hMLP stem, audio conv stem + 512->D projection + "
                     "grouped conv positions, projection head 2*B*D^2; T includes CLS and padding",
            "pct_peak": "median GFLOP/s divided by the same run's torch.matmul 2048^3 median GFLOP/s of "
                        "the same dtype (gemm_peak.start); pct_local_peak divides by the mean of the same "
                        "GEMM measured in the worker just before and after its forwards (guards against "
                        "the shared host's speed drifting during the run)",
            "weights": "random, upstream fixture recipe (seed 4321); speed does not depend on the values",
            "inputs": "synthetic: 640x480 smooth random RGB images; COCO-style captions of 15-19 BPE "
                      "tokens (mean 17, padded to 20, T=21); 5 s tone+noise clips (80,000 samples, T=250)",
            "memory": "VmHWM / VmRSS from /proc/self/status of a fresh child process; GB = 1e9 bytes",
        },
        "upstream_peak_gflops": UPSTREAM_PEAK,
        "upstream_pct_peak": {f"{s}/{d}/{m}": v["pct_peak"] for (s, d, m), v in UPSTREAM.items()},
    })

    need_peak = bool(parts & {"gemm", "speed"})
    if need_peak:
        print(f"[{time.strftime('%H:%M:%S')}] GEMM peak", flush=True)
        results.setdefault("gemm_peak", {})["start"] = gemm_peak()
        p = results["gemm_peak"]["start"]
        print(f"    fp32 {p['fp32']['median_gflops']} GFLOP/s, bf16 {p['bf16']['median_gflops']} GFLOP/s "
              f"(F.linear 3-D: fp32 {p['fp32']['linear3d']['median_gflops']}, bf16 "
              f"{p['bf16']['linear3d']['median_gflops']}); small-op latency {p['op_latency_us']} us", flush=True)
        write_json_atomic(out, results)
    peak = results.get("gemm_peak", {}).get("start")
    if "speed" in parts or "cosine" in parts:
        part_speed_and_cosine(args, results, peak, "speed" in parts, "cosine" in parts)
        write_json_atomic(out, results)
    if "load" in parts:
        part_load(args, results)
        write_json_atomic(out, results)
    if "convert" in parts:
        part_convert(args, results)
        write_json_atomic(out, results)
    if "sidebyside" in parts:
        part_sidebyside(args, results, lambda: write_json_atomic(out, results))
    if need_peak and "speed" in parts:
        results["gemm_peak"]["end"] = gemm_peak()
    add_notes(results)
    results["total_wall_s"] = r(time.time() - t_start, 1)
    write_json_atomic(out, results)
    print("\n".join(["", "Summary"] + summary_rows(results)
                    + (sidebyside_rows(results["sidebyside"]) if "sidebyside" in parts else [])))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
