#!/usr/bin/env python
"""int8 inference against our fp32 and bf16, side by side in one run (issue 12.4).

* Machine: the CPU's name and ISA flags, and the matmul peak measured in this run: fp32 and bf16
  (``torch.matmul`` 2048^3), int8 as the kernel int8 inference runs on (``quantized::linear_dynamic``
  at 2048^3, activation quantisation included) and the bare int8 GEMM (``torch._int_mm``).
* Speed: the base preset (random weights; speed does not depend on their values) on the base
  workloads (8 images of 256 px, 32 captions, 4 clips of 5 s), fp32 / bf16 / int8 timed in turn
  (a, b, c, a, b, c, ...). By default on one thread with the thread's CPU clock, which the other
  processes of a shared host do not inflate (``--wall`` : two threads, wall clock).
* Profile: where the time of one int8 and one bf16 forward goes (``torch.profiler``), split into
  the linear layers and the rest, and the best int8 could do by Amdahl's law at the int8/bf16
  GEMM ratio measured above.
* Accuracy: cosine of int8 (and bf16) embeddings against fp32 on real inputs from
  ``../shared/data`` (COCO-mini val images and captions, ESC-10 clips) with a trained model
  (``--model``, default: the demo model), and on the base benchmark inputs.

Writes ``benchmarks/results/int8.json`` (``int8-quick.json`` with ``--quick``: the tiny preset).

    python benchmarks/bench_int8.py [--quick] [--wall] [--rounds N] [--model DIR]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (  # noqa: E402
    RESULTS,
    SHARED,
    build_random,
    gemm_peak,
    gflops,
    machine_facts,
    make_batches,
    median,
    model_flops,
    model_inputs,
    r,
    time_alternating,
    write_json_atomic,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = SHARED / "data"
DEMO_MODELS = [ROOT / "runs/demo/model", ROOT / "runs/demo-seeds/seed-0/model"]
WORKLOAD = {"base": {"image": 8, "text": 32, "audio": 4}, "tiny": {"image": 2, "text": 8, "audio": 1}}
LINEAR_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "quantized::linear_dynamic")


def int8_gemm_peak(n: int, runs: int, clock) -> dict:
    """GFLOP/s of the int8 kernels at n^3: the dynamic quantised linear (what int8 inference runs,
    quantising its fp32 input on every call; oneDNN packing where available) and the bare int8 x
    int8 -> int32 GEMM."""
    import torch
    from torch import nn

    from onepeace.model.quant import quantize_linears

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, n, generator=g)
    lin = quantize_linears(nn.Sequential(nn.Linear(n, n, bias=False)))  # exactly as int8 inference packs them
    a = torch.randint(-127, 128, (n, n), dtype=torch.int8, generator=g)
    b = torch.randint(-127, 128, (n, n), dtype=torch.int8, generator=g)
    flop = 2 * n**3
    out = {}
    for label, fn in (("linear_dynamic", lambda: lin(x)), ("int_mm", lambda: torch._int_mm(a, b))):
        try:
            out[label] = gflops(fn, flop, 2, runs, clock)
        except RuntimeError as e:  # a build without the kernel
            out[label] = {"error": str(e).splitlines()[0]}
    return out


def profile_split(model, name: str, batch: dict) -> dict:
    """Self CPU time of one forward by op, split into linear layers and the rest."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model.embed_batch(name, batch)
        with profile(activities=[ProfilerActivity.CPU]) as p:
            model.embed_batch(name, batch)
    rows = sorted(((e.key, e.self_cpu_time_total) for e in p.key_averages()), key=lambda kv: -kv[1])
    total = sum(t for _, t in rows) or 1.0
    linear = sum(t for k, t in rows if k in LINEAR_OPS)
    return {"total_ms": r(total / 1e3, 1), "linear_share": r(linear / total, 3),
            "top_ops": [{"op": k, "ms": r(t / 1e3, 1), "share": r(t / total, 3)} for k, t in rows[:10]]}


def cosines(a: dict, b: dict) -> dict:
    import torch

    out = {}
    for k in a:
        c = torch.nn.functional.cosine_similarity(a[k].float(), b[k].float())
        out[k] = {"min": r(c.min(), 5), "mean": r(c.mean(), 5), "n": len(c)}
    return out


def real_inputs(n_images: int, n_captions: int, clips_per_class: int) -> dict:
    images = sorted(glob.glob(str(DATA / "coco-mini/val2017/*.jpg")))[:n_images]
    caps = json.loads((DATA / "coco-mini/annotations/captions_val2017.json").read_text())["annotations"]
    captions = [a["caption"].strip() for a in sorted(caps, key=lambda a: a["id"])[:n_captions]]
    audio = []
    for folder in sorted(glob.glob(str(DATA / "esc10/*"))):
        audio += sorted(glob.glob(f"{folder}/*.ogg"))[:clips_per_class]
    return {"text": captions, "image": images, "audio": audio}


