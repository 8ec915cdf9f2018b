"""``bench_model.py --only sidebyside``: our forward against the upstream-style forward of the same
weights (``upstream_style.py``), interleaved in one process, and the glibc malloc tuning A/B (see
``benchmarks/README.md``)."""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from typing import Any

from _bench import (
    AUDIO_SAMPLES,
    GB,
    HERE,
    QUIET_GFLOPS,
    SEED,
    THREADS,
    WARMUP,
    build_random,
    gflops_check,
    machine_facts,
    make_batches,
    median,
    mem_available,
    model_flops,
    model_inputs,
    proc_status,
    r,
    run_worker,
    wait_for_memory,
    wait_until_quiet,
)

SIDEBYSIDE = {
    "base": {"batch": {"image": 8, "text": 32, "audio": 4}, "modalities": ["image", "text", "audio"], "pairs": 7},
    "one-peace-4b": {"batch": {"image": 1, "text": 32, "audio": 1}, "modalities": ["image", "text"], "pairs": 5},
    "tiny": {"batch": {"image": 2, "text": 8, "audio": 1}, "modalities": ["image", "text", "audio"], "pairs": 3},
}
SBS_GAMMA = 0.5  # layer scale, so that every layer changes the output (the official init is 1e-6)
SBS_TOLERANCE = 1e-4  # max |ours - upstream-style| over the fp32 embedding entries
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "68719476736",
                 "MALLOC_TOP_PAD_": "1073741824"}


def build_sidebyside_model(size: str, seed: int = SEED, gamma: float = SBS_GAMMA):
    """fp32 preset with random weights (the fixture recipe of :func:`build_random`: fast normal
    draws, relative tables N(0, 1) so the bias matters), then every layer-scale gamma set to
    ``gamma``."""
    import torch

    model = build_random(size, "fp32", seed)
    with torch.no_grad():
        for layer in model.encoder.layers:
            if layer.gamma_1 is not None:
                layer.gamma_1.fill_(gamma)
                layer.gamma_2.fill_(gamma)
    return model


def worker_sidebyside(spec: dict) -> dict:
    """Ours and the upstream-style reference (sharing the weights) on the same batches: check the
    embeddings agree, then time them interleaved (ours, reference, ours, reference, ...)."""
    import torch

    torch.set_num_threads(THREADS)
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import upstream_style

    res: dict[str, Any] = {}
    size = spec["size"]
    t0 = time.perf_counter()
    model = build_sidebyside_model(size, spec["seed"], spec["gamma"])
    res["build_s"] = r(time.perf_counter() - t0, 1)
    res["rss_after_ours_gb"] = r(proc_status()["VmRSS"] / GB)
    ref = upstream_style.from_onepeace(model)
    res["rss_after_reference_gb"] = r(proc_status()["VmRSS"] / GB)
    res["weights_shared"] = upstream_style.shares_weights(ref, model)
    res["params"] = model.num_parameters()
    res["weight_gb"] = r(sum(p.nbytes for p in model.parameters()) / GB)
    res["rp_bucket_equal"] = {m: bool(torch.equal(a.bucket_table(), getattr(ref.encoder_wrapper, f"{m}_adapter").rp_bucket))
                              for m, a in model.adapters.items()}
    batches, lens, _ = make_batches(model, spec["batch"])
    cfg = model.config
    res["local_peak_start"] = gflops_check()
    per: dict[str, Any] = {}
    with torch.inference_mode():
        for name in spec["modalities"]:
            b = spec["batch"][name]
            inp = model_inputs(batches[name])
            fl = model_flops(cfg, name, b, lens[name], AUDIO_SAMPLES)
            entry: dict[str, Any] = {"batch": b, "T": lens[name], "gflop_per_batch": r(fl["total"] / 1e9, 1)}
            # the agreement check doubles as the first warm-up of each
            a = model.embed_batch(name, inp).clone()
            c = ref.embed_batch(name, inp).clone()
            diff = (a - c).abs().max().item()
            cos = torch.nn.functional.cosine_similarity(a.double(), c.double(), dim=-1).min().item()
            ok = bool(torch.isfinite(a).all() and torch.isfinite(c).all() and diff <= spec["tolerance"])
            entry.update({"max_abs_diff": float(f"{diff:.3e}"), "min_cosine": r(cos, 8), "match": ok})
            del a, c
            if not ok:
                entry["error"] = f"embeddings differ by {diff:.3e} > {spec['tolerance']}: not timed"
                per[name] = entry
                continue
            for _ in range(spec["warmup"] - 1):
                model.embed_batch(name, inp)
                ref.embed_batch(name, inp)
            ours, theirs = [], []
            for _ in range(spec["pairs"]):
                t1 = time.perf_counter()
                out = model.embed_batch(name, inp)
                ours.append(time.perf_counter() - t1)
                del out
                t1 = time.perf_counter()
                out = ref.embed_batch(name, inp)
                theirs.append(time.perf_counter() - t1)
                del out
            mo, mt = median(ours), median(theirs)
            entry.update({
                "ours_times_s": [r(x, 4) for x in ours], "reference_times_s": [r(x, 4) for x in theirs],
                "ours_median_s": r(mo, 4), "reference_median_s": r(mt, 4),
                "speedup": r(mt / mo, 3),
                "speedup_pairwise_median": r(median([t / o for o, t in zip(ours, theirs)]), 3),
                "speedup_best": r(min(theirs) / min(ours), 3),
                "ours_gflops": r(fl["total"] / mo / 1e9, 1), "reference_gflops": r(fl["total"] / mt / 1e9, 1),
            })
            per[name] = entry
    res["local_peak_end"] = gflops_check()
    peak = (res["local_peak_start"]["fp32_gflops"] + res["local_peak_end"]["fp32_gflops"]) / 2
    res["local_peak_gflops"] = r(peak, 1)
    for e in per.values():
        if "ours_gflops" in e:
            e["ours_pct_peak"] = r(100 * e["ours_gflops"] / peak, 1)
            e["reference_pct_peak"] = r(100 * e["reference_gflops"] / peak, 1)
    res["modalities"] = per
    st = proc_status()
    res["hwm_gb"] = r(st["VmHWM"] / GB)
    return res


