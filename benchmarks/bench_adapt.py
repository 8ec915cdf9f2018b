#!/usr/bin/env python
"""What ``onepeace adapt`` costs: one adapt step by model size, and LoRA against full fine-tuning.

**step** (``--only step``): seconds per step and peak RSS of one adapt step (the step of
:func:`onepeace_train.adapt.run_adapt`: both sides of a batch of pairs embedded, the aligning
contrast, backward, gradient clipping, AdamW on the LoRA weights) for ``tiny``, ``base`` and the
``one-peace-4b`` preset on random weights: bf16 weights with bf16 autocast, activation
checkpointing, batch 8 image-text pairs (the images 640 x 480, resized by the processor; captions of
15-19 BPE tokens), LoRA rank 8 on the FFN and projection of the image and text branches (the
default targets). Each size runs alone in a fresh process (one after the other), killed above
``--rss-limit-gb``; the process's peak RSS (VmHWM) is its memory figure. One untimed step, then
``--steps`` timed steps (median).

**compare** (``--only compare``): on the ``make demo-adapt`` task (the demo model, real speech of four
speakers, two held out), LoRA (``run_adapt`` with the demo's settings) against full fine-tuning of
the very weights LoRA adapts (the audio branch's FFN and projection Linear layers, all of their
weights trainable), with the same steps, batch, data order, schedule and clipping; full
fine-tuning at the LoRA learning rate and at ``--full-lr`` (a full fine-tune's usual 10x lower
rate); and LoRA without the rehearsed synthetic clips (the real speakers' pairs alone). Each arm is a fresh process: held-out zero-shot accuracy, the demo's own audio->text R@1
(forgetting), peak RSS, trainable parameters and what must be stored (the adapter file, or the
changed weights in float32).

Results: ``benchmarks/results/adapt.json`` (a partial run merges its section). About 15 minutes on 2
quiet cores, most of it the 4B step; needs about 12 GB of free RAM and ``make demo`` first (compare).

    python benchmarks/bench_adapt.py                      # both parts
    python benchmarks/bench_adapt.py --only step --sizes tiny,base
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _bench import (  # noqa: E402  (the shared helpers; torch is imported lazily)
    CAPTION_LENGTHS,
    GB,
    RESULTS,
    SEED,
    THREADS,
    build_random,
    machine_facts,
    make_captions,
    make_images,
    median,
    proc_status,
    r,
    run_worker,
    worker_main,
    write_json_atomic,
)

ROOT = HERE.parent
OUT = RESULTS / "adapt.json"
SIZES = ["tiny", "base", "one-peace-4b"]
BATCH, RANK = 8, 8
GOAL_4B_GB = 20.0


def _lora_model(size: str):
    """A preset on random bf16 weights with LoRA (rank 8, ffn+proj of image and text) as run_adapt adds it."""
    from onepeace_train.adapt.lora import add_lora, lora_config
    from onepeace_train.distributed import enable_activation_checkpointing

    model = build_random(size, "bf16", SEED)
    names = add_lora(model, lora_config(RANK, 2.0 * RANK, ("ffn", "proj"), ("image", "text")))
    model.set_drop_path(0.0)
    enable_activation_checkpointing(model.encoder)
    return model.train(), names


def worker_step(spec: dict) -> dict:
    """Child: one untimed and ``spec['steps']`` timed adapt steps of ``spec['size']``."""
    import torch

    from onepeace_train.pretrain.losses import contrastive_loss

    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    res: dict[str, Any] = {}
    model, names = _lora_model(spec["size"])
    res["params"] = model.num_parameters()
    res["weight_gb"] = r(sum(p.numel() * p.element_size() for p in model.parameters()) / GB)
    params = [p for p in model.parameters() if p.requires_grad]
    res["trainable_params"] = sum(p.numel() for p in params)
    res["rss_after_build_gb"] = r(proc_status()["VmHWM"] / GB)
    proc = model.processor
    images = proc.get("image")(make_images(BATCH))
    text = proc.get("text")(make_captions(proc.get("text").encode, CAPTION_LENGTHS[:BATCH]))
    optimizer = torch.optim.AdamW(params, lr=5e-4)
    times = []
    for i in range(1 + spec["steps"]):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            zi, zt = model.embed_batch("image", images), model.embed_batch("text", text)
            loss = contrastive_loss(zi, zt, model.logit_scale.detach())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
        else:
            res["first_step_s"] = r(time.perf_counter() - t0)
    res["seconds_per_step"] = r(median(times))
    res["step_times_s"] = [r(t) for t in times]
    res["adapter_bytes"] = _adapter_bytes(model)
    res["peak_rss_gb"] = r(proc_status()["VmHWM"] / GB)
    return res


def _adapter_bytes(model) -> int:
    """The size of adapter_model.safetensors for this model's LoRA weights (written, then measured)."""
    from safetensors.torch import save_file

    from onepeace_train.adapt.lora import adapter_state

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "adapter_model.safetensors")
        save_file(adapter_state(model), path)
        return os.path.getsize(path)


