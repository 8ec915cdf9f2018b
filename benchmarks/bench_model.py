#!/usr/bin/env python
"""CPU benchmark of the onepeace package: speed, memory of loading and converting, bf16 accuracy.

Writes ``benchmarks/results/model.json`` (``model-quick.json`` with ``--quick``) and prints a short
summary. What is measured, and how it lines up with the official code's measurements
(/work/shared/research/upstream-perf.md), is described in ``benchmarks/README.md``.

Every heavy step runs in a child process (this same script with ``--_worker``) so that each one
starts from a clean heap, its peak RSS (``VmHWM``) belongs to that step alone, and the parent can
watch the child's RSS and stop it before the machine runs out of memory.

Usage::

    python benchmarks/bench_model.py                   # everything (20-40 min, peaks near 16 GB)
    python benchmarks/bench_model.py --quick           # smoke run on the tiny preset (~1 min)
    python benchmarks/bench_model.py --only speed --sizes base --dtypes fp32
    python benchmarks/bench_model.py --only load,convert
    python benchmarks/bench_model.py --only sidebyside  # ours vs upstream-style, same run (~10 min)
"""

from __future__ import annotations

import argparse
import ast
import collections
import datetime as _dt
import io
import json
import math
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
KEYS_FILE = Path("/work/shared/fixtures/upstream-tiny/full-4b-keys.txt")
TINY_FIXTURE = Path("/work/shared/fixtures/upstream-tiny/tiny/one-peace-tiny.pt")
DICT_FILE = Path("/work/shared/data/onepeace-assets/dict.txt")
THREADS = 2
SEED = 4321
GB = 1e9

# ------------------------------------------------------------------------------------------------
# Workloads and the official code's figures (upstream-perf.md, measured 2026-11-24, same method)
# ------------------------------------------------------------------------------------------------

#: batch sizes and timed runs per model size (2 untimed warm-ups before each)
WORKLOADS = {
    "base": {"batch": {"image": 8, "text": 32, "audio": 4}, "runs": 7},
    "one-peace-4b": {"batch": {"image": 1, "text": 32, "audio": 1}, "runs": 3},
    "tiny": {"batch": {"image": 2, "text": 8, "audio": 1}, "runs": 3},  # --quick only
}
WARMUP = 2
AUDIO_SAMPLES = 80_000  # 5 s at 16 kHz -> 249 frames, T = 250 with CLS
#: BPE lengths (without </s>) of the 32 captions: mean 17, longest 19 -> padded to 20, T = 21
CAPTION_LENGTHS = [15, 16, 17, 18, 19, 17, 16, 18] * 4

UPSTREAM_PEAK = {"fp32": 188.7, "bf16": 419.2}  # GFLOP/s, torch.matmul 2048^3, 2 threads
#: (size, dtype, modality) -> official figures; text in bf16 fails in the official hub
UPSTREAM = {
    ("base", "fp32", "image"): {"gflop": 490.6, "median_s": 3.090, "pct_peak": 84},
    ("base", "fp32", "text"): {"gflop": 152.8, "median_s": 0.897, "pct_peak": 90},
    ("base", "fp32", "audio"): {"gflop": 341.6, "median_s": 2.613, "pct_peak": 69},
    ("base", "bf16", "image"): {"gflop": 490.6, "median_s": 1.764, "pct_peak": 66},
    ("base", "bf16", "text"): {"gflop": 152.8, "median_s": None, "pct_peak": None,
                               "note": "fails in the official hub (token ids cast to bf16); "
                                       "int64-id workaround: 0.444 s, 82% of peak"},
    ("base", "bf16", "audio"): {"gflop": 341.6, "median_s": 1.275, "pct_peak": 64},
    ("one-peace-4b", "fp32", "image"): {"gflop": 794.9, "median_s": 5.137, "pct_peak": 82},
    ("one-peace-4b", "fp32", "text"): {"gflop": 2033.0, "median_s": 12.842, "pct_peak": 84},
    ("one-peace-4b", "fp32", "audio"): {"gflop": 802.2, "median_s": 5.559, "pct_peak": 76},
    ("one-peace-4b", "bf16", "image"): {"gflop": 794.9, "median_s": 2.459, "pct_peak": 77},
    ("one-peace-4b", "bf16", "text"): {"gflop": 2033.0, "median_s": None, "pct_peak": None,
                                       "note": "fails in the official hub (token ids cast to bf16); "
                                               "int64-id workaround: 5.357 s, 91% of peak"},
    ("one-peace-4b", "bf16", "audio"): {"gflop": 802.2, "median_s": 2.201, "pct_peak": 87},
}

