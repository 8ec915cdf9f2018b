"""The tables of figures in README.md and docs/*.md, generated from ``benchmarks/results/*.json``.

A table lives between ``<!-- table:NAME -->`` and ``<!-- /table -->`` in a Markdown file; NAME is a
key of ``TABLES``, whose function renders it from its results file. ``make tables`` rewrites
every such table in place; ``--check`` only reports the tables that differ from their JSON (exit
1), as ``tests/test_tables.py`` does. A figure is never typed by hand: change the JSON (by rerunning
the benchmark that writes it, see benchmarks/README.md), then run ``make tables``.

    python scripts/gen_tables.py            # rewrite the tables
    python scripts/gen_tables.py --check    # list stale tables, exit 1 if any
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------ the demo
#: the titles of the demo's printed sections (metrics.json's sections)
DEMO_SECTIONS = {"retrieval": "", "heldout_engine": "the same with a TTS engine never trained on (festival)",
                 "heldout_source": "the same with digit images from a source never trained on (fonts)"}
EMERGENT = {"audio->image": "audio-image", "video->audio": "video-audio", "video->image": "video-image"}


def demo() -> str:
    """The table `make demo` prints, for seed 0 of benchmarks/results/demo-seeds.json."""
    seed0 = _load("demo-seeds.json")["per_seed"]["0"]
    lines = [f"{'':14}{'R@1':>8}{'chance':>8}{'x chance':>10}"]
    for section, title in DEMO_SECTIONS.items():
        if title:
            lines += ["", title]
        for pair, m in seed0[section].items():
            if not isinstance(m, dict):  # "data": what the section was measured on
                continue
            note = f"   <- emergent: never trained on {EMERGENT[pair]} pairs" if section == "retrieval" and pair in EMERGENT else ""
            lines.append(f"{pair:>14}{m['R@1']:8.1f}{m['chance']:8.1f}{m['R@1'] / m['chance']:10.1f}{note}")
    return "```\n" + "\n".join(lines) + "\n```\n"


def demo_video() -> str:
    """The video demo's table: benchmarks/results/demo-video.json (benchmarks/demo_video_bench.py)."""
    res = _load("demo-video.json")
    lines = [f"{'':13}{'R@1':>8}{'chance':>8}{'x chance':>10}{'frame avg':>11}"]
    for pair, m in res["retrieval"].items():
        note = f"   <- emergent: never trained on {EMERGENT[pair]}" if pair in EMERGENT else ""
        base = res["baseline_frame_average"][pair]["R@1"]
        lines.append(f"{pair:>13}{m['R@1']:8.1f}{m['chance']:8.1f}{m['R@1'] / m['chance']:10.1f}{base:11.1f}{note}")
    return "```\n" + "\n".join(lines) + "\n```\n"


