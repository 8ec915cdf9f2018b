"""``onepeace embed``, ``zeroshot``, ``classify``, ``ground`` and ``segment``: a model on inputs."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from ..checkpoints.format import write_png_atomic
from ..errors import InputError, OnePeaceError
from ..outputs import check_output_files, check_output_folder_not_model
from ..tasks.zeroshot import check_templates, parse_labels, zero_shot
from . import common
from .common import (
    add_adapter_option,
    add_long_audio,
    add_max_pixels,
    add_media_options,
    add_runtime_options,
    atomic_savez,
    check_out,
    media_files,
    media_flags,
    media_inputs,
    names,
    positive_int,
    precision,
    print_similarity,
    runtime,
    texts,
)

_FORCE_OUT = "overwrite an existing --out file (default: refuse it, before any work)"


# ---- embed -----------------------------------------------------------------------------------------

def cmd_embed(args: argparse.Namespace) -> int:
    inputs = {"text": texts(args.text, args.text_file), **media_inputs(args)}
    inputs = {k: v for k, v in inputs.items() if v}
    if not inputs:
        raise OnePeaceError(f"nothing to embed: give --text, --text-file, {media_flags()} (files or folders)")
    out = check_out(args.out, args.force, npz=True)
    device = runtime(args)
    model = common.load_model(args.model, args.dtype, device, adapter=args.adapter)
    if args.official_padding_leak and "audio" in model.adapters:
        model.adapters["audio"].official_padding_leak = True
    fused = _embed_with_sound(model, inputs, args) if args.fuse_audio else {}
    emb = model.embed(batch_size=args.batch_size, progress=None, long_audio=args.long_audio,
                      long_text=args.long_text, **inputs) if inputs else {}
    emb.update(fused)
    inputs.update({k: args.fused_inputs[k] for k in fused})
    if out:
        out = atomic_savez(out, **{k: v.numpy().astype(np.float32) for k, v in emb.items()}, **names(**inputs),
                           dtype=np.array(precision(model)))
        print(f"wrote {', '.join(f'{k} {tuple(v.shape)}' for k, v in emb.items())}, the input names "
              f"({', '.join(f'{k}_inputs' for k in emb)}) and the dtype computed in ({precision(model)}) to {out}")
    print_similarity(emb, inputs, more=f"all the embeddings are in {out}" if out
                     else "--out FILE.npz saves all the embeddings")
    return 0


def _embed_with_sound(model, inputs: dict[str, list[str]], args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """``--fuse-audio``: the inputs whose files carry sound (videos) embedded each with its own
    soundtrack as one fused sequence, under ``<modality>+audio``; taken out of ``inputs``."""
    if "audio" not in model.modality_names:
        raise InputError(f"--fuse-audio: the model {args.model} has no audio branch to embed the sound with")
    carriers = [m for m in inputs if "audio" in getattr(model.processor.get(m), "companions", ())]
    if not carriers:
        raise InputError("--fuse-audio fuses files with their own sound; none of the inputs carries sound "
                         f"({', '.join(f'--{m}' for m in inputs)})")
    out, args.fused_inputs = {}, {}
    for m in carriers:
        files = inputs.pop(m)
        out[f"{m}+audio"] = model.embed_fused(**{m: files}, batch_size=args.batch_size, progress=None,
                                              fusion=args.fuse_audio)
        args.fused_inputs[f"{m}+audio"] = files
    return out


def _add_embed(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("embed", help="embed texts, images and audio; print cross-modal similarities")
    e.add_argument("--model", required=True,
                   help="an onepeace model directory, or a Hugging Face Hub id org/name[@revision]")
    e.add_argument("--text", nargs="+", action="extend", default=[], metavar="TEXT",
                   help="texts (several per flag; the flag may repeat)")
    e.add_argument("--text-file", action="append", default=[], metavar="FILE", help="texts, one per line (repeatable)")
    e.add_argument("--image", nargs="+", action="extend", default=[], metavar="PATH",
                   help="image files or folders (searched recursively for image files)")
    e.add_argument("--audio", nargs="+", action="extend", default=[], metavar="PATH",
                   help="audio files or folders (searched recursively for audio files)")
    add_media_options(e)
    e.add_argument("--fuse-audio", nargs="?", const="joint", choices=["joint", "late"], metavar="joint|late",
                   help="embed each file that carries sound (a video) with its own soundtrack: one embedding per "
                        "file, saved as <modality>+audio (e.g. video+audio); joint (the default): one fused "
                        "sequence; late: the mean of separate video and sound embeddings (better for retrieval "
                        "with a model not trained on fused audio-visual sequences)")
    e.add_argument("--out", help="write float32 arrays text/image/audio and the input names "
                                 "text_inputs/image_inputs/audio_inputs to this .npz")
    e.add_argument("--batch-size", type=positive_int, default=16)
    add_runtime_options(e)
    add_adapter_option(e)
    e.add_argument("--official-padding-leak", action="store_true",
                   help="reproduce the official batch-dependent audio padding (off: batch-invariant)")
    e.add_argument("--force", action="store_true", help=_FORCE_OUT)
    add_long_audio(e)
    add_max_pixels(e)
    e.set_defaults(func=cmd_embed)


# ---- zeroshot --------------------------------------------------------------------------------------

def _topk_lines(probs: torch.Tensor, labels: list[str], k: int) -> list[str]:
    k = min(k, probs.shape[-1])
    vals, idx = probs.topk(k)
    return [", ".join(f"{labels[i]} {v:.4f}" for v, i in zip(vs.tolist(), ix.tolist())) for vs, ix in zip(vals, idx)]


def cmd_zeroshot(args: argparse.Namespace) -> int:
    inputs = media_inputs(args)
    if not inputs:
        raise OnePeaceError(f"give {media_flags()} inputs to classify (files or folders)")
    out = check_out(args.out, args.force, npz=True)
    labels = parse_labels(args.labels)
    if args.template:
        check_templates(args.template, "--template")
    device = runtime(args)
    model = common.load_model(args.model, args.dtype, device, adapter=args.adapter)
    probs = zero_shot(model, labels, templates=args.template or None, batch_size=args.batch_size, progress=None,
                      long_audio=args.long_audio, long_text=args.long_text, **inputs)
    for name, items in inputs.items():
        for item, line in zip(items, _topk_lines(probs[name], labels, args.top_k)):
            print(f"{item}: {line}")
    if out:
        out = atomic_savez(out, **{k: v.numpy().astype(np.float32) for k, v in probs.items()},
                           labels=np.array(labels), **names(**inputs), dtype=np.array(precision(model)))
        print(f"onepeace zeroshot: wrote the probabilities ({', '.join(probs)}), labels, input names and dtype "
              f"to {out}", file=sys.stderr)
    return 0


def _add_zeroshot(sub: argparse._SubParsersAction) -> None:
    z = sub.add_parser("zeroshot", help="zero-shot classification of images or audio by class names")
    z.add_argument("--model", required=True)
    z.add_argument("--labels", required=True, help="a file (one per line, or .json) or a,b,c")
    z.add_argument("--image", nargs="+", action="extend", default=[], metavar="PATH", help="image files or folders")
    z.add_argument("--audio", nargs="+", action="extend", default=[], metavar="PATH", help="audio files or folders")
    add_media_options(z)
    z.add_argument("--template", action="append", default=[],
                   help="prompt with {} for the label (repeatable; default: ensemble per modality, "
                        "'This is a sound of {}.' for audio)")
    z.add_argument("--top-k", type=positive_int, default=5)
    z.add_argument("--out", help="write probabilities per modality, labels and the input names to this .npz")
    z.add_argument("--batch-size", type=positive_int, default=16)
    add_runtime_options(z)
    add_adapter_option(z)
    z.add_argument("--force", action="store_true", help=_FORCE_OUT)
    add_long_audio(z)
    add_max_pixels(z)
    z.set_defaults(func=cmd_zeroshot)


# ---- ground ----------------------------------------------------------------------------------------

def cmd_ground(args: argparse.Namespace) -> int:
    images, txts = media_files(args, args.image, "image"), list(args.text)
    if len(txts) == 1:
        txts *= len(images)
    if len(txts) != len(images):
        raise InputError(f"ground pairs the texts with the images in order: got {len(images)} images and "
                         f"{len(txts)} texts; give one --text per image, or one for all of them")
    device = runtime(args)
    model = common.load_model(args.model, args.dtype, device, adapter=args.adapter)
    for i in range(0, len(images), args.batch_size):
        chunk = slice(i, i + args.batch_size)
        for img, txt, b in zip(images[chunk], txts[chunk], model.ground(images[chunk], txts[chunk]).tolist()):
            print(json.dumps({"image": img, "text": txt, "box": [round(v, 2) for v in b]}))
    return 0


def _add_ground(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("ground", help="visual grounding: the box (x0, y0, x1, y1) in pixels, as JSON")
    g.add_argument("--model", required=True, help="a converted grounding checkpoint")
    g.add_argument("--image", nargs="+", action="extend", required=True, metavar="PATH",
                   help="image files or folders")
    g.add_argument("--text", nargs="+", action="extend", required=True, metavar="TEXT",
                   help="one expression per image, in order, or one for all of them")
    g.add_argument("--batch-size", type=positive_int, default=16)
    add_runtime_options(g)
    add_adapter_option(g)
    add_max_pixels(g)
    g.set_defaults(func=cmd_ground)


# ---- classify --------------------------------------------------------------------------------------

def _classify_inputs(args: argparse.Namespace) -> dict[str, list[str]]:
    inputs = {"image": media_files(args, args.image, "image"), "audio": media_files(args, args.audio, "audio"),
              "text": list(args.text), "image2": media_files(args, args.image2, "image")}
    inputs = {k: v for k, v in inputs.items() if v}
    if not (inputs.get("image") or inputs.get("audio")):
        raise OnePeaceError("give --image or --audio inputs (files or folders)")
    if len({len(v) for v in inputs.values()}) > 1:
        raise InputError("inputs classified together are paired in order, so each needs the same count; got "
                         + ", ".join(f"{len(v)} --{k}" for k, v in inputs.items()))
    return inputs


def cmd_classify(args: argparse.Namespace) -> int:
    inputs = _classify_inputs(args)
    out = check_out(args.out, args.force, npz=True)
    device = runtime(args)
    model = common.load_model(args.model, args.dtype, device, adapter=args.adapter)
    if args.official_padding_leak and "audio" in model.adapters:
        model.adapters["audio"].official_padding_leak = True
    head = model.config.head
    if head is None:
        raise OnePeaceError(f"{args.model} has no classification head (convert a fine-tuned checkpoint)")
    if head.type == "dense":
        raise OnePeaceError(f"{args.model} is a segmentation model: use `onepeace segment`")
    logits = model.classify(batch_size=args.batch_size, **inputs)
    labels = head.labels or [str(i) for i in range(head.num_classes)]
    items = inputs.get("image") or inputs["audio"]
    probs = logits.sigmoid() if args.multi_label else logits.softmax(-1)
    for item, line in zip(items, _topk_lines(probs, labels, args.top_k)):
        print(f"{item}: {line}")
    if out:
        out = atomic_savez(out, logits=logits.numpy().astype(np.float32), labels=np.array(labels, dtype=str),
                           **names(**inputs), dtype=np.array(precision(model)))
        print(f"onepeace classify: wrote the logits, labels, input names and dtype to {out}", file=sys.stderr)
    return 0


def _add_classify(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("classify", help="top-k labels of a fine-tuned classifier (e.g. VGGSound)")
    k.add_argument("--model", required=True)
    k.add_argument("--image", nargs="+", action="extend", default=[], metavar="PATH", help="image files or folders")
    k.add_argument("--audio", nargs="+", action="extend", default=[], metavar="PATH", help="audio files or folders")
    k.add_argument("--text", nargs="+", action="extend", default=[], metavar="TEXT",
                   help="paired texts for fused (vl/al) heads, in input order")
    k.add_argument("--image2", nargs="+", action="extend", default=[], metavar="PATH",
                   help="NLVR2 heads: the second image of each pair, in order")
    k.add_argument("--top-k", type=positive_int, default=5)
    k.add_argument("--multi-label", action="store_true", help="sigmoid scores instead of softmax")
    k.add_argument("--out", help="write the logits, labels and input names to this .npz (keys 'logits', 'labels', "
                                 "'image_inputs', ...)")
    k.add_argument("--batch-size", type=positive_int, default=16)
    add_runtime_options(k)
    add_adapter_option(k)
    k.add_argument("--official-padding-leak", action="store_true")
    k.add_argument("--force", action="store_true", help=_FORCE_OUT)
    add_max_pixels(k)
    k.set_defaults(func=cmd_classify)


# ---- segment ---------------------------------------------------------------------------------------

def cmd_segment(args: argparse.Namespace) -> int:
    images = media_files(args, args.image, "image")
    dests: list = [None] * len(images)
    if args.out_dir:  # checked before any work: one new PNG per image, existing ones only with --force
        check_output_folder_not_model(args.out_dir, "--out-dir")
        pngs = [os.path.splitext(os.path.basename(item))[0] + ".png" for item in images]
        dests = check_output_files(args.out_dir, pngs, args.force, sources=images, hint="--force")
    device = runtime(args)
    model = common.load_model(args.model, args.dtype, device, adapter=args.adapter)
    maps = model.segment(images)
    labels = model.config.head.labels or [str(i) for i in range(model.config.head.num_classes)]
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
    for item, m, dest in zip(images, maps, dests):
        counts = torch.bincount(m.flatten(), minlength=len(labels)).float() / m.numel()
        top = counts.topk(min(args.top_k, len(labels)))
        shown = ", ".join(f"{labels[i]} {v:.1%}" for v, i in zip(top.values.tolist(), top.indices.tolist()) if v > 0)
        line = f"{item}: {shown}"
        if dest:
            write_png_atomic(dest, m.numpy().astype(np.uint8 if len(labels) <= 256 else np.uint16))
            line += f"  -> {dest}"
        print(line)
    return 0


def _add_segment(sub: argparse._SubParsersAction) -> None:
    sg = sub.add_parser("segment", help="semantic segmentation: a class map per image (PNG) and its class shares")
    sg.add_argument("--model", required=True, help="a model fine-tuned with `onepeace finetune segmentation`")
    sg.add_argument("--image", nargs="+", action="extend", required=True, metavar="PATH",
                    help="image files or folders")
    sg.add_argument("--out-dir", help="write one PNG of class ids per image here, at the image's own size")
    sg.add_argument("--top-k", type=positive_int, default=5)
    add_runtime_options(sg)
    add_adapter_option(sg)
    sg.add_argument("--force", action="store_true",
                    help="overwrite PNGs already in --out-dir (default: refuse them, before any work)")
    add_max_pixels(sg)
    sg.set_defaults(func=cmd_segment)


def register(sub: argparse._SubParsersAction) -> None:
    """``embed``, ``zeroshot``, ``ground``, ``classify`` and ``segment``."""
    _add_embed(sub)
    _add_zeroshot(sub)
    _add_ground(sub)
    _add_classify(sub)
    _add_segment(sub)