def worker_compare(spec: dict) -> dict:
    """Child: one arm of LoRA against full fine-tuning on the demo-adapt task."""
    import torch

    from onepeace import OnePeace
    from onepeace_train.demo import adapt as demo_adapt

    torch.set_num_threads(THREADS)
    rehearse = spec.get("rehearse", True)
    data = demo_adapt.write_pairs(os.path.join(spec["tmp"], "data" if rehearse else "data-no-rehearsal"),
                                  seed=spec["seed"], rehearse=rehearse)
    test_set = demo_adapt.synthetic_test_set(os.path.join(spec["tmp"], "data"))
    t0 = time.perf_counter()
    if spec["mode"] == "lora":
        from onepeace_train.adapt import run_adapt

        adapter = os.path.join(spec["tmp"], f"adapter-{os.getpid()}")
        m = run_adapt(spec["demo_model"], data["train"], adapter, val=data["heldout"], branches="audio",
                      targets=demo_adapt.TARGETS, rank=spec["rank"], steps=spec["steps"], lr=spec["lr"],
                      seed=spec["seed"], progress=False, threads=THREADS)
        train_s = time.perf_counter() - t0
        hwm = proc_status()["VmHWM"]
        model = OnePeace.from_pretrained(spec["demo_model"], adapter=adapter).eval()
        out = {"trainable_params": m["trainable_params"], "stored_bytes": m["adapter_bytes"]}
    else:
        model, out = _full_finetune(spec, data["train"])
        train_s = time.perf_counter() - t0
        hwm = proc_status()["VmHWM"]
    out.update(demo_adapt.score(model, data["heldout"], test_set))
    out.update({"train_s": r(train_s, 1), "seconds_per_step": r(train_s / spec["steps"]),
                "peak_rss_training_gb": r(hwm / GB)})
    return out


def _full_finetune(spec: dict, train: str):
    """Every weight of the Linear layers the demo's LoRA adapts (audio FFN, audio projection), trained
    as run_adapt trains LoRA weights: same batches, schedule, clipping, loss and frozen logit scale."""
    import torch

    from onepeace import OnePeace
    from onepeace.errors import SkipGuard
    from onepeace_train.adapt.data import Decoder, Skips, Stream, read_pairs
    from onepeace_train.adapt.lora import target_regex
    from onepeace_train.adapt.run import _step_seed
    from onepeace_train.demo.adapt import TARGETS
    from onepeace_train.optim import lr_at, set_lr
    from onepeace_train.pretrain.losses import contrastive_loss

    torch.manual_seed(spec["seed"])
    model = OnePeace.from_pretrained(spec["demo_model"])
    model.set_drop_path(0.0)
    pattern = re.compile(target_regex(TARGETS.split(","), ["audio"]))
    chosen = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and pattern.match(n)}
    for name, p in model.named_parameters():
        p.requires_grad_(name.rsplit(".", 1)[0] in chosen)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
    pairs = read_pairs(train)
    stream = Stream(pairs, Decoder(model.config, pairs.modalities, Skips(SkipGuard("pairs"))), spec["seed"])
    a, b = pairs.modalities
    steps, warmup = spec["steps"], int(0.1 * spec["steps"])
    model.train()
    for step in range(steps):
        set_lr(optimizer, lr_at(step, spec["lr"], 0.0, warmup, steps))
        batch = stream.next_batch(min(32, len(pairs)))
        torch.manual_seed(_step_seed(spec["seed"], step))
        loss = contrastive_loss(model.embed_batch(a, batch[a]), model.embed_batch(b, batch[b]),
                                model.logit_scale.detach())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    n = sum(p.numel() for p in params)
    return model.eval(), {"trainable_params": n, "stored_bytes": 4 * n}


