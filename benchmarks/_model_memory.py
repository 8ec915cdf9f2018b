"""``bench_model.py`` parts ``load`` and ``convert``: peak RSS of loading a bf16 checkpoint and of
converting an official-format one (see ``benchmarks/README.md``)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from _bench import (
    DICT_FILE,
    GB,
    SEED,
    THREADS,
    TINY_FIXTURE,
    build_random,
    dir_bytes,
    proc_status,
    r,
    run_worker,
    wait_for_memory,
)
from _official_ckpt import read_layout, self_test_writer, write_official_checkpoint


def worker_make_ckpt(spec: dict) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    model = build_random(spec["size"], "bf16", spec["seed"])
    t1 = time.perf_counter()
    model.save_pretrained(spec["dir"], dtype="bf16")
    t2 = time.perf_counter()
    return {"build_s": r(t1 - t0, 1), "save_s": r(t2 - t1, 1), "dir_bytes": dir_bytes(spec["dir"]),
            "hwm_gb": r(proc_status()["VmHWM"] / GB)}


def worker_load(spec: dict) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    import onepeace

    base = proc_status()["VmRSS"]
    t0 = time.perf_counter()
    model = onepeace.OnePeace.from_pretrained(spec["dir"], dtype="bf16")
    dt = time.perf_counter() - t0
    st = proc_status()
    weights = sum(t.nbytes for t in model.state_dict().values())
    return {
        "load_s": r(dt, 2), "rss_after_imports_bytes": base, "peak_rss_bytes": st["VmHWM"],
        "rss_after_load_bytes": st["VmRSS"], "weight_bytes": weights,
        "dtypes": sorted({str(t.dtype) for t in model.state_dict().values()}),
        "params": model.num_parameters(),
    }


def worker_convert(spec: dict) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    from onepeace.checkpoints.official import convert

    base = proc_status()["VmRSS"]
    t0 = time.perf_counter()
    config = convert(spec["src"], spec["dst"], spec["dict"], dtype="fp32")
    dt = time.perf_counter() - t0
    st = proc_status()
    return {"convert_s": r(dt, 1), "rss_after_imports_bytes": base, "peak_rss_bytes": st["VmHWM"],
            "rss_end_bytes": st["VmRSS"], "dim": config.dim, "layers": config.layers}


def worker_gen_official(spec: dict) -> dict:
    t0 = time.perf_counter()
    layout = read_layout(spec["layout"])
    info = write_official_checkpoint(spec["path"], layout, spec["cfg"], seed=spec["seed"])
    info["write_s"] = r(time.perf_counter() - t0, 1)
    info["peak_rss_bytes"] = proc_status()["VmHWM"]
    info["file_bytes"] = os.path.getsize(spec["path"])
    return info


def worker_check_converted(spec: dict) -> dict:
    """Spot-check a few converted tensors against the official-format source, lazily."""
    import torch

    from onepeace.checkpoints.format import read_header, read_tensors, weight_files
    from onepeace.checkpoints.official import load_official

    _, state = load_official(spec["src"])
    pairs = {
        "encoder.layers.0.attn.q_proj.weight": "encoder_wrapper.fusion_model.layers.0.self_attn.q_proj.weight",
        "encoder.layers.0.gamma_1": "encoder_wrapper.fusion_model.layers.0.gamma_1",
        "proj.audio.weight": "audio_proj.weight",
        "adapters.image.stem.conv1.weight": "encoder_wrapper.image_adapter.embed_images.0.weight",
    }
    n_tensors, checked = 0, {}
    for f in weight_files(spec["dst"]):
        n_tensors += len(read_header(f)[0])
        for name, t in read_tensors(f, lambda n, s, d: d if n in pairs else None):
            checked[name] = bool(torch.equal(t, state[pairs[name]].load()))
    return {"tensors_in_output": n_tensors, "spot_check_equal": checked}


def part_load(args, results: dict) -> None:
    size = "tiny" if args.quick else "one-peace-4b"
    d = tempfile.mkdtemp(prefix="onepeace-bench-ckpt-", dir=args.tmp)
    try:
        wait_for_memory(9e9 if size != "tiny" else 1e8, "checkpoint build")
        print(f"[{time.strftime('%H:%M:%S')}] load: writing a bf16 {size} checkpoint", flush=True)
        made = run_worker("make_ckpt", {"size": size, "seed": SEED, "dir": d}, args.rss_limit, "make_ckpt")
        if "error" in made:
            results["load"] = {"error": made["error"]}
            return
        print(f"[{time.strftime('%H:%M:%S')}] load: from_pretrained(dtype='bf16') in a fresh process", flush=True)
        res = run_worker("load", {"dir": d}, args.rss_limit, "load")
        if "error" in res:
            results["load"] = {"error": res["error"]}
            return
        w, peak, base = res["weight_bytes"], res["peak_rss_bytes"], res["rss_after_imports_bytes"]
        results["load"] = {
            "model": size, "checkpoint_bytes": made["dir_bytes"], "checkpoint_write_s": made["save_s"],
            "load_s": res["load_s"], "weight_bytes": w, "rss_after_imports_bytes": base,
            "peak_rss_bytes": peak, "rss_after_load_bytes": res["rss_after_load_bytes"],
            "peak_over_weights": r(peak / w, 4), "peak_minus_baseline_over_weights": r((peak - base) / w, 4),
            "goal_peak_over_weights": 1.2, "meets_goal": peak / w <= 1.2, "params": res["params"],
            "dtypes": res["dtypes"],
            "upstream": "official hub: peak about 23.8 GB (bf16 file) / 31.6 GB (fp32 file), reasoned; "
                        "base measured at 2.53 GB for a 0.68 GB bf16 file",
        }
        ld = results["load"]
        print(f"    peak RSS {peak / GB:.2f} GB for {w / GB:.2f} GB of weights -> ratio {ld['peak_over_weights']:.3f}"
              f" (baseline {base / GB:.2f} GB), {res['load_s']:.1f} s", flush=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def part_convert(args, results: dict) -> None:
    d = tempfile.mkdtemp(prefix="onepeace-bench-conv-", dir=args.tmp)
    try:
        with tempfile.TemporaryDirectory(dir=args.tmp) as st:
            check = self_test_writer(st)
        print(f"[{time.strftime('%H:%M:%S')}] convert: writer self-test {check}", flush=True)
        src = os.path.join(d, "one-peace.pt")
        dst = os.path.join(d, "converted")
        if args.quick:
            layout, spec_str = str(TINY_FIXTURE), "[(128, 10, 5)] + [(128, 3, 2)] * 4 + [(128,2,2)] + [(128,2,2)]"
        else:
            layout, spec_str = "4b", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
        cfg = {"task": {"patch_image_size": 256},
               "model": {"encoder": {"audio_adapter": {"feature_encoder_spec": spec_str}}}}
        print(f"[{time.strftime('%H:%M:%S')}] convert: streaming a random fp32 official-format checkpoint", flush=True)
        gen = run_worker("gen_official", {"path": src, "layout": layout, "cfg": cfg, "seed": 7},
                         args.rss_limit, "gen_official")
        if "error" in gen:
            results["convert"] = {"error": gen["error"], "writer_self_test": check}
            return
        print(f"    {gen['file_bytes'] / GB:.2f} GB in {gen['write_s']:.0f} s, writer peak RSS "
              f"{gen['peak_rss_bytes'] / GB:.2f} GB", flush=True)
        print(f"[{time.strftime('%H:%M:%S')}] convert: convert(..., dtype='fp32') in a fresh process", flush=True)
        res = run_worker("convert", {"src": src, "dst": dst, "dict": str(DICT_FILE)}, args.rss_limit, "convert")
        if "error" in res:
            results["convert"] = {"error": res["error"], "writer_self_test": check}
            return
        out_bytes = dir_bytes(dst)
        spot = run_worker("check_converted", {"src": src, "dst": dst}, args.rss_limit, "check")
        peak = res["peak_rss_bytes"]
        results["convert"] = {
            "model": "tiny-fixture layout" if args.quick else "one-peace-4b (full-4b-keys.txt section A)",
            "source_bytes": gen["file_bytes"], "source_tensor_bytes": gen["tensor_bytes"],
            "source_tensors": gen["tensors"], "source_write_s": gen["write_s"],
            "source_writer_peak_rss_bytes": gen["peak_rss_bytes"], "writer_self_test": check,
            "convert_s": res["convert_s"], "output_bytes": out_bytes,
            "rss_after_imports_bytes": res["rss_after_imports_bytes"], "peak_rss_bytes": peak,
            "peak_over_output": r(peak / out_bytes, 4), "goal_peak_over_output": 1.3,
            "meets_goal": peak / out_bytes <= 1.3,
            "output_check": {k: v for k, v in spot.items() if not k.startswith("_")},
        }
        print(f"    {res['convert_s']:.0f} s, peak RSS {peak / GB:.2f} GB, output {out_bytes / GB:.2f} GB -> "
              f"ratio {peak / out_bytes:.3f}; spot check {spot.get('spot_check_equal')}", flush=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)
