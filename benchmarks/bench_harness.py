"""The harnesses on the demo model: benchmarks/results/harness.json (docs/harnesses.md's tables).

* MTEB: the local ESC-10 zero-shot task (onepeace.integrations.mteb_tasks, MTEB's own
  AbsTaskZeroShotClassification) scored by ``mteb.evaluate`` with ``OnePeaceEncoder``, next to
  onepeace's own zero-shot (what ``onepeace zeroshot`` runs) on the same clips, with the wall time
  of each;
* HEAR: scene and timestamp embeddings of ESC-10 clips (shapes, frame hop, time per clip).

    make demo                                   # runs/demo/model (once)
    python benchmarks/bench_harness.py          # -> benchmarks/results/harness.json
    python benchmarks/bench_harness.py --model DIR --esc10 ../shared/data/esc10 --folds 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib.metadata import version
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "runs" / "demo" / "model"))
    ap.add_argument("--esc10", default=str(ROOT.parent / "shared" / "data" / "esc10"))
    ap.add_argument("--folds", default="1,2,3,4,5", help="ESC-10 folds to score (comma-separated)")
    ap.add_argument("--out", default=str(RESULTS / "harness.json"))
    args = ap.parse_args(argv)

    import mteb

    import onepeace
    from onepeace import hear
    from onepeace.integrations.mteb import OnePeaceEncoder
    from onepeace.integrations.mteb_tasks import esc10_files, esc10_zeroshot
    from onepeace.processing.audio import load_audio
    from onepeace.tasks.zeroshot import zero_shot

    folds = tuple(int(f) for f in args.folds.split(","))
    model = onepeace.OnePeace.from_pretrained(args.model)
    names, paths, labels = esc10_files(args.esc10, folds)

    t = time.perf_counter()
    res = mteb.evaluate(OnePeaceEncoder(model), [esc10_zeroshot(args.esc10, folds=folds)], cache=None,
                        raise_error=True, show_progress_bar=False)
    mteb_s = time.perf_counter() - t
    mteb_acc = res.task_results[0].scores["test"][0]["accuracy"]

    t = time.perf_counter()
    probs = zero_shot(model, names, audio=paths)["audio"]
    ours_s = time.perf_counter() - t
    ours_acc = (probs.argmax(1) == torch.tensor(labels)).double().mean().item()

    hm = hear.load_model(model, sample_rate=44100)
    clips = torch.stack([torch.from_numpy(load_audio(p, 44100)) for p in paths[:16]])
    t = time.perf_counter()
    scene = hear.get_scene_embeddings(clips, hm)
    scene_s = time.perf_counter() - t
    t = time.perf_counter()
    frames, ms = hear.get_timestamp_embeddings(clips, hm)
    ts_s = time.perf_counter() - t

    out = {
        "model": str(Path(args.model).resolve().relative_to(ROOT)) if Path(args.model).resolve().is_relative_to(ROOT)
        else args.model,
        "mteb": {"ESC10ZeroShotLocal": {
            "data": f"ESC-10 folds {','.join(map(str, folds))}: {len(paths)} clips, {len(names)} classes",
            "clips": len(paths), "mteb_accuracy": round(100 * mteb_acc, 2), "onepeace_accuracy": round(100 * ours_acc, 2),
            "chance": round(100 / len(names), 2), "mteb_seconds": round(mteb_s, 1), "onepeace_seconds": round(ours_s, 1)}},
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