def run_steps(sizes: list[str], steps: int, rss_limit: float) -> dict:
    out = {}
    for size in sizes:
        n = 1 if size == "one-peace-4b" else steps
        print(f"adapt step: {size} ({n} timed)", flush=True)
        res = run_worker("step", {"size": size, "steps": n}, rss_limit, size, script=__file__)
        out[size] = res
        print(f"  {json.dumps({k: res.get(k) for k in ('seconds_per_step', 'peak_rss_gb', 'error')})}", flush=True)
    return out


def run_compare(args: argparse.Namespace, rss_limit: float) -> dict:
    from onepeace_train.demo.adapt import DEFAULTS

    demo_model = os.path.abspath(args.demo_model)
    if not os.path.isfile(os.path.join(demo_model, "config.json")):
        raise SystemExit(f"bench_adapt: no demo model in {demo_model}: run `make demo` first")
    base = {"demo_model": demo_model, "steps": DEFAULTS["steps"], "rank": DEFAULTS["rank"], "seed": 0}
    arms = {"lora": {"mode": "lora", "lr": DEFAULTS["lr"]},
            "full": {"mode": "full", "lr": DEFAULTS["lr"]},
            "full_low_lr": {"mode": "full", "lr": args.full_lr},
            "lora_no_rehearsal": {"mode": "lora", "lr": DEFAULTS["lr"], "rehearse": False}}
    out: dict[str, Any] = {"task": "make demo-adapt: held-out speakers' zero-shot accuracy, the demo's own "
                                   "audio->text R@1 (forgetting)", **{k: base[k] for k in ("steps", "rank", "seed")}}
    with tempfile.TemporaryDirectory(prefix="bench-adapt-") as tmp:
        for name, arm in arms.items():
            print(f"compare: {name} (lr {arm['lr']:g})", flush=True)
            res = run_worker("compare", {**base, **arm, "tmp": tmp}, rss_limit, name, script=__file__)
            out[name] = {"lr": arm["lr"], **res}
            print(f"  {json.dumps(res)}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="step,compare", help="step, compare or both (default)")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--steps", type=int, default=3, help="timed steps per size (the 4B: 1)")
    ap.add_argument("--full-lr", type=float, default=1e-4, help="full fine-tuning's lower learning rate")
    ap.add_argument("--demo-model", default=str(ROOT / "runs" / "demo" / "model"))
    ap.add_argument("--rss-limit-gb", type=float, default=GOAL_4B_GB)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--_worker"), ap.add_argument("--_spec"), ap.add_argument("--_out")
    args = ap.parse_args(argv)
    if args._worker:
        worker_main({"step": worker_step, "compare": worker_compare}, args._worker, args._spec, args._out)
        return 0
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    res = json.loads(args.out.read_text()) if args.out.is_file() else {}
    res.update({"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_facts()})
    limit = args.rss_limit_gb * GB
    if "step" in parts:
        res["step"] = {"batch": BATCH, "pairs": "image-text", "rank": RANK, "targets": "ffn,proj (image, text)",
                       "dtype": "bf16 weights, bf16 autocast, LoRA weights float32",
                       "activation_checkpointing": True, "goal_4b_gb": GOAL_4B_GB,
                       "sizes": run_steps([s for s in args.sizes.split(",") if s], args.steps, limit)}
    if "compare" in parts:
        res["compare"] = run_compare(args, limit)
    write_json_atomic(args.out, res)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
