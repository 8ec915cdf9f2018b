"""Training checkpoints with torch.distributed.checkpoint: sharded, written atomically, resumable.

Each save goes to ``checkpoints/step-XXXXXXXX.tmp`` and is renamed to ``step-XXXXXXXX`` by rank 0
once every rank has finished writing; a checkpoint directory without ``.tmp`` is complete. Older
ones beyond ``keep`` are removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import warnings

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .distributed import DistInfo, barrier

_NAME = re.compile(r"^step-(\d{8})$")


def latest(directory: str) -> tuple[int, str] | None:
    if not os.path.isdir(directory):
        return None
    found = [(int(m.group(1)), os.path.join(directory, n)) for n in os.listdir(directory) if (m := _NAME.match(n))]
    return max(found) if found else None


@contextlib.contextmanager
def _single_process_ok():
    """dcp warns when no process group exists; one process without one is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save(directory: str, step: int, module, optimizer, info: DistInfo, keep: int = 2) -> str:
    final = os.path.join(directory, f"step-{step:08d}")
    tmp = final + ".tmp"
    if info.is_main:
        os.makedirs(directory, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    model_sd, optim_sd = get_state_dict(module, optimizer)
    with _single_process_ok():
        dcp.save({"model": model_sd, "optim": optim_sd, "step": torch.tensor(step)}, checkpoint_id=tmp)
    barrier()
    if info.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        done = sorted(int(m.group(1)) for n in os.listdir(directory) if (m := _NAME.match(n)))
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(os.path.join(directory, f"step-{old:08d}"), ignore_errors=True)
    barrier()
    return final


def load(path: str, module, optimizer) -> int:
    model_sd, optim_sd = get_state_dict(module, optimizer)
    state = {"model": model_sd, "optim": optim_sd, "step": torch.tensor(0)}
    with _single_process_ok():
        dcp.load(state, checkpoint_id=path)
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return int(state["step"])
