"""Shared helpers of the benchmarks: machine facts, the GEMM peak, FLOP formulas, synthetic inputs,
models with random weights, child-process workers, alternating timing and atomic JSON writing.

They import torch lazily, so a script can import them before it sets its thread counts. The scripts
run as ``python benchmarks/<script>.py``, which puts this folder on ``sys.path``; ``import _bench``
then works from any of them. Names are listed in ``benchmarks/README.md``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: the shared read-only material next to the repository (``../shared``)
SHARED = HERE.parent.parent / "shared"
KEYS_FILE = SHARED / "fixtures/upstream-tiny/full-4b-keys.txt"
TINY_FIXTURE = SHARED / "fixtures/upstream-tiny/tiny/one-peace-tiny.pt"
DICT_FILE = SHARED / "data/onepeace-assets/dict.txt"
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


def gflops(fn: Callable[[], Any], flop: float, warmup: int, runs: int,
           clock: Callable[[], float] = time.perf_counter) -> dict[str, float | None]:
    """GFLOP/s of ``fn`` (which does ``flop`` operations): median and best of ``runs`` after ``warmup``."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = clock()
        fn()
        ts.append(clock() - t0)
    return {"median_gflops": r(flop / median(ts) / 1e9, 1), "best_gflops": r(flop / min(ts) / 1e9, 1)}


def gemm_peak(n: int = 2048, warmup: int = 3, runs: int = 10, dtypes=("fp32", "bf16"),
              linear3d: bool = True, threads: int = THREADS,
              clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """GFLOP/s of ``torch.matmul`` on two n x n matrices (median and best of ``runs``) per dtype,
    with ``threads`` torch threads (set, and left set); ``clock=time.thread_time`` with
    ``threads=1`` gives the CPU-time peak, which a contended host does not lower."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
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
            res[label] = gflops(fn, flop, warmup, runs, clock)
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


def time_alternating(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = WARMUP,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each function, timed in turn (a, b, c, a, b, c, ...) so that a drift of
    the shared host's speed hits all alike; ``warmup`` untimed rounds first. The result of each call
    is dropped before the next one starts. ``clock=time.thread_time`` with one torch thread measures
    CPU time, which other processes on a contended host do not inflate."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = clock()
            out = fn()
            times[k].append(clock() - t0)
            del out
    return times


def pct_of_peak(flop: float, seconds: float, peak_gflops: float) -> float:
    """GFLOP/s of ``flop`` in ``seconds``, as a percentage of ``peak_gflops``."""
    return r(100 * flop / seconds / 1e9 / peak_gflops, 1)


# ------------------------------------------------------------------------------------------------
# Host contention and memory
# ------------------------------------------------------------------------------------------------
QUIET_GFLOPS = 250.0  # fp32 2048^3 GEMM below this (quiet host: ~320-345) = contended


def gflops_check() -> dict:
    """The fp32 2048^3 GEMM GFLOP/s (median, best) and the small-op latency, now."""
    g = gemm_peak(dtypes=("fp32",), linear3d=False)
    return {"fp32_gflops": g["fp32"]["median_gflops"], "fp32_best_gflops": g["fp32"]["best_gflops"],
            "op_latency_us": g["op_latency_us"]}


def wait_for_memory(need: float, label: str, max_wait: float = 600) -> None:
    t0 = time.time()
    while mem_available() < need and time.time() - t0 < max_wait:
        print(f"  (waiting for memory for {label}: {mem_available() / GB:.1f} GB available, "
              f"{need / GB:.1f} GB wanted)", flush=True)
        time.sleep(15)


def wait_until_quiet(label: str, max_wait_s: float = 150.0, wait_s: float = 30.0) -> list[dict]:
    """The fp32 GEMM check, repeated ``wait_s`` apart (for at most ``max_wait_s`` of waiting) until
    it reads at least QUIET_GFLOPS; every attempt is returned so that the JSON records it."""
    tries = 1 + max(0, int(max_wait_s // wait_s))
    attempts = []
    for i in range(tries):
        c = {"at": time.strftime("%H:%M:%S"), **gflops_check(), "loadavg": os.getloadavg()[0]}
        attempts.append(c)
        if c["fp32_gflops"] >= QUIET_GFLOPS:
            break
        if i < tries - 1:
            print(f"  (host busy before {label}: GEMM {c['fp32_gflops']} GFLOP/s < {QUIET_GFLOPS}, small-op "
                  f"latency {c['op_latency_us']} us; waiting {wait_s:.0f} s)", flush=True)
            time.sleep(wait_s)
    return attempts


# ------------------------------------------------------------------------------------------------
# Child processes
# ------------------------------------------------------------------------------------------------
def run_worker(kind: str, spec: dict, rss_limit: float, label: str, env_extra: dict | None = None,
               script: str | Path | None = None) -> dict:
    """Run a worker in a child process, polling its RSS; kill it above ``rss_limit`` bytes.

    The child's environment is ours without any glibc ``MALLOC_*`` tuning variables, plus the
    thread counts and ``env_extra``. The child is ``script`` (default ``bench_model.py``) run with
    ``--_worker KIND --_spec JSON --_out PATH``; that script hands those to :func:`worker_main`."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, dir="/tmp") as f:
        out_path = f.name
    cmd = [sys.executable, str(Path(script or HERE / "bench_model.py").resolve()), "--_worker", kind,
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


def worker_main(workers: dict[str, Callable[[dict], dict]], kind: str, spec_json: str, out: str) -> None:
    """Child side of :func:`run_worker`: run ``workers[kind](spec)`` and write its result (or the
    error) as JSON to ``out``."""
    try:  # die with the parent (Linux), so an interrupted run leaves no 16 GB orphan behind
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    spec = json.loads(spec_json)
    try:
        res = workers[kind](spec)
    except Exception as e:  # noqa: BLE001 - reported to the parent, then re-raised
        import traceback

        with open(out, "w") as f:
            json.dump({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}, f)
        raise
    with open(out, "w") as f:
        json.dump(res, f)
