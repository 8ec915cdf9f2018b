"""``bench_model.py`` parts ``speed`` and ``cosine``: forward time per modality against the GEMM peak,
and bf16 against fp32 embeddings (see ``benchmarks/README.md``)."""

from __future__ import annotations

import os
import time
from typing import Any

from _bench import (
    AUDIO_SAMPLES,
    GB,
    SEED,
    THREADS,
    UPSTREAM,
    WARMUP,
    WORKLOADS,
    build_random,
    gemm_peak,
    make_batches,
    median,
    model_flops,
    model_inputs,
    proc_status,
    r,
    reset_hwm,
    run_worker,
    wait_for_memory,
)


def worker_model(spec: dict) -> dict:
    """Build one (size, dtype), then time the forward per modality and/or record embeddings."""
    import torch

    torch.set_num_threads(THREADS)
    import onepeace  # noqa: F401

    res: dict[str, Any] = {"rss_after_import_gb": r(proc_status()["VmRSS"] / GB)}
    size, dtype = spec["size"], spec["dtype"]
    t0 = time.perf_counter()
    model = build_random(size, dtype, spec["seed"])
    res["build_s"] = r(time.perf_counter() - t0, 1)
    st = proc_status()
    res["rss_after_build_gb"] = r(st["VmRSS"] / GB)
    res["hwm_after_build_gb"] = r(st["VmHWM"] / GB)
    res["params"] = model.num_parameters()
    res["weight_gb"] = r(sum(p.nbytes for p in model.parameters()) / GB)
    wl = WORKLOADS[size]
    batches, lens, prep = make_batches(model, spec["batch"])
    cfg = model.config
    if "speed" in spec["tasks"]:
        g0 = gemm_peak(dtypes=(dtype,), linear3d=False)
        res["local_peak_start"], res["op_latency_us_start"] = g0[dtype]["median_gflops"], g0["op_latency_us"]
    res["hwm_reset"] = reset_hwm()
    embeds = {}
    per = {}
    with torch.inference_mode():
        for name in ("image", "text", "audio"):
            b = spec["batch"][name]
            inp = model_inputs(batches[name])
            fl = model_flops(cfg, name, b, lens[name], AUDIO_SAMPLES)
            entry: dict[str, Any] = {
                "batch": b, "T": lens[name], "gflop_per_batch": r(fl["total"] / 1e9, 1),
                "gflop_adapter": r(fl["adapter"] / 1e9, 1), "preprocess_s": r(prep[name], 4),
            }
            if name == "text":
                tok = inp["tokens"]
                entry["bpe_tokens_mean_with_eos"] = r((tok != model.processor.get("text").pad_id).sum().item() / b, 2)
                entry["padding_fraction"] = r((tok == model.processor.get("text").pad_id).float().mean().item(), 3)
            if "speed" in spec["tasks"]:
                for _ in range(WARMUP):
                    out = model.embed_batch(name, inp)
                ts = []
                for _ in range(wl["runs"] if spec.get("runs") is None else spec["runs"]):
                    t1 = time.perf_counter()
                    out = model.embed_batch(name, inp)
                    ts.append(time.perf_counter() - t1)
                med = median(ts)
                entry.update({
                    "times_s": [r(x, 4) for x in ts], "median_s": r(med, 4), "min_s": r(min(ts), 4),
                    "items_per_s": r(b / med, 3), "gflops_median": r(fl["total"] / med / 1e9, 1),
                    "gflops_best": r(fl["total"] / min(ts) / 1e9, 1),
                })
                if name != "text":  # the text adapter is an embedding lookup (<1%)
                    a_ts = []
                    model.adapt(name, inp)
                    for _ in range(3):
                        t1 = time.perf_counter()
                        model.adapt(name, inp)
                        a_ts.append(time.perf_counter() - t1)
                    am = median(a_ts)
                    entry["adapter_median_s"] = r(am, 4)
                    entry["adapter_share"] = r(am / med, 3)
                    entry["adapter_gflops"] = r(fl["adapter"] / am / 1e9, 1)
                    entry["encoder_gflops"] = r((fl["total"] - fl["adapter"]) / max(med - am, 1e-9) / 1e9, 1)
            else:
                out = model.embed_batch(name, inp)
            if not torch.isfinite(out).all():
                entry["non_finite_outputs"] = True
            embeds[name] = out.float().clone()
            per[name] = entry
    res["modalities"] = per
    if "speed" in spec["tasks"]:
        g1 = gemm_peak(dtypes=(dtype,), linear3d=False)
        res["local_peak_end"], res["op_latency_us_end"] = g1[dtype]["median_gflops"], g1["op_latency_us"]
        local = (res["local_peak_start"] + res["local_peak_end"]) / 2
        for e in per.values():
            e["pct_local_peak"] = r(100 * e["gflops_median"] / local, 1)
    st = proc_status()
    res["hwm_forward_gb"] = r(st["VmHWM"] / GB)
    res["rss_end_gb"] = r(st["VmRSS"] / GB)
    if spec.get("flopcheck"):
        res["flopcheck"] = flop_check(model, batches, lens)
    if spec.get("save_ref"):
        torch.save(embeds, spec["save_ref"])
    if spec.get("compare_ref") and os.path.exists(spec["compare_ref"]):
        ref = torch.load(spec["compare_ref"], weights_only=True)
        cos = {}
        for name, e in embeds.items():
            c = torch.nn.functional.cosine_similarity(e.double(), ref[name].double(), dim=-1)
            cos[name] = {"min": r(c.min().item(), 6), "mean": r(c.mean().item(), 6), "items": int(c.numel())}
        res["cosine_vs_fp32"] = cos
    return res


