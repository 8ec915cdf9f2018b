"""An unfinished ``onepeace adapt`` run: its staging area and checkpoints.

The staging area is the hidden sibling ``.DIR.onepeace-adapt`` of the output DIR (same folder, so
the finished adapter is renamed into place). It holds ``run.json`` (what the run trains: base
model fingerprint, data, every option that changes the result), ``before.json`` (the held-out
figures of the base model) and ``checkpoints/step-XXXXXXXX.pt``: LoRA weights, optimizer state,
torch RNG state, data order position, bad files and the losses so far. Each checkpoint is written
to a temporary name and renamed, so one killed mid-write is never read. Rerunning the command with
the same options resumes from the last checkpoint and ends with the same adapter as an
uninterrupted run (same seed, same machine); once DIR is written the staging area is removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import torch

from onepeace.checkpoints.format import write_text_atomic
from onepeace.errors import OutputError

_CKPT = re.compile(r"^step-(\d{8})\.pt$")


def staging_path(out: str) -> str:
    real = os.path.abspath(os.fspath(out))
    parent, base = os.path.split(real)
    return os.path.join(parent, f".{base}.onepeace-adapt")


def open_staging(out: str, signature: dict[str, Any], force: bool) -> str:
    """The staging area of ``out`` for a run with ``signature``: resumed when it matches, else
    refused (or, with ``force``, discarded and started anew)."""
    path = staging_path(out)
    run_file = os.path.join(path, "run.json")
    if os.path.isdir(path):
        try:
            with open(run_file, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
        if old != json.loads(json.dumps(signature)):
            if not force and old is not None:
                changed = sorted(k for k in set(old) | set(signature) if old.get(k) != signature.get(k))
                raise OutputError(f"an unfinished adapt run for {out} with other settings ({', '.join(changed[:4])}) "
                                  f"is in {path}: rerun it with the same options to resume it, or pass --force to "
                                  "discard it and start over")
            shutil.rmtree(path)
    os.makedirs(os.path.join(path, "checkpoints"), exist_ok=True)
    if not os.path.isfile(run_file):
        write_text_atomic(run_file, json.dumps(signature, indent=1, sort_keys=True) + "\n")
    return path


def read_json(path: str) -> Any | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def latest_checkpoint(staging: str) -> str | None:
    folder = os.path.join(staging, "checkpoints")
    found = sorted((int(m.group(1)), n) for n in os.listdir(folder) if (m := _CKPT.match(n))) \
        if os.path.isdir(folder) else []
    return os.path.join(folder, found[-1][1]) if found else None


def save_checkpoint(staging: str, step: int, state: dict[str, Any], keep: int = 2) -> str:
    folder = os.path.join(staging, "checkpoints")
    final = os.path.join(folder, f"step-{step:08d}.pt")
    tmp = f"{final}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save({**state, "step": step}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    done = sorted(n for n in os.listdir(folder) if _CKPT.match(n))
    for old in done[:-keep]:
        os.remove(os.path.join(folder, old))
    return final


def load_checkpoint(path: str) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
