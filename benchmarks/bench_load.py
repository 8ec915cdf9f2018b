#!/usr/bin/env python
"""Loading and the first call: time from process start to the first embedding, and peak RSS.

Each measurement is a fresh Python process (this script with ``--_worker``), timed from just before
the parent starts it: interpreter start and ``import onepeace``, ``OnePeace.from_pretrained``, then
the first ``model.embed`` of each modality the model has (text, then image, then audio: the first
call builds the processor, reads the BPE files and the relative-position tables), and a second
call of each, whose time is what the first one would cost without its one-off work. The process's
``VmHWM`` (peak RSS) and ``VmRSS`` are read after loading and at the end.

Models: the demo's model (``runs/demo/model``, else ``runs/demo-seeds/seed-0/model``; ``--demo``
to choose; skipped with a note when absent) and a ``base``-size model with random weights saved
in bf16 (the released layout at base width, 0.68 GB), loaded in bf16 and in fp32. Results:
``benchmarks/results/load.json``; see ``benchmarks/README.md``.

Usage::

    python benchmarks/bench_load.py                 # demo + base (about 2 min on a quiet host)
    python benchmarks/bench_load.py --sizes tiny    # smoke run
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _bench import (  # noqa: E402  (the shared helpers; torch is imported lazily)
    GB,
    RESULTS,
    SEED,
    THREADS,
    build_random,
    machine_facts,
    median,
    proc_status,
    r,
    run_worker,
    worker_main,
    write_json_atomic,
)

ROOT = HERE.parent
DEMO_CANDIDATES = [ROOT / "runs" / "demo" / "model", ROOT / "runs" / "demo-seeds" / "seed-0" / "model"]
REPEATS = 3  # fresh processes per model and dtype; the median of each milestone is reported


def _inputs(modalities: list[str]) -> dict[str, list]:
    """One small raw input per modality, as a user passes them to ``model.embed``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out: dict[str, list] = {}
    if "text" in modalities:
        out["text"] = ["a photo of a dog playing in the park"]
    if "image" in modalities:
        out["image"] = [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))]
    if "audio" in modalities:
        out["audio"] = [(0.1 * rng.standard_normal(16000 * 2)).astype(np.float32)]
    return out


def worker_first_call(spec: dict) -> dict:
    """Child: import, load, first and second embedding per modality; wall-clock milestones since
    the parent started this process (``spec['t_spawn']``, ``time.time()``)."""
    t_spawn = spec["t_spawn"]
    since = lambda: r(time.time() - t_spawn, 3)  # noqa: E731
    res: dict[str, Any] = {"started_s": since()}
    import torch

    torch.set_num_threads(THREADS)
    import onepeace

    res["imported_s"] = since()
    res["rss_after_import_gb"] = r(proc_status()["VmRSS"] / GB)
    t0 = time.perf_counter()
    model = onepeace.OnePeace.from_pretrained(spec["path"], dtype=spec["dtype"])
    res["from_pretrained_s"] = r(time.perf_counter() - t0, 3)
    res["loaded_s"] = since()
    st = proc_status()
    res["rss_after_load_gb"], res["hwm_after_load_gb"] = r(st["VmRSS"] / GB), r(st["VmHWM"] / GB)
    res["weight_gb"] = r(sum(t.nbytes for t in model.state_dict().values()) / GB)
    res["params"] = model.num_parameters()
    inputs = _inputs(model.modality_names)
    first, second = {}, {}
    for name, items in inputs.items():
        t0 = time.perf_counter()
        model.embed(**{name: items})
        first[name] = r(time.perf_counter() - t0, 4)
        if not res.get("first_embedding_s"):
            res["first_embedding_s"] = since()
    res["all_first_embeddings_s"] = since()
    for name, items in inputs.items():
        t0 = time.perf_counter()
        model.embed(**{name: items})
        second[name] = r(time.perf_counter() - t0, 4)
    res["first_call_s"], res["second_call_s"] = first, second
    st = proc_status()
    res["hwm_gb"], res["rss_end_gb"] = r(st["VmHWM"] / GB), r(st["VmRSS"] / GB)
    return res


def worker_save(spec: dict) -> dict:
    """Child: a preset with random weights, saved with ``save_pretrained`` in ``spec['dtype']``."""
    import torch

    torch.set_num_threads(THREADS)
    model = build_random(spec["size"], "fp32", SEED)
    model.save_pretrained(spec["dir"], dtype=spec["dtype"])
    return {"params": model.num_parameters()}


