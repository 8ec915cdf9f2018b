"""The video demo's results file: ``benchmarks/results/demo-video.json`` from a finished
``onepeace demo-video`` run (its ``metrics.json``), or runs it first with ``--run``.

The file is the run's ``metrics.json`` as written (retrieval of the aligned video branch,
``baseline_frame_average``, the model, the training settings, the environment with its thread
count, the wall time): ``docs/demo.md``'s table is generated from it (``make tables``), and
``tests/test_readme_examples.py`` checks that ``make demo-video`` runs with the thread count it
records.

    make demo && make demo-video                      # runs/demo-video/metrics.json (about 10 min)
    python benchmarks/demo_video_bench.py             # -> benchmarks/results/demo-video.json
    python benchmarks/demo_video_bench.py --run       # the same, running `onepeace demo-video` first
                                                      # (OMP_NUM_THREADS=1 as the Makefile does)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: what the results file must hold (the table's figures and the thread check)
REQUIRED = ("retrieval", "baseline_frame_average", "environment")


def results_from_metrics(metrics: dict) -> dict:
    """The results file's content: the run's metrics, checked for what the docs read."""
    missing = [k for k in REQUIRED if k not in metrics]
    if missing:
        raise SystemExit(f"the metrics lack {', '.join(missing)}: not a finished `onepeace demo-video` run")
    if "threads" not in metrics["environment"]:
        raise SystemExit("the metrics' environment does not record the thread count")
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "demo-video"), help="the demo-video run (its --out)")
    ap.add_argument("--run", action="store_true", help="run `onepeace demo-video --out RUN_DIR` first")
    ap.add_argument("--threads", type=int, default=1, help="with --run: OMP_NUM_THREADS (default 1, as measured)")
    ap.add_argument("--out", default=str(RESULTS / "demo-video.json"))
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    if args.run:
        exe = Path(sys.executable).with_name("onepeace")
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run([str(exe), "demo-video", "--out", str(run_dir)], check=True, env=env)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        raise SystemExit(f"{metrics_file} does not exist: run `make demo-video` first (or pass --run)")
    result = results_from_metrics(json.loads(metrics_file.read_text()))
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out} from {metrics_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