def accuracy_on_real_data(model_dir: Path, quick: bool) -> dict:
    from onepeace import OnePeace

    inputs = real_inputs(8 if quick else 32, 16 if quick else 64, 1 if quick else 4)
    res = {"model": str(model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir),
           "inputs": {k: len(v) for k, v in inputs.items()},
           "data": "../shared/data: coco-mini val2017 images and captions, esc10 clips"}
    ref = OnePeace.from_pretrained(model_dir, dtype="fp32").embed(**inputs)
    for dt in ("int8", "bf16"):
        res[dt] = cosines(OnePeace.from_pretrained(model_dir, dtype=dt).embed(**inputs), ref)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the tiny preset, few rounds (a smoke run)")
    ap.add_argument("--wall", action="store_true", help="two threads and the wall clock (default: one thread, CPU clock)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per variant (default 5; 2 with --quick)")
    ap.add_argument("--model", type=Path, default=None, help="trained model for the accuracy part (default: the demo model)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from onepeace.model.quant import quantize_int8

    threads = 2 if args.wall else 1
    clock = time.perf_counter if args.wall else time.thread_time
    size = "tiny" if args.quick else "base"
    rounds = args.rounds or (2 if args.quick else 5)
    out_path = args.out or RESULTS / ("int8-quick.json" if args.quick else "int8.json")
    results: dict = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "machine": machine_facts(), "size": size, "threads": threads,
                     "clock": "wall (perf_counter)" if args.wall else "CPU time of the calling thread (thread_time)",
                     "rounds": rounds}
    print(f"{results['machine']['cpu_model']} {results['machine']['isa_flags']}; {threads} thread(s), {results['clock']}")
    peak = gemm_peak(dtypes=("fp32", "bf16"), linear3d=False, threads=threads, clock=clock, runs=5 if args.quick else 10)
    peak["int8"] = int8_gemm_peak(2048, 5 if args.quick else 10, clock)
    results["gemm_peak_start"] = peak
    print("peak GFLOP/s: fp32 {} bf16 {} int8 linear_dynamic {} int8 _int_mm {}".format(
        peak["fp32"]["median_gflops"], peak["bf16"]["median_gflops"],
        peak["int8"]["linear_dynamic"].get("median_gflops"), peak["int8"]["int_mm"].get("median_gflops")))

    m32 = build_random(size, "fp32")
    mbf = build_random(size, "bf16")
    m8 = quantize_int8(build_random(size, "fp32"))
    batches, lens, _ = make_batches(m32, WORKLOAD[size])
    variants = {"fp32": m32, "bf16": mbf, "int8": m8}
    speed, cos_random, profiles = {}, {}, {}
    for name, batch in batches.items():
        inp = model_inputs(batch)
        with torch.inference_mode():
            embs = {k: m.embed_batch(name, inp).float() for k, m in variants.items()}
            times = time_alternating({k: (lambda m=m, name=name, inp=inp: m.embed_batch(name, inp)) for k, m in variants.items()},
                                     rounds=rounds, warmup=1, clock=clock)
        flops = model_flops(m32.config, name, WORKLOAD[size][name], lens[name],
                            int(inp["waveform"].shape[1]) if name == "audio" else 0)["total"]
        med = {k: median(v) for k, v in times.items()}
        speed[name] = {
            "batch": WORKLOAD[size][name], "tokens": lens[name], "gflop": r(flops / 1e9, 2),
            "seconds": {k: r(v, 4) for k, v in med.items()},
            "int8_over_bf16": r(med["bf16"] / med["int8"], 3), "int8_over_fp32": r(med["fp32"] / med["int8"], 3),
            "bf16_over_fp32": r(med["fp32"] / med["bf16"], 3),
            "pct_of_own_peak": {"fp32": r(100 * flops / med["fp32"] / 1e9 / peak["fp32"]["median_gflops"], 1),
                                "bf16": r(100 * flops / med["bf16"] / 1e9 / peak["bf16"]["median_gflops"], 1)},
        }
        cos_random[name] = cosines({"int8": embs["int8"], "bf16": embs["bf16"]}, {"int8": embs["fp32"], "bf16": embs["fp32"]})
        print(f"{name}: s/batch fp32 {med['fp32']:.3f} bf16 {med['bf16']:.3f} int8 {med['int8']:.3f}; "
              f"int8/bf16 {speed[name]['int8_over_bf16']}x, int8/fp32 {speed[name]['int8_over_fp32']}x; "
              f"cos int8 {cos_random[name]['int8']['min']}")
        if name in ("image", "text"):
            profiles[name] = {k: profile_split(variants[k], name, inp) for k in ("bf16", "int8")}
    results["speed"] = speed
    results["cosine_random_weights"] = cos_random
    results["gemm_peak_end"] = gemm_peak(dtypes=("fp32", "bf16"), linear3d=False, threads=threads, clock=clock,
                                         runs=5 if args.quick else 10)

    # Amdahl: the share of bf16 time in linear layers, sped up by the measured int8/bf16 GEMM ratio
    kernel = peak["int8"]["linear_dynamic"].get("median_gflops")
    for p in profiles.values():
        share = p["bf16"]["linear_share"]
        if kernel:
            ratio = kernel / peak["bf16"]["median_gflops"]
            p["int8_gemm_over_bf16_gemm"] = r(ratio, 2)
            p["amdahl_best_int8_over_bf16"] = r(1 / ((1 - share) + share / ratio), 2)
    results["profile"] = profiles

    model_dir = args.model or next((d for d in DEMO_MODELS if (d / "config.json").exists()), None)
    if model_dir is None or not (DATA / "coco-mini").exists():
        results["accuracy_real_data"] = {"skipped": "no trained model (run `make demo` or pass --model) or no ../shared/data"}
    else:
        results["accuracy_real_data"] = accuracy_on_real_data(model_dir, args.quick)
        print("real data, trained model: cos int8 vs fp32",
              {k: v["min"] for k, v in results["accuracy_real_data"]["int8"].items()})
    write_json_atomic(out_path, results)
    print(f"wrote {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
