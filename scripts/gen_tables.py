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
import statistics
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _r(x: float, nd: int = 1) -> str:
    """``x`` with ``nd`` decimals, rounded half up as a reader rounds (14.45 -> 14.5, 822.5 -> 823)."""
    return str(Decimal(repr(float(x))).quantize(Decimal(1).scaleb(-nd), rounding=ROUND_HALF_UP))


def _n(x: float) -> str:
    """``x`` rounded half up to a whole number, with thousands separators (1249.4 -> 1,249)."""
    return f"{int(Decimal(repr(float(x))).quantize(Decimal(1), rounding=ROUND_HALF_UP)):,}"


def _b(text: str, bold: bool = True) -> str:
    return f"**{text}**" if bold else text


def _table(head: list[str], align: str, rows: list[list[str]]) -> str:
    """A Markdown table: ``align`` gives each column's rule, e.g. ``"lrr"`` (l: ---, r: ---:)."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join(["| " + " | ".join(head) + " |", rule, *("| " + " | ".join(r) + " |" for r in rows)]) + "\n"


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


# ------------------------------------------------------------------------- docs/benchmarks.md
def _workload(size: str, m: str, r: dict) -> str:
    """A workload's name from its batch and tokens (16-px image patches, 20-ms audio frames)."""
    shape = {"image": f"{r['batch']} × {round((r['T'] - 1) ** 0.5) * 16} px",
             "text": f"{r['batch']} captions" + (f" (T = {r['T']})" if size == "base" else ""),
             "audio": f"{r['batch']} × {r['T'] * 0.02:g} s"}[m]
    return f"base {m}, {shape}" if size == "base" else f"4B width, {m} {shape}"


def peak() -> str:
    """Speed-up over the official way and share of the matmul peak, ours (reference), base and 4B
    width: benchmarks/results/peak.json (benchmarks/bench_peak.py); its base rows are formatted as
    ``speed`` formats them for the README."""
    res = _load("peak.json")["results"]
    rows = []
    for size in ("base", "4b-width"):
        for m in ("image", "text", "audio"):
            cells = [_workload(size, m, res[size]["fp32"]["modalities"][m])]
            for dtype in ("fp32", "bf16"):
                r = res[size][dtype]["modalities"][m]
                cells += [_b(f"{r['speedup']:.2f}×", r["speedup"] > 1.03),
                          f"{r['ours_pct_peak']:.0f}% ({r['reference_pct_peak']:.0f}%)"]
            rows.append(cells)
    audio, text = _padding_ranges()
    rows += [[f"variable lengths (audio {audio} s, text {text} tokens)", "see *Variable lengths* in [Python](python.md) "
              "(`bench_padding.py`, `benchmarks/results/padding.json`)", "", "", ""],
             ["int8, ONNX Runtime", "see the int8 and ONNX sections (`int8.json`, `onnx.json`)", "", "", ""]]
    return _table(["workload", "fp32 speed-up", "fp32 % of peak", "bf16 speed-up", "bf16 % of peak"], "lllll", rows)


def load() -> str:
    """Import, load and first-embedding times and peak RSS: benchmarks/results/load.json (benchmarks/bench_load.py)."""
    rows = []
    for name, m in _load("load.json")["models"].items():
        label = f"demo model ({m['dtype']})" if name == "demo" else f"{name.split('/')[0]}, loaded in {m['dtype']}"
        rows.append([label, f"{_r(m['median_imported_s'])} s", f"{_r(m['median_loaded_s'])} s",
                     f"{_r(m['median_first_embedding_s'])} s",
                     f"{_r(m['median_hwm_after_load_gb'], 2)} / {_r(m['median_hwm_gb'], 2)} GB",
                     f"{_r(m['weight_gb'], 2)} GB"])
    return _table(["model", "`import onepeace`", "loaded", "first embedding", "peak RSS after loading / at the end",
                   "weights"], "llllll", rows)


