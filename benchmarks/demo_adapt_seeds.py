"""The adapting demo over seeds: ``make demo-adapt`` for seeds 0, 1 and 2.

Runs ``onepeace demo-adapt`` (the command a user runs, as ``make demo-adapt`` does: one thread per
``--threads``) once per seed into ``runs/demo-adapt-seeds/seed-N`` and writes
``benchmarks/results/demo-adapt.json``: every seed's ``metrics.json`` and, per figure (held-out
zero-shot accuracy before and after, the demo's own audio->text R@1 before and after, seconds),
the median, min and max over the seeds. The seed changes the LoRA initialisation, the training
captions and the batch order; the held-out speakers stay the same.

    python benchmarks/demo_adapt_seeds.py [--seeds 0 1 2] [--reuse]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _bench import machine_facts, write_json_atomic  # noqa: E402  (the house helpers; torch imported lazily)

RESULTS = HERE / "results"
#: (section of metrics.json, key) of each figure summarised over the seeds
FIGURES = [("heldout_zero_shot", "before"), ("heldout_zero_shot", "after"), ("heldout_zero_shot", "change"),
           ("forgetting", "before"), ("forgetting", "after"), ("forgetting", "change")]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def collect(per_seed: dict[str, dict]) -> dict:
    """Median / min / max over the seeds of each figure, and of the run's seconds."""
    out: dict[str, dict] = {}
    for sec, key in FIGURES:
        out.setdefault(sec, {})[key] = summary([float(m[sec][key]) for m in per_seed.values()])
    out["seconds"] = summary([float(m["seconds"]) for m in per_seed.values()])
    return out


def run_seed(seed: int, run_dir: Path, threads: int, reuse: bool) -> dict:
    metrics = run_dir / "metrics.json"
    if not (reuse and metrics.is_file()):
        exe = Path(sys.executable).with_name("onepeace")
        cmd = [str(exe), "demo-adapt", "--out", str(run_dir), "--seed", str(seed)]
        if run_dir.exists() and not reuse:
            cmd.append("--force")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        print(f"seed {seed}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads(metrics.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scratch", type=Path, default=ROOT / "runs" / "demo-adapt-seeds")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run (default 2, as make demo-adapt)")
    ap.add_argument("--reuse", action="store_true", help="take a seed's finished run in --scratch as it is")
    ap.add_argument("--out", type=Path, default=RESULTS / "demo-adapt.json")
    args = ap.parse_args(argv)
    per_seed = {str(s): run_seed(s, args.scratch / f"seed-{s}", args.threads, args.reuse) for s in args.seeds}
    res = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "seeds": args.seeds,
           "summary": collect(per_seed), "per_seed": per_seed, "machine": machine_facts()}
    write_json_atomic(args.out, res)
    print(json.dumps(res["summary"], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
