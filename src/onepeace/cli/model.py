"""``onepeace convert``, ``onepeace info`` and ``onepeace download``: models and their files."""

from __future__ import annotations

import argparse

from .. import create_model
from ..checkpoints.download import add_download_parser
from ..checkpoints.format import load_config
from ..checkpoints.official import convert
from ..config import list_presets
from ..tasks.zeroshot import parse_labels


def cmd_convert(args: argparse.Namespace) -> int:
    labels = parse_labels(args.labels) if args.labels else None
    config = convert(args.src, args.dst, args.dict, dtype=args.dtype, labels=labels, overwrite=args.force)
    head = f", head: {config.head.num_classes} outputs pooling {config.head.feature_source}" if config.head else ""
    print(
        f"converted {args.src} -> {args.dst} ({', '.join(config.modalities)}; {config.layers} layers, "
        f"dim {config.dim}{head})"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    if args.model in list_presets():
        model = create_model(args.model, device="meta")
    else:
        model = create_model(load_config(args.model), device="meta", init=False)
    print(model.config.to_json())
    print(f"parameters: {model.num_parameters():,}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """``convert``, ``info`` and ``download``."""
    c = sub.add_parser("convert", help="convert an official ONE-PEACE .pt checkpoint to an onepeace directory")
    c.add_argument("src", help="official checkpoint (one-peace.pt, finetune_*.pt, or the vision-branch .pkl)")
    c.add_argument("dst", help="output directory (config.json + model.safetensors)")
    c.add_argument("--dict", help="the official dict.txt (needed for checkpoints with a text branch)")
    c.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="stored precision (default fp32)")
    c.add_argument("--labels", help="class names for a classification head (.txt one per line, or .json)")
    c.add_argument("--force", action="store_true",
                   help="replace a model already in DST (atomically; never a folder holding other files)")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("info", help="print the config and parameter count of a model directory, Hub id or preset")
    i.add_argument("model")
    i.set_defaults(func=cmd_info)

    add_download_parser(sub)
