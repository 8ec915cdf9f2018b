"""The ``onepeace`` command line: convert, embed, info, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib import resources

import numpy as np
import torch

from .errors import ConfigError, OnePeaceError


def _atomic_savez(path: str, **arrays: np.ndarray) -> None:
    if not path.endswith(".npz"):
        path += ".npz"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OnePeaceError(f"output directory does not exist: {parent}")
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _print_similarity(emb: dict[str, torch.Tensor], labels: dict[str, list[str]]) -> None:
    names = list(emb)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sim = emb[a] @ emb[b].T
            print(f"\n{a} x {b} cosine similarity (rows: {a}, columns: {b})")
            cols = [_short(x) for x in labels[b]]
            width = max(8, *(len(c) for c in cols))
            rows = [_short(x) for x in labels[a]]
            rw = max(len(r) for r in rows)
            print(" " * rw + "  " + "  ".join(c.rjust(width) for c in cols))
            for r, line in zip(rows, sim.tolist()):
                print(r.ljust(rw) + "  " + "  ".join(f"{v:+.4f}".rjust(width) for v in line))
    if len(names) == 1:
        print(f"\n{names[0]}: {len(labels[names[0]])} embeddings of size {emb[names[0]].shape[1]}")


def _short(s: str, n: int = 28) -> str:
    s = os.path.basename(s) if os.path.sep in s else s
    return s if len(s) <= n else s[: n - 1] + "…"


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints.official import convert

    labels = None
    if args.labels:
        from .tasks.zeroshot import parse_labels

        labels = parse_labels(args.labels)
    config = convert(args.src, args.dst, args.dict, dtype=args.dtype, labels=labels)
    head = f", head: {config.head.num_classes} outputs pooling {config.head.feature_source}" if config.head else ""
    print(
        f"converted {args.src} -> {args.dst} ({', '.join(config.modalities)}; {config.layers} layers, "
        f"dim {config.dim}{head})"
    )
    return 0


def _load_model(path: str, dtype: str | None):
    from .model.onepeace import OnePeace

    return OnePeace.from_pretrained(path, dtype=dtype)


def cmd_embed(args: argparse.Namespace) -> int:
    if not (args.text or args.image or args.audio):
        raise OnePeaceError("nothing to embed: give --text, --image or --audio (each may repeat)")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    model = _load_model(args.model, args.dtype)
    if args.official_padding_leak and "audio" in model.adapters:
        model.adapters["audio"].official_padding_leak = True
    inputs = {k: v for k, v in (("text", args.text), ("image", args.image), ("audio", args.audio)) if v}
    emb = model.embed(batch_size=args.batch_size, **inputs)
    if args.out:
        _atomic_savez(args.out, **{k: v.numpy().astype(np.float32) for k, v in emb.items()})
        print(f"wrote {', '.join(f'{k} {tuple(v.shape)}' for k, v in emb.items())} to {args.out}")
    _print_similarity(emb, inputs)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .config import list_presets
    from .factory import create_model

    if args.model in list_presets():
        model = create_model(args.model, device="meta")
    else:
        from .checkpoints.format import load_config

        model = create_model(load_config(args.model), device="meta", init=False)
    print(model.config.to_json())
    print(f"parameters: {model.num_parameters():,}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.samples:
        return _demo_samples(args)
    from .demo import PAIRS, run_demo

    print("onepeace demo: pretraining a tiny ONE-PEACE on handwritten digits (stage 1, image-text) and")
    print("spoken digits (stage 2, audio-text); audio and images never meet in training.\n")
    m = run_demo(args.out, seed=args.seed, stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps)
    print("\nzero-shot retrieval on held-out digits and unseen voices (relevant = same digit)")
    print(f"{'':>14}  {'R@1':>6}  {'chance':>6}  {'x chance':>8}")
    for pair in PAIRS:
        r = m["retrieval"][pair]
        note = "   <- emergent: never trained on audio-image pairs" if pair == "audio->image" else ""
        print(f"{pair:>14}  {r['R@1']:6.1f}  {r['chance']:6.1f}  {r['R@1'] / r['chance']:8.1f}{note}")
    print(f"\nmetrics: {os.path.join(args.out, 'metrics.json')}   plot: {m['plot']}")
    print(f"model:   {m['model']}")
    print("\nnext, embed your own inputs with it:")
    print(f"  onepeace embed --model {m['model']} --text 'someone saying seven' --text 'a handwritten digit seven' "
          "--audio your_recording.wav --image your_digit.png")
    return 0


def _demo_samples(args: argparse.Namespace) -> int:
    from .factory import create_model

    torch.manual_seed(args.seed)
    samples = resources.files("onepeace").joinpath("assets", "samples")
    images = sorted(str(p) for p in samples.iterdir() if str(p).endswith(".png"))
    sounds = sorted(str(p) for p in samples.iterdir() if str(p).endswith(".wav"))
    texts = ["a red circle", "a blue square", "a green triangle", "a pure tone", "static noise", "a rising chirp"]
    # layer scale 0.1 instead of the official 1e-6, so that untrained layers visibly act
    model = create_model(args.preset, layer_scale_init=0.1)
    print(f"onepeace demo --samples: preset {args.preset!r} ({model.num_parameters():,} parameters, random init)")
    print("The weights are untrained, so the similarities only show the pipeline working end to end.")
    emb = model.embed(text=texts, image=images, audio=sounds)
    _print_similarity(emb, {"text": texts, "image": images, "audio": sounds})
    if args.save:
        model.save_pretrained(args.save)
        print(f"\nsaved the model to {args.save}")
    return 0


def _train_config(args: argparse.Namespace):
    """The recipe of ``pretrain`` / ``finetune`` with its overrides (``--output`` included)."""
    from .train.config import load_config

    overrides = list(args.overrides)
    if args.output:
        overrides.append(f"train.output={json.dumps(args.output)}")
    return load_config(args.config, overrides)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .train.trainer import run

    cfg = _train_config(args)
    if cfg.task.name:
        raise ConfigError(f"{args.config} is a fine-tuning recipe (task {cfg.task.name!r}): "
                          f"run `onepeace finetune {cfg.task.name} {args.config}`")
    result = run(cfg)
    if os.environ.get("RANK", "0") == "0":
        final = result.get("final", {})
        print("final losses: " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
        for pair, m in result.get("retrieval", {}).items():
            print(f"{pair:>14}  R@1 {m['R@1']:5.1f}  (chance {m['chance']:.1f})")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .train.trainer import run

    cfg = _train_config(args)
    if cfg.task.name and cfg.task.name != args.task:
        raise ConfigError(f"the recipe {args.config} is for task {cfg.task.name!r}, not {args.task!r}")
    cfg.task.name = args.task
    result = run(cfg)
    if os.environ.get("RANK", "0") == "0":
        final = result.get("final", {})
        print("final training: " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
        for source, m in result.get("eval", {}).items():
            print(f"{source}: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}))
        print(f"model saved to {os.path.join(cfg.train.output, 'model')}")
    return 0


def cmd_eval_task(args: argparse.Namespace) -> int:
    from .checkpoints.format import write_text_atomic
    from .finetune.job import evaluate_task

    model = _load_model(args.model, args.dtype)
    opts = {"multi_label": args.multi_label} if args.multi_label else {}
    if args.labels:
        opts["labels"] = args.labels
    metrics = evaluate_task(model, args.task, args.data, batch_size=args.batch_size, **opts)
    text = json.dumps(metrics, indent=1)
    print(text)
    if args.out:
        write_text_atomic(args.out, text + "\n")
    return 0


def _topk_lines(probs: torch.Tensor, labels: list[str], k: int) -> list[str]:
    k = min(k, probs.shape[-1])
    vals, idx = probs.topk(k)
    return [", ".join(f"{labels[i]} {v:.4f}" for v, i in zip(vs.tolist(), ix.tolist())) for vs, ix in zip(vals, idx)]


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from .tasks.zeroshot import parse_labels, zero_shot

    if not (args.image or args.audio):
        raise OnePeaceError("give --image or --audio inputs to classify (each may repeat)")
    labels = parse_labels(args.labels)
    model = _load_model(args.model, args.dtype)
    probs = zero_shot(model, labels, templates=args.template or None, batch_size=args.batch_size,
                      image=args.image or None, audio=args.audio or None)
    for name, items in (("image", args.image), ("audio", args.audio)):
        if items:
            for item, line in zip(items, _topk_lines(probs[name], labels, args.top_k)):
                print(f"{item}: {line}")
    if args.out:
        _atomic_savez(args.out, **{k: v.numpy().astype(np.float32) for k, v in probs.items()}, labels=np.array(labels))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .tasks.evaluate import evaluate_retrieval

    model = _load_model(args.model, args.dtype)
    m = evaluate_retrieval(model, args.data, args.query, args.gallery, args.batch_size)
    print(f"{args.query} -> {args.gallery}: " + "  ".join(f"{k} {v:.2f}" for k, v in m.items()))
    if args.out:
        from .checkpoints.format import write_text_atomic

        write_text_atomic(args.out, json.dumps({f"{args.query}->{args.gallery}": m}, indent=2))
    return 0


def cmd_ground(args: argparse.Namespace) -> int:
    model = _load_model(args.model, args.dtype)
    boxes = model.ground(list(args.image), list(args.text))
    for img, txt, b in zip(args.image, args.text, boxes.tolist()):
        print(json.dumps({"image": img, "text": txt, "box": [round(v, 3) for v in b]}))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    if not (args.image or args.audio):
        raise OnePeaceError("give --image or --audio inputs (each may repeat)")
    model = _load_model(args.model, args.dtype)
    if args.official_padding_leak and "audio" in model.adapters:
        model.adapters["audio"].official_padding_leak = True
    head = model.config.head
    if head is None:
        raise OnePeaceError(f"{args.model} has no classification head (convert a fine-tuned checkpoint)")
    if head.type == "dense":
        raise OnePeaceError(f"{args.model} is a segmentation model: use `onepeace segment`")
    inputs = {k: v for k, v in (("image", args.image), ("audio", args.audio), ("text", args.text),
                                ("image2", args.image2)) if v}
    logits = model.classify(batch_size=args.batch_size, **inputs)
    labels = head.labels or [str(i) for i in range(head.num_classes)]
    items = args.image or args.audio
    probs = logits.sigmoid() if args.multi_label else logits.softmax(-1)
    for item, line in zip(items, _topk_lines(probs, labels, args.top_k)):
        print(f"{item}: {line}")
    if args.out:
        _atomic_savez(args.out, logits=logits.numpy().astype(np.float32))
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from .checkpoints.format import write_png_atomic

    model = _load_model(args.model, args.dtype)
    maps = model.segment(list(args.image))
    labels = model.config.head.labels or [str(i) for i in range(model.config.head.num_classes)]
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
    for item, m in zip(args.image, maps):
        counts = torch.bincount(m.flatten(), minlength=len(labels)).float() / m.numel()
        top = counts.topk(min(args.top_k, len(labels)))
        shown = ", ".join(f"{labels[i]} {v:.1%}" for v, i in zip(top.values.tolist(), top.indices.tolist()) if v > 0)
        line = f"{item}: {shown}"
        if args.out_dir:
            dest = os.path.join(args.out_dir, os.path.splitext(os.path.basename(item))[0] + ".png")
            write_png_atomic(dest, m.numpy().astype(np.uint8 if len(labels) <= 256 else np.uint16))
            line += f"  -> {dest}"
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onepeace", description="ONE-PEACE: vision, audio and language in one space")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and warnings")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert an official ONE-PEACE .pt checkpoint to an onepeace directory")
    c.add_argument("src", help="official checkpoint (one-peace.pt, finetune_*.pt, or the vision-branch .pkl)")
    c.add_argument("dst", help="output directory (config.json + model.safetensors)")
    c.add_argument("--dict", help="the official dict.txt (needed for checkpoints with a text branch)")
    c.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="stored precision (default fp32)")
    c.add_argument("--labels", help="class names for a classification head (.txt one per line, or .json)")
    c.set_defaults(func=cmd_convert)

    e = sub.add_parser("embed", help="embed texts, images and audio; print cross-modal similarities")
    e.add_argument("--model", required=True, help="an onepeace model directory")
    e.add_argument("--text", action="append", default=[], help="a text (repeatable)")
    e.add_argument("--image", action="append", default=[], help="an image file (repeatable)")
    e.add_argument("--audio", action="append", default=[], help="an audio file (repeatable)")
    e.add_argument("--out", help="write float32 arrays text/image/audio to this .npz")
    e.add_argument("--dtype", choices=["fp32", "bf16"], help="compute precision (default: as stored)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--threads", type=int, help="torch CPU threads")
    e.add_argument("--official-padding-leak", action="store_true",
                   help="reproduce the official batch-dependent audio padding (off: batch-invariant)")
    e.set_defaults(func=cmd_embed)

    i = sub.add_parser("info", help="print the config and parameter count of a model directory or preset")
    i.add_argument("model")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("demo", help="the laptop demo: tri-modal pretraining on bundled digits (~5 min)")
    d.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--stage1-steps", type=int, help="override stage 1's step count")
    d.add_argument("--stage2-steps", type=int, help="override stage 2's step count")
    d.add_argument("--samples", action="store_true", help="instead: embed the bundled samples with an untrained model")
    d.add_argument("--preset", default="tiny", help="model preset for --samples")
    d.add_argument("--save", help="with --samples: save the untrained model here")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("pretrain", help="pretrain (one process, or under torchrun --nproc-per-node N)")
    t.add_argument("config", help="a TOML recipe (see configs/)")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=1e-4")
    t.add_argument("--output", help="run directory (same as train.output=...)")
    t.set_defaults(func=cmd_pretrain)

    f = sub.add_parser("finetune", help="fine-tune on a task: classify, retrieval, grounding, vqa, aqa, nlvr2, segmentation")
    f.add_argument("task", help="the task (see the README's fine-tuning table)")
    f.add_argument("config", help="a TOML recipe (see configs/finetune_*.toml)")
    f.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=1e-4")
    f.add_argument("--output", help="run directory (same as train.output=...)")
    f.set_defaults(func=cmd_finetune)

    z = sub.add_parser("zeroshot", help="zero-shot classification of images or audio by class names")
    z.add_argument("--model", required=True)
    z.add_argument("--labels", required=True, help="a file (one per line, or .json) or a,b,c")
    z.add_argument("--image", action="append", default=[])
    z.add_argument("--audio", action="append", default=[])
    z.add_argument("--template", action="append", default=[],
                   help="prompt with {} for the label (repeatable; default: ensemble per modality, "
                        "'This is a sound of {}.' for audio)")
    z.add_argument("--top-k", type=int, default=5)
    z.add_argument("--out", help="write probabilities per modality to this .npz")
    z.add_argument("--dtype", choices=["fp32", "bf16"])
    z.add_argument("--batch-size", type=int, default=16)
    z.set_defaults(func=cmd_zeroshot)

    ev = sub.add_parser("eval", help="evaluation: `onepeace eval retrieval ...`")
    evs = ev.add_subparsers(dest="eval_command", required=True)
    r = evs.add_parser("retrieval", help="R@1/5/10 and mean rank between two modalities, emergent pairs too")
    r.add_argument("--model", required=True)
    r.add_argument("--data", action="append", required=True, help="JSONL manifest or shards (repeatable)")
    r.add_argument("--query", required=True, help="text, image or audio")
    r.add_argument("--gallery", required=True, help="text, image or audio")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--dtype", choices=["fp32", "bf16"])
    r.add_argument("--out", help="write the metrics as JSON")
    r.set_defaults(func=cmd_eval)
    et = evs.add_parser("task", help="a fine-tuned model's task metric on a task manifest")
    et.add_argument("task", help="classify, retrieval, grounding, vqa, aqa, nlvr2 or segmentation")
    et.add_argument("--model", required=True)
    et.add_argument("--data", action="append", required=True, help="task manifest (repeatable)")
    et.add_argument("--multi-label", action="store_true", help="classify: multi-label (mAP)")
    et.add_argument("--labels", help="vqa: the answer vocabulary file (default: the head's labels)")
    et.add_argument("--batch-size", type=int, default=16)
    et.add_argument("--dtype", choices=["fp32", "bf16"])
    et.add_argument("--out", help="write the metrics as JSON")
    et.set_defaults(func=cmd_eval_task)

    g = sub.add_parser("ground", help="visual grounding: the box (x0, y0, x1, y1) in pixels, as JSON")
    g.add_argument("--model", required=True, help="a converted grounding checkpoint")
    g.add_argument("--image", action="append", required=True)
    g.add_argument("--text", action="append", required=True, help="one expression per --image")
    g.add_argument("--dtype", choices=["fp32", "bf16"])
    g.set_defaults(func=cmd_ground)

    k = sub.add_parser("classify", help="top-k labels of a fine-tuned classifier (e.g. VGGSound)")
    k.add_argument("--model", required=True)
    k.add_argument("--image", action="append", default=[])
    k.add_argument("--audio", action="append", default=[])
    k.add_argument("--text", action="append", default=[], help="paired text for fused (vl/al) heads")
    k.add_argument("--image2", action="append", default=[], help="NLVR2 heads: the second image of each pair")
    k.add_argument("--top-k", type=int, default=5)
    k.add_argument("--multi-label", action="store_true", help="sigmoid scores instead of softmax")
    k.add_argument("--out", help="write the logits to this .npz (key 'logits')")
    k.add_argument("--dtype", choices=["fp32", "bf16"])
    k.add_argument("--batch-size", type=int, default=16)
    k.add_argument("--official-padding-leak", action="store_true")
    k.set_defaults(func=cmd_classify)

    sg = sub.add_parser("segment", help="semantic segmentation: a class map per image (PNG) and its class shares")
    sg.add_argument("--model", required=True, help="a model fine-tuned with `onepeace finetune segmentation`")
    sg.add_argument("--image", action="append", required=True)
    sg.add_argument("--out-dir", help="write one PNG of class ids per image here, at the image's own size")
    sg.add_argument("--top-k", type=int, default=5)
    sg.add_argument("--dtype", choices=["fp32", "bf16"])
    sg.set_defaults(func=cmd_segment)

    from .data.cli import add_data_parser

    add_data_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # allow `onepeace pretrain CONFIG --optim.lr=1e-4` as well as `optim.lr=1e-4`
    argv = [a[2:] if a.startswith("--") and "=" in a and "." in a.split("=", 1)[0] else a for a in argv]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except OnePeaceError as e:
        print(f"onepeace {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