def worker_malloc(spec: dict) -> dict:
    """Our forward only (no reference), for the glibc malloc tuning A/B: the parent starts this in
    children with and without the MALLOC_* variables."""
    import torch

    torch.set_num_threads(THREADS)
    res: dict[str, Any] = {"malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}}
    model = build_sidebyside_model(spec["size"], spec["seed"], spec["gamma"])
    batches, lens, _ = make_batches(model, spec["batch"])
    res["local_peak_start"] = gflops_check()
    per = {}
    with torch.inference_mode():
        for name in spec["modalities"]:
            inp = model_inputs(batches[name])
            for _ in range(spec["warmup"]):
                model.embed_batch(name, inp)
            ts = []
            for _ in range(spec["runs"]):
                t1 = time.perf_counter()
                out = model.embed_batch(name, inp)
                ts.append(time.perf_counter() - t1)
                del out
            per[name] = {"times_s": [r(x, 4) for x in ts], "median_s": r(median(ts), 4), "min_s": r(min(ts), 4)}
    res["local_peak_end"] = gflops_check()
    res["modalities"] = per
    st = proc_status()
    res["hwm_gb"], res["rss_end_gb"] = r(st["VmHWM"] / GB), r(st["VmRSS"] / GB)
    return res


def part_sidebyside(args, results: dict, save) -> None:
    """Same machine, same run: our forward vs an upstream-style forward of the same weights
    (benchmarks/upstream_style.py), interleaved; then glibc malloc tuning A/B for ours."""
    t_start = time.time()
    sbs: dict[str, Any] = {
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "method": {
            "reference": "benchmarks/upstream_style.py: our own re-statement of the official way of "
                         "computing (the official transformer layers): (N, B, D) layers, separate q/k/v Linear, q*hd^-0.5, "
                         "torch.bmm QK^T, + [B*H, N, N] bias view, fp32 softmax, bmm with V, sub-LN, "
                         "out_proj; GeGLU FFN with sub-LN; LayerScale; rel bias table(rp_bucket) expanded "
                         "per batch and materialised as zeros[B, H, N, N] + bias once per forward (the "
                         "official encoder does this once per table: once with shared tables); hMLP stem "
                         "with permuted LayerNorm; wav2vec2-style audio stem (Conv1d, transpose, LN, "
                         "transpose, GELU) and transposed conv positional stack",
            "weights": f"one fp32 model: onepeace preset, fixture-recipe random weights (seed {SEED}, "
                       f"relative tables N(0,1)), every layer-scale gamma = {SBS_GAMMA}; the reference "
                       "holds the same tensors (load_state_dict(assign=True) under the official names; "
                       "weights_shared in each size's entry)",
            "agreement": f"before timing, ours and the reference embed the same batch; timing goes on "
                         f"only if max |difference| <= {SBS_TOLERANCE} (entries of L2-normalised fp32 "
                         "embeddings); that forward is the first warm-up",
            "timing": f"{WARMUP} warm-ups each, then pairs timed alternately (ours, reference, ours, ...) "
                      "in one process with torch.set_num_threads(2), under torch.inference_mode(); "
                      "speedup = reference median / ours median (>1: ours faster); "
                      "speedup_pairwise_median = median over pairs of reference/ours",
            "pct_peak": "GFLOP/s (same FLOP formula as speed) over the mean of the fp32 2048^3 "
                        "torch.matmul GFLOP/s measured in the same worker just before and after",
            "contention": f"before each worker the parent runs the GEMM check and, while it reads below "
                          f"{QUIET_GFLOPS} GFLOP/s, waits 30 s and retries (for at most {args.wait_quiet:.0f} s); "
                          "all attempts are recorded",
            "malloc": "ours only, base: children alternately without and with "
                      + " ".join(f"{k}={v}" for k, v in MALLOC_TUNING.items())
                      + " in their environment; ratio = median untuned / median tuned (>1: tuning helps)",
        },
        "notes": [],
    }
    results["sidebyside"] = sbs
    notes = sbs["notes"]
    for size in args.sizes:
        conf = SIDEBYSIDE[size]
        need = {"one-peace-4b": 17.0e9, "base": 2.5e9, "tiny": 0.3e9}[size]
        wait_for_memory(need, f"sidebyside {size}", max_wait=300)
        if mem_available() < need:
            sbs[size] = {"skipped": f"only {mem_available() / GB:.1f} GB available, {need / GB:.1f} GB needed"}
            notes.append(f"{size}: skipped, not enough memory")
            save()
            continue
        checks = wait_until_quiet(f"sidebyside {size}", args.wait_quiet)
        spec = {"size": size, "seed": SEED, "gamma": SBS_GAMMA, "tolerance": SBS_TOLERANCE,
                "batch": conf["batch"], "modalities": conf["modalities"], "pairs": conf["pairs"],
                "warmup": WARMUP}
        print(f"[{time.strftime('%H:%M:%S')}] sidebyside {size} fp32: ours vs upstream-style, "
              f"{conf['pairs']} interleaved pairs", flush=True)
        res = run_worker("sidebyside", spec, args.rss_limit, f"sidebyside {size}")
        res["contention_check_before"] = checks
        sbs[size] = res
        if "error" in res:
            notes.append(f"{size}: {res['error']}")
        else:
            for name, e in res["modalities"].items():
                if not e["match"]:
                    notes.append(f"{size}/{name}: embeddings did not match ({e['max_abs_diff']}); not timed")
                    print(f"    {name:5s} MISMATCH max|diff| {e['max_abs_diff']}", flush=True)
                    continue
                print(f"    {name:5s} B={e['batch']:<2d} ours {e['ours_median_s']:7.3f} s ({e['ours_pct_peak']:5.1f}% peak)"
                      f"  reference {e['reference_median_s']:7.3f} s ({e['reference_pct_peak']:5.1f}% peak)"
                      f"  speed-up {e['speedup']:.3f}x  (max|diff| {e['max_abs_diff']})", flush=True)
            a, b = res["local_peak_start"], res["local_peak_end"]
            if abs(a["fp32_gflops"] - b["fp32_gflops"]) / max(a["fp32_gflops"], b["fp32_gflops"]) > 0.15 \
                    or max(a["op_latency_us"], b["op_latency_us"]) > 1000:
                notes.append(f"{size}: the host was contended around this worker (GEMM {a['fp32_gflops']} -> "
                             f"{b['fp32_gflops']} GFLOP/s, small-op latency up to "
                             f"{max(a['op_latency_us'], b['op_latency_us'])} us); the interleaving cancels "
                             "slow drift in the ratios but not the % peak figures")
        if checks[-1]["fp32_gflops"] < QUIET_GFLOPS:
            notes.append(f"{size}: the GEMM check stayed below {QUIET_GFLOPS} GFLOP/s "
                         f"({[c['fp32_gflops'] for c in checks]}); measured anyway")
        save()

    if args.malloc_pairs > 0:
        size = "tiny" if args.quick else "base"
        conf = SIDEBYSIDE[size]
        spec = {"size": size, "seed": SEED, "gamma": SBS_GAMMA, "batch": conf["batch"],
                "modalities": conf["modalities"], "runs": 5 if not args.quick else 3, "warmup": WARMUP}
        runs: list[dict] = []
        for i in range(args.malloc_pairs):
            for tuned in (False, True):
                checks = wait_until_quiet(f"malloc child {2 * i + tuned + 1}", args.wait_quiet)
                label = f"malloc {'tuned' if tuned else 'default'} #{i + 1}"
                print(f"[{time.strftime('%H:%M:%S')}] {label} ({size}, ours only, fresh process)", flush=True)
                res = run_worker("malloc", spec, args.rss_limit, label, MALLOC_TUNING if tuned else None)
                res.update({"tuned": tuned, "contention_check_before": checks})
                runs.append(res)
                if "modalities" in res:
                    print("    " + ", ".join(f"{k} {v['median_s']:.3f} s" for k, v in res["modalities"].items()),
                          flush=True)
        ok = [x for x in runs if "modalities" in x]
        ratios = {}
        for name in conf["modalities"]:
            d = [x["modalities"][name]["median_s"] for x in ok if not x["tuned"]]
            t = [x["modalities"][name]["median_s"] for x in ok if x["tuned"]]
            pairs = [(a["modalities"][name]["median_s"], b["modalities"][name]["median_s"])
                     for a, b in zip(runs[0::2], runs[1::2]) if "modalities" in a and "modalities" in b]
            if d and t:
                best_d = min(x["modalities"][name]["min_s"] for x in ok if not x["tuned"])
                best_t = min(x["modalities"][name]["min_s"] for x in ok if x["tuned"])
                ratios[name] = {"default_median_s": r(median(d), 4), "tuned_median_s": r(median(t), 4),
                                "speedup_from_tuning": r(median(d) / median(t), 3),
                                "speedup_pairwise_median": r(median([a / b for a, b in pairs]), 3) if pairs else None,
                                "speedup_best": r(best_d / best_t, 3),
                                "default_child_medians_s": d, "tuned_child_medians_s": t}
        sbs["malloc_tuning"] = {
            "size": size, "env": MALLOC_TUNING, "children": runs, "per_modality": ratios,
            "hwm_gb_default": [x.get("hwm_gb") for x in ok if not x["tuned"]],
            "hwm_gb_tuned": [x.get("hwm_gb") for x in ok if x["tuned"]],
        }
        for name, v in ratios.items():
            print(f"    malloc tuning {name:5s}: default {v['default_median_s']:.3f} s, tuned "
                  f"{v['tuned_median_s']:.3f} s -> {v['speedup_from_tuning']:.3f}x (pairwise "
                  f"{v['speedup_pairwise_median']}x, best times {v['speedup_best']}x)", flush=True)
        save()
    sbs["wall_s"] = r(time.time() - t_start, 1)
    save()


def sidebyside_rows(sbs: dict) -> list[str]:
    lines = []
    for size, v in sbs.items():
        if not isinstance(v, dict) or size not in SIDEBYSIDE:
            continue
        if "modalities" not in v:
            lines.append(f"sidebyside {size}: {v.get('skipped') or v.get('error')}")
            continue
        for name, e in v["modalities"].items():
            if not e["match"]:
                lines.append(f"sidebyside {size:13s} {name:5s} embeddings differ ({e['max_abs_diff']})")
                continue
            lines.append(f"sidebyside {size:13s} {name:5s} ours {e['ours_median_s']:7.3f} s {e['ours_pct_peak']:5.1f}% | "
                         f"upstream-style {e['reference_median_s']:7.3f} s {e['reference_pct_peak']:5.1f}% | "
                         f"x{e['speedup']:.3f} | max|diff| {e['max_abs_diff']}")
    for name, m in (sbs.get("malloc_tuning") or {}).get("per_modality", {}).items():
        lines.append(f"malloc tuning {name:5s}: x{m['speedup_from_tuning']:.3f} "
                     f"({m['default_median_s']:.3f} -> {m['tuned_median_s']:.3f} s; pairwise "
                     f"x{m['speedup_pairwise_median']}, best x{m['speedup_best']})")
    return lines
