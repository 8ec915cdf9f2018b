#!/usr/bin/env python
"""The exported ONNX graphs on onnxruntime next to our PyTorch fp32 and bf16, in one run (issue 12.5).

The base preset (random weights) is exported with ``onepeace.export.export_onnx`` (one graph per
branch) and each graph is timed against ``model.embed_batch`` on the same processed batches (8
images of 256 px, 32 captions, 4 clips of 5 s), the three timed in turn (a, b, c, a, b, c, ...).
onnxruntime runs its CPU provider with the same number of intra-op threads as torch. Parity is the
max abs difference of the embeddings against PyTorch fp32. By default one thread with the
thread's CPU clock (``--wall``: two threads, wall clock); onnxruntime's own threads are not the
calling thread, so with one thread it runs inline and the CPU clock counts it.

Writes ``benchmarks/results/onnx.json`` (``onnx-quick.json`` with ``--quick``: the tiny preset).

    python benchmarks/bench_onnx.py [--quick] [--wall] [--rounds N]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (  # noqa: E402
    RESULTS,
    build_random,
    gemm_peak,
    machine_facts,
    make_batches,
    median,
    model_inputs,
    r,
    time_alternating,
    write_json_atomic,
)

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = {"base": {"image": 8, "text": 32, "audio": 4}, "tiny": {"image": 2, "text": 8, "audio": 1}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the tiny preset, few rounds (a smoke run)")
    ap.add_argument("--wall", action="store_true", help="two threads and the wall clock (default: one thread, CPU clock)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5; 2 with --quick)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import onnxruntime as ort
    import torch

    from onepeace.export.onnx import export_onnx, session

    threads = 2 if args.wall else 1
    clock = time.perf_counter if args.wall else time.thread_time
    size = "tiny" if args.quick else "base"
    rounds = args.rounds or (2 if args.quick else 5)
    out_path = args.out or RESULTS / ("onnx-quick.json" if args.quick else "onnx.json")
    results: dict = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "machine": machine_facts(), "onnxruntime": ort.__version__, "size": size, "threads": threads,
                     "clock": "wall (perf_counter)" if args.wall else "CPU time of the calling thread (thread_time)",
                     "rounds": rounds}
    results["gemm_peak"] = gemm_peak(dtypes=("fp32", "bf16"), linear3d=False, threads=threads, clock=clock,
                                     runs=5 if args.quick else 10)
    m32 = build_random(size, "fp32")
    mbf = build_random(size, "bf16")
    batches, lens, _ = make_batches(m32, WORKLOAD[size])
    speed = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        record = export_onnx(m32, Path(tmp) / "onnx")
        results["export_seconds"] = r(time.perf_counter() - t0, 1)
        results["graph_mb"] = {n: r((Path(tmp) / "onnx" / g["file"]).stat().st_size / 1e6, 1)
                               for n, g in record["graphs"].items()}
        for name, batch in batches.items():
            sess = session(Path(tmp) / "onnx" / f"{name}.onnx", threads=threads)
            keys = list(record["graphs"][name]["inputs"])
            inp = model_inputs(batch)
            feed = {k: inp[k].numpy() for k in keys}
            with torch.inference_mode():
                ref = m32.embed_batch(name, inp).float().numpy()
                got = sess.run(["embedding"], feed)[0]
                times = time_alternating({
                    "torch_fp32": lambda name=name, inp=inp: m32.embed_batch(name, inp),
                    "torch_bf16": lambda name=name, inp=inp: mbf.embed_batch(name, inp),
                    "onnxruntime_fp32": lambda sess=sess, feed=feed: sess.run(["embedding"], feed),
                }, rounds=rounds, warmup=1, clock=clock)
            med = {k: median(v) for k, v in times.items()}
            speed[name] = {"batch": WORKLOAD[size][name], "tokens": lens[name],
                           "seconds": {k: r(v, 4) for k, v in med.items()},
                           "onnxruntime_over_torch_fp32": r(med["torch_fp32"] / med["onnxruntime_fp32"], 3),
                           "onnxruntime_over_torch_bf16": r(med["torch_bf16"] / med["onnxruntime_fp32"], 3),
                           "max_abs_diff_vs_torch_fp32": float(np.abs(got - ref).max())}
            print(f"{name}: s/batch torch fp32 {med['torch_fp32']:.3f} bf16 {med['torch_bf16']:.3f} "
                  f"onnxruntime {med['onnxruntime_fp32']:.3f}; max|diff| {speed[name]['max_abs_diff_vs_torch_fp32']:.1e}")
    results["speed"] = speed
    write_json_atomic(out_path, results)
    print(f"wrote {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
