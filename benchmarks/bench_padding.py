#!/usr/bin/env python
"""No compute on padding: variable-length batches, the padded way vs onepeace's bucketed ``embed``.

Two workloads at base width (random weights of the ``base`` preset, the fixture recipe of
``_bench.build_random``), in float32 and bfloat16:

* audio: 8 clips of 1-15 s (durations evenly spread, in shuffled order);
* text: 32 captions of 3-70 BPE tokens (lengths evenly spread, in shuffled order).

Ways of embedding the same raw inputs, timed alternately in one process (so that a drift of the
shared host's speed hits all alike), preprocessing included in each:

* ``padded_reference``: the official way, one padded batch, through ``upstream_style.py`` (our
  re-statement of the official code's way of computing, sharing the model's weight tensors);
* ``padded_ours`` (with ``--padded-ours``): ``model.embed(..., bucket=False)``, one padded batch
  through onepeace (splits the gain between the scheduling and the kernels);
* ``bucketed``: ``model.embed(...)`` (``bucket=True``, the default), with ``batch_size`` = all
  items, so it may use the memory of the one padded batch.

In float32, each item is also embedded alone (ours and the reference's): the largest difference
of a bucketed row from the row alone is recorded next to the 1e-6 goal (tests/test_padding.py
checks it against float64-derived tolerances). The float32 and bf16 2048^3 matmul peaks are
measured at the start and the end of the run. Writes ``benchmarks/results/padding.json``.

Clock: by default one torch thread, timed in its CPU seconds (``time.thread_time``): on a host
shared with other jobs, wall-clock time at 2 threads mostly measures them (a parallel op waits for
a descheduled OpenMP thread), and many small forward passes would pay that more than one big one.
``--clock wall --threads 2`` is the wall-clock variant for a quiet machine.

Usage::

    python benchmarks/bench_padding.py                 # base, fp32 + bf16 (minutes of CPU time)
    python benchmarks/bench_padding.py --quick         # tiny preset, smoke test
    python benchmarks/bench_padding.py --clock wall --threads 2 --padded-ours
"""

from __future__ import annotations

import argparse
import datetime as _dt
import random
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _bench  # noqa: E402
from _bench import median, r  # noqa: E402

GOALS = {"audio": 2.0, "text": 1.7}  # issue 12.1: speed-up over the padded computation


def workloads(model, n_audio: int, n_text: int, seed: int = 0) -> dict[str, list[Any]]:
    import numpy as np

    rng = random.Random(seed)
    secs = list(np.linspace(1.0, 15.0, n_audio))
    rng.shuffle(secs)
    gen = np.random.default_rng(seed)
    audio = []
    for i, s in enumerate(secs):
        t = np.arange(int(16000 * s)) / 16000
        f = 180.0 * (1 + i) + gen.uniform(0, 40)
        audio.append((0.3 * np.sin(2 * np.pi * f * t) + 0.05 * gen.standard_normal(t.size)).astype(np.float32))
    lengths = [int(round(x)) for x in np.linspace(3, 70, n_text)]
    rng.shuffle(lengths)
    text = _bench.make_captions(model.processor.get("text").encode, lengths, seed)
    return {"audio": audio, "text": text}


def useful_flops(model, name: str, batch: dict) -> tuple[float, float]:
    """(FLOPs of the real tokens, FLOPs of the padded batch), with ``_bench.model_flops``."""
    proc = model.processor.get(name)
    lengths = proc.lengths(batch)
    if name == "audio":
        real = [int(n) for n in (~batch["padding_mask"][:, 1:]).sum(1)]
        from onepeace.processing.audio import stem_samples

        stem = proc.stem
        samples = [stem_samples(t, stem) for t in real]
        useful = sum(_bench.model_flops(model.config, name, 1, n, s)["total"] for n, s in zip(lengths, samples))
        padded = _bench.model_flops(model.config, name, len(lengths), max(lengths), batch["waveform"].shape[1])["total"]
    else:
        useful = sum(_bench.model_flops(model.config, name, 1, n)["total"] for n in lengths)
        padded = _bench.model_flops(model.config, name, len(lengths), max(lengths))["total"]
    return useful, padded