def seeds() -> str:
    """R@1 over the demo's seeds: benchmarks/results/demo-seeds.json (benchmarks/demo_seeds.py)."""
    res = _load("demo-seeds.json")
    ids = res["settings"]["seeds"]
    lines = [f"| pair | R@1, median of {len(ids)} seeds | min – max | chance | per seed ({', '.join(map(str, ids))}) |",
             "|---|---:|---:|---:|---|"]
    for pair, s in res["summary"].items():
        r1 = s["R@1"]
        each = " / ".join(f"{res['per_seed'][str(k)]['retrieval'][pair]['R@1']:.1f}" for k in ids)
        label = f"{pair} (emergent)" if pair in ("audio->image", "image->audio") else pair
        lines.append(f"| {label} | {r1['median']:.1f} | {r1['min']:.1f} – {r1['max']:.1f} | "
                     f"{s['chance']['median']:.1f} | {each} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------- precision and speed
def precision() -> str:
    """Cosine of bf16 and int8 embeddings to fp32 ones on real inputs: benchmarks/results/int8.json."""
    real = _load("int8.json")["accuracy_real_data"]
    lines = ["| precision | text, min cosine to fp32 | image | audio |", "|---|---:|---:|---:|"]
    for dtype in ("bf16", "int8"):
        lines.append(f"| {dtype} | " + " | ".join(f"{real[dtype][m]['min']:g}" for m in ("text", "image", "audio")) + " |")
    return "\n".join(lines) + "\n"


SPEED_ROWS = {"image": "image, 8 × 256 px", "text": "text, 32 captions", "audio": "audio, 4 × 5 s"}


def speed() -> str:
    """Speed-up over the official way and share of the matmul peak, base model: benchmarks/results/peak.json."""
    base = _load("peak.json")["results"]["base"]
    lines = ["| base model | fp32 speed-up | fp32 % of peak | bf16 speed-up | bf16 % of peak |",
             "|---|---:|---:|---:|---:|"]
    for m, label in SPEED_ROWS.items():
        cells = []
        for dtype in ("fp32", "bf16"):
            r = base[dtype]["modalities"][m]
            cells += [f"{r['speedup']:.2f}×", f"{r['ours_pct_peak']:.0f}%"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- downstream
def downstream() -> str:
    """The real-data fine-tuning runs: benchmarks/results/downstream.json (benchmarks/downstream.py)."""
    spec = importlib.util.spec_from_file_location("_downstream", ROOT / "benchmarks" / "downstream.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return mod.table(_load("downstream.json")) + "\n"


# --------------------------------------------------------------------------------- harnesses
def harness() -> str:
    """MTEB and onepeace's own evaluation on the local tasks (per model), HEAR's shapes and times:
    benchmarks/results/harness.json (benchmarks/bench_harness.py)."""
    res = _load("harness.json")
    lines = ["| task (data) | model | metric | MTEB | onepeace | chance (accuracy, R@1) | MTEB time | onepeace time |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for name, task in res["mteb"].items():
        for model, m in task["scores"].items():
            if "mteb_accuracy" in m:
                rows = [("accuracy", m["mteb_accuracy"], m["onepeace_accuracy"])]
            else:
                rows = [(f"R@{k} (MTEB hit_rate@{k})", m[f"mteb_hit_rate_at_{k}"], m[f"onepeace_R@{k}"]) for k in (1, 10)]
                rows += [(f"MTEB recall@{k}", m[f"mteb_recall_at_{k}"], None) for k in (1, 10)]
                rows += [("MTEB nDCG@10", m["mteb_ndcg_at_10"], None)]
            for i, (metric, a, b) in enumerate(rows):
                head = [f"{name} ({task['data']})", model] if i == 0 else ["", ""]
                times = [f"{task['chance']:.2f}", f"{m['mteb_seconds']:.1f} s", f"{m['onepeace_seconds']:.1f} s"] \
                    if i == 0 else ["", "", ""]
                ours = "" if b is None else f"{b:.2f}"
                lines.append("| " + " | ".join([*head, metric, f"{a:.2f}", ours, *times]) + " |")
    h = res["hear"]
    lines += ["", "| HEAR | value |", "|---|---|",
              f"| clips | {h['clips']} x {h['clip_seconds']} s at {h['sample_rate']} Hz |",
              f"| scene embeddings | {' x '.join(map(str, h['scene_shape']))}, {h['scene_seconds_per_clip']} s per clip |",
              f"| timestamp embeddings | {' x '.join(map(str, h['timestamp_shape']))}, "
              f"{h['timestamp_seconds_per_clip']} s per clip |",
              f"| frames | every {h['hop_ms']:g} ms, the first at {h['first_ms']:g} ms |"]
    return "\n".join(lines) + "\n"


TABLES: dict[str, Callable[[], str]] = {
    "demo": demo, "demo-video": demo_video, "seeds": seeds, "precision": precision, "speed": speed,
    "downstream": downstream, "harness": harness,
}


def regenerate(text: str, where: str = "") -> str:
    """``text`` with every marked table rendered anew from its JSON (an unknown NAME is an error)."""
    def sub(m: re.Match) -> str:
        name = m.group(2)
        if name not in TABLES:
            raise SystemExit(f"{where}: unknown table {name!r}; known: {', '.join(TABLES)}")
        return m.group(1) + TABLES[name]() + m.group(4)
    return MARK.sub(sub, text)


def stale() -> list[str]:
    """The files whose tables differ from their JSON."""
    return [str(p.relative_to(ROOT)) for p in FILES
            if (t := p.read_text(encoding="utf-8")) != regenerate(t, str(p.relative_to(ROOT)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report the files whose tables differ from their JSON")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        for f in bad:
            print(f"{f}: a table differs from its results file (run make tables)")
        return 1 if bad else 0
    for p in FILES:
        text = p.read_text(encoding="utf-8")
        new = regenerate(text, str(p.relative_to(ROOT)))
        if new != text:
            p.write_text(new, encoding="utf-8")
            print(f"rewrote the tables of {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