def memory() -> str:
    """Peak RSS loading the 4B model and converting its official checkpoint: benchmarks/results/model.json
    (benchmarks/bench_model.py, its load and convert parts)."""
    res = _load("model.json")
    ld, cv = res["load"], res["convert"]
    dtype = {"torch.bfloat16": "bf16", "torch.float32": "fp32", "torch.float16": "fp16"}[ld["dtypes"][0]]
    rows = [[f"peak RSS loading `{ld['model']}` in {dtype} from our format",
             f"{_r(ld['peak_rss_bytes'] / 1e9, 2)} GB for {_r(ld['weight_bytes'] / 1e9, 2)} GB of weights = "
             f"**{_r(ld['peak_over_weights'], 2)}×**", f"≤ {ld['goal_peak_over_weights']:g}×"],
            [f"peak RSS converting a {_r(cv['source_bytes'] / 1e9, 2)} GB fp32 official-format 4B checkpoint",
             f"{_r(cv['peak_rss_bytes'] / 1e9, 2)} GB for {_r(cv['output_bytes'] / 1e9, 2)} GB of output = "
             f"**{_r(cv['peak_over_output'], 2)}×** ({_n(cv['convert_s'])} s)", f"≤ {cv['goal_peak_over_output']:g}×"]]
    return _table(["what", "measured", "goal"], "lll", rows)


def train() -> str:
    """Training throughput and DDP scaling: benchmarks/results/train.json (benchmarks/bench_train.py)."""
    rows = []
    for size, t in _load("train.json")["throughput"].items():
        runs, sc = t["runs"], t["scaling"]["same_per_rank_batch"]

        def rate(run: str, runs: dict = runs) -> str:
            x = runs[run]["samples_per_s"]
            return _r(x, 1 if x >= 10 else 2)

        rows.append([f"{size}, {t['per_rank_batch']}/rank", f"{rate('one_proc_2_threads')} samples/s",
                     rate("one_proc_1_thread"), rate("ddp_2_procs_1_thread"),
                     f"**{_r(sc['efficiency_vs_2x_one_proc_1_thread'], 2)}**",
                     f"{_r(sc['speedup_vs_one_proc_2_threads'], 2)}×"])
    return _table(["", "1 proc, 2 threads", "1 proc, 1 thread", "DDP 2×1 thread, same per-rank batch",
                   "efficiency vs 2 × (1 proc, 1 thread)", "vs 1 proc, 2 threads"], "llllll", rows)


def video() -> str:
    """Video embedding against its frames as images: benchmarks/results/video.json (benchmarks/bench_video.py)."""
    runs = _load("video.json")["runs"]
    pool0 = runs[0]["pool"]

    def row(label: str, tokens: str, r: dict, bold: bool) -> list[str]:
        return [label, tokens, _r(r["s_per_clip"]), _r(r["cpu_s_per_clip"]), _b(_r(r["clips_per_s_quiet"], 2), bold),
                f"{_r(r['peak_rss_gb'], 2)} GB (+{_r(r['peak_over_model_gb'], 2)})"]

    rows, as_images = [], []
    for run in runs:
        f, pool = run["frames"], run["pool"]
        suffix = "" if pool == pool0 else f", `pool={pool}`"
        rows.append(row(f"video, {f} frames{suffix}", f"{run['tokens_per_clip']:,}", run["video"], pool == pool0))
        if "frames_as_images" in run:
            per_image = (run["tokens_per_clip"] - 1) // f * pool * pool + 1
            as_images.append(row(f"{f} frames as {f} images", f"{f} × {per_image}", run["frames_as_images"], False))
    rows = [r for r in rows if "`pool=" not in r[0]] + as_images + [r for r in rows if "`pool=" in r[0]]
    return _table(["", "tokens", "wall s / clip", "CPU s / clip", "clips/s, quiet 2 cores",
                   "peak RSS (over the loaded model)"], "llllll", rows)


# ------------------------------------------------------------------- precision.md, python.md
def int8() -> str:
    """int8 against bf16 and fp32, time and cosine, base width: benchmarks/results/int8.json (benchmarks/bench_int8.py)."""
    res = _load("int8.json")
    rows = []
    for m, label in SPEED_ROWS.items():
        s, cos = res["speed"][m], res["cosine_random_weights"][m]["int8"]["min"]
        rows.append([label, *(_r(s["seconds"][d], 2) for d in ("fp32", "bf16", "int8")),
                     f"**{_r(s['int8_over_bf16'], 2)}×**", f"{_r(s['int8_over_fp32'], 2)}×", _r(cos, 4)])
    return _table(["base width, random weights", "fp32 s", "bf16 s", "int8 s", "int8 vs bf16", "int8 vs fp32",
                   "cosine int8/fp32 (min)"], "lllllll", rows)