def to_dtype(batch: dict, dtype) -> dict:
    """Floating inputs in the model's dtype, as the official hub casts them (token ids stay int64)."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}


def alone_check(model, ref, name: str, items: list) -> dict[str, Any]:
    """Bucketed rows vs each item alone, ours and the reference's (the official way of computing
    one item). The tests check batch invariance against float64-derived tolerances; here the
    figures are recorded next to the 1e-6 goal."""
    import torch

    ours = model.embed(**{name: items}, batch_size=len(items))[name]
    alone = torch.cat([model.embed(**{name: [x]})[name] for x in items])
    proc = model.processor.get(name)
    ref_alone = torch.cat([ref.embed_batch(name, to_dtype(proc([x]), model.dtype)).float() for x in items])
    diff = (ours - alone).abs().max().item()
    return {
        "max_abs_diff_bucketed_vs_alone": float(f"{diff:.3e}"),
        "within_1e-6": diff <= 1e-6,
        "max_abs_diff_bucketed_vs_reference_alone": float(f"{(ours - ref_alone).abs().max().item():.3e}"),
        "min_cosine_vs_reference_alone": r(torch.nn.functional.cosine_similarity(
            ours.double(), ref_alone.double(), dim=-1).min().item(), 8),
    }


def run_dtype(size: str, dtype: str, inputs: dict[str, list], rounds: int, warmup: int,
              padded_ours: bool, clock) -> dict[str, Any]:
    import torch
    import upstream_style

    from onepeace.model import packing

    model = _bench.build_random(size, dtype)
    ref = upstream_style.from_onepeace(model)
    res: dict[str, Any] = {}
    with torch.inference_mode():
        for name, items in inputs.items():
            proc = model.processor.get(name)
            batch = proc(items)
            lengths = proc.lengths(batch)
            steps = packing.schedule(lengths, len(lengths) * max(lengths), packing.Cost.for_config(model.config),
                                     bool(model.adapters[name].packable))
            useful, padded = useful_flops(model, name, batch)
            entry: dict[str, Any] = {
                "items": len(items), "tokens_real": sum(lengths), "tokens_padded": len(lengths) * max(lengths),
                "tokens_scheduled": packing.padded_tokens(steps, lengths),
                "schedule": [{"packed": s.packed, "rows": len(s.rows), "width": s.width(lengths),
                              "items": len(s.items)} for s in steps],
                "gflop_real": r(useful / 1e9, 1), "gflop_padded": r(padded / 1e9, 1),
            }
            if dtype == "fp32":
                entry["check"] = alone_check(model, ref, name, items)
            kw = {name: items, "batch_size": len(items)}
            fns = {
                "padded_reference": lambda name=name, items=items, proc=proc: ref.embed_batch(
                    name, to_dtype(proc(items), model.dtype)),
                "padded_ours": lambda kw=kw: model.embed(**kw, bucket=False),
                "bucketed": lambda kw=kw: model.embed(**kw),
            }
            if not padded_ours:
                del fns["padded_ours"]
            t0 = time.perf_counter()
            times = _bench.time_alternating(fns, rounds, warmup, clock=clock)
            med = {k: median(v) for k, v in times.items()}
            entry.update({
                "times_s": {k: [r(x, 4) for x in v] for k, v in times.items()},
                "median_s": {k: r(v, 4) for k, v in med.items()},
                "speedup_vs_padded_reference": r(med["padded_reference"] / med["bucketed"], 3),
                "speedup_vs_padded_ours": r(med["padded_ours"] / med["bucketed"], 3) if padded_ours else None,
                "speedup_pairwise_median": r(median([a / b for a, b in zip(times["padded_reference"],
                                                                           times["bucketed"])]), 3),
                "useful_gflops": {k: r(useful / v / 1e9, 1) for k, v in med.items()},
                "goal": GOALS[name],
                "timing_wall_s": r(time.perf_counter() - t0, 1),
            })
            entry["meets_goal"] = entry["speedup_vs_padded_reference"] >= GOALS[name]
            res[name] = entry
            print(f"  {dtype} {name:5s}: padded reference {med['padded_reference']:.3f} s, "
                  f"bucketed {med['bucketed']:.3f} s -> "
                  f"{entry['speedup_vs_padded_reference']:.2f}x the padded reference (goal {GOALS[name]}x), "
                  f"tokens {entry['tokens_scheduled']}/{entry['tokens_padded']} (real {entry['tokens_real']})",
                  flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset, one round (a smoke test)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds (each runs every way once)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--padded-ours", action="store_true",
                    help="also time onepeace on the one padded batch (bucket=False): splits the gain "
                         "between scheduling and kernels, at about 1.7x the run time")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu (default): one torch thread timed in its CPU seconds (time.thread_time), "
                         "which other jobs on a shared host do not inflate; wall: wall-clock seconds")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 1 with --clock cpu, else 2)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    threads = args.threads or (1 if args.clock == "cpu" else _bench.THREADS)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(threads)
    size = "tiny" if args.quick else "base"
    rounds = 1 if args.quick else args.rounds
    n_text = 12 if args.quick else 32
    out = args.out or _bench.RESULTS / ("padding-quick.json" if args.quick else "padding.json")
    t_start = time.time()
    results: dict[str, Any] = {
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _bench.machine_facts(),
        "size": size,
        "method": {
            "workloads": f"audio: 8 clips, durations linspace(1, 15 s), shuffled; text: {n_text} captions of "
                         "linspace(3, 70) BPE tokens, shuffled; synthetic, deterministic",
            "weights": f"random weights of the {size} preset (_bench.build_random, seed {_bench.SEED}); "
                       "the reference shares the tensors",
            "ways": "padded_reference: upstream_style.py embed_batch on one padded batch (the official "
                    "way); padded_ours (only with --padded-ours): model.embed(bucket=False, batch_size=all); "
                    "bucketed: model.embed("
                    "batch_size=all); preprocessing included in each",
            "timing": f"{args.clock} clock, {threads} thread(s); {args.warmup} warm-up round(s), then {rounds} rounds, the ways alternating "
                      "in each; medians; speedup = padded_reference median / bucketed median",
            "useful_gflops": "FLOPs of the real tokens only (_bench.model_flops per item) per second",
            "peak": "torch.matmul 2048^3, median GFLOP/s (same clock and threads), at the start and "
                    "at the end of the run",
            "clock": args.clock, "threads": threads,
        },
    }
    print(f"[{time.strftime('%H:%M:%S')}] matmul peak ...", flush=True)
    results["peak_start"] = _bench.gemm_peak(runs=5, linear3d=False, threads=threads, clock=clock)
    inputs = workloads(_bench.build_random("tiny", "fp32"), 8, n_text)
    for dtype in args.dtypes.split(","):
        print(f"[{time.strftime('%H:%M:%S')}] {size} {dtype}", flush=True)
        results[dtype] = run_dtype(size, dtype, inputs, rounds, args.warmup, args.padded_ours, clock)
        _bench.write_json_atomic(out, results)
    results["peak_end"] = _bench.gemm_peak(runs=5, linear3d=False, threads=threads, clock=clock)
    for dtype in args.dtypes.split(","):
        peak = (results["peak_start"][dtype]["median_gflops"] + results["peak_end"][dtype]["median_gflops"]) / 2
        for e in results[dtype].values():
            e["bucketed_pct_of_peak_useful"] = r(100 * e["useful_gflops"]["bucketed"] / peak, 1)
            e["padded_reference_pct_of_peak_useful"] = r(100 * e["useful_gflops"]["padded_reference"] / peak, 1)
    results["wall_s"] = r(time.time() - t_start, 1)
    _bench.write_json_atomic(out, results)
    print(f"cpu: {results['machine']['cpu_model']} {results['machine']['isa_flags']}")
    for dtype in args.dtypes.split(","):
        p0, p1 = results["peak_start"][dtype]["median_gflops"], results["peak_end"][dtype]["median_gflops"]
        print(f"{dtype} matmul peak {p0} -> {p1} GFLOP/s; " + ", ".join(
            f"{name} {e['speedup_vs_padded_reference']}x (goal {e['goal']}x)" for name, e in results[dtype].items()))
    print(f"wrote {out} ({results['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