CAPTION_WORDS = {
    "det": ["a", "the", "one", "two", "three", "some", "several", "an old", "a young", "a small"],
    "adj": ["red", "large", "small", "wooden", "white", "black", "smiling", "busy", "quiet", "tall",
            "green", "blue", "happy", "brown", "empty", "crowded", "old", "shiny", "bright"],
    "noun": ["man", "woman", "dog", "cat", "bus", "train", "table", "kitchen", "street", "boy",
             "girl", "horse", "bicycle", "car", "pizza", "plate", "bench", "park", "tree", "window",
             "field", "beach", "boat", "bird", "road", "building", "sign", "group", "child", "cake"],
    "verb": ["sitting on", "standing next to", "walking along", "riding", "holding", "looking at",
             "parked near", "running across", "playing with", "eating", "lying on", "waiting by"],
    "prep": ["in front of", "near", "on top of", "beside", "under", "behind", "inside", "at"],
}


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM / VmPeak ... of a process from /proc, in bytes."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Vm") and line.rstrip().endswith("kB"):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_hwm() -> bool:
    """Reset this process's VmHWM (Linux clear_refs '5'); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def r(x: float | None, n: int = 3) -> float | None:
    return None if x is None else round(float(x), n)


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def dir_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def machine_facts() -> dict[str, Any]:
    import torch

    cpu, flags, fam, model_no = "?", [], None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu == "?":
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("cpu family") and fam is None:
                    fam = int(line.split(":", 1)[1])
                if line.startswith("model\t") and model_no is None:
                    model_no = int(line.split(":", 1)[1])
                if line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {
        "cpu_model": cpu,
        "cpu_family_model": f"{fam}/{model_no}",
        "logical_cpus": os.cpu_count(),
        "isa_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni", "fma"))),
        "has_avx512_bf16": "avx512_bf16" in flags,
        "has_amx_bf16": "amx_bf16" in flags,
        "mem_total_gb": round(mem / GB, 2),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "threads": THREADS,
        **git_facts(),
    }


def git_facts() -> dict[str, Any]:
    """The commit measured, and whether src/ differed from it (others may be editing)."""
    root = HERE.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": head or None, "src_uncommitted_changes": len(dirty.splitlines()) if head else None}


# ------------------------------------------------------------------------------------------------
# FLOPs: 2 per multiply-add, over GEMMs and convolutions only (the upstream-perf.md formula)
# ------------------------------------------------------------------------------------------------
def transformer_flops(cfg, b: int, t: int) -> int:
    d, f, n = cfg.dim, cfg.ffn_dim, cfg.layers
    return n * b * t * (8 * d * d + 6 * d * f) + 4 * n * b * t * t * d


def image_adapter_flops(cfg, b: int) -> int:
    d, s = cfg.dim, cfg.modalities["image"].get("image_size", 256)
    c = d // 4
    return 2 * b * ((s // 4) ** 2 * 48 * c + (s // 8) ** 2 * 4 * c * c + (s // 16) ** 2 * 4 * c * d)


def audio_frames(samples: int, stem) -> list[int]:
    out, t = [], samples
    for _, k, s in stem:
        t = (t - k) // s + 1
        out.append(t)
    return out


def audio_adapter_flops(cfg, b: int, samples: int) -> int:
    o = cfg.modalities["audio"]
    stem = o.get("stem")
    if stem is None:
        from onepeace.config import OFFICIAL_AUDIO_STEM as stem
    depth, width, groups = o.get("conv_pos_depth", 5), o.get("conv_pos_width", 95), o.get("conv_pos_groups", 16)
    d = cfg.dim
    frames = audio_frames(samples, stem)
    conv, c_in = 0, 1
    for (c, k, _), t in zip(stem, frames):
        conv += t * c_in * k * c
        c_in = c
    tf = frames[-1]
    k = max(3, width // depth)
    return 2 * b * (conv + tf * c_in * d + depth * tf * d * (d // groups) * k)


def model_flops(cfg, name: str, b: int, t: int, samples: int = 0) -> dict[str, int]:
    adapter = {"image": image_adapter_flops(cfg, b) if name == "image" else 0,
               "audio": audio_adapter_flops(cfg, b, samples) if name == "audio" else 0}.get(name, 0)
    enc = transformer_flops(cfg, b, t)
    proj = 2 * b * cfg.dim * cfg.dim
    return {"total": adapter + enc + proj, "adapter": adapter, "encoder": enc, "attention_scores":
            4 * cfg.layers * b * t * t * cfg.dim, "projection": proj}


# ------------------------------------------------------------------------------------------------
# GEMM peak
# ------------------------------------------------------------------------------------------------
def op_latency_us(n_ops: int = 100) -> float:
    """Microseconds per small parallel op (in-place add on 1M floats; about 50 us when the host is
    quiet). On a contended host each op waits for a descheduled OpenMP thread (several ms)."""
    import torch

    x = torch.zeros(1 << 20)
    for _ in range(10):
        x.add_(1.0)
    t0 = time.perf_counter()
    for _ in range(n_ops):
        x.add_(1.0)
    return r((time.perf_counter() - t0) / n_ops * 1e6, 1)


def gemm_peak(n: int = 2048, warmup: int = 3, runs: int = 10, dtypes=("fp32", "bf16"),
              linear3d: bool = True) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(THREADS)
    out = {}
    flop = 2 * n**3
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name not in dtypes:
            continue
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(dt)
        b = torch.randn(n, n, generator=g).to(dt)
        res = {}
        fns = [("matmul", lambda a=a, b=b: torch.matmul(a, b))]
        if linear3d:
            fns.append(("linear3d", lambda a=a, b=b: F.linear(a[None], b)))
        for label, fn in fns:
            for _ in range(warmup):
                fn()
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            res[label] = {"median_gflops": r(flop / median(ts) / 1e9, 1),
                          "best_gflops": r(flop / min(ts) / 1e9, 1)}
        out[name] = {"median_gflops": res["matmul"]["median_gflops"],
                     "best_gflops": res["matmul"]["best_gflops"]}
        if linear3d:
            out[name]["linear3d"] = res["linear3d"]
    out["op_latency_us"] = op_latency_us()
    return out


# ------------------------------------------------------------------------------------------------
# Models with the fixture randomisation (so that bf16-vs-fp32 is a meaningful comparison)
# ------------------------------------------------------------------------------------------------
def randomize_(model, seed: int = SEED) -> None:
    """Overwrite every parameter, in name order, with the upstream fixture recipe.

    Linear/Conv weights N(0, 1/fan_in), their biases 0.1 N, LayerNorm weights 1 + 0.25 N and biases
    0.1 N, layer scale U(0.3, 1), relative-position tables N(0, 1), embeddings / positions / CLS
    0.5 N, logit_scale ln(1/0.07) + 0.3 N. Values are drawn in fp32 and then cast, so an fp32 and a
    bf16 model built with the same seed hold the same weights (up to bf16 rounding).
    The official init (layer scale 1e-6) would make every layer almost the identity.
    """
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    mods = dict(model.named_modules())
    for mname in sorted(mods):
        mod = mods[mname]
        for pname, p in sorted(mod.named_parameters(recurse=False)):
            full = f"{mname}.{pname}" if mname else pname
            direct = p.dtype == torch.float32
            tmp = p.data if direct else torch.empty(p.shape, dtype=torch.float32)
            if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)) and pname == "weight":
                fan_in = p[0].numel()
                tmp.normal_(0.0, fan_in ** -0.5, generator=g)
            elif isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)) and pname == "bias":
                tmp.normal_(0.0, 0.1, generator=g)
            elif isinstance(mod, nn.LayerNorm) and pname == "weight":
                tmp.normal_(1.0, 0.25, generator=g)
            elif isinstance(mod, nn.LayerNorm) and pname == "bias":
                tmp.normal_(0.0, 0.1, generator=g)
            elif pname.startswith("gamma_"):
                tmp.uniform_(0.3, 1.0, generator=g)
            elif ".rel_tables." in f".{full}":
                tmp.normal_(0.0, 1.0, generator=g)
            elif pname == "logit_scale":
                tmp.normal_(math.log(1 / 0.07), 0.3, generator=g)
            elif isinstance(mod, nn.Embedding) or pname in (
                "cls_embedding", "pos_embed", "cls_pos_embed", "mask_embedding", "q"
            ):
                tmp.normal_(0.0, 0.5, generator=g)
            else:
                raise RuntimeError(f"randomize_: no rule for parameter {full}")
            if not direct:
                with torch.no_grad():
                    p.copy_(tmp)


def build_random(size: str, dtype: str, seed: int = SEED):
    """The preset, allocated straight in ``dtype`` (meta build + to_empty) and randomised."""
    import onepeace

    dt = onepeace.resolve_dtype(dtype)
    m = onepeace.create_model(size, device="meta", init=False)
    m = m.to(dt).to_empty(device="cpu")
    randomize_(m, seed)
    return m.eval()


# ------------------------------------------------------------------------------------------------
# Synthetic inputs
# ------------------------------------------------------------------------------------------------
def make_images(n: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)  # smooth content once upsampled
        img = Image.fromarray(small).resize((640, 480), Image.BICUBIC)
        noise = rng.integers(-12, 13, size=(480, 640, 3))
        out.append(Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)))
    return out


def make_captions(encode, lengths: list[int], seed: int = 0) -> list[str]:
    """COCO-style captions whose BPE length (without </s>) is exactly each of ``lengths``."""
    import random

    rng = random.Random(seed)
    w = CAPTION_WORDS
    out = []
    for target in lengths:
        for _ in range(10_000):
            parts = [rng.choice(w["det"]), rng.choice(w["adj"]), rng.choice(w["noun"]), rng.choice(w["verb"]),
                     rng.choice(w["det"]), rng.choice(w["adj"]), rng.choice(w["noun"])]
            while True:
                text = " ".join(parts)
                n = len(encode(text)) - 1
                if n >= target:
                    break
                parts += [rng.choice(w["prep"]), rng.choice(w["det"]), rng.choice(w["noun"])]
            if n == target:
                out.append(text)
                break
            # overshoot: drop words from the end until it fits or is too short
            while len(parts) > 3 and len(encode(" ".join(parts))) - 1 > target:
                parts.pop()
            text = " ".join(parts)
            if len(encode(text)) - 1 == target:
                out.append(text)
                break
        else:
            raise RuntimeError(f"could not make a caption of {target} BPE tokens")
    return out


def make_audio(n: int, samples: int = AUDIO_SAMPLES, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    out = []
    for i in range(n):
        f = 220.0 * (1 + i) + rng.uniform(0, 50)
        wav = 0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(samples)
        out.append(wav.astype(np.float32))
    return out


def make_batches(model, batch: dict[str, int]) -> tuple[dict, dict, dict]:
    """Processed batches, their computed lengths T (with CLS), and the preprocessing time."""
    proc = model.processor
    text_proc = proc.get("text")
    n_text = batch["text"]
    lengths = (CAPTION_LENGTHS * ((n_text + len(CAPTION_LENGTHS) - 1) // len(CAPTION_LENGTHS)))[:n_text]
    raw = {
        "image": make_images(batch["image"]),
        "text": make_captions(text_proc.encode, lengths),
        "audio": make_audio(batch["audio"]),
    }
    batches, lens, prep = {}, {}, {}
    for name, items in raw.items():
        fn = proc.get(name)
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = fn(items)
            ts.append(time.perf_counter() - t0)
        batches[name] = out
        prep[name] = median(ts)
    lens["text"] = batches["text"]["tokens"].shape[1] + 1
    lens["image"] = (model.config.modalities["image"].get("image_size", 256) // 16) ** 2 + 1
    lens["audio"] = batches["audio"]["padding_mask"].shape[1]
    return batches, lens, prep


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "sizes"}


# ------------------------------------------------------------------------------------------------
# Workers (run in child processes)
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Side by side: our forward against an upstream-style forward of the same weights, same process
# ------------------------------------------------------------------------------------------------
#: per size: batches (make_batches needs all three), the modalities compared, timed A/B pairs
SIDEBYSIDE = {
    "base": {"batch": {"image": 8, "text": 32, "audio": 4}, "modalities": ["image", "text", "audio"], "pairs": 7},
    "one-peace-4b": {"batch": {"image": 1, "text": 32, "audio": 1}, "modalities": ["image", "text"], "pairs": 5},
    "tiny": {"batch": {"image": 2, "text": 8, "audio": 1}, "modalities": ["image", "text", "audio"], "pairs": 3},
}
SBS_GAMMA = 0.5  # layer scale, so that every layer changes the output (the official init is 1e-6)
SBS_TOLERANCE = 1e-4  # max |ours - upstream-style| over the fp32 embedding entries
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "68719476736",
                 "MALLOC_TOP_PAD_": "1073741824"}
QUIET_GFLOPS = 250.0  # fp32 2048^3 GEMM below this (quiet host: ~320-345) = contended


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


def _gflops_check() -> dict:
    g = gemm_peak(dtypes=("fp32",), linear3d=False)
    return {"fp32_gflops": g["fp32"]["median_gflops"], "fp32_best_gflops": g["fp32"]["best_gflops"],
            "op_latency_us": g["op_latency_us"]}


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
    res["local_peak_start"] = _gflops_check()
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
    res["local_peak_end"] = _gflops_check()
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
    res["local_peak_start"] = _gflops_check()
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
    res["local_peak_end"] = _gflops_check()
    res["modalities"] = per
    st = proc_status()
    res["hwm_gb"], res["rss_end_gb"] = r(st["VmHWM"] / GB), r(st["VmRSS"] / GB)
    return res


WORKERS = {"model": worker_model, "make_ckpt": worker_make_ckpt, "load": worker_load,
           "convert": worker_convert, "gen_official": worker_gen_official,
           "check_converted": worker_check_converted, "sidebyside": worker_sidebyside,
           "malloc": worker_malloc}


def run_worker(kind: str, spec: dict, rss_limit: float, label: str, env_extra: dict | None = None) -> dict:
    """Run a worker in a child process, polling its RSS; kill it above ``rss_limit`` bytes.

    The child's environment is ours without any glibc ``MALLOC_*`` tuning variables, plus the
    thread counts and ``env_extra``."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, dir="/tmp") as f:
        out_path = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", kind,
           "--_spec", json.dumps(spec), "--_out", out_path]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update({"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS), **(env_extra or {})})
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    max_seen, killed = 0, False
    while proc.poll() is None:
        rss = proc_status(proc.pid).get("VmRSS", 0)
        max_seen = max(max_seen, rss)
        if rss > rss_limit:
            proc.kill()
            killed = True
            break
        time.sleep(0.5)
    rc = proc.wait()
    wall = time.perf_counter() - t0
    try:
        with open(out_path) as f:
            text = f.read()
        res = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        res = {}
    finally:
        if os.path.exists(out_path):
            os.remove(out_path)
    if killed:
        res = {"error": f"killed: RSS above the {rss_limit / GB:.1f} GB limit"}
    elif rc != 0 and "error" not in res:
        res = {"error": f"worker exited with status {rc}"}
    res["_wall_s"] = r(wall, 1)
    res["_max_polled_rss_gb"] = r(max_seen / GB)
    if "error" in res:
        print(f"  ! {label}: {res['error']}", flush=True)
    return res


def worker_main(kind: str, spec_json: str, out: str) -> None:
    try:  # die with the parent (Linux), so an interrupted run leaves no 16 GB orphan behind
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    spec = json.loads(spec_json)
    try:
        res = WORKERS[kind](spec)
    except Exception as e:  # noqa: BLE001 - reported to the parent, then re-raised
        import traceback

        with open(out, "w") as f:
            json.dump({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}, f)
        raise
    with open(out, "w") as f:
        json.dump(res, f)


# ------------------------------------------------------------------------------------------------
# Writing an official-format (torch.save zip) checkpoint as a stream
# ------------------------------------------------------------------------------------------------
_STORAGE = {"float32": "FloatStorage", "int64": "LongStorage", "bfloat16": "BFloat16Storage"}
_ITEMSIZE = {"float32": 4, "int64": 8, "bfloat16": 2}


class _StorageRef:
    """Pickled through persistent_id as ('storage', torch.<X>Storage, key, 'cpu', numel)."""

    def __init__(self, key: str, dtype: str, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef:
    """Pickles exactly as torch.save pickles a contiguous CPU tensor, without holding its data."""

    def __init__(self, key: str, dtype: str, shape: tuple[int, ...]):
        self.storage = _StorageRef(key, dtype, math.prod(shape))
        self.shape = tuple(shape)

    def __reduce_ex__(self, protocol: int):
        import torch

        stride, acc = [], 1
        for s in reversed(self.shape):
            stride.append(acc)
            acc *= s
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, self.shape, tuple(reversed(stride)), False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any):
        if isinstance(obj, _StorageRef):
            import torch

            return ("storage", getattr(torch, _STORAGE[obj.dtype]), obj.key, "cpu", obj.numel)
        return None


def read_layout(source: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) of an official state dict: from full-4b-keys.txt section A, or read
    from an existing official checkpoint (the tiny fixture) without loading its tensors."""
    if source == "4b":
        out, on = [], False
        for line in KEYS_FILE.read_text().splitlines():
            if line.startswith("######## "):
                on = line.startswith("######## A.")
                continue
            if not on or not line.strip() or line.startswith("#"):
                continue
            key, shape, kind = line.split("\t")
            dtype = "float32" if kind in ("param", "buffer:float32") else kind.split(":", 1)[1]
            out.append((key, tuple(ast.literal_eval(shape)), dtype))
        return out
    import torch

    from onepeace.checkpoints.safe_pickle import read_checkpoint

    state = read_checkpoint(source)["model"]
    return [(k, tuple(v.shape), "int64" if v.dtype == torch.int64 else "float32") for k, v in state.items()]


def write_official_checkpoint(path: str, layout, cfg: dict, seed: int = 0, values: dict | None = None,
                              chunk: int = 1 << 24) -> dict:
    """Write ``{"args": None, "cfg": cfg, "model": {...}}`` in torch.save's zip format, tensor by
    tensor (memory: one chunk). ``values`` (key -> tensor) gives exact contents (used by the
    self-test); otherwise floats are N(0, 0.02) and int64 buffers a small ramp."""
    import torch

    g = torch.Generator().manual_seed(seed)
    model = {}
    for i, (key, shape, dtype) in enumerate(layout):
        model[key] = _TensorRef(str(i), dtype, shape)
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({"args": None, "cfg": cfg, "model": model})
    total = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(_zinfo("archive/data.pkl"), buf.getvalue())
        zf.writestr(_zinfo("archive/byteorder"), b"little")
        for i, (key, shape, dtype) in enumerate(layout):
            n = math.prod(shape)
            with zf.open(_zinfo(f"archive/data/{i}"), "w", force_zip64=True) as f:
                if values is not None:
                    t = values[key].contiguous().reshape(-1)
                    f.write(t.view(torch.uint8).numpy().tobytes() if n else b"")
                else:
                    done = 0
                    while done < n:
                        m = min(chunk, n - done)
                        if dtype == "int64":
                            t = torch.arange(done, done + m, dtype=torch.int64) % 1000
                        else:
                            t = torch.empty(m, dtype=torch.float32).normal_(0.0, 0.02, generator=g)
                            if dtype == "bfloat16":
                                t = t.bfloat16()
                        f.write(memoryview(t.view(torch.uint8).numpy()))
                        done += m
            total += n * _ITEMSIZE[dtype]
        zf.writestr(_zinfo("archive/version"), b"3\n")
    return {"tensors": len(layout), "tensor_bytes": total}


def _zinfo(name: str) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    zi.compress_type = zipfile.ZIP_STORED
    return zi


def self_test_writer(tmpdir: str) -> dict:
    """Our stream writer and torch.save must give the same object through torch.load(weights_only)."""
    import torch

    g = torch.Generator().manual_seed(1)
    values = {
        "a.weight": torch.randn(3, 4, generator=g),
        "a.bias": torch.randn(4, generator=g),
        "scalar": torch.tensor(2.5),
        "rp_bucket": torch.randint(0, 100, (5, 5), generator=g),
        "big": torch.randn(70, 1000, generator=g),
        "empty": torch.zeros(0, 3),
    }
    cfg = {"task": {"patch_image_size": 256}, "model": {"encoder": {"audio_adapter": {
        "feature_encoder_spec": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"}}}}
    ref_path, our_path = os.path.join(tmpdir, "ref.pt"), os.path.join(tmpdir, "ours.pt")
    torch.save({"args": None, "cfg": cfg, "model": values}, ref_path)
    layout = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in values.items()]
    write_official_checkpoint(our_path, layout, cfg, values=values)
    a = torch.load(ref_path, weights_only=True)
    b = torch.load(our_path, weights_only=True)
    ok = a["cfg"] == b["cfg"] and a["args"] is None and b["args"] is None and list(a["model"]) == list(b["model"])
    for k in values:
        x, y = a["model"][k], b["model"][k]
        ok = ok and x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride() and torch.equal(x, y)
    # and the random-value path reads back as well
    write_official_checkpoint(our_path, layout, cfg, seed=3)
    c = torch.load(our_path, weights_only=True)
    ok = ok and all(tuple(c["model"][k].shape) == tuple(v.shape) and c["model"][k].dtype == v.dtype
                    for k, v in values.items())
    return {"identical_to_torch_save": bool(ok)}


# ------------------------------------------------------------------------------------------------
# The parts of the benchmark
# ------------------------------------------------------------------------------------------------
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


def wait_for_memory(need: float, label: str, max_wait: float = 600) -> None:
    t0 = time.time()
    while mem_available() < need and time.time() - t0 < max_wait:
        print(f"  (waiting for memory for {label}: {mem_available() / GB:.1f} GB available, "
              f"{need / GB:.1f} GB wanted)", flush=True)
        time.sleep(15)


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


def wait_until_quiet(label: str, max_wait_s: float = 150.0, wait_s: float = 30.0) -> list[dict]:
    """The fp32 GEMM check, repeated ``wait_s`` apart (for at most ``max_wait_s`` of waiting) until
    it reads at least QUIET_GFLOPS; every attempt is returned so that the JSON records it."""
    tries = 1 + max(0, int(max_wait_s // wait_s))
    attempts = []
    for i in range(tries):
        c = {"at": time.strftime("%H:%M:%S"), **_gflops_check(), "loadavg": os.getloadavg()[0]}
        attempts.append(c)
        if c["fp32_gflops"] >= QUIET_GFLOPS:
            break
        if i < tries - 1:
            print(f"  (host busy before {label}: GEMM {c['fp32_gflops']} GFLOP/s < {QUIET_GFLOPS}, small-op "
                  f"latency {c['op_latency_us']} us; waiting {wait_s:.0f} s)", flush=True)
            time.sleep(wait_s)
    return attempts


def part_sidebyside(args, results: dict, save) -> None:
    """Same machine, same run: our forward vs an upstream-style forward of the same weights
    (benchmarks/upstream_style.py), interleaved; then glibc malloc tuning A/B for ours."""
    t_start = time.time()
    sbs: dict[str, Any] = {
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "method": {
            "reference": "benchmarks/upstream_style.py: our own re-statement of the official way of "
                         "computing (spec §2-3): (N, B, D) layers, separate q/k/v Linear, q*hd^-0.5, "
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
        worker_main(args._worker, args._spec, args._out)
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