def _padding_ranges() -> tuple[str, str]:
    """The audio durations (s) and caption lengths (tokens) of the padding benchmark, e.g. ("1–15", "3–70")."""
    spans = re.findall(r"linspace\((\d+), (\d+)", _load("padding.json")["method"]["workloads"])
    return tuple(f"{a}–{b}" for a, b in spans)


def padding() -> str:
    """Bucketed against one padded batch the official way: benchmarks/results/padding.json (benchmarks/bench_padding.py)."""
    res = _load("padding.json")
    spans = dict(zip(("audio", "text"), _padding_ranges(), strict=True))
    rows = []
    for m, label in (("audio", "audio, {n} clips of {span} s"), ("text", "text, {n} captions of {span} tokens")):
        w = res["fp32"][m]
        cells = [label.format(n=w["items"], span=spans[m]), f"{w['tokens_scheduled']} ({w['tokens_real']} / {w['tokens_padded']})"]
        for dtype in ("fp32", "bf16"):
            r = res[dtype][m]
            cells.append(_b(f"{_r(r['speedup_vs_padded_reference'], 2)}×", r["meets_goal"]))
        rows.append(cells)
    return _table(["workload", "tokens computed (real / padded)", "fp32", "bf16"], "llll", rows)


# --------------------------------------------------------------- search.md, scale.md, serve.md
def search() -> str:
    """Exact and ANN query latency, recall, build time, memory and size at 10k-1M rows:
    benchmarks/results/search.json (benchmarks/bench_search.py)."""
    rows = []
    for _, s in sorted(_load("search.json")["sizes"].items(), key=lambda kv: int(kv[0])):
        ex, ann, build = s["exact"], s["ann_defaults"], s["ann_build_s"]
        disk = f"{_n(s['size_on_disk_mb'])} MB" if s["size_on_disk_mb"] < 100 else f"{_r(s['size_on_disk_mb'] / 1000)} GB"
        rows.append([f"{s['rows']:,}", f"{_n(ex['p50_ms'])} / {_n(ex['p95_ms'])} ms",
                     f"{_r(ann['p50_ms'])} / {_r(ann['p95_ms'])} ms", _r(ann["recall@10"], 3),
                     f"{_r(build) if build < 10 else _n(build)} s", f"{_r(s['rss_peak_mb'] / 1000)} GB", disk])
    return _table(["rows", "exact p50 / p95", "ANN p50 / p95", "ANN recall@10", "ANN build", "peak RSS", "on disk"],
                  "lllllll", rows)


def index() -> str:
    """`index build` against `model.embed` by decoding workers: benchmarks/results/index.json (benchmarks/bench_index.py)."""
    t = _load("index.json")["throughput"][0]
    rate, ratio = t["items_per_s"], t["ratio_vs_embed"]
    rows = [[f"`model.embed(image=files, batch_size={t['batch_size']})`", _r(rate["embed"], 2), _r(1, 2)]]
    for key in sorted(k for k in rate if k.startswith("index_workers")):
        n = int(key.removeprefix("index_workers"))
        note = " (decoding in the main process, like `model.embed`)" if n == 0 else ""
        rows.append([f"`index build --workers {n}`{note}", _r(rate[key], 2), _r(ratio[key], 2)])
    return _table(["", "items/s", "× `model.embed`"], "lll", rows)


def search_ray() -> str:
    """The Ray engine against the in-process build and plain `model.embed`:
    benchmarks/results/search-ray.json (benchmarks/bench_search_ray.py)."""
    r = _load("search-ray.json")
    workers = f"{r['local_workers']} decoding worker" + ("s" if r["local_workers"] != 1 else "")
    rows = [["plain `model.embed` (reference)", _r(r["embed_items_per_s"]), _r(r["embed_cpu_ms_per_item"])],
            [f"`--engine local` ({workers})", _r(r["local_items_per_s"]), _r(r["local_cpu_ms_per_item"])],
            [f"`--engine ray` (local cluster of {r['ray_cpus']} CPUs, {r['ray_actors']} actors; its "
             f"{_r(r['ray_init_s'])} s start apart)", _r(r["ray_items_per_s"]), _r(r["ray_cpu_ms_per_item"])]]
    return _table(["engine", "items/s (wall)", "CPU ms per item (all processes)"], "lrr", rows)


