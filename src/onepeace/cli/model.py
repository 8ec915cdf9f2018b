"""``onepeace convert``, ``onepeace info`` and ``onepeace download``: models and their files."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import create_model
from ..checkpoints import download
from ..checkpoints.format import load_config
from ..checkpoints.official import convert
from ..config import list_presets
from ..errors import OnePeaceError
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


def cmd_download(args: argparse.Namespace) -> int:
    if args.list:
        width = max(len(n) for n in download.KNOWN)
        for name, k in download.KNOWN.items():
            print(f"{name.ljust(width)}  {download.file_name(k.url)}: {k.about}")
        return 0
    if not args.source:
        raise OnePeaceError("give a name or a URL to download (`onepeace download --list` shows the names)")
    url, known = download.resolve(args.source)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise OnePeaceError(f"--out {out} is a file; give a directory")
    dest, digest = download.fetch(url, out / download.file_name(url), args.sha256 or known, progress=True, force=args.force)
    print(f"saved {dest} ({download.human_size(dest.stat().st_size)}, sha256 {digest})")
    if dest.suffix in (".pt", ".pkl"):
        print(f"next: onepeace convert {dest} {dest.with_suffix('')}-onepeace --dict dict.txt "
              "(`onepeace download dict` fetches dict.txt)")
    return 0


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download", help="download an official checkpoint or dict.txt (resumable, atomic, sha256-checked)")
    p.add_argument("source", nargs="?", metavar="NAME|URL", help="a name (see --list) or an http(s):// or file:// URL")
    p.add_argument("--out", default=".", metavar="DIR", help="directory to write into, created if absent (default: here)")
    p.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of the file; checked before it is put in place")
    p.add_argument("--force", action="store_true", help="replace the file if it exists")
    p.add_argument("--list", action="store_true", help="list the known names and exit")
    p.set_defaults(func=cmd_download)


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

    _add_download(sub)
