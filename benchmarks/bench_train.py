#!/usr/bin/env python
"""CPU benchmark of the onepeace trainer: samples/s of one process vs 2-process DDP, and FSDP2 memory.

Writes ``benchmarks/results/train.json`` (``train-quick.json`` with ``--quick``) and prints a short
summary. What is measured is described in ``benchmarks/README.md`` ("Training").

Every measurement is a fresh child process (or a fresh ``torchrun --nproc-per-node 2`` group) running
this same script with ``--_worker``: it builds ``Trainer(cfg)`` from ``load_config(None, overrides)``,
runs ``fit()``, and writes its own ``VmHWM`` to ``rank{RANK}.json``; the parent reads those files and
the rank-0 ``metrics.jsonl``, and watches the children's summed RSS so that it can stop a run before
the machine runs out of memory.

Usage::

    python benchmarks/bench_train.py --quick      # smoke run, tiny preset, ~2 min
    python benchmarks/bench_train.py              # full run (tiny + base samples/s, large memory), ~15 min
    python benchmarks/bench_train.py --only throughput --sizes base
    python benchmarks/bench_train.py --only memory
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from _bench import (  # noqa: E402  (the house helpers; they import torch lazily)
    CAPTION_WORDS,
    GB,
    gemm_peak,
    machine_facts,
    mem_available,
    proc_status,
    r,
    reset_hwm,
    write_json_atomic,
)

#: image side per preset (256 px, the official size, is far too slow to train on 2 cores)
IMAGE_SIZE = {"tiny": 32, "base": 64, "large": 64}

#: throughput workloads: per-rank batch, steps, log interval (the last ``avg_lines`` log lines
#: are averaged; the steps before them are warm-up), and a per-run timeout in seconds
THROUGHPUT = {
    "full": {
        "tiny": {"batch": 32, "max_steps": 12, "log_every": 4, "avg_lines": 2, "timeout": 300},
        "base": {"batch": 4, "max_steps": 12, "log_every": 4, "avg_lines": 2, "timeout": 420},
    },
    "quick": {
        "tiny": {"batch": 16, "max_steps": 6, "log_every": 2, "avg_lines": 2, "timeout": 240},
    },
}
#: memory workloads: batch per rank, steps, per-run timeout
MEMORY = {
    "full": {"batch": 2, "max_steps": 3, "timeout": {"tiny": 240, "base": 360, "large": 600}},
    "quick": {"batch": 2, "max_steps": 3, "timeout": {"tiny": 240, "base": 360, "large": 600}},
}
SHARD_SAMPLES, SHARDS, SHARD_IMAGE_PX = 64, 4, 72
BYTES_PER_PARAM_ADAMW_FP32 = 16  # weight + grad + 2 AdamW moments
EXIT_GRACE_S = 45  # a worker that has written its results gets this long to tear down and exit


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
def now() -> str:
    return time.strftime("%H:%M:%S")


def loadavg() -> list[float]:
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return []


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy (non-idle, non-iowait) over ``seconds``, from /proc/stat."""

    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]

    (t0, i0), _ = snap(), time.sleep(seconds)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_idle(max_wait: float, threshold: float = 0.25) -> tuple[float, float]:
    """Wait up to ``max_wait`` s for the CPUs to be less than ``threshold`` busy; (busy, waited s)."""
    t0 = time.time()
    busy = cpu_busy()
    while busy > threshold and time.time() - t0 < max_wait:
        print(f"  (waiting for an idle host: CPUs {100 * busy:.0f}% busy)", flush=True)
        time.sleep(10)
        busy = cpu_busy()
    return busy, time.time() - t0


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants (via /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def tree_rss(pid: int) -> int:
    return sum(proc_status(p).get("VmRSS", 0) for p in descendants(pid))


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def harmonic_mean(xs: list[float]) -> float:
    """Combined rate of windows that each hold the same number of samples."""
    return len(xs) / sum(1.0 / x for x in xs)


# ------------------------------------------------------------------------------------------------
# Synthetic data
# ------------------------------------------------------------------------------------------------
def make_shards(out_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Image-text tar shards: smooth random RGB images and COCO-style captions of 10-19 words."""
    import numpy as np
    from PIL import Image

    from onepeace.data.shards import write_shards_from_samples

    rng = np.random.default_rng(seed)
    words = random.Random(seed)

    def caption() -> str:
        w = CAPTION_WORDS
        parts = [words.choice(w["det"]), words.choice(w["adj"]), words.choice(w["noun"]),
                 words.choice(w["verb"]), words.choice(w["det"]), words.choice(w["adj"]), words.choice(w["noun"])]
        if words.random() < 0.7:
            parts += [words.choice(w["prep"]), words.choice(w["det"]), words.choice(w["noun"])]
        return " ".join(parts)

    def samples():
        for i in range(SHARD_SAMPLES * SHARDS):
            small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(small).resize((SHARD_IMAGE_PX, SHARD_IMAGE_PX), Image.BICUBIC))
            yield {"image": img, "text": caption(), "label": i % 10}

    paths = write_shards_from_samples(samples(), out_dir, samples_per_shard=SHARD_SAMPLES)
    return {"shards": len(paths), "samples": SHARD_SAMPLES * SHARDS, "image_px": SHARD_IMAGE_PX}


# ------------------------------------------------------------------------------------------------
# The worker (one process, or one rank of a torchrun group)
# ------------------------------------------------------------------------------------------------
def worker_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(spec["threads"])
    import onepeace_train.checkpoint as ckpt
    from onepeace_train.distributed import shutdown
    from onepeace_train.recipe import load_config
    from onepeace_train.trainer import Trainer

    # the benchmark keeps no checkpoint: the end-of-run DCP save and the full-state-dict export
    # (which gathers the whole model on rank 0 under FSDP) would otherwise dominate time and VmHWM
    ckpt.save = lambda *a, **k: None
    Trainer.save_model = lambda self, path: None

    rank = int(os.environ.get("RANK", 0))
    res: dict[str, Any] = {"rank": rank, "world": int(os.environ.get("WORLD_SIZE", 1)),
                           "threads": torch.get_num_threads(), "rss_after_imports_bytes": proc_status()["VmRSS"]}
    t0 = time.perf_counter()
    trainer = Trainer(load_config(None, spec["overrides"]))
    res["init_s"] = r(time.perf_counter() - t0, 2)
    st = proc_status()
    res["rss_after_init_bytes"], res["hwm_init_bytes"] = st["VmRSS"], st["VmHWM"]
    res["params_local"] = sum(p.numel() if not hasattr(p, "to_local") else p.to_local().numel()
                              for p in trainer.module.parameters())
    res["trainable_tensors"] = len(trainer.trainable)
    res["hwm_reset"] = reset_hwm()
    t1 = time.perf_counter()
    out = trainer.fit()
    res["fit_s"] = r(time.perf_counter() - t1, 2)
    st = proc_status()
    res["rss_end_bytes"] = st["VmRSS"]
    res["hwm_fit_bytes"] = st["VmHWM"]  # since the reset (since start when the reset was refused)
    res["peak_rss_bytes"] = max(res["hwm_init_bytes"], st["VmHWM"])
    res["final_loss"] = (out.get("final") or {}).get("loss")
    tmp = Path(spec["result_dir"]) / f"rank{rank}.json.tmp"
    tmp.write_text(json.dumps(res))
    os.replace(tmp, Path(spec["result_dir"]) / f"rank{rank}.json")
    # a rare hang in the process-group teardown was seen once (tiny, DDP): dump the stacks into the
    # log and exit instead of waiting for the parent's timeout (the results are written already)
    import faulthandler

    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True)
    shutdown()
    faulthandler.cancel_dump_traceback_later()


# ------------------------------------------------------------------------------------------------
# Launching
# ------------------------------------------------------------------------------------------------
def train_overrides(size: str, batch: int, max_steps: int, log_every: int, threads: int, parallel: str,
                    data: Path) -> list[str]:
    s = IMAGE_SIZE[size]
    return [
        f"model.preset={size}",
        f"model.overrides={{modalities={{text={{}},image={{image_size={s}}}}}}}",
        f"data.train={data}",
        f"data.batch_size={batch}",
        "data.num_workers=0",
        'objective.other="image"',
        f"optim.max_steps={max_steps}",
        "optim.warmup_steps=1",
        'train.precision="fp32"',
        f'train.parallel="{parallel}"',
        f"train.log_every={log_every}",
        "train.save_every=0",
        "train.eval_every=0",
        "train.progress=false",
        f"train.threads={threads}",
    ]


def launch(label: str, *, nproc: int, threads: int, overrides: list[str], work: Path, timeout: float,
           rss_limit: float, wait: float = 0.0, need: int = 0, wait_mem: float = 0.0) -> dict[str, Any]:
    """Run one training job in fresh processes; return the ranks' results and the rank-0 metrics.

    ``need``: predicted bytes (all ranks); wait up to ``wait_mem`` s for that much + 1 GB to be free.
    """
    t0 = time.time()
    while mem_available() - GB < need and time.time() - t0 < wait_mem:
        print(f"  (waiting for memory: {mem_available() / GB:.1f} GB available, {need / GB:.1f} GB + 1 GB "
              "wanted)", flush=True)
        time.sleep(15)
    if mem_available() - GB < need:
        return {"error": f"not run: {mem_available() / GB:.1f} GB available after waiting {wait_mem:.0f} s, "
                         f"predicted need {need / GB:.1f} GB + 1 GB", "predicted_bytes_all_ranks": need}
    run_dir = work / label
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    spec = {"threads": threads, "overrides": overrides + [f"train.output={run_dir / 'out'}"],
            "result_dir": str(run_dir)}
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    script = str(Path(__file__).resolve())
    if nproc == 1:
        cmd = [sys.executable, script, "--_worker", str(spec_path)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               script, "--_worker", str(spec_path)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    log_path = run_dir / "log.txt"
    busy, waited = wait_idle(wait)
    info: dict[str, Any] = {"nproc": nproc, "threads_per_proc": threads, "loadavg_before": loadavg(),
                            "cpu_busy_before": r(busy, 3), "waited_for_idle_s": r(waited, 1)}
    t0 = time.time()
    max_tree = 0
    with open(log_path, "w") as logf:
        p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                             cwd=str(HERE.parent))
        killed, all_written = None, None
        while p.poll() is None:
            time.sleep(0.5)
            rss = tree_rss(p.pid)
            max_tree = max(max_tree, rss)
            if all_written is None and all((run_dir / f"rank{k}.json").exists() for k in range(nproc)):
                all_written = time.time()
            if rss > rss_limit:
                killed = f"summed RSS {rss / GB:.1f} GB above the limit {rss_limit / GB:.1f} GB"
            elif all_written is not None and time.time() - all_written > EXIT_GRACE_S + 30:
                killed = f"did not exit within {EXIT_GRACE_S + 30} s of writing its results"
            elif time.time() - t0 > timeout:
                killed = f"timeout after {timeout:.0f} s"
            if killed:
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # the group this launch started
                except ProcessLookupError:
                    pass
                p.wait()
                break
    info["wall_s"] = r(time.time() - t0, 1)
    info["cpu_busy_after"] = r(cpu_busy(), 3)
    info["max_sampled_tree_rss_bytes"] = max_tree
    info["log"] = str(log_path)
    written = all((run_dir / f"rank{k}.json").exists() for k in range(nproc))
    if not written or (killed or "").startswith("summed RSS"):
        info["error"] = killed or (f"exit status {p.returncode}" if p.returncode else "a rank wrote no result")
        info["log_tail"] = tail(log_path)
        return info
    if killed or p.returncode != 0:  # the results were written; the teardown failed or hung
        info["exit_problem"] = killed or f"exit status {p.returncode} after writing the results"
        info["log_tail"] = tail(log_path)
    ranks = [json.loads((run_dir / f"rank{k}.json").read_text()) for k in range(nproc)]
    info["ranks"] = ranks
    mpath = run_dir / "out" / "metrics.jsonl"
    info["metrics"] = [json.loads(line) for line in mpath.read_text().splitlines() if line.strip()] \
        if mpath.exists() else []
    return info


# ------------------------------------------------------------------------------------------------
# Part 1: samples/s
# ------------------------------------------------------------------------------------------------
def rate_of(run: dict[str, Any], avg_lines: int) -> dict[str, Any]:
    lines = [m for m in run.get("metrics", []) if "samples_per_s" in m]
    if len(lines) < avg_lines + 1:
        return {"error": f"only {len(lines)} log lines (need {avg_lines} after a warm-up line)"}
    used = lines[-avg_lines:]
    rates = [m["samples_per_s"] for m in used]
    return {"samples_per_s": r(harmonic_mean(rates), 3), "window_rates": rates,
            "warmup_rates": [m["samples_per_s"] for m in lines[:-avg_lines]],
            "steps_averaged": f"{lines[-avg_lines - 1]['step'] + 1}-{used[-1]['step']}",
            "final_loss": used[-1].get("loss")}


def slim(run: dict[str, Any]) -> dict[str, Any]:
    """What a launch's entry keeps in the JSON."""
    out = {k: run[k] for k in ("loadavg_before", "cpu_busy_before", "cpu_busy_after", "waited_for_idle_s",
                               "wall_s", "error", "exit_problem", "log_tail", "predicted_bytes_all_ranks") if k in run}
    if "ranks" in run:
        out["peak_rss_bytes_per_rank"] = [x["peak_rss_bytes"] for x in run["ranks"]]
        out["init_s"] = run["ranks"][0]["init_s"]
        out["fit_s"] = run["ranks"][0]["fit_s"]
        out["torch_threads_seen"] = [x["threads"] for x in run["ranks"]]
    return out


def part_throughput(args, work: Path, data: Path, results: dict) -> None:
    mode = "quick" if args.quick else "full"
    res = results.setdefault("throughput", {})
    for size in args.sizes:
        w = THROUGHPUT[mode].get(size) or THROUGHPUT["full"][size]
        b = w["batch"]
        configs = [
            # label, processes, threads per process, per-rank batch
            ("one_proc_2_threads", 1, 2, b),
            ("one_proc_1_thread", 1, 1, b),
            ("ddp_2_procs_1_thread", 2, 1, b),
            ("ddp_2_procs_1_thread_half_batch", 2, 1, b // 2),
        ]
        params_pm = pretrain_params(size)[1]
        entry: dict[str, Any] = {
            "image_size": IMAGE_SIZE[size], "per_rank_batch": b, "pretrain_params": params_pm, "max_steps": w["max_steps"],
            "log_every": w["log_every"], "averaged_log_lines": w["avg_lines"], "runs": {}}
        res[size] = entry
        for label, nproc, threads, batch in configs:
            print(f"[{now()}] throughput {size}: {label} (batch {batch} per rank, global {batch * nproc})",
                  flush=True)
            ov = train_overrides(size, batch, w["max_steps"], w["log_every"], threads,
                                 "ddp", data)
            need = predicted_need("one_proc" if nproc == 1 else "ddp_2_procs", params_pm, None)
            run = launch(f"tp-{size}-{label}", nproc=nproc, threads=threads, overrides=ov, work=work,
                         timeout=w["timeout"], rss_limit=args.rss_limit, wait=args.wait_idle,
                         need=need, wait_mem=args.wait_mem)
            e = {"processes": nproc, "threads_per_process": threads, "per_rank_batch": batch,
                 "global_batch": batch * nproc, **slim(run)}
            if "error" not in run:
                e.update(rate_of(run, w["avg_lines"]))
            entry["runs"][label] = e
            if "samples_per_s" in e:
                print(f"    {e['samples_per_s']:.2f} samples/s (windows {e['window_rates']}, warm-up "
                      f"{e['warmup_rates']}), {run['wall_s']} s wall", flush=True)
            else:
                print(f"    failed: {e.get('error')}\n{e.get('log_tail', '')[-1500:]}", flush=True)
        rs = {k: v.get("samples_per_s") for k, v in entry["runs"].items()}
        one2, one1 = rs["one_proc_2_threads"], rs["one_proc_1_thread"]
        ddp, half = rs["ddp_2_procs_1_thread"], rs["ddp_2_procs_1_thread_half_batch"]

        def ratio(a, b_):
            return r(a / b_, 3) if a and b_ else None

        entry["scaling"] = {
            "same_per_rank_batch": {
                "per_rank_batch": b, "global_batch_ddp": 2 * b, "global_batch_one_proc": b,
                "efficiency_vs_2x_one_proc_1_thread": ratio(ddp, 2 * one1) if one1 else None,
                "speedup_vs_one_proc_1_thread": ratio(ddp, one1),
                "speedup_vs_one_proc_2_threads": ratio(ddp, one2),
            },
            "same_global_batch": {
                "global_batch": b, "per_rank_batch_ddp": b // 2,
                "efficiency_vs_2x_one_proc_1_thread": ratio(half, 2 * one1) if one1 else None,
                "speedup_vs_one_proc_1_thread": ratio(half, one1),
                "speedup_vs_one_proc_2_threads": ratio(half, one2),
            },
            "threads_speedup_one_proc_2_vs_1": ratio(one2, one1),
        }


# ------------------------------------------------------------------------------------------------
# Part 2: memory per rank
# ------------------------------------------------------------------------------------------------
def pretrain_params(size: str) -> tuple[int, int]:
    """(encoder parameters, PretrainModel parameters incl. the decoder) of the benchmark's model, on meta."""
    import torch

    import onepeace
    from onepeace_train.pretrain.model import PretrainModel

    model = onepeace.create_model(size, device="meta", init=False,
                                  modalities={"text": {}, "image": {"image_size": IMAGE_SIZE[size]}})
    with torch.device("meta"):
        pm = PretrainModel(model)
    return model.num_parameters(), sum(p.numel() for p in pm.parameters())


def predicted_need(label: str, params: int, one_proc_peak: int | None) -> int:
    """Bytes that a memory run needs, summed over its ranks (a guard, not a figure)."""
    state = BYTES_PER_PARAM_ADAMW_FP32 * params  # fp32 weights, grads and 2 AdamW moments
    if label == "one_proc":
        return int(state + 2.5 * GB)
    if label == "fsdp_2_procs":  # half the state per rank, after each rank built the full model
        return int(2 * (max(state / 2, 4 * params) + 2.0 * GB))
    # DDP: the whole state on each rank plus gradient buckets (a copy of the grads)
    base = one_proc_peak if one_proc_peak else state + 2.5 * GB
    return int(2 * (base + 4 * params))


def part_memory(args, work: Path, data: Path, results: dict) -> None:
    mode = "quick" if args.quick else "full"
    m = MEMORY[mode]
    res = results.setdefault("memory", {})
    for size in args.mem_sizes:
        params_model, params_pm = pretrain_params(size)
        entry: dict[str, Any] = {"image_size": IMAGE_SIZE[size], "per_rank_batch": m["batch"],
                                 "steps": m["max_steps"], "encoder_params": params_model,
                                 "pretrain_params": params_pm, "runs": {}}
        res[size] = entry
        for label, nproc, threads, parallel in (("one_proc", 1, 2, "ddp"), ("fsdp_2_procs", 2, 1, "fsdp"),
                                                ("ddp_2_procs", 2, 1, "ddp")):
            one = entry["runs"].get("one_proc", {}).get("max_peak_rss_bytes")
            need = predicted_need(label, params_pm, one)
            if need > args.mem_budget:
                why = "one-process peak + 4 bytes/parameter of gradient buckets" if label == "ddp_2_procs" \
                    else "16 bytes/parameter + runtime"
                entry["runs"][label] = {
                    "skipped": f"predicted {need / GB:.1f} GB summed over the ranks (each: {why}) > "
                               f"--mem-budget-gb {args.mem_budget / GB:.1f}",
                    "predicted_peak_rss_bytes_per_rank": int(need / nproc)}
                print(f"[{now()}] memory {size}: {label} skipped: {entry['runs'][label]['skipped']}", flush=True)
                continue
            print(f"[{now()}] memory {size}: {label} (batch {m['batch']} per rank, {m['max_steps']} steps; "
                  f"predicted {need / GB:.1f} GB in all)", flush=True)
            ov = train_overrides(size, m["batch"], m["max_steps"], 1, threads, parallel, data)
            run = launch(f"mem-{size}-{label}", nproc=nproc, threads=threads, overrides=ov, work=work,
                         timeout=m["timeout"][size], rss_limit=args.rss_limit, wait=args.wait_idle,
                         need=need, wait_mem=args.wait_mem)
            e = {"processes": nproc, "threads_per_process": threads, "parallel": parallel if nproc > 1 else None,
                 **slim(run), "predicted_bytes_all_ranks": need}
            if "ranks" in run:
                rk = run["ranks"]
                e.update({
                    "params_local": rk[0]["params_local"],
                    "rss_after_imports_bytes": [x["rss_after_imports_bytes"] for x in rk],
                    "rss_after_init_bytes": [x["rss_after_init_bytes"] for x in rk],
                    "hwm_init_bytes": [x["hwm_init_bytes"] for x in rk],
                    "hwm_fit_bytes": [x["hwm_fit_bytes"] for x in rk],
                    "rss_end_bytes": [x["rss_end_bytes"] for x in rk],
                    "hwm_reset": all(x["hwm_reset"] for x in rk),
                    "max_peak_rss_bytes": max(x["peak_rss_bytes"] for x in rk),
                    "sum_peak_rss_bytes": sum(x["peak_rss_bytes"] for x in rk),
                    "max_sampled_tree_rss_bytes": run["max_sampled_tree_rss_bytes"],
                    "final_loss": rk[0]["final_loss"],
                })
                print(f"    peak RSS per rank {[round(x / GB, 2) for x in e['peak_rss_bytes_per_rank']]} GB "
                      f"(init {[round(x / GB, 2) for x in e['hwm_init_bytes']]}, steps "
                      f"{[round(x / GB, 2) for x in e['hwm_fit_bytes']]}), {run['wall_s']} s", flush=True)
            else:
                print(f"    failed: {e.get('error')}\n{e.get('log_tail', '')[-1500:]}", flush=True)
            entry["runs"][label] = e
        runs = entry["runs"]
        one, fsdp, ddp = (runs.get(k, {}).get("max_peak_rss_bytes") for k in ("one_proc", "fsdp_2_procs", "ddp_2_procs"))
        # what fp32 weights + grads + 2 AdamW moments of the parameters a rank holds take
        entry["weights_grads_adamw_bytes_per_rank"] = {
            k: BYTES_PER_PARAM_ADAMW_FP32 * v["params_local"] for k, v in runs.items() if "params_local" in v}
        pred_ddp = runs.get("ddp_2_procs", {}).get("predicted_peak_rss_bytes_per_rank") if not ddp else None
        entry["ratios"] = {
            "fsdp_per_rank_over_one_proc": r(fsdp / one, 3) if fsdp and one else None,
            "fsdp_per_rank_over_ddp_per_rank": r(fsdp / ddp, 3) if fsdp and ddp else None,
            "ddp_per_rank_over_one_proc": r(ddp / one, 3) if ddp and one else None,
            "fsdp_per_rank_over_predicted_ddp_per_rank": r(fsdp / pred_ddp, 3) if fsdp and pred_ddp else None,
        }


# ------------------------------------------------------------------------------------------------
def add_notes(results: dict) -> None:
    notes = [
        "The host is shared with other jobs and noisy: samples/s can move by tens of percent between "
        "runs; compare only figures from the same results file (each ratio comes from one invocation), "
        "check cpu_busy_before/after of each run and gemm_peak start/end (op_latency_us), and re-run "
        "when they disagree.",
        "On this 2-core machine the 2 DDP ranks (1 thread each) use the same 2 cores that the 1-process "
        "2-thread run uses: speedup_vs_one_proc_2_threads is the practical comparison; "
        "efficiency_vs_2x_one_proc_1_thread is the textbook scaling efficiency (ideal 1.0).",
    ]
    g = results.get("gemm_peak", {})
    if "start" in g and "end" in g:
        a, b = g["start"]["fp32"]["median_gflops"], g["end"]["fp32"]["median_gflops"]
        if abs(a - b) / max(a, b) > 0.15:
            notes.append(f"The fp32 GEMM peak moved from {a} to {b} GFLOP/s during the run: the host's "
                         "speed drifted; the samples/s ratios are unreliable, re-run.")
    for size, e in results.get("throughput", {}).items():
        for label, run in e.get("runs", {}).items():
            busy = max(run.get("cpu_busy_before") or 0, run.get("cpu_busy_after") or 0)
            if busy > 0.25:
                notes.append(f"throughput {size}/{label}: the CPUs were {100 * busy:.0f}% busy with other "
                             "work just before/after the run; its samples/s is unreliable (2-thread runs "
                             "suffer most: each op waits for a descheduled OpenMP thread).")
    for part in ("throughput", "memory"):
        for size, e in results.get(part, {}).items():
            for label, run in e.get("runs", {}).items():
                if "exit_problem" in run:
                    notes.append(f"{part} {size}/{label}: {run['exit_problem']} (figures kept; the stacks "
                                 "dumped at the teardown are in log_tail).")
    for size, e in results.get("memory", {}).items():
        for label, run in e.get("runs", {}).items():
            if "skipped" in run:
                notes.append(f"memory {size}/{label} skipped: {run['skipped']}.")
            elif run.get("hwm_reset") is False:
                notes.append(f"memory {size}/{label}: VmHWM could not be reset after init, so hwm_fit_bytes "
                             "includes the init peak.")
    results["notes"] = notes


def summary_rows(results: dict) -> list[str]:
    lines = []
    p = results.get("gemm_peak", {}).get("start")
    if p:
        lines.append(f"GEMM fp32 peak (2 threads) {p['fp32']['median_gflops']} GFLOP/s, small-op latency "
                     f"{p['op_latency_us']} us")
    for size, e in results.get("throughput", {}).items():
        lines.append(f"{size} (image {e['image_size']} px, per-rank batch {e['per_rank_batch']}), samples/s:")
        for label, run in e["runs"].items():
            v = run.get("samples_per_s")
            lines.append(f"  {label:34s} global batch {run['global_batch']:3d}: "
                         + (f"{v:8.2f}" if v is not None else f"failed ({run.get('error')})"))
        s = e["scaling"]
        for k in ("same_per_rank_batch", "same_global_batch"):
            lines.append(f"  {k}: DDP / (2 x 1-proc 1-thread) = {s[k]['efficiency_vs_2x_one_proc_1_thread']}, "
                         f"DDP / 1-proc 2-thread = {s[k]['speedup_vs_one_proc_2_threads']}")
    for size, e in results.get("memory", {}).items():
        lines.append(f"{size} memory (image {e['image_size']} px, batch {e['per_rank_batch']}/rank), peak RSS per rank:")
        for label, run in e["runs"].items():
            if "peak_rss_bytes_per_rank" in run:
                lines.append(f"  {label:14s} " + ", ".join(f"{x / GB:.2f}" for x in run["peak_rss_bytes_per_rank"])
                             + " GB")
            else:
                lines.append(f"  {label:14s} {run.get('skipped') or run.get('error')}")
        lines.append(f"  ratios: {e['ratios']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny preset only, very few steps")
    ap.add_argument("--only", default="throughput,memory", help="comma list of parts: throughput, memory")
    ap.add_argument("--sizes", default=None, help="presets for throughput (default tiny,base; tiny with --quick)")
    ap.add_argument("--mem-sizes", default=None, help="presets for memory (default large,base; tiny with --quick)")
    ap.add_argument("--out", default=None, help="JSON path (default results/train.json, train-quick.json)")
    ap.add_argument("--tmp", default=None, help="parent of the temporary work dir (shards, logs, metrics)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, metrics) afterwards")
    ap.add_argument("--rss-limit-gb", type=float, default=18.5, help="kill a run whose summed RSS exceeds this")
    ap.add_argument("--mem-budget-gb", type=float, default=18.0,
                    help="skip a memory run predicted to need more than this (summed over ranks)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="before each run, wait up to this long for the CPUs to be <25%% busy (default 0)")
    ap.add_argument("--wait-mem", type=float, default=300.0, metavar="SECONDS",
                    help="before each run, wait up to this long for its predicted memory + 1 GB to be free")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        worker_main(args._worker)
        return 0

    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if parts - {"throughput", "memory"}:
        ap.error(f"unknown parts {sorted(parts - {'throughput', 'memory'})}")
    args.sizes = [s.strip() for s in (args.sizes or ("tiny" if args.quick else "tiny,base")).split(",")]
    args.mem_sizes = [s.strip() for s in (args.mem_sizes or ("tiny" if args.quick else "large,base")).split(",")]
    for s in args.sizes + args.mem_sizes:
        if s not in IMAGE_SIZE:
            ap.error(f"unknown size {s!r}; choose from {sorted(IMAGE_SIZE)}")
    args.rss_limit = args.rss_limit_gb * GB
    args.mem_budget = args.mem_budget_gb * GB
    out = Path(args.out) if args.out else RESULTS / ("train-quick.json" if args.quick else "train.json")

    import torch

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="onepeace-bench-train-", dir=args.tmp))
    t_start = time.time()
    mode = "quick" if args.quick else "full"
    mach = machine_facts()
    mach["threads"] = "per run: see threads_per_process"
    mach["gloo_available"] = torch.distributed.is_gloo_available()
    mach["loadavg_start"] = loadavg()
    mach["mem_available_start_gb"] = r(mem_available() / GB, 2)
    results: dict[str, Any] = {
        "schema": 1,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "machine": mach,
        "method": {
            "objective": "stage 1 image-text (objective.other='image', the default weights and masks: "
                         "align + DCL text/image/joint, ObjectiveConfig defaults), fp32, AdamW, the presets' drop path "
                         "rate (0)",
            "model": "presets with modalities={text={}, image={image_size=S}} (no audio branch); "
                     f"image_size {IMAGE_SIZE} instead of the official 256 px (far too slow to train on "
                     "2 CPU cores); the decoder of PretrainModel is included",
            "data": f"synthetic image-text tar shards ({SHARDS} x {SHARD_SAMPLES} samples, {SHARD_IMAGE_PX} px "
                    "smooth random RGB, COCO-style captions of 7 or 10 words), RandomResizedCrop to S, "
                    "data.num_workers=0 (decoding runs in the training process and is included)",
            "samples_per_s": "the trainer's metrics.jsonl figure (global samples over the wall time since the "
                             "previous log line, measured on rank 0); the first log lines are warm-up, the last "
                             "averaged_log_lines windows are combined (harmonic mean = total samples / total "
                             "time, as each window holds the same number of samples)",
            "launch": "each run is a fresh process: one process = `python bench_train.py --_worker`, "
                      "2 processes = `python -m torch.distributed.run --standalone --nproc-per-node=2` "
                      "(gloo); OMP_NUM_THREADS / MKL_NUM_THREADS and train.threads set to the run's threads",
            "scaling": "efficiency_vs_2x_one_proc_1_thread = DDP samples/s / (2 x 1-process samples/s at 1 "
                       "thread) (textbook efficiency, ideal 1.0); speedup_vs_one_proc_2_threads = DDP "
                       "samples/s / 1-process samples/s at 2 threads (same 2 cores used either way); "
                       "same_per_rank_batch: DDP at the 1-process batch per rank (global batch doubles); "
                       "same_global_batch: DDP at half that batch per rank",
            "memory": "peak RSS = max(VmHWM after Trainer(cfg), VmHWM during fit() after a clear_refs reset) "
                      "of each rank, from /proc/self/status, in bytes; the end-of-run checkpoint and model "
                      "export are disabled in the worker (ckpt.save and Trainer.save_model replaced by "
                      "no-ops), so the figure covers building, sharding/wrapping and the training steps; "
                      "GB = 1e9 bytes",
        },
    }
    print(f"[{now()}] work dir {work}", flush=True)
    try:
        print(f"[{now()}] GEMM peak", flush=True)
        results["gemm_peak"] = {"start": gemm_peak(dtypes=("fp32",), linear3d=False)}
        data = work / "shards"
        results["data"] = make_shards(data)
        if "throughput" in parts:
            part_throughput(args, work, data, results)
            write_json_atomic(out, results)
        if "memory" in parts:
            part_memory(args, work, data, results)
            write_json_atomic(out, results)
        results["gemm_peak"]["end"] = gemm_peak(dtypes=("fp32",), linear3d=False)
        results["machine"]["loadavg_end"] = loadavg()
    finally:
        if args.keep:
            results["work_dir"] = str(work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    add_notes(results)
    results["total_wall_s"] = r(time.time() - t_start, 1)
    write_json_atomic(out, results)
    print("\n".join(["", "Summary"] + summary_rows(results)))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