def _rps(x: float) -> str:
    return _n(x) if x >= 20 else _r(x, 1 if x >= 1 else 2)


def _cpu_pair(a: float, b: float) -> str:
    """Two CPU times per request in ms, as seconds once one reaches a second."""
    if max(a, b) >= 1000:
        return f"{_r(a / 1000, 2)} vs {_r(b / 1000, 2)} s"
    return " vs ".join(_r(x) if x < 20 else _n(x) for x in (a, b)) + " ms"


def serve() -> str:
    """Micro-batching against one request at a time: benchmarks/results/serve.json (benchmarks/bench_serve.py)."""
    rows = []
    for size, run in _load("serve.json")["runs"].items():
        for m in ("text", "image"):
            r = run[m]
            b, one = r["batched"], r["one_at_a_time"]
            rounds = ", ".join(_n(x) if x >= 10 else _r(x) for x in r["speedup_per_round"])
            rows.append([f"{size}, {m}", _rps(b["throughput_rps"]), _rps(one["throughput_rps"]),
                         f"{_b(_r(r['speedup']) + '×', r['speedup'] >= 1.5)} ({rounds})",
                         f"{_n(b['p50_ms'])} / {_n(b['p95_ms'])}", f"{_n(one['p50_ms'])} / {_n(one['p95_ms'])}",
                         _r(b["mean_batch"]), _cpu_pair(b["server_cpu_ms_per_request"], one["server_cpu_ms_per_request"])])
    return _table(["model, input", "batched req/s", "one at a time req/s", "speed-up (each round)",
                   "p50 / p95 ms, batched", "p50 / p95 ms, one at a time", "mean batch", "server CPU per request"],
                  "llllllll", rows)


def serve_load() -> str:
    """Mixed load by number of users: the levels of benchmarks/results/serve-load.json (benchmarks/bench_serve_load.py)."""
    rows = []
    for lv in _load("serve-load.json")["levels"]:
        rss = lv["rss_mb"]
        rows.append([str(lv["users"]), f"{lv['requests']:,}", _n(lv["requests_per_s"]),
                     f"{_n(lv['p50_ms'])} / {_n(lv['p95_ms'])} / {_n(lv['p99_ms'])}",
                     f"{100 * lv['error_rate']:g} % ({100 * lv['shed_503_rate']:g} %)",
                     f"{_n(rss['before'])} → {_n(rss['after_load'])} → {_n(rss['after_settle'])} MB"])
    return _table(["users", "requests", "req/s", "p50 / p95 / p99 ms", "errors (503 shed)",
                   "server RSS before → after → 5 s idle"], "rrrlll", rows)


# ------------------------------------------------------------------------------ research.md
ABLATION_SETS = {"retrieval": "in-distribution", "heldout_engine": "held-out engine (festival)",
                 "heldout_source": "held-out image source (fonts)"}
ABLATION_ROWS = ["retrieval/audio->text", "retrieval/audio->image", "retrieval/image->text",
                 "heldout_engine/audio->text", "heldout_engine/audio->image",
                 "heldout_source/image->text", "heldout_source/audio->image"]
ARM_NOTES = {"default": "the demo before the word in context, now `--no-context`", "plain": "the earlier recipe"}


def _spread(s: dict, bold: bool = False) -> str:
    """median (min – max) of a summary, the median alone where all three are one seed's."""
    med = _b(_r(s["median"]), bold)
    return med if s["min"] == s["max"] == s["median"] else f"{med} ({_r(s['min'])} – {_r(s['max'])})"


