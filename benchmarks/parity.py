"""Parity with the official ONE-PEACE outputs on this CPU, as JSON: runs the parity tests
(``pytest -m official_fixtures``, the fixtures in tests/fixtures/upstream-tiny) and writes, per row
of the docs' parity table, the max |ours - official| in fp32, the derived tolerances and the worst
diff/tolerance ratio into ``benchmarks/results/parity.json`` under this CPU's name (other CPUs'
entries are kept, so runs on several machines fill one table). ``make parity``; then ``make tables``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "parity.json"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "parity.json"
        env = {**os.environ, "ONEPEACE_PARITY_JSON": str(figures)}
        r = subprocess.run([sys.executable, "-m", "pytest", "-m", "official_fixtures", "-p", "no:cacheprovider"],
                           cwd=ROOT, env=env)
        if r.returncode != 0 or not figures.exists():
            print("parity: the parity tests failed or recorded nothing; parity.json left as it was", file=sys.stderr)
            return 1
        run = json.loads(figures.read_text(encoding="utf-8"))
    results = json.loads(OUT.read_text(encoding="utf-8")) if OUT.exists() else {"what": __doc__.split("\n\n")[0]}
    results.setdefault("cpus", {})[run["cpu"]] = {"rows": run["rows"], "torch": __import__("torch").__version__}
    tmp_out = OUT.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    tmp_out.replace(OUT)
    print(f"parity: {len(run['rows'])} rows on {run['cpu']} -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
