#!/usr/bin/env python
"""Indexing throughput, peak memory while indexing, and the demo's search quality.

* **throughput**: ``onepeace.search.ingest.build`` (read, hash, decode, embed, commit to LanceDB)
  against plain ``model.embed`` (decode, embed) on the same image files with the same batch size,
  as a ratio of items/s; ``workers=0`` decodes in the main process like ``model.embed`` (the cost
  of the index itself), ``workers=1, 2`` decode in DataLoader workers beside the model. Images are
  synthetic 640x480 JPEG photos (smooth random colour fields), so decoding costs what a camera
  image costs; the model is the ``tiny`` preset (256 px input) and, with ``--base``, ``base``.
  Each configuration runs ``--repeats`` times on a fresh index; the best time counts (the machine
  is shared), all times are recorded.
* **memory**: peak RSS during the build (``VmHWM`` reset once the model is loaded) of a child
  process indexing N small images (N = ``--rss-sizes``), up to the final compaction of the
  build's commits and including it, and of its decoding workers (Linux only: it reads
  ``/proc/self``).
* **demo quality**: with the demo's model (``runs/demo/model``, from ``make demo``), the held-out
  digits are indexed (``onepeace_train.demo.search``) and every spoken held-out digit (voices never heard
  in training) is a query against the indexed digit images: precision@1/@10 against chance. Audio
  and images never met in training: this is the emergent alignment, through the index.

Writes ``benchmarks/results/index.json``. Usage::

    python benchmarks/bench_index.py                  # about 10 minutes on 2 busy cores
    python benchmarks/bench_index.py --images 64 --repeats 1 --rss-sizes 200 400 --out /tmp/index.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def photos(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` synthetic 640x480 JPEG photos: smooth random colour fields with some grain."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((640, 480), Image.BICUBIC)
        a = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (480, 640, 3))
        p = folder / f"photo-{i:05d}.jpg"
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(p, quality=90)
        out.append(str(p))
    return out


def _saved_model(preset: str, folder: Path, image_size: int | None = None):
    """A freshly initialised model of ``preset``, saved and loaded back (as users load models)."""
    import torch

    import onepeace
    from onepeace.config import get_preset

    cfg = get_preset(preset)
    if image_size is not None:
        cfg.modalities["image"] = {**cfg.modalities.get("image", {}), "image_size": image_size}
    torch.manual_seed(0)
    onepeace.create_model(cfg).save_pretrained(folder)
    return onepeace.OnePeace.from_pretrained(folder)


def throughput(tmp: Path, preset: str, n: int, batch_size: int, repeats: int, workers: list[int]) -> dict[str, Any]:
    from onepeace.search.ingest import build

    files = photos(tmp / f"photos-{n}", n)
    model = _saved_model(preset, tmp / f"model-{preset}")
    model.embed(image=files[:batch_size], batch_size=batch_size)  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {"embed": []}
    for _ in range(repeats):
        t = time.perf_counter()
        z = model.embed(image=files, batch_size=batch_size)["image"]
        times["embed"].append(time.perf_counter() - t)
        assert z.shape[0] == n
        for w in workers:
            db = tmp / f"db-{preset}-{w}"
            shutil.rmtree(db, ignore_errors=True)
            t = time.perf_counter()
            r = build(db, model, [str(tmp / f"photos-{n}")], batch_size=batch_size, workers=w, progress=False,
                      ann_threshold=None)
            times.setdefault(f"index_workers{w}", []).append(time.perf_counter() - t)
            assert r["added"] == n and r["skipped"] == 0, r
    best = {k: min(v) for k, v in times.items()}
    rate = {k: n / v for k, v in best.items()}
    return {
        "model": preset, "items": n, "batch_size": batch_size, "image": "640x480 JPEG", "repeats": repeats,
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "items_per_s": {k: round(v, 2) for k, v in rate.items()},
        "ratio_vs_embed": {k: round(v / rate["embed"], 3) for k, v in rate.items() if k != "embed"},
    }


# ------------------------------------------------------------------------------------------------
def _rss_worker(folder: str, n: int, workers: int) -> None:
    """Child: index ``folder`` and print peak RSS (MB) of this process and of its children."""
    import torch

    from onepeace.search.ingest import build

    torch.set_num_threads(1)
    model = _saved_model("tiny", Path(folder) / "model", image_size=32)
    from onepeace.search import store

    loaded = _vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak RSS) to the current RSS: the peak of the build alone
    marks = {}
    compact = store.Index.optimize

    def optimize(self):  # the build's last step: LanceDB compacts the build's small commits
        marks["before"] = _vm("VmHWM")
        compact(self)

    store.Index.optimize = optimize
    t = time.perf_counter()
    r = build(Path(folder) / "db", model, [str(Path(folder) / "images")], batch_size=64, workers=workers,
              progress=False, ann_threshold=None)
    secs = time.perf_counter() - t
    print(json.dumps({"items": n, "added": r["added"], "seconds": round(secs, 2),
                      "rss_mb_model_loaded": loaded, "peak_rss_mb_before_compaction": marks.get("before"),
                      "peak_rss_mb_during_build": _vm("VmHWM"),
                      "peak_rss_mb_workers": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}))


def _vm(key: str) -> float:
    """A memory figure of /proc/self/status, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def memory(tmp: Path, sizes: list[int], workers: int) -> dict[str, Any]:
    from PIL import Image

    from onepeace_train.demo.data import load_digits

    imgs, _ = load_digits(None)
    rows = []
    for n in sizes:
        folder = tmp / f"rss-{n}"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(imgs[i % len(imgs)] if i < len(imgs) else 255 - imgs[i % len(imgs)]).save(
                folder / "images" / f"{i:06d}.png")
        out = subprocess.run([sys.executable, __file__, "--_rss-worker", str(folder), str(n), str(workers)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        shutil.rmtree(folder, ignore_errors=True)
    growth = ((rows[-1]["peak_rss_mb_during_build"] - rows[0]["peak_rss_mb_during_build"])
              / max(1, rows[-1]["items"] - rows[0]["items"]) * 1000)
    loop = ((rows[-1]["peak_rss_mb_before_compaction"] - rows[0]["peak_rss_mb_before_compaction"])
            / max(1, rows[-1]["items"] - rows[0]["items"]) * 1000)
    return {"model": "tiny (32 px images)", "workers": workers, "batch_size": 64, "commit_rows": 256, "runs": rows,
            "main_rss_growth_mb_per_1000_items": round(growth, 3),
            "main_rss_growth_mb_per_1000_items_before_compaction": round(loop, 3)}


# ------------------------------------------------------------------------------------------------
def demo_quality(demo_dir: Path) -> dict[str, Any]:
    from onepeace.search.store import Index
    from onepeace_train.demo.search import audio_to_image_precision, demo_index

    model = demo_dir / "model"
    if not (model / "config.json").is_file():
        return {"skipped": f"no demo model in {model}: run `make demo` first"}
    s = demo_index(str(demo_dir), str(model), progress=False)
    idx = Index.open(s["index"])
    return {"model": str(model), "index": s["index"], "rows": s["counts"],
            "audio_to_image": {f"k={k}": audio_to_image_precision(idx, k) for k in (1, 10)},
            "score_distributions": score_distributions(idx),
            "composed_query": {"query": s["query"], "top": [
                {"uri": os.path.basename(h["uri"]), "label": h["metadata"].get("label"), "score": round(h["score"], 4),
                 "prob": round(h["prob"], 4)} for h in s["hits"]]}}


def score_distributions(idx: Any) -> dict[str, Any]:
    """Cosine scores of matching (same digit) and other pairs, per query -> target modality pair:
    what a score threshold has to separate."""
    vecs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for m in ("image", "audio", "text"):
        rows = idx.rows(["metadata", "vector"], where=f"modality = '{m}'")
        if rows:
            vecs[m] = (np.stack([np.asarray(r["vector"], np.float64) for r in rows]),
                       np.array([json.loads(r["metadata"])["label"] for r in rows]))
    out = {}
    for q, t in (("audio", "image"), ("text", "image"), ("text", "audio"), ("image", "image"), ("audio", "audio")):
        if q not in vecs or t not in vecs:
            continue
        (a, la), (b, lb) = vecs[q], vecs[t]
        sim = a @ b.T
        same = la[:, None] == lb[None, :]
        if q == t:  # not an item with itself
            keep = ~np.eye(len(a), dtype=bool)
            sim, same = sim[keep], same[keep]
        stats = {}
        for name, v in (("same_digit", sim[same]), ("other_digit", sim[~same])):
            stats[name] = {"mean": round(float(v.mean()), 4),
                           **{f"p{p}": round(float(np.percentile(v, p)), 4) for p in (5, 50, 95)}}
        out[f"{q}->{t}"] = stats
    return out


def environment() -> dict[str, Any]:
    import lancedb
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "lancedb": lancedb.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "cpu": cpu,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_rss-worker":
        _rss_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=384, help="photos for the throughput runs")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--base", action="store_true", help="also the base preset (slow on a CPU)")
    ap.add_argument("--rss-sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    ap.add_argument("--demo-dir", default=str(ROOT / "runs" / "demo"))
    ap.add_argument("--parts", nargs="+", choices=["throughput", "memory", "demo"],
                    default=["throughput", "memory", "demo"],
                    help="what to measure (the others keep their values in an existing --out file)")
    ap.add_argument("--out", default=str(RESULTS / "index.json"))
    args = ap.parse_args()
    result: dict[str, Any] = {}
    if os.path.isfile(args.out):
        with open(args.out) as f:
            result = json.load(f)
    env = environment()
    result.setdefault("environment", {})
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        tmp_path = Path(tmp)
        if "throughput" in args.parts:
            result["throughput"] = [throughput(tmp_path, "tiny", args.images, args.batch_size, args.repeats,
                                               args.workers)]
            print(json.dumps(result["throughput"][-1]), flush=True)
            if args.base:
                result["throughput"].append(throughput(tmp_path, "base", max(32, args.images // 6), args.batch_size,
                                                       args.repeats, args.workers))
                print(json.dumps(result["throughput"][-1]), flush=True)
        if "memory" in args.parts:
            result["memory"] = memory(tmp_path, args.rss_sizes, workers=1)
            print(json.dumps(result["memory"]), flush=True)
    if "demo" in args.parts:
        result["demo"] = demo_quality(Path(args.demo_dir))
        print(json.dumps(result["demo"]), flush=True)
    for part in args.parts:
        result["environment"][part] = env
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp_out = f"{args.out}.tmp-{os.getpid()}"
    with open(tmp_out, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