def ablation() -> str:
    """R@1 of the demo's recipes in distribution and on the held-out sets: the arms of
    benchmarks/results/demo-ablation.json (benchmarks/demo_seeds.py --ablation)."""
    arms = _load("demo-ablation.json")["arms"]
    head = ["R@1 (%)", "set"]
    for name, arm in arms.items():
        notes = [ARM_NOTES[name]] if name in ARM_NOTES else []
        if len(arm["per_seed"]) == 1:
            notes.append(f"seed {next(iter(arm['per_seed']))} only")
        flags = f"`{' '.join(arm['flags'])}`" if arm["flags"] else ""
        head.append(f"{name}: " + (f"{flags} ({', '.join(notes)})" if flags and notes else flags or ", ".join(notes)))
    rows = []
    for key in ABLATION_ROWS:
        section, pair = key.split("/")
        cells = [pair, ABLATION_SETS[section]]
        for name, arm in arms.items():
            s = arm["summary"][key]
            cells.append(_spread(s, name == "default" and s["median"] > arms["plain"]["summary"][key]["median"]))
        rows.append(cells)
    return _table(head, "ll" + "r" * len(arms), rows)


#: the stage-2 recipes of demo-ablation.json's explored.stage2_variants, in the order tried
STAGE2_RUNS = {
    "robust250": "250 steps, tempo ±5%, faint noise (the default before the word in context)",
    "r400": "400 steps",
    "ev400": "400 steps with the added voices",
    "ev400med": "400 steps, added voices, tempo ±10%, pitch ±1.5 semitones, noise at 20–40 dB, up to 0.3 s of silence",
    "lp": "+ low-pass at 2–6 kHz (p 0.5)",
    "lptilt": "+ low-pass (p 0.4) and spectral tilt −6…+2 dB/octave (p 0.5)",
    "tilt8": "+ spectral tilt −8…+2 dB/octave (p 0.6)",
    "env": "+ slowly varying gain, down to −3…−15 dB (p 0.5)",
    "edges": "+ first and/or last 40–150 ms 10–35 dB softer (p 0.5; weak consonants, not kept as an option)",
}


def stage2() -> str:
    """Held-out-engine and in-distribution audio->text R@1 of the stage-2 recipes tried, seeds 0 / 1:
    explored.stage2_variants of benchmarks/results/demo-ablation.json."""
    runs = _load("demo-ablation.json")["explored"]["stage2_variants"]["runs"]
    assert set(runs) == set(STAGE2_RUNS), f"stage2_variants runs {sorted(runs)}: label them in STAGE2_RUNS"
    rows = []
    for name, label in STAGE2_RUNS.items():
        seeds = runs[name]["per_seed"]

        def both(section: str, seeds: dict = seeds) -> str:
            return " / ".join(_r(seeds[k][section]["audio->text"]) if k in seeds else "–" for k in ("0", "1"))

        rows.append([label, both("heldout_engine"), both("in-distribution")])
    return _table(["stage 2", "held-out engine", "in distribution"], "lrr", rows)


AUDIO_CORRUPTIONS = {"none": "none", "gain x0.1": "gain × 0.1", "speed 1.15": "faster (speed 1.15)",
                     "speed 0.85": "slower (speed 0.85)", "noise 20 dB": "white/pink noise, 20 dB SNR",
                     "noise 10 dB": "noise, 10 dB SNR", "telephone": "telephone band",
                     "0.5 s silence each side": "0.5 s of silence before and after",
                     "telephone + 20 dB + silence": "telephone + 20 dB + silence"}
IMAGE_CORRUPTIONS = {"none": "none", "blur 1.5": "blur (radius 1.5)", "thicker (3x3 max)": "thicker strokes (3×3 max)",
                     "thinner (3x3 min)": "thinner strokes (3×3 min)", "8x8 low resolution": "8×8 low resolution",
                     "shifted (6, 4) px": "shifted by (6, 4) px", "half size": "half size", "inverted": "inverted",
                     "dark ink on light paper": "dark ink on light paper"}
#: the row the text dwells on
ROBUSTNESS_BOLD = "0.5 s silence each side"


def _robustness_models(res: dict, group: str) -> list[dict]:
    """The models of one group of demo-robustness.json: those whose label's first word is ``group``."""
    return [res["models"][p] for p, label in res["labels"].items() if label.split()[0] == group]


def _median_cells(models: list[dict], pair: str, key: str, bold: bool = False, spread: bool = True) -> str:
    xs = [m[pair][key] for m in models]
    if not spread:
        return _r(statistics.median(xs))
    return _spread({"median": statistics.median(xs), "min": min(xs), "max": max(xs)}, bold)


