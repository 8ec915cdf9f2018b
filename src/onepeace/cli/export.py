"""``onepeace export onnx MODEL OUT_DIR [--modalities text,image,audio] [--dtype fp32] [--force]``."""

from __future__ import annotations

import argparse

from ..checkpoints.adapter import read_adapter_card
from ..errors import InputError
from ..export.onnx import OPSET, export_onnx
from ..outputs import check_output_folder_not_model
from . import common

#: what ``export onnx`` writes: fp32 graphs (``auto`` is fp32 here; onnxruntime picks its own kernels)
ONNX_DTYPES = ("auto", "fp32")


def cmd_export_onnx(args: argparse.Namespace) -> int:
    if args.dtype not in ONNX_DTYPES:
        raise InputError(f"--dtype {args.dtype}: ONNX export writes fp32 graphs (give --dtype fp32 or auto); to "
                         "run them in lower precision, convert or quantise the .onnx files with onnxruntime's tools")
    check_output_folder_not_model(args.out_dir, "OUT_DIR")
    names = None
    if args.modalities is not None:
        names = [m.strip() for m in args.modalities.split(",") if m.strip()]
    model = args.model
    if args.adapter:  # exported with the adapter merged into its fp32 weights
        read_adapter_card(args.adapter)
        model = common.load_model(args.model, "fp32", "cpu", adapter=args.adapter)
    record = export_onnx(model, args.out_dir, modalities=names, force=args.force, opset=args.opset)
    for g in record["graphs"].values():
        inputs = ", ".join(f"{k} {v['dtype']}[{', '.join(map(str, v['shape']))}]" for k, v in g["inputs"].items())
        print(f"{args.out_dir}/{g['file']}: ({inputs}) -> embedding, features (fp32); "
              f"max |onnxruntime - torch| = {g['max_abs_diff']:.1e}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``export onnx``."""
    p = subparsers.add_parser("export", help="export a model's branches to another runtime: `onepeace export onnx ...`")
    sub = p.add_subparsers(dest="export_format", required=True)
    o = sub.add_parser("onnx", help="one ONNX graph per modality (OUT_DIR/<modality>.onnx), checked with onnxruntime")
    o.add_argument("model", metavar="MODEL", help="a model directory or Hub id (exported in fp32)")
    o.add_argument("out_dir", metavar="OUT_DIR", help="output directory (created if absent; written whole or not at all)")
    o.add_argument("--modalities", help="comma-separated branches to export (default: every branch with an embedding)")
    o.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="precision of the exported graphs: fp32 (auto means fp32 here); the others are refused, "
                        "as the export and its onnxruntime check are fp32")
    common.add_adapter_option(o)
    o.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    o.add_argument("--force", action="store_true", help="replace a previous export in OUT_DIR (default: refuse it)")
    o.set_defaults(func=cmd_export_onnx)
    return p
