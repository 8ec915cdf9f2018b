#!/usr/bin/env python
"""Share of the matmul peak and speed-up over the upstream-style forward, fp32 and bf16, in one run.

For each model width (``base``; the 4B width, 1536 / 24 heads / 6144, with ``--layers-4b`` layers)
and dtype, a fresh child process builds our model with random weights (the fixture recipe, every
layer-scale gamma 0.5) and the upstream-style reference on the **same tensors**
(``upstream_style.from_onepeace``), checks that they agree, then times them alternately (ours,
reference, ours, ...) on the workloads of ``upstream-perf.md``: base image 8 x 256 px, text 32
captions (T = 21), audio 4 x 5 s; 4B width image 1, text 32, audio 1 x 5 s. The GEMM peak
(2048^3 ``torch.matmul``) of the same dtype is measured in the same child before and after.

**Clock.** The host these benchmarks run on is shared (2 cores, up to seven jobs at once), which
makes wall-clock times at 2 threads mostly a measure of the other jobs. So by default everything
(the peak included) runs on **one thread and is timed in CPU seconds of that thread**
(``time.thread_time``), which other processes do not inflate; ``--clock wall`` times wall-clock at
``--threads`` threads instead (use it on a quiet machine). "% of peak" = GFLOP per batch (the
upstream formula, 2 per multiply-add over GEMMs and convolutions) / time / peak of the same dtype
and clock. With ``--layers-4b`` below 40 the 4B-width rows measure the same layers, fewer of them:
the share of peak is that of the full model up to the adapter's share.

Writes ``benchmarks/results/peak.json``; a partial run (``--widths``, ``--dtypes``, ``--only``)
replaces only the entries it measures (each entry carries its own ``peak_gflops`` and ``measured``
time; ``--fresh`` starts over). Usage::

    python benchmarks/bench_peak.py                       # about 10 min on one core
    python benchmarks/bench_peak.py --widths base --dtypes bf16 --only image,text
    python benchmarks/bench_peak.py --quick               # tiny preset smoke run
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _bench import (  # noqa: E402  (the shared helpers; torch is imported lazily)
    AUDIO_SAMPLES,
    GB,
    RESULTS,
    SEED,
    gemm_peak,
    machine_facts,
    make_batches,
    median,
    model_flops,
    model_inputs,
    proc_status,
    r,
    randomize_,
    run_worker,
    time_alternating,
    worker_main,
    write_json_atomic,
)

WIDTHS = {
    "base": {"preset": "base", "batch": {"image": 8, "text": 32, "audio": 4}},
    "4b-width": {"preset": "one-peace-4b", "batch": {"image": 1, "text": 32, "audio": 1}},
    "tiny": {"preset": "tiny", "batch": {"image": 2, "text": 8, "audio": 1}},  # --quick
}
GAMMA = 0.5


def build(preset: str, dtype: str, layers: int | None):
    import torch

    import onepeace

    over = {"layers": layers} if layers else {}
    m = onepeace.create_model(preset, device="meta", init=False, **over)
    m = m.to(onepeace.resolve_dtype(dtype)).to_empty(device="cpu")
    randomize_(m, SEED)
    with torch.no_grad():
        for layer in m.encoder.layers:
            layer.gamma_1.fill_(GAMMA)
            layer.gamma_2.fill_(GAMMA)
    return m.eval()


def worker_peak(spec: dict) -> dict:
    import torch
    import upstream_style

    threads, dtype = spec["threads"], spec["dtype"]
    torch.set_num_threads(threads)
    clock = time.thread_time if spec["clock"] == "cpu" else time.perf_counter
    model = build(spec["preset"], dtype, spec["layers"])
    ref = upstream_style.from_onepeace(model)
    batches, lens, _ = make_batches(model, spec["batch"])

    def peak() -> float:
        return gemm_peak(dtypes=(dtype,), linear3d=False, threads=threads, clock=clock, runs=5)[dtype]["median_gflops"]

    res: dict[str, Any] = {"layers": model.config.layers, "dim": model.config.dim, "peak_start": peak(),
                           "weights_shared": upstream_style.shares_weights(ref, model)["all_shared"]}
    per: dict[str, Any] = {}
    with torch.inference_mode():
        for name in spec["modalities"]:
            b = spec["batch"][name]
            inp = model_inputs(batches[name])
            ref_inp = {k: v.to(model.dtype) if torch.is_floating_point(v) else v for k, v in inp.items()}
            a = model.embed_batch(name, inp).double()
            c = ref.embed_batch(name, ref_inp).double()
            cos = torch.nn.functional.cosine_similarity(a, c, dim=-1).min().item()
            diff = (a - c).abs().max().item()
            fl = model_flops(model.config, name, b, lens[name], AUDIO_SAMPLES)["total"]
            t = time_alternating({"ours": lambda name=name, inp=inp: model.embed_batch(name, inp),
                                  "reference": lambda name=name, inp=ref_inp: ref.embed_batch(name, inp)},
                                 spec["rounds"], 1, clock=clock)
            mo, mr = median(t["ours"]), median(t["reference"])
            per[name] = {"batch": b, "T": lens[name], "gflop_per_batch": r(fl / 1e9, 2),
                         "max_abs_diff": float(f"{diff:.3e}"), "min_cosine": r(cos, 6),
                         "ours_s": [r(x, 4) for x in t["ours"]], "reference_s": [r(x, 4) for x in t["reference"]],
                         "ours_median_s": r(mo, 4), "reference_median_s": r(mr, 4),
                         "speedup": r(mr / mo, 3),
                         "speedup_pairwise_median": r(median([x / y for x, y in zip(t["reference"], t["ours"])]), 3),
                         "ours_gflops": r(fl / mo / 1e9, 1), "reference_gflops": r(fl / mr / 1e9, 1)}
            print(f"      {name:5s} ours {mo:7.3f} s  reference {mr:7.3f} s  x{mr / mo:.3f}  "
                  f"(max|diff| {diff:.2e}, min cos {cos:.6f})", flush=True)
    res["peak_end"] = peak()
    pk = (res["peak_start"] + res["peak_end"]) / 2
    res["peak_gflops"] = r(pk, 1)
    for e in per.values():
        e["peak_gflops"] = res["peak_gflops"]
        e["measured"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        e["ours_pct_peak"] = r(100 * e["ours_gflops"] / pk, 1)
        e["reference_pct_peak"] = r(100 * e["reference_gflops"] / pk, 1)
    res["modalities"] = per
    res["hwm_gb"] = r(proc_status()["VmHWM"] / GB)
    return res


WORKERS = {"peak": worker_peak}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", default="base,4b-width", help="comma list: base, 4b-width (tiny with --quick)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--only", default="image,text,audio", help="comma list of modalities")
    ap.add_argument("--layers-4b", type=int, default=4, help="layers of the 4B-width model (40 = the full depth)")
    ap.add_argument("--rounds", type=int, default=3, help="timed (ours, reference) rounds after one warm-up")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 1 with --clock cpu, else 2)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--fresh", action="store_true", help="do not merge into an existing results file")
    ap.add_argument("--rss-limit-gb", type=float, default=12.0)
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_spec", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        worker_main(WORKERS, args._worker, args._spec, args._out)
        return 0
    threads = args.threads or (1 if args.clock == "cpu" else 2)
    widths = ["tiny"] if args.quick else [w.strip() for w in args.widths.split(",")]
    out = Path(args.out) if args.out else RESULTS / ("peak-quick.json" if args.quick else "peak.json")
    results: dict[str, Any] = {
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "method": {"clock": args.clock, "threads": threads, "rounds": args.rounds, "layers_4b_width": args.layers_4b,
                   "gamma": GAMMA, "note": __doc__.split("\n\n")[2].replace("\n", " ")},
        "results": {},
    }
    if out.exists() and not args.fresh:  # a partial run replaces only the entries it measures
        try:
            before = json.loads(out.read_text())
            results["results"], results["written_before"] = before.get("results", {}), before.get("written")
        except ValueError:
            pass
    for w in widths:
        conf = WIDTHS[w]
        for dtype in [d.strip() for d in args.dtypes.split(",")]:
            print(f"[{time.strftime('%H:%M:%S')}] {w} {dtype} ({args.clock} clock, {threads} thread(s))", flush=True)
            spec = {"preset": conf["preset"], "batch": conf["batch"], "dtype": dtype, "threads": threads,
                    "clock": args.clock, "rounds": args.rounds, "modalities": args.only.split(","),
                    "layers": args.layers_4b if w == "4b-width" else None}
            res = run_worker("peak", spec, args.rss_limit_gb * GB, f"{w}/{dtype}", script=Path(__file__),
                             env_extra={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
            old = results["results"].setdefault(w, {}).get(dtype, {})
            if "modalities" in res and "modalities" in old:
                for e in old["modalities"].values():  # entries of an earlier run keep that run's peak
                    e.setdefault("peak_gflops", old.get("peak_gflops"))
                    e.setdefault("measured", results.get("written_before"))
                res["modalities"] = {**old["modalities"], **res["modalities"]}
            results["results"][w][dtype] = res
            for name, e in res.get("modalities", {}).items():
                print(f"    {w} {dtype} {name:5s}: ours {e['ours_pct_peak']:5.1f}% of peak "
                      f"({res['peak_gflops']} GFLOP/s), reference {e['reference_pct_peak']:5.1f}%, "
                      f"speed-up x{e['speedup']:.3f}", flush=True)
            write_json_atomic(out, results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