def robustness() -> str:
    """Zero-shot accuracy under one corruption at a time, the default models (median, min – max of
    their seeds), the ``--no-context`` and the plain ones (median): benchmarks/results/demo-robustness.json
    (benchmarks/demo_robustness.py)."""
    res = _load("demo-robustness.json")
    default, plain = _robustness_models(res, "default"), _robustness_models(res, "plain")
    before = _robustness_models(res, "no-context")
    for pair, labels in (("audio->text", AUDIO_CORRUPTIONS), ("image->text", IMAGE_CORRUPTIONS)):
        for m in default + plain + before:
            missing = [k for k in labels if k not in m[pair]]
            assert not missing, f"{pair}: a model lacks the corruptions {missing}; run benchmarks/demo_robustness.py"

    def cells(pair: str, key: str, label: str, bold: bool, others: tuple[list[dict], ...]) -> list[str]:
        return [_b(label, bold), _median_cells(default, pair, key, bold),
                *(_median_cells(ms, pair, key, spread=False) for ms in others)]

    rows = [cells("audio->text", a, AUDIO_CORRUPTIONS[a], a == ROBUSTNESS_BOLD, (before, plain))
            + cells("image->text", i, IMAGE_CORRUPTIONS[i], False, (plain,))
            for a, i in zip(AUDIO_CORRUPTIONS, IMAGE_CORRUPTIONS, strict=True)]
    return _table(["corruption of the test clips", "audio→text %, default", "`--no-context`", "plain",
                   "corruption of the test digits", "image→text %, default", "plain"], "lrrrlrr", rows)


#: the word in context (demo_robustness.py's context cases), as the demo page names them
CONTEXT_CASES = {"none": "tightly cut (as trained)", "0.5 s silence each side": "0.5 s of silence before and after",
                 "ESC-10 bed at 1/20 peak": "over ESC-10 sound at 1/20 of the word's peak",
                 "ESC-10 bed, 20 dB SNR": "over ESC-10 sound, 20 dB SNR",
                 "ESC-10 bed, 10 dB SNR": "over ESC-10 sound, 10 dB SNR",
                 "0.5 s silence + ESC-10 bed at 1/20 peak": "0.5 s of silence and ESC-10 sound at 1/20 peak"}


def context() -> str:
    """The word in context before (``--no-context`` models) and after (the default ones): audio→text
    zero-shot accuracy, median (min – max) of their seeds, and ``onepeace try``'s own path with its
    trim on and off (median of the default models measured with ``--try``):
    benchmarks/results/demo-robustness.json (benchmarks/demo_robustness.py)."""
    res = _load("demo-robustness.json")
    before, after = _robustness_models(res, "no-context"), _robustness_models(res, "default")
    tried = [m for m in after if "try" in m]
    assert before and after and tried, "demo-robustness.json lacks the no-context models or the default ones with --try"
    rows = []
    for key, label in CONTEXT_CASES.items():
        row = [label, _median_cells(before, "audio->text", key), _median_cells(after, "audio->text", key, True)]
        t = [m["try"][key] for m in tried if key in m["try"]]
        row.append(" / ".join(_r(statistics.median(r[k] for r in t)) for k in ("trim", "no trim")) if t else "–")
        rows.append(row)
    return _table(["the unseen test voices, audio→text %", f"before: `--no-context` ({len(before)} seeds)",
                   f"after: the default ({len(after)} seeds)", f"`onepeace try` after, trim / no trim ({len(tried)} seeds)"],
                  "lrrr", rows)


# ------------------------------------------------------------------------------------ adapting
def demo_adapt() -> str:
    """`make demo-adapt` over its seeds, before and after: benchmarks/results/demo-adapt.json
    (benchmarks/demo_adapt_seeds.py)."""
    res = _load("demo-adapt.json")
    s, first = res["summary"], next(iter(res["per_seed"].values()))
    z, f = s["heldout_zero_shot"], s["forgetting"]
    speakers = ", ".join(first["heldout_zero_shot"]["speakers"])
    rows = [[f"zero-shot accuracy, held-out real speakers ({speakers}; chance {_r(first['heldout_zero_shot']['chance'], 0)}%)",
             _spread(z["before"]), _spread(z["after"], True), _spread(z["change"])],
            ["audio→text R@1, the demo's own test voices (forgetting)", _spread(f["before"]), _spread(f["after"]),
             _spread(f["change"])]]
    seeds = ", ".join(str(k) for k in res["per_seed"])
    return _table([f"% (median, min – max over seeds {seeds})", "before", "after", "change"], "lrrr", rows)


