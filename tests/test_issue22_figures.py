"""Issue 22: the figures docs/serve.md and docs/scale.md state in prose are those of the results
files they cite (benchmarks/results/serve-load.json's burst, storage.json)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _prose(name: str) -> str:
    return " ".join((ROOT / "docs" / name).read_text(encoding="utf-8").split())


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def test_the_burst_figures_of_docs_serve_are_the_results_file():
    doc = _prose("serve.md")
    b = json.loads((RESULTS / "serve-load.json").read_text())["burst"]
    m = re.search(r"`--max-queue (\d+) --max-in-flight (\d+)`\) and (\d+) clients sending (\d+)-text embeddings "
                  r"back to back for ([\d.]+) s: ([\d,]+) requests, every answer a 200 or a 503, ([\d.]+) % of them "
                  r"shed with 503 \(([\d,]+); ([\d,]+) answered\)\. .* succeeds again after ([\d.]+) s .*Load average "
                  r"([\d.]+) at its start", doc)
    assert m, "docs/serve.md no longer states the burst's figures in the expected words"
    got = [_num(x) for x in m.groups()]
    server = re.search(r"--max-queue (\d+) --max-in-flight (\d+)", b["server"])
    want = [int(server.group(1)), int(server.group(2)), b["users"], b["inputs_per_request"], round(b["seconds"]),
            b["requests"], round(100 * b["shed_503_share"], 1), b["statuses"]["503"], b["statuses"]["200"],
            b["recover_s"], round(b["load_average_at_start"], 1)]
    assert got == want, (got, want)
    assert b["only_200_and_503"]


def test_the_storage_figures_of_docs_scale_are_the_results_file():
    doc = _prose("scale.md")
    r = json.loads((RESULTS / "storage.json").read_text())
    m = re.search(r"([\d,]+) synthetic rows of width (\d+) written in commits of ([\d,]+) rows, then (\d+) exact "
                  r"top-10 queries", doc)
    assert m, "docs/scale.md no longer states the storage benchmark's setup"
    setup = r["setup"]
    assert [_num(x) for x in m.groups()] == [setup["rows"], setup["dim"], setup["rows_per_commit"], setup["queries"]]
    for name, key in (("Local", "local"), ("S3", "s3")):
        m = re.search(name + r": ([\d,]+) rows/s(?: written)? \(a commit ([\d.]+) ms\), opened in ([\d.]+) ms, a query "
                      r"([\d.]+) ms at p50 and ([\d.]+) ms at p95", doc)
        assert m, name
        x = r[key]
        assert [_num(v) for v in m.groups()] == [x["rows_per_s"], x["commit_ms_p50"], x["open_ms"],
                                                  x["query"]["p50_ms"], x["query"]["p95_ms"]], name
    m = re.search(r"\(the first one ([\d.]+) ms\)", doc)
    assert m and _num(m.group(1)) == r["s3"]["first_query_ms"]
    assert ("Both return the same top 10" in doc) == r["same_top10"]
    m = re.search(r"Load average ([\d.]+) at the start, this shared", doc)
    assert m and _num(m.group(1)) == round(r["load_average_at_start"], 1)


def test_the_soak_figures_of_docs_serve_are_the_results_file():
    doc = _prose("serve.md")
    s = json.loads((RESULTS / "serve-load.json").read_text())["soak"]
    m = re.search(r"measured once \(the soak of `serve-load.json`\), ([\d,]+) requests at ([\d.]+) req/s \(p95 (\d+) ms, "
                  r"no errors\) took the RSS from ([\d.]+) MB after its first 10 s to ([\d.]+) MB at its end", doc)
    assert m, "docs/serve.md no longer states the soak's figures in the expected words"
    assert [_num(x) for x in m.groups()] == [s["requests"], s["requests_per_s"], s["p95_ms"], s["rss_start_mb"],
                                             s["rss_end_mb"]]
    assert s["error_rate"] == 0 and s["seconds"] >= 600
    samples = s["rss_samples"]
    last = [mb for t, mb, _ in samples if t >= samples[-1][0] - 150]
    assert max(last) - min(last) < 1.0  # the plateau the prose claims
