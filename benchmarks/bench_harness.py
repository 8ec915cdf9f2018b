"""The harnesses on the demo model and a converted tiny official checkpoint: benchmarks/results/harness.json
(docs/harnesses.md's tables).

* MTEB: the local tasks of onepeace.integrations.mteb_tasks, through MTEB's own task classes, scored
  by ``mteb.evaluate`` with ``OnePeaceEncoder``, next to onepeace's own evaluation on the same data,
  with the wall time of each:
  - ESC-10 zero-shot audio classification (AbsTaskZeroShotClassification) against what ``onepeace
    zeroshot`` runs (accuracy);
  - COCO-MINI val image-text retrieval, both directions (AbsTaskRetrieval) against what ``onepeace eval
    retrieval`` runs (MTEB's hit_rate@K is onepeace's R@K; MTEB's recall@K and nDCG@10 are its own);
* models: the demo model (``make demo``) and the tiny official checkpoint of the parity fixtures
  (tests/fixtures/upstream-tiny: random weights, converted with ``onepeace.checkpoints.official.convert``);
* HEAR (the demo model): scene and timestamp embeddings of ESC-10 clips (shapes, frame hop, time per clip).

    make demo                                   # runs/demo/model (once)
    python benchmarks/bench_harness.py          # -> benchmarks/results/harness.json
    python benchmarks/bench_harness.py --model DIR --esc10 ../shared/data/esc10 --folds 1
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OFFICIAL_TINY = ROOT / "tests" / "fixtures" / "upstream-tiny" / "tiny" / "one-peace-tiny.pt"


def _rel(p: str | Path) -> str:
    p = Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def _official_tiny(tmp: str):
    """The tiny official checkpoint converted with the fixtures' dict.txt (tests/conftest.py)."""
    from onepeace.checkpoints.official import convert

    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from conftest import fixture_dict
    finally:
        sys.path.remove(str(ROOT / "tests"))
    convert(OFFICIAL_TINY, Path(tmp) / "official-tiny", fixture_dict(Path(tmp) / "dict.txt"))
    return Path(tmp) / "official-tiny"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "runs" / "demo" / "model"))
    ap.add_argument("--esc10", default=str(ROOT.parent / "shared" / "data" / "esc10"))
    ap.add_argument("--coco", default=str(ROOT.parent / "shared" / "data" / "coco-mini"))
    ap.add_argument("--folds", default="1,2,3,4,5", help="ESC-10 folds to score (comma-separated)")
    ap.add_argument("--no-official", action="store_true", help="leave the tiny official checkpoint out")
    ap.add_argument("--out", default=str(RESULTS / "harness.json"))
    args = ap.parse_args(argv)

    import mteb

    import onepeace
    from onepeace import hear
    from onepeace.integrations.mteb import OnePeaceEncoder
    from onepeace.integrations.mteb_tasks import coco_files, coco_retrieval, esc10_files, esc10_zeroshot
    from onepeace.processing.audio import load_audio
    from onepeace.tasks.evaluate import evaluate_retrieval
    from onepeace.tasks.zeroshot import zero_shot

    folds = tuple(int(f) for f in args.folds.split(","))
    names, paths, labels = esc10_files(args.esc10, folds)
    images, captions = coco_files(args.coco, "val")
    tmp = tempfile.mkdtemp(prefix="bench-harness-")
    manifest = Path(tmp) / "val_retrieval.jsonl"
    manifest.write_text("".join(json.dumps({"image": p, "text": c, "label": i, "id": f"{i}-{k}"}) + "\n"
                                for i, (p, cs) in enumerate(zip(images, captions)) for k, c in enumerate(cs)))
    models = {"demo": args.model}
    if not args.no_official:
        models["official tiny"] = _official_tiny(tmp)
    n_caps = sum(map(len, captions))
    mt: dict = {
        "ESC10ZeroShotLocal": {"data": f"ESC-10 folds {','.join(map(str, folds))}: {len(paths)} clips, "
                                       f"{len(names)} classes", "chance": round(100 / len(names), 2), "scores": {}},
        "COCOI2TRetrievalLocal": {"data": f"COCO-MINI val: {len(images)} images -> {n_caps} captions",
                                  "chance": round(100 * 5 / n_caps, 2), "scores": {}},
        "COCOT2IRetrievalLocal": {"data": f"COCO-MINI val: {n_caps} captions -> {len(images)} images",
                                  "chance": round(100 / len(images), 2), "scores": {}},
    }
    for key, source in models.items():
        model = onepeace.OnePeace.from_pretrained(source)
        t = time.perf_counter()
        res = mteb.evaluate(OnePeaceEncoder(model), [esc10_zeroshot(args.esc10, folds=folds)], cache=None,
                            raise_error=True, show_progress_bar=False)
        mteb_s = time.perf_counter() - t
        mteb_acc = res.task_results[0].scores["test"][0]["accuracy"]
        t = time.perf_counter()
        probs = zero_shot(model, names, audio=paths)["audio"]
        ours_s = time.perf_counter() - t
        ours_acc = (probs.argmax(1) == torch.tensor(labels)).double().mean().item()
        mt["ESC10ZeroShotLocal"]["scores"][key] = {
            "mteb_accuracy": round(100 * mteb_acc, 2), "onepeace_accuracy": round(100 * ours_acc, 2),
            "mteb_seconds": round(mteb_s, 1), "onepeace_seconds": round(ours_s, 1)}
        for d, pair in (("I2T", ("image", "text")), ("T2I", ("text", "image"))):
            t = time.perf_counter()
            res = mteb.evaluate(OnePeaceEncoder(model), [coco_retrieval(args.coco, d.lower())], cache=None,
                                raise_error=True, show_progress_bar=False)
            mteb_s = time.perf_counter() - t
            s = res.task_results[0].scores["test"][0]
            t = time.perf_counter()
            ours = evaluate_retrieval(model, [str(manifest)], *pair)
            ours_s = time.perf_counter() - t
            mt[f"COCO{d}RetrievalLocal"]["scores"][key] = {
                **{f"mteb_hit_rate_at_{k}": round(100 * s[f"hit_rate_at_{k}"], 2) for k in (1, 10)},
                **{f"mteb_recall_at_{k}": round(100 * s[f"recall_at_{k}"], 2) for k in (1, 10)},
                "mteb_ndcg_at_10": round(100 * s["ndcg_at_10"], 2),
                **{f"onepeace_R@{k}": round(ours[f"R@{k}"], 2) for k in (1, 10)},
                "mteb_seconds": round(mteb_s, 1), "onepeace_seconds": round(ours_s, 1)}

    model = onepeace.OnePeace.from_pretrained(args.model)
    hm = hear.load_model(model, sample_rate=44100)
    clips = [torch.from_numpy(load_audio(p, 44100)) for p in paths[:16]]
    clips = torch.stack([c[: min(map(len, clips))] for c in clips])  # a few ESC-10 clips are a little short of 5 s
    t = time.perf_counter()
    scene = hear.get_scene_embeddings(clips, hm)
    scene_s = time.perf_counter() - t
    t = time.perf_counter()
    frames, ms = hear.get_timestamp_embeddings(clips, hm)
    ts_s = time.perf_counter() - t

    out = {
        "models": {"demo": _rel(args.model),
                   **({} if args.no_official else {"official tiny": f"{_rel(OFFICIAL_TINY)} (random weights), converted"})},
        "mteb": mt,
        "hear": {"clips": int(clips.shape[0]), "clip_seconds": round(clips.shape[1] / 44100, 2), "sample_rate": 44100,
                 "scene_shape": list(scene.shape), "timestamp_shape": list(frames.shape),
                 "hop_ms": round(float(ms[0, 1] - ms[0, 0]), 3), "first_ms": round(float(ms[0, 0]), 3),
                 "scene_seconds_per_clip": round(scene_s / clips.shape[0], 3),
                 "timestamp_seconds_per_clip": round(ts_s / clips.shape[0], 3)},
        "environment": {"torch": torch.__version__, "mteb": version("mteb"), "threads": torch.get_num_threads(),
                        "cpu": platform.processor() or platform.machine()},
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
