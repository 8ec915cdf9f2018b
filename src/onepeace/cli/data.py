"""``onepeace data ...``: build tar shards from a manifest, check that a source decodes, and prepare
task manifests from ESC-10/50 or COCO-style data."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..checkpoints.format import load_config
from ..checkpoints.hub import looks_like_hub_id
from ..config import ModelConfig, get_preset, list_presets
from ..data.dataset import PairDataset
from ..data.manifest import media_modalities, read_manifest
from ..data.prepare import prepare_coco, prepare_esc
from ..data.shards import write_shards_stats
from ..errors import InputError
from ..outputs import check_output_folder_not_model
from .common import positive_int

MAX_SKIP_LINES = 20
_PREPARE_FORCE = ("replace the manifests already in --out (atomically; never a folder holding other files); "
                  "default: refuse a non-empty --out, before any work")


def data_shards(
    manifest: str,
    out_dir: str,
    samples_per_shard: int = 1000,
    prefix: str = "shard",
    overwrite: bool = False,
    skip_missing: bool = False,
) -> int:
    """Pack a manifest's samples into tar shards; prints the counts. Returns the exit code."""
    check_output_folder_not_model(out_dir, "the shard directory")
    samples = read_manifest(manifest)  # then the output is checked, before any shard is written
    if not samples:
        raise InputError(f"manifest {manifest} has no samples")
    stats = write_shards_stats(
        samples, out_dir, samples_per_shard, prefix, overwrite=overwrite, skip_missing=skip_missing
    )
    skipped = f", skipped {stats.skipped} with missing files" if stats.skipped else ""
    print(f"wrote {stats.samples} samples in {len(stats.paths)} shards to {out_dir}{skipped}")
    return 0


def _load_config(model: str | None) -> Any:
    if model is None:  # the official processors (256 px images, 16 kHz audio), and every other
        # registered modality's with its default options
        base = ModelConfig()
        return base.replace(modalities={**base.modalities,
                                        **{m: {} for m in media_modalities() if m not in base.modalities}})
    if model in list_presets():
        return get_preset(model)
    if os.path.isdir(model) or looks_like_hub_id(model):
        return load_config(model)
    raise InputError(f"--model {model!r} is neither a preset ({', '.join(list_presets())}), a model directory "
                     "nor a Hugging Face Hub id (org/name)")


def data_check(source: str, model: str | None = None, limit: int | None = None, train: bool = False) -> int:
    """Decode every sample of a source (manifest, shard, directory or glob) in this process and
    print ok / skipped counts and the first skipped samples. Returns 0 when nothing was skipped,
    1 otherwise; raises when the source itself is unusable or no sample decodes."""
    skips: list[tuple[str, str]] = []

    def on_skip(sample_id: str, reason: str) -> None:
        if len(skips) < MAX_SKIP_LINES:
            print(f"skipped {sample_id}: {reason}", file=sys.stderr)
        skips.append((sample_id, reason))

    ds = PairDataset(source, _load_config(model), train=train, shuffle=False, repeat=False,
                     rank=0, world_size=1, on_skip=on_skip)
    kinds: dict[str, int] = {}
    for sample in ds:
        kind = "+".join(k for k in sample if k not in ("text", "label", "item"))  # its media fields
        kinds[kind] = kinds.get(kind, 0) + 1
        if limit is not None and ds.ok >= limit:
            break
    if len(skips) > MAX_SKIP_LINES:
        print(f"... and {len(skips) - MAX_SKIP_LINES} more skipped", file=sys.stderr)
    detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"{source}: ok {ds.ok}" + (f" ({detail})" if detail else "") + f", skipped {ds.skipped}")
    if ds.ok == 0:
        raise InputError(f"no sample of {source} could be decoded ({ds.skipped} skipped)")
    return 0 if ds.skipped == 0 else 1


def cmd_data_shards(args: argparse.Namespace) -> int:
    return data_shards(args.manifest, args.out_dir, args.samples_per_shard, args.prefix,
                       overwrite=args.overwrite, skip_missing=args.skip_missing)


def cmd_data_check(args: argparse.Namespace) -> int:
    return data_check(args.source, model=args.model, limit=args.limit, train=args.train)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    check_output_folder_not_model(args.out, "--out")
    if args.dataset == "esc":
        summary = prepare_esc(args.root, args.out, overwrite=args.force)
    else:
        summary = prepare_coco(args.root, args.out, splits=args.splits, tasks=args.tasks, overwrite=args.force)
    print(json.dumps(summary, indent=1))
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``data shards``, ``data check`` and ``data prepare esc|coco``."""
    p = subparsers.add_parser("data", help="training data: build tar shards from a manifest, check a data source")
    sub = p.add_subparsers(dest="data_command", required=True)

    s = sub.add_parser("shards", help="pack a JSONL manifest into WebDataset-layout tar shards")
    s.add_argument("manifest", help="JSONL manifest: {\"image\"|\"audio\"|\"video\"|<modality>: path, \"text\": caption} "
                                    "per line")
    s.add_argument("out_dir", help="output directory (created if absent)")
    s.add_argument("--samples-per-shard", type=positive_int, default=1000, help="samples per shard (default 1000)")
    s.add_argument("--prefix", default="shard", help="shard file prefix (default: shard -> shard-000000.tar)")
    s.add_argument("--force", "--overwrite", dest="overwrite", action="store_true",
                   help="replace existing shards with the same prefix (default: refuse them, before any work)")
    s.add_argument("--skip-missing", action="store_true", help="skip samples whose media file is missing")
    s.add_argument("--max-pixels", type=positive_int, metavar="N",
                   help="decode images of up to N pixels (default: Pillow's decompression-bomb limit)")
    s.set_defaults(func=cmd_data_shards)

    c = sub.add_parser("check", help="decode every sample of a source; print ok/skipped counts")
    c.add_argument("source", help="a .jsonl manifest, a .tar shard, a directory of shards, a quoted glob, or a "
                                  "webdataset spec ('pipe:COMMAND', a URL, 'shard-{000000..000009}.tar')")
    c.add_argument("--model", help="preset name or model directory whose processors to use (default: official)")
    c.add_argument("--limit", type=positive_int, help="stop after this many good samples")
    c.add_argument("--train", action="store_true", help="apply the training augmentation too")
    c.add_argument("--max-pixels", type=positive_int, metavar="N",
                   help="decode images of up to N pixels (default: Pillow's decompression-bomb limit)")
    c.set_defaults(func=cmd_data_check)

    pr = sub.add_parser("prepare", help="turn ESC-10/50 or COCO-style data into fine-tuning task manifests")
    prs = pr.add_subparsers(dest="dataset", required=True)
    e = prs.add_parser("esc", help="'NNN - Class/F-ID-T.ogg' folders -> labels.txt, fold{1..5}/{train,test}.jsonl")
    e.add_argument("--root", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--force", action="store_true", help=_PREPARE_FORCE)
    e.set_defaults(func=cmd_data_prepare)
    co = prs.add_parser("coco", help="COCO 2017-style annotations -> retrieval, grounding, segmentation manifests")
    co.add_argument("--root", required=True, help="holds annotations/ and <split>2017/")
    co.add_argument("--out", required=True)
    co.add_argument("--splits", nargs="+", default=["train", "val"])
    co.add_argument("--tasks", nargs="+", default=["retrieval", "grounding", "segmentation"],
                    choices=["retrieval", "grounding", "segmentation"])
    co.add_argument("--force", action="store_true", help=_PREPARE_FORCE)
    co.set_defaults(func=cmd_data_prepare)
    return p
