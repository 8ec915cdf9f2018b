"""Real-data downstream runs (issue: downstream tasks): the real pipelines, small models, small data.

* ESC-10 audio classification, official 5-fold protocol (train on 4 folds, test on the 5th), fine-tuned
  from the demo model (``runs/demo/model``, built by ``make demo`` when missing) and from scratch;
* COCO-MINI (80 train / 79 val images): image-text retrieval, visual grounding on its instance boxes,
  semantic segmentation on its instance masks turned into category maps.

Each number comes with the baseline it must beat (chance, a constant predictor). Writes
``benchmarks/results/downstream.json``. Everything runs through ``onepeace data prepare`` and
``onepeace finetune`` / ``onepeace eval task``, i.e. the commands a user runs.

    python benchmarks/downstream.py [--only esc10|coco] [--folds 1 2 3 4 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "runs" / "downstream"
RECIPES = ROOT / "src" / "onepeace" / "configs"


def onepeace(*args: str) -> str:
    cmd = [sys.executable, "-m", "onepeace.cli", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    print(f"  ({time.perf_counter() - t0:.0f} s) onepeace {' '.join(args[:2])} ...", flush=True)
    return proc.stdout


def final_eval(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in rows if "eval" in r]
    (metrics,) = evals[-1].values()
    return metrics


def finetune(task: str, recipe: str, out: Path, *overrides: str, fresh: bool = True, fit: str | None = None) -> dict:
    """Fine-tune, return the final held-out metrics; with ``fit`` (the training manifest) also the
    metrics on the training data (is the pipeline learning at all, whatever it generalises)."""
    if fresh and out.exists():
        import shutil

        shutil.rmtree(out)
    t0 = time.perf_counter()
    onepeace("finetune", task, str(RECIPES / recipe), *overrides, "--output", str(out))
    m = final_eval(out)
    m["train_seconds"] = round(time.perf_counter() - t0, 1)
    if fit:
        m["on_training_data"] = evaluate(task, out / "model", fit)
    return m


def evaluate(task: str, model: Path, manifest: str) -> dict:
    out = model.parent / f"eval-{Path(manifest).stem}.json"
    onepeace("eval", "task", task, "--model", str(model), "--data", manifest, "--out", str(out), "--force")
    (metrics,) = json.loads(out.read_text()).values()
    return metrics


def ensure_demo_model() -> Path:
    model = ROOT / "runs" / "demo" / "model"
    if not (model / "config.json").exists():
        print("building the demo model (make demo, ~4 min)", flush=True)
        onepeace("demo")
    return model


def run_esc10(folds: list[int], steps: int) -> dict:
    data = OUT / "esc10"
    onepeace("data", "prepare", "esc", "--root", str(DATA / "esc10"), "--out", str(data), "--force")
    demo = ensure_demo_model()
    res: dict = {"protocol": "5-fold: train on 4 folds, test on the held-out fold (80 clips)", "chance": 10.0}
    for init in ("demo", "scratch"):
        accs = {}
        for k in folds:
            over = [f"data.train={data / f'fold{k}' / 'train.jsonl'}", f"data.eval=['{data / f'fold{k}' / 'test.jsonl'}']",
                    f"task.labels={data / 'labels.txt'}", f"optim.max_steps={steps}"]
            if init == "demo":
                over.append(f"model.init={demo}")
            m = finetune("classify", "esc10_tiny.toml", OUT / f"esc10-{init}-fold{k}", *over)
            accs[k] = m
            print(f"ESC-10 {init} fold {k}: acc {m['acc']:.1f}", flush=True)
        a = [m["acc"] for m in accs.values()]
        res[init] = {"per_fold": {k: round(m["acc"], 2) for k, m in accs.items()},
                     "mean_acc": round(statistics.mean(a), 2),
                     "std_acc": round(statistics.stdev(a), 2) if len(a) > 1 else 0.0,
                     "train_seconds_per_fold": round(statistics.mean(m["train_seconds"] for m in accs.values()), 1)}
    return res


def run_coco(steps: dict[str, int], inits: list[str], reuse: bool = False) -> dict:
    """Retrieval from scratch; grounding and segmentation from scratch and/or from that retrieval
    model (its image-text training is the only "pretraining" this data allows)."""
    data = OUT / "coco"
    onepeace("data", "prepare", "coco", "--root", str(DATA / "coco-mini"), "--out", str(data), "--force")
    res: dict = {}
    retrieval = OUT / "coco-retrieval"
    if not (reuse and (retrieval / "model" / "config.json").exists()):
        # 400 train pairs; val gallery of 79 images / 395 captions
        res["retrieval"] = m = finetune(
            "retrieval", "coco_mini_retrieval.toml", retrieval,
            f"data.train={data / 'train_retrieval.jsonl'}", f"data.eval=['{data / 'val_retrieval.jsonl'}']",
            f"optim.max_steps={steps['retrieval']}", fit=str(data / "train_retrieval.jsonl"))
        print(f"COCO-MINI retrieval: i2t R@1 {m['image->text R@1']:.1f}, t2i R@1 {m['text->image R@1']:.1f} "
              f"(chance {m['text->image chance']:.1f})", flush=True)
    for task, recipe, extra in (
        ("grounding", "coco_mini_grounding.toml", []),  # category name -> its unique instance's box
        ("segmentation", "coco_mini_segmentation.toml", [f"task.labels={data / 'categories.txt'}"]),  # 80 + bg
    ):
        res[task] = {}
        for init in inits:
            over = [f"data.train={data / f'train_{task}.jsonl'}", f"data.eval=['{data / f'val_{task}.jsonl'}']",
                    f"optim.max_steps={steps[task]}", *extra]
            if init == "retrieval":
                over.append(f"model.init={retrieval / 'model'}")
            run = OUT / f"coco-{task}-{init}"
            m = finetune(task, recipe, run, *over, fit=str(data / f"train_{task}.jsonl"))
            m.update(grounding_baseline(data) if task == "grounding" else segmentation_baseline(data, run / "model"))
            res[task][f"from_{init}"] = m
            if task == "grounding":
                print(f"COCO-MINI grounding from {init}: acc@0.5 {m['acc@0.5']:.1f} (mean-train-box baseline "
                      f"{m['baseline_acc@0.5']:.1f})", flush=True)
            else:
                print(f"COCO-MINI segmentation from {init}: mIoU {m['mIoU']:.1f}, pixel acc {m['pixel_acc']:.1f} "
                      f"(all-background: mIoU {m['baseline_mIoU']:.1f}, pixel acc {m['baseline_pixel_acc']:.1f})",
                      flush=True)
    return res


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def grounding_baseline(data: Path) -> dict:
    """Acc@0.5 of predicting the mean training box (relative to the image size) for every query."""
    import torch
    from PIL import Image

    from onepeace_train.finetune.objectives import grounding_accuracy

    def rel(rows, base):
        out, px = [], []
        for r in rows:
            with Image.open(base / r["image"]) as im:
                w, h = im.size
            s = torch.tensor([w, h, w, h], dtype=torch.float64)
            out.append(torch.tensor(r["box"], dtype=torch.float64) / s)
            px.append(s)
        return torch.stack(out), torch.stack(px)

    train, _ = rel(_records(data / "train_grounding.jsonl"), data)
    val, scale = rel(_records(data / "val_grounding.jsonl"), data)
    pred = train.mean(0, keepdim=True).expand_as(val)
    return {"baseline_acc@0.5": round(grounding_accuracy(pred * scale, val * scale), 2)}


def segmentation_baseline(data: Path, model: Path) -> dict:
    """Predicting background everywhere, scored the same way (at ``model``'s input size)."""
    import numpy as np
    import torch
    from PIL import Image

    from onepeace import OnePeace
    from onepeace_train.finetune.objectives import confusion_matrix, miou_from_confusion

    cats = (data / "categories.txt").read_text().splitlines()
    size = OnePeace.from_pretrained(model).options["image"].image_size
    conf = 0
    for r in _records(data / "val_segmentation.jsonl"):
        with Image.open(data / r["mask"]) as m:
            t = torch.from_numpy(np.asarray(m.resize((size, size), Image.NEAREST), dtype=np.int64).copy())
        conf = conf + confusion_matrix(torch.zeros_like(t), t, len(cats))
    m = miou_from_confusion(conf)
    return {"baseline_mIoU": round(m["mIoU"], 2), "baseline_pixel_acc": round(m["pixel_acc"], 2)}


def _merge(old: dict, new: dict) -> dict:
    out = dict(old)
    for k, v in new.items():
        out[k] = _merge(old[k], v) if isinstance(v, dict) and isinstance(old.get(k), dict) else v
    return out


def table(result: dict) -> str:
    """The README's table from the results file."""
    rows = ["| data | task | start | held-out result | baseline | on its training data | time |",
            "|---|---|---|---|---|---|---|"]
    esc = result.get("esc10", {})
    for init in ("demo", "scratch"):
        if init in esc:
            e = esc[init]
            folds = ", ".join(f"{v:.1f}" for v in e["per_fold"].values())
            rows.append(f"| ESC-10, 5 folds | audio classification | {'demo model' if init == 'demo' else 'scratch'} | "
                        f"**{e['mean_acc']:.1f} ± {e['std_acc']:.1f}** % acc (folds {folds}) | 10.0 (chance) | | "
                        f"{e['train_seconds_per_fold']:.0f} s / fold |")
    coco = result.get("coco_mini", {})
    if "retrieval" in coco:
        r = coco["retrieval"]
        fit = r.get("on_training_data", {})
        rows.append(f"| COCO-MINI | image-text retrieval | scratch | R@1 i→t {r['image->text R@1']:.1f}, t→i "
                    f"{r['text->image R@1']:.1f}; R@10 {r['image->text R@10']:.1f} / {r['text->image R@10']:.1f} | "
                    f"R@1 {r['text->image chance']:.1f}, R@10 {10 * r['text->image chance']:.1f} (chance) | "
                    f"R@1 {fit.get('image->text R@1', float('nan')):.1f} / {fit.get('text->image R@1', float('nan')):.1f} | "
                    f"{r['train_seconds']:.0f} s |")
    for init, m in coco.get("grounding", {}).items():
        fit = m.get("on_training_data", {})
        rows.append(f"| COCO-MINI | grounding (category → box) | {init.replace('from_', '')} | "
                    f"**{m['acc@0.5']:.1f}** % Acc@0.5 (mean IoU {m['mIoU']:.1f}) | {m['baseline_acc@0.5']:.1f} "
                    f"(mean training box) | {fit.get('acc@0.5', float('nan')):.1f} % | {m['train_seconds']:.0f} s |")
    for init, m in coco.get("segmentation", {}).items():
        fit = m.get("on_training_data", {})
        rows.append(f"| COCO-MINI | segmentation (81 classes) | {init.replace('from_', '')} | "
                    f"**{m['mIoU']:.1f}** mIoU, {m['pixel_acc']:.1f} % pixels | {m['baseline_mIoU']:.1f} mIoU, "
                    f"{m['baseline_pixel_acc']:.1f} % (all background) | {fit.get('mIoU', float('nan')):.1f} mIoU, "
                    f"{fit.get('pixel_acc', float('nan')):.1f} % | {m['train_seconds']:.0f} s |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["esc10", "coco"])
    ap.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--quick", action="store_true", help="a few steps per run: a pipeline check, not results")
    ap.add_argument("--coco-inits", nargs="+", default=["scratch", "retrieval"], choices=["scratch", "retrieval"],
                    help="grounding/segmentation starting points")
    ap.add_argument("--reuse", action="store_true", help="reuse an existing COCO-MINI retrieval model")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "downstream.json"))
    ap.add_argument("--table", action="store_true", help="print the README table from the results file and exit")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent: the real-data runs need ../shared/data beside the project")
    q = args.quick
    result: dict = {"machine": os.uname().nodename, "threads": os.cpu_count(), "quick": q}
    t0 = time.perf_counter()
    if args.only in (None, "esc10"):
        result["esc10"] = run_esc10(args.folds, steps=4 if q else 300)
    if args.only in (None, "coco"):
        result["coco_mini"] = run_coco({"retrieval": 4 if q else 500, "grounding": 4 if q else 500,
                                        "segmentation": 4 if q else 500}, args.coco_inits, args.reuse)
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    from onepeace.checkpoints.format import write_text_atomic

    out = Path(args.out)
    if out.exists():  # a partial run keeps the other figures
        result = _merge(json.loads(out.read_text()), result)
    write_text_atomic(out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
