"""The laptop demo over seeds: how much its retrieval numbers move with the seed alone.

Runs the full ``onepeace demo`` (the command a user runs) once per seed, each into its own
directory under a scratch folder, and writes ``benchmarks/results/demo-seeds.json``: every seed's
metrics (and the environment they were measured in), and the median / min / max of each metric
per retrieval pair. ``--table`` prints the README's markdown table from that file.

    python benchmarks/demo_seeds.py [--seeds 0 1 2 3 4] [--scratch runs/demo-seeds] [--reuse]
    python benchmarks/demo_seeds.py --table
    python benchmarks/demo_seeds.py --plain     # the earlier recipe: benchmarks/results/demo-seeds-plain.json
    python benchmarks/demo_seeds.py --stage1-steps 2 --stage2-steps 2   # a pipeline check, not results

``--ablation`` trains the demo with and without the added voices and augmentation (arms
``default``: the demo as shipped; ``plain``: ``--plain``, the earlier recipe, stage 2 for 150
steps without augmentation; ``full``: ``--extra-voices --augment --plain``, the added voices and
the heavy augmentation at the earlier step counts; ``--arms`` adds ``voices`` = ``--extra-voices
--plain``, ``augment`` = ``--augment --plain`` and ``no-context`` = ``--no-context``, the recipe
before the word in context), one run directory per arm and seed under
``runs/demo-ablation``, and writes ``benchmarks/results/demo-ablation.json``: in-distribution,
held-out-engine and held-out-image-source R@1 per arm, median and range over the seeds.
``--plain-from DIR`` takes the plain arm's models from finished demos of the earlier recipe in
``DIR/seed-N`` and only evaluates them on the held-out sets; ``--default-from DIR`` takes the
default arm from finished demos in ``DIR/seed-N`` (e.g. the seeds of ``demo-seeds.json``).

    python benchmarks/demo_seeds.py --ablation --seeds 0 1 2 [--default-from runs/demo-seeds] [--reuse]
    python benchmarks/demo_seeds.py --ablation --table

With ``--stage1-steps`` / ``--stage2-steps`` the run is a quick check and goes to
``demo-seeds-quick.json`` unless ``--out`` says otherwise. Each seed's run directory stays in the
scratch folder (the final model, metrics, plot and logs; about 40 MB); a seed whose demo finished
there with the same settings is reused with ``--reuse`` (an interrupted one resumes), otherwise
every seed is run afresh (``onepeace demo --force``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _bench import machine_facts, write_json_atomic  # noqa: E402  (the house helpers; torch imported lazily)

PAIRS = ["image->text", "text->image", "audio->text", "text->audio", "audio->image", "image->audio"]
RESULTS = HERE / "results"


#: the ablation's arms: the demo's flags for each
ARMS = {"default": [], "plain": ["--plain"], "full": ["--extra-voices", "--augment", "--plain"],
        "voices": ["--extra-voices", "--plain"], "augment": ["--augment", "--plain"],
        "no-context": ["--no-context"]}
#: the ablation's figures: (section of metrics.json, pair)
ABLATION_ROWS = [(sec, pair) for sec in ("retrieval", "heldout_engine", "heldout_source")
                 for pair in ("audio->text", "audio->image", "image->text") if (sec, pair) != ("heldout_engine", "image->text")
                 and (sec, pair) != ("heldout_source", "audio->text")]


def _flags_settings(flags: list[str]) -> dict[str, bool]:
    return {"extra_voices": "--extra-voices" in flags, "augment": "--augment" in flags, "plain": "--plain" in flags,
            "no_context": "--no-context" in flags}


def run_seed(seed: int, out: Path, steps: dict[str, int | None], reuse: bool, flags: list[str] | None = None) -> dict:
    """The demo's metrics.json for ``seed`` (run now, or a finished run with the same settings);
    ``flags``: more options of ``onepeace demo`` (the ablation's arms)."""
    flags = flags or []
    state, metrics = out / "demo.json", out / "metrics.json"
    if reuse and state.exists() and metrics.exists():
        s = json.loads(state.read_text())
        m = json.loads(metrics.read_text())
        want = {**{k: v for k, v in steps.items() if v is not None}, **_flags_settings(flags)}
        if s.get("finished") and s["settings"]["seed"] == seed and all(s["settings"].get(k, False) == v for k, v in want.items()):
            print(f"seed {seed}: reusing the finished demo in {out}", flush=True)
            return {**m, "seconds": None}
    # --reuse: an interrupted demo with these settings resumes; otherwise every seed starts afresh
    cmd = [sys.executable, "-m", "onepeace.cli", "demo", "--seed", str(seed), "--out", str(out), *flags]
    cmd += [] if reuse else ["--force"]
    for k, v in steps.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    print(f"seed {seed}: {' '.join(cmd[2:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"seed {seed}: the demo failed (exit {proc.returncode})")
    m = json.loads(metrics.read_text())
    m["seconds"] = round(time.perf_counter() - t0, 1)
    r1 = m["retrieval"]["audio->image"]["R@1"]
    print(f"seed {seed}: done in {m['seconds']:.0f} s, audio->image R@1 {r1:.1f}", flush=True)
    return m


def summarise(per_seed: dict[str, dict], section: str = "retrieval") -> dict[str, dict]:
    """Median / min / max of every figure per pair of ``section`` (of metrics.json), over the seeds."""
    out = {}
    first = next(iter(per_seed.values()))
    for pair in (PAIRS if section == "retrieval" else list(first.get(section, {}))):
        rows = [m[section][pair] for m in per_seed.values()]
        if not all(isinstance(r, dict) for r in rows):
            continue
        keys = [k for k in rows[0] if all(isinstance(r.get(k), (int, float)) for r in rows)]
        out[pair] = {k: {"median": round(statistics.median(r[k] for r in rows), 2),
                         "min": min(r[k] for r in rows), "max": max(r[k] for r in rows)} for k in keys}
    return out


def table(result: dict) -> str:
    """The README's table: R@1 median (min-max) per pair over the seeds, against chance."""
    seeds = result["settings"]["seeds"]
    lines = [f"| pair | R@1, median of {len(seeds)} seeds | min - max | chance | per seed ({', '.join(map(str, seeds))}) |",
             "|---|---:|---:|---:|---|"]
    for pair, s in result["summary"].items():
        r1 = s["R@1"]
        each = " / ".join(f"{result['per_seed'][str(k)]['retrieval'][pair]['R@1']:.1f}" for k in seeds)
        lines.append(f"| {pair} | {r1['median']:.1f} | {r1['min']:.1f} - {r1['max']:.1f} | "
                     f"{s['chance']['median']:.1f} | {each} |")
    st = result["settings"]
    quick = " (quick check: step counts overridden, not results)" if result.get("mode") == "quick" else ""
    lines.append(f"\n{st['stage1_steps']} + {st['stage2_steps']} steps; {result['machine'].get('cpu_model', '?')}, "
                 f"{result['threads']} threads, torch {result['machine'].get('torch', '?')}{quick}")
    return "\n".join(lines)


def evaluate_earlier(seed: int, run: Path, data: dict[str, str]) -> dict:
    """A finished demo of the earlier recipe in ``run``: its in-distribution metrics, and its
    model evaluated on the held-out sets now."""
    from onepeace_train.demo.run import HELDOUT, _rounded, heldout_retrieval

    m = json.loads((run / "metrics.json").read_text())
    if m["train"]["seed"] != seed:
        raise SystemExit(f"{run} holds seed {m['train']['seed']}, not {seed}")
    print(f"seed {seed}: evaluating the earlier-recipe model {run / 'model'} on the held-out sets", flush=True)
    held = heldout_retrieval(str(run / "model"), data)
    m.update({k: {"data": HELDOUT[k][2], **_rounded(held[k], HELDOUT[k][1])} for k in HELDOUT})
    m["train"].update({"extra_voices": False, "augment": False, "from": str(run)})
    return {**m, "seconds": None}


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": min(values), "max": max(values)}


def ablation_table(result: dict) -> str:
    """R@1 median (min - max) per figure and arm."""
    arms = list(result["arms"])
    seeds = {a: sorted(result["arms"][a]["per_seed"], key=int) for a in arms}
    head = " | ".join(f"{a} ({len(seeds[a])} seeds)" for a in arms)
    lines = [f"| R@1 (%) | set | {head} |", "|---|---|" + "---:|" * len(arms)]
    names = {"retrieval": "in-distribution", "heldout_engine": "held-out engine (festival)",
             "heldout_source": "held-out image source (fonts)"}
    for sec, pair in ABLATION_ROWS:
        cells = []
        for a in arms:
            st = result["arms"][a]["summary"].get(f"{sec}/{pair}")
            cells.append(f"{st['median']:.1f} ({st['min']:.1f} - {st['max']:.1f})" if st else "-")
        lines.append(f"| {pair} | {names[sec]} | {' | '.join(cells)} |")
    lines.append("\nchance 10.0; " + "; ".join(f"{a}: {' '.join(ARMS[a]) or 'the demo as shipped'}" for a in arms))
    return "\n".join(lines)


def run_ablation(args) -> None:
    out = Path(args.out) if args.out else RESULTS / "demo-ablation.json"
    if args.table:
        if not out.exists():
            raise SystemExit(f"{out} does not exist: run python benchmarks/demo_seeds.py --ablation first")
        print(ablation_table(json.loads(out.read_text())))
        return
    scratch = Path(args.scratch) if args.scratch_given else ROOT / "runs" / "demo-ablation"
    steps = {"stage1_steps": args.stage1_steps, "stage2_steps": args.stage2_steps}
    t0 = time.perf_counter()
    arms: dict[str, dict] = {}
    before: dict = {}
    if args.append and out.exists():  # keep the arms measured before (other --arms)
        before = json.loads(out.read_text())
        arms = {a: {**v, "flags": ARMS.get(a, v.get("flags"))} for a, v in before["arms"].items() if a not in args.arms}
        args.plain_from = args.plain_from or before["settings"].get("plain_from")
    data = None
    for arm in args.arms:
        per_seed = {}
        for seed in args.seeds:
            if arm == "default" and args.default_from:
                per_seed[str(seed)] = run_seed(seed, Path(args.default_from) / f"seed-{seed}", steps, True, ARMS[arm])
            elif arm == "plain" and args.plain_from:
                if data is None:
                    from onepeace_train.demo.run import build_data

                    data = build_data(str(scratch / "heldout-data"), 0)
                per_seed[str(seed)] = evaluate_earlier(seed, Path(args.plain_from) / f"seed-{seed}", data)
            else:
                per_seed[str(seed)] = run_seed(seed, scratch / arm / f"seed-{seed}", steps, args.reuse, ARMS[arm])
        summary = {f"{sec}/{pair}": _stats([m[sec][pair]["R@1"] for m in per_seed.values()])
                   for sec, pair in ABLATION_ROWS if all(sec in m for m in per_seed.values())}
        arms[arm] = {"flags": ARMS[arm], "per_seed": per_seed, "summary": summary}
    arms = {a: arms[a] for a in ARMS if a in arms}  # a fixed column order
    first = next(iter(arms.values()))["per_seed"]
    result = {
        "schema": 1,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if any(v is not None for v in steps.values()) else "full",
        "settings": {"seeds": args.seeds, "arms": list(arms), "plain_from": args.plain_from,
                     "default_from": args.default_from,
                     "stage1_steps": next(iter(first.values()))["train"]["stage1_steps"],
                     "stage2_steps": next(iter(first.values()))["train"]["stage2_steps"]},
        "machine": {k: v for k, v in machine_facts().items() if k != "threads"},
        "arms": arms,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    if "explored" in before:  # recipes tried by hand, not arms of this script: kept as recorded
        result["explored"] = before["explored"]
    write_json_atomic(out, result)
    print(f"wrote {out}\n")
    print(ablation_table(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--stage1-steps", type=int, help="passed to onepeace demo (a quick check, not results)")
    ap.add_argument("--stage2-steps", type=int, help="passed to onepeace demo (a quick check, not results)")
    ap.add_argument("--scratch", default=str(ROOT / "runs" / "demo-seeds"), help="one demo directory per seed here")
    ap.add_argument("--reuse", action="store_true", help="reuse seeds whose demo already finished with these settings")
    ap.add_argument("--out", help="results file (default benchmarks/results/demo-seeds.json, "
                                  "demo-seeds-quick.json with step overrides)")
    ap.add_argument("--table", action="store_true", help="print the README table from the results file and exit")
    ap.add_argument("--plain", action="store_true",
                    help="run the demo's earlier recipe (onepeace demo --plain) for every seed, in "
                         "runs/demo-seeds-plain unless --scratch: benchmarks/results/demo-seeds-plain.json")
    ap.add_argument("--ablation", action="store_true",
                    help="with and without the added voices and augmentation: benchmarks/results/demo-ablation.json")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=["default", "plain", "full"], help="with --ablation")
    ap.add_argument("--append", action="store_true",
                    help="with --ablation: keep the other arms already in the results file")
    ap.add_argument("--plain-from", help="with --ablation: the plain arm's models from finished earlier-recipe "
                                         "demos in DIR/seed-N, evaluated on the held-out sets only")
    ap.add_argument("--default-from", help="with --ablation: the default arm from finished demos in DIR/seed-N "
                                           "(e.g. those of demo-seeds.json), reused as they are")
    args = ap.parse_args()
    args.scratch_given = "--scratch" in sys.argv
    if args.ablation:
        run_ablation(args)
        return
    steps = {"stage1_steps": args.stage1_steps, "stage2_steps": args.stage2_steps}
    quick = any(v is not None for v in steps.values())
    flags = ["--plain"] if args.plain else []
    stem = "demo-seeds-plain" if args.plain else "demo-seeds"
    out = Path(args.out) if args.out else RESULTS / (f"{stem}-quick.json" if quick else f"{stem}.json")
    if args.plain and not args.scratch_given:
        args.scratch = str(ROOT / "runs" / "demo-seeds-plain")
    if args.table:
        if not out.exists():
            raise SystemExit(f"{out} does not exist: run python benchmarks/demo_seeds.py first")
        print(table(json.loads(out.read_text())))
        return
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds has repeats: {args.seeds}")
    t0 = time.perf_counter()
    per_seed = {str(s): run_seed(s, Path(args.scratch) / f"seed-{s}", steps, args.reuse, flags) for s in args.seeds}
    first = next(iter(per_seed.values()))
    envs = {json.dumps(m.get("environment"), sort_keys=True) for m in per_seed.values()}
    result = {
        "schema": 1,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "settings": {"seeds": args.seeds, "stage1_steps": first["train"]["stage1_steps"],
                     "stage2_steps": first["train"]["stage2_steps"], **({"plain": True} if args.plain else {})},
        "machine": {k: v for k, v in machine_facts().items() if k != "threads"},
        "threads": first.get("environment", {}).get("threads"),
        "same_environment_for_all_seeds": len(envs) == 1,
        "per_seed": per_seed,
        "summary": summarise(per_seed),
        **{f"summary_{sec}": summarise(per_seed, sec) for sec in ("heldout_engine", "heldout_source")
           if all(sec in m for m in per_seed.values())},
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    write_json_atomic(out, result)
    print(f"wrote {out}\n")
    print(table(result))


if __name__ == "__main__":
    main()
