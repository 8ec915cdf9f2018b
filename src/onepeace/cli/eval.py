"""``onepeace eval retrieval``: R@K between two modalities. (``eval task``, a fine-tuned model's
metric, is added by ``onepeace_train.cli``.)"""

from __future__ import annotations

import argparse
import glob
import json
import os

from ..checkpoints.format import write_text_atomic
from ..errors import InputError
from ..tasks.evaluate import check_pair, evaluate_retrieval
from . import common
from .common import (
    add_adapter_option,
    add_max_pixels,
    add_runtime_options,
    check_out,
    note,
    positive_int,
    precision,
    report_skipped,
    rounded,
    runtime,
)


def cmd_eval(args: argparse.Namespace) -> int:
    out = check_out(args.out, args.force)
    check_pair(args.query, args.gallery)  # a modality no plug-in provides: refused before the model loads
    for source in args.data:
        if not (os.path.exists(source) or (glob.has_magic(source) and glob.glob(source))):
            raise InputError(f"data source not found: {source} (give a .jsonl manifest, a .tar shard, "
                             "a directory of shards or a glob)")
    device = runtime(args)
    model = common.load_model(args.model, args.dtype, device, adapter=args.adapter)

    def on_skip(skipped: list[str], used: int) -> None:
        report_skipped("eval retrieval", len(skipped), skipped, used + len(skipped))

    m = evaluate_retrieval(model, args.data, args.query, args.gallery, args.batch_size, args.protocol, on_skip,
                           progress=None)
    m["dtype"] = precision(model)
    scores = "  ".join(f"{k} {v:.2f}" for k, v in m.items() if isinstance(v, float))
    print(f"{args.query} -> {args.gallery} ({m['protocol']}-level, {m['queries']} queries, "
          f"{m['gallery']} distinct gallery items, {m['dtype']}): {scores}")
    if m.get("no_match"):
        note(args, f"{m['no_match']} of the {m['queries']} queries have no relevant {args.gallery} item (e.g. "
                   "caption-only lines under the instance protocol) and are not scored")
    if out:
        write_text_atomic(out, json.dumps({f"{args.query}->{args.gallery}": rounded(m)}, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """``eval`` and its ``retrieval``."""
    ev = sub.add_parser("eval", help="evaluation: `onepeace eval retrieval ...`")
    evs = ev.add_subparsers(dest="eval_command", required=True)
    r = evs.add_parser("retrieval", help="R@1/5/10 and mean rank between two modalities, emergent pairs too")
    r.add_argument("--model", required=True)
    r.add_argument("--data", action="append", required=True, help="JSONL manifest or shards (repeatable)")
    r.add_argument("--query", required=True, help="text or a modality of the model (image, audio, video, ...)")
    r.add_argument("--gallery", required=True, help="text or a modality of the model (image, audio, video, ...)")
    r.add_argument("--batch-size", type=positive_int, default=32)
    add_runtime_options(r)
    add_adapter_option(r)
    r.add_argument("--protocol", choices=["auto", "instance", "class"], default="auto",
                   help="relevance over distinct items: instance (an item matches its own captions / the item "
                        "of the same label), class (same label); auto: class when a label spans several "
                        "media files (see docs/cli.md)")
    r.add_argument("--out", help="write the metrics as JSON")
    r.add_argument("--force", action="store_true", help="overwrite an existing --out file (default: refuse it, before any work)")
    add_max_pixels(r)
    r.set_defaults(func=cmd_eval)