def adapt_step() -> str:
    """One adapt step by size: benchmarks/results/adapt.json's step section (benchmarks/bench_adapt.py)."""
    res = _load("adapt.json")
    st, mach = res["step"], res["machine"]
    rows = []
    for size, m in st["sizes"].items():
        if "error" in m:
            rows.append([f"`{size}`", "–", "–", "–", "–", m["error"]])
            continue
        rows.append([f"`{size}`", f"{_n(m['params'] / 1e6)} M", f"{_r(m['weight_gb'], 2)} GB",
                     f"{_r(m['seconds_per_step'], 2)} s", f"{_r(m['peak_rss_gb'], 2)} GB",
                     f"{_r(m['adapter_bytes'] / 1e6, 2)} MB"])
    return _table([f"preset (random weights; {mach['cpu_model']}, {mach['threads']} threads)", "parameters", "bf16 weights", "seconds per step", "peak RSS",
                   "adapter file"], "lrrrrr", rows)


def adapt_compare() -> str:
    """LoRA against full fine-tuning of the same layers: benchmarks/results/adapt.json's compare section."""
    c = _load("adapt.json")["compare"]
    names = {"lora": "LoRA (the demo's adapter)", "full": "full fine-tuning, same learning rate",
             "full_low_lr": "full fine-tuning, 10× lower learning rate",
             "lora_no_rehearsal": "LoRA without the rehearsed synthetic clips"}
    rows = [[f"{names[k]} (lr {c[k]['lr']:g})", _n(c[k]["trainable_params"]), f"{_r(c[k]['stored_bytes'] / 1e6, 2)} MB",
             _r(c[k]["zero-shot"]), _r(c[k]["demo audio->text R@1"]), f"{_r(c[k]['peak_rss_training_gb'], 2)} GB",
             f"{_r(c[k]['seconds_per_step'], 2)} s"] for k in names if k in c]
    return _table(["arm", "trained parameters", "to store", "held-out zero-shot %", "demo audio→text R@1",
                   "peak RSS", "s per step"], "lrrrrrr", rows)


# ------------------------------------------------------------------------------------ parity
def _g(x: float) -> str:
    return "0" if x == 0 else f"{x:.2g}"


def parity() -> str:
    """fp32 parity with the official outputs per row, one column per CPU measured:
    benchmarks/results/parity.json (benchmarks/parity.py, ``make parity``)."""
    cpus = _load("parity.json")["cpus"]
    names = sorted(cpus)
    first = cpus[names[0]]["rows"]
    rows = []
    for row in first:
        if row.endswith("(ours)"):  # internal consistency checks, not against the official outputs
            continue
        r = first[row]
        lo, hi = _g(r["tol_min"]), _g(r["tol_max"])
        tol = lo if lo == hi else f"{lo} – {hi}"
        diffs = [f"{_g(cpus[c]['rows'][row]['max_diff'])} ({cpus[c]['rows'][row]['worst_ratio']:.2f})"
                 if row in cpus[c]["rows"] else "–" for c in names]
        rows.append([row, *diffs, tol, str(r["checks"])])
    head = ["what", *[f"max diff on {c} (worst diff/tol)" for c in names], f"derived tolerance ({names[0]})", "checks"]
    return _table(head, "l" + "r" * (len(names) + 2), rows)


# ------------------------------------------------------------------------------------ moments
def _pct(x: float | None) -> str:
    return "–" if x is None else f"{_r(100 * x)}%"


def _sec(x: float | None) -> str:
    return "–" if x is None else f"{_r(x)} s"