def flop_check(model, batches: dict, lens: dict) -> dict:
    """torch's FlopCounterMode against our formula, on small batches.

    The CPU attention kernel (SDPA) is not counted by FlopCounterMode, so the check compares it
    with the formula minus the QK^T / AV term.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    cfg = model.config
    small = {"image": 1, "text": 2, "audio": 1}
    with torch.inference_mode():
        for name, b in small.items():
            inp = {k: v[:b] for k, v in model_inputs(batches[name]).items()}  # text keeps its padded length
            with FlopCounterMode(display=False) as fc:
                model.embed_batch(name, inp)
            counted = fc.get_total_flops()
            fl = model_flops(cfg, name, b, lens[name], AUDIO_SAMPLES)
            expect = fl["total"] - fl["attention_scores"]
            out[name] = {"batch": b, "counted_gflop": r(counted / 1e9, 4), "formula_minus_attention_gflop":
                         r(expect / 1e9, 4), "ratio": r(counted / expect, 6)}
    return out


def part_speed_and_cosine(args, results: dict, peak: dict, do_speed: bool, do_cos: bool) -> None:
    tasks = (["speed"] if do_speed else []) + (["cosine"] if do_cos else [])
    speed = results.setdefault("speed", {})
    cosine = results.setdefault("cosine", {})
    cos_note = ("bf16 vs fp32 embeddings of the same inputs (the speed workloads), same weights: both "
                "models are randomised with the upstream fixture recipe (layer scale U(0.3,1), "
                "Linear N(0,1/fan_in), ...), because the official init's layer scale of 1e-6 makes "
                "every layer nearly the identity and the comparison meaningless. min/mean over items.")
    for size in args.sizes:
        wl = WORKLOADS[size]
        dtypes = list(args.dtypes)
        if do_cos and not do_speed:
            dtypes = ["fp32", "bf16"]
        ref_path = os.path.join(args.tmp, f"ref-{size}.pt")
        for dtype in (d for d in ("fp32", "bf16") if d in dtypes):
            est = 4.2 if dtype == "fp32" else 2.1  # bytes per param incl. activations, roughly
            need = {"one-peace-4b": 3.9e9, "base": 0.33e9, "tiny": 5e6}[size] * est + 1e9
            wait_for_memory(need, f"{size}/{dtype}")
            spec = {"size": size, "dtype": dtype, "seed": SEED, "batch": wl["batch"], "tasks": tasks,
                    "flopcheck": do_speed and dtype == "fp32" and size != "one-peace-4b",
                    "save_ref": ref_path if (do_cos and dtype == "fp32") else None,
                    "compare_ref": ref_path if (do_cos and dtype == "bf16") else None}
            print(f"[{time.strftime('%H:%M:%S')}] {size} {dtype}: {', '.join(tasks)}", flush=True)
            res = run_worker("model", spec, args.rss_limit, f"{size}/{dtype}")
            if "error" in res:
                if do_speed:
                    speed.setdefault(size, {})[dtype] = {"error": res["error"], **{k: v for k, v in res.items() if k.startswith("_")}}
                continue
            cos_res = res.pop("cosine_vs_fp32", None)
            if do_speed:
                mods = res.pop("modalities")
                for name, e in mods.items():
                    p = peak[dtype]["median_gflops"]
                    e["pct_peak"] = r(100 * e["gflops_median"] / p, 1)
                    e["pct_peak_best"] = r(100 * e["gflops_best"] / p, 1)
                    up = UPSTREAM.get((size, dtype, name))
                    if up:
                        e["upstream"] = up
                        e["upstream_gflop_matches"] = abs(e["gflop_per_batch"] - up["gflop"]) <= 0.1
                speed.setdefault(size, {})[dtype] = {"modalities": mods, **res}
                for name, e in mods.items():
                    up = (e.get("upstream") or {}).get("pct_peak")
                    print(f"    {name:5s} B={e['batch']:<2d} T={e['T']:<3d} {e['median_s']:8.3f} s/batch "
                          f"{e['gflops_median']:7.1f} GFLOP/s = {e['pct_peak']:5.1f}% peak"
                          f" [{e['pct_local_peak']:5.1f}% of local peak] (upstream "
                          f"{'-' if (size, dtype, name) not in UPSTREAM else (str(up) + '%') if up is not None else 'fails'})",
                          flush=True)
            if do_cos and dtype == "bf16" and cos_res:
                cosine[size] = {"per_modality": cos_res, "goal_min": 0.999,
                                "meets_goal": all(v["min"] >= 0.999 for v in cos_res.values()),
                                "note": cos_note}
                print("    cosine bf16 vs fp32: " + ", ".join(
                    f"{k} {v['min']:.6f}" for k, v in cos_res.items()), flush=True)
        if os.path.exists(ref_path):
            os.remove(ref_path)