WORKERS = {"first_call": worker_first_call, "save": worker_save}


def measure(label: str, path: str, dtype: str, repeats: int, rss_limit: float) -> dict:
    runs = []
    for i in range(repeats):
        res = run_worker("first_call", {"path": path, "dtype": dtype, "t_spawn": time.time()}, rss_limit,
                         f"{label} #{i + 1}", script=Path(__file__))
        if "error" in res:
            return {"error": res["error"], "runs": runs}
        runs.append(res)
    keys = ["imported_s", "loaded_s", "from_pretrained_s", "first_embedding_s", "all_first_embeddings_s",
            "hwm_after_load_gb", "hwm_gb"]
    out: dict[str, Any] = {"path": path, "dtype": dtype, "params": runs[0]["params"],
                           "weight_gb": runs[0]["weight_gb"], "repeats": repeats}
    out.update({f"median_{k}": r(median([x[k] for x in runs]), 3) for k in keys})
    names = list(runs[0]["first_call_s"])
    out["median_first_call_s"] = {n: r(median([x["first_call_s"][n] for x in runs]), 4) for n in names}
    out["median_second_call_s"] = {n: r(median([x["second_call_s"][n] for x in runs]), 4) for n in names}
    out["peak_rss_over_weights"] = r(out["median_hwm_after_load_gb"] / max(out["weight_gb"], 1e-9), 3)
    out["runs"] = runs
    print(f"    {label}: import {out['median_imported_s']:.2f} s, loaded at {out['median_loaded_s']:.2f} s "
          f"(from_pretrained {out['median_from_pretrained_s']:.2f} s), first embedding at "
          f"{out['median_first_embedding_s']:.2f} s, peak RSS {out['median_hwm_gb']:.2f} GB "
          f"(after load {out['median_hwm_after_load_gb']:.2f} GB for {out['weight_gb']:.2f} GB of weights)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="base", help="comma list of presets saved with random weights (tiny, base)")
    ap.add_argument("--demo", default=None, help="the demo's model directory (default: runs/demo/model, else "
                                                 "runs/demo-seeds/seed-0/model)")
    ap.add_argument("--repeats", type=int, default=REPEATS, help="fresh processes per model and dtype")
    ap.add_argument("--out", default=str(RESULTS / "load.json"))
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="where the saved models go (deleted after)")
    ap.add_argument("--rss-limit-gb", type=float, default=8.0)
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_spec", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        worker_main(WORKERS, args._worker, args._spec, args._out)
        return 0
    limit = args.rss_limit_gb * GB
    results: dict[str, Any] = {
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "method": "fresh process per run; milestones are wall-clock seconds since the parent started the "
                  "process (interpreter start and imports included); first_call_s / second_call_s: the "
                  "first and second model.embed of one raw item per modality; peak RSS = VmHWM; "
                  f"medians over {args.repeats} processes; GB = 1e9 bytes",
        "models": {},
        "notes": [],
    }
    demo = Path(args.demo) if args.demo else next((p for p in DEMO_CANDIDATES if (p / "config.json").exists()), None)
    if demo is not None and (demo / "config.json").exists():
        print(f"[{time.strftime('%H:%M:%S')}] demo model {demo}", flush=True)
        results["models"]["demo"] = measure("demo fp32", str(demo), "fp32", args.repeats, limit)
    else:
        results["notes"].append("no demo model found (run `make demo`): demo row skipped")
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        d = tempfile.mkdtemp(prefix=f"onepeace-bench-load-{size}-", dir=args.tmp)
        try:
            path = os.path.join(d, "model")
            print(f"[{time.strftime('%H:%M:%S')}] saving a random {size} model in bf16", flush=True)
            saved = run_worker("save", {"size": size, "dtype": "bf16", "dir": path}, limit, f"save {size}",
                               script=Path(__file__))
            if "error" in saved:
                results["models"][size] = {"error": saved["error"]}
                continue
            for dtype in ("bf16", "fp32"):
                results["models"][f"{size}/{dtype}"] = measure(f"{size} {dtype}", path, dtype, args.repeats, limit)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    write_json_atomic(Path(args.out), results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