def _moment_rows(block: dict, label: str = "") -> list[list[str]]:
    """The rows of one condition of benchmarks/results/moments.json: the whole-file baseline (and
    plain file search), then each window setting."""
    base, plain = block["baseline"]["whole_file"], block["baseline"]["no_moments"]["across_files"]
    rows = [[f"{label}whole file (no moments)", "–", _pct(base["recall_at_1"]),
             f"{_r(base['start_error_s'])} / {_r(base['end_error_s'])} s", _sec(base["range_s"]), "–", "–",
             f"– / {_pct(plain['file_search_right_file'])} (chance {_pct(plain['right_file_chance'])})"]]
    for st in block["settings"]:
        w, a = st["within_file"], st["across_files"]
        rows.append([f"{label}{st['name']}", _n(st["windows"]), _b(_pct(w["recall_at_1"]), False),
                     f"{_r(w['start_error_s'])} / {_r(w['end_error_s'])} s", _sec(w["range_s"]),
                     _pct(w.get("best_window_recall")), _pct(a["recall_at_1"]),
                     f"{_pct(a['right_file'])} / {_pct(a['file_search_right_file'])}"])
    return rows


MOMENT_HEAD = ["setting", "windows", "recall@1 in its file", "start / end error", "range", "best window",
               "recall@1 across files", "right file: moment / file search"]


def moments_audio() -> str:
    """Text -> audio moments with known answers, per sound between the words and window setting:
    benchmarks/results/moments.json (benchmarks/bench_moments.py)."""
    conds = _load("moments.json")["audio"]["conditions"]
    names = {"bed": "ESC-10 bed: ", "silence": "near-silence: "}
    rows = [row for c, block in conds.items() for row in _moment_rows(block, names.get(c, f"{c}: "))]
    return _table(MOMENT_HEAD, "lrrrrrrr", rows)


def moments_video() -> str:
    """Text -> video moments with known answers per window setting: benchmarks/results/moments.json."""
    return _table(MOMENT_HEAD, "lrrrrrrr", _moment_rows(_load("moments.json")["video"]))


def moments_cost() -> str:
    """Indexing one hour of audio and of video with moments: benchmarks/results/moments.json."""
    t = _load("moments.json")["throughput"]
    rows = []
    for m in ("audio", "video"):
        x = t[m]
        rows.append([f"1 h of {m} ({x['moments']['window']:g} s windows every {x['moments']['hop']:g} s)",
                     _n(x["windows"]), f"{_r(x['hours_per_cpu_hour'])} ({_r(x['hours_per_cpu_hour_measured_cpu'])})",
                     f"{_n(x['rss_model_loaded_mb'])} → {_n(x['peak_rss_during_build_mb'])} MB",
                     f"{_n(x['reference']['growth_mb'])} / {_n(x['growth_mb'])} MB",
                     f"{_r(x['growth_over_float32_hour'], 2)}×"])
    return _table(["indexed, one thread", "windows", "hours per CPU-hour (over CPU time)", "RSS: model loaded → peak",
                   "growth: 1 min / 1 h", "growth / float32 hour"], "lrrrrr", rows)


def moments_latency() -> str:
    """Moment search over 100 hours of windows: benchmarks/results/moments.json's latency section."""
    lat = _load("moments.json")["latency"]
    rows = [[f"{what}, {how}", f"{_r(lat[key]['p50_ms'])} ms", f"{_r(lat[key]['p95_ms'])} ms",
             f"{_r(lat[key]['cpu_ms_mean'])} ms"]
            for base, what in (("exact", "exact"), ("ann", f"ANN ({lat['ann_index']})"))
            for key, how in ((base, "query vector given"), (f"{base}_with_query_embedding", "text embedded"))]
    return _table([f"moment search, {_n(lat['rows'])} windows ({lat['hours']} h), k = {lat['k']}", "p50", "p95",
                   "CPU per query"], "lrrr", rows)


TABLES: dict[str, Callable[[], str]] = {
    "demo": demo, "demo-video": demo_video, "seeds": seeds, "precision": precision, "speed": speed,
    "downstream": downstream, "harness": harness,
    "peak": peak, "load": load, "memory": memory, "train": train, "video": video, "int8": int8, "padding": padding,
    "search": search, "index": index, "search-ray": search_ray, "serve": serve, "serve-load": serve_load,
    "ablation": ablation, "stage2": stage2, "robustness": robustness, "context": context,
    "demo-adapt": demo_adapt, "adapt-step": adapt_step, "adapt-compare": adapt_compare, "parity": parity,
    "moments-audio": moments_audio, "moments-video": moments_video, "moments-cost": moments_cost,
    "moments-latency": moments_latency,
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
