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
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from onepeace.errors import ConfigError
from onepeace_train.distributed import DistInfo, barrier

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


def _saved_optimizer_state(optim_sd: dict, path: str) -> dict:
    """``optim_sd`` (a fresh optimizer's, every parameter's state initialised by ``get_state_dict``)
    without the states the checkpoint lacks. An optimizer keeps no state for a parameter that never
    had a gradient (an unused mask embedding, a branch the recipe does not train), so such a
    checkpoint holds none for it; asking dcp for it fails the resume ("Missing key in checkpoint
    state_dict"). Left out, the parameter resumes stateless, as it was when saved."""
    saved = set(dcp.FileSystemReader(path).read_metadata().state_dict_metadata)
    state = {}
    for fqn, values in optim_sd.get("state", {}).items():
        kept = {k: v for k, v in values.items() if f"optim.state.{fqn}.{k}" in saved}
        if kept:
            state[fqn] = kept
    return {**optim_sd, "state": state}


def load(path: str, module, optimizer) -> int:
    model_sd, optim_sd = get_state_dict(module, optimizer)
    state = {"model": model_sd, "optim": _saved_optimizer_state(optim_sd, path), "step": torch.tensor(0)}
    try:
        with _single_process_ok():
            dcp.load(state, checkpoint_id=path)
    except CheckpointException as e:  # a BaseException: it would escape every handler as a traceback
        causes = [getattr(f, "exc", f) for f in e.failures.values()] if hasattr(e, "failures") else [e]
        first = str(causes[0]).strip().splitlines()[-1] if causes and str(causes[0]).strip() else type(e).__name__
        raise ConfigError(f"cannot resume from the checkpoint {path}: {first}; start over with --force") from None
    # strict=False: the parameters left stateless above (the model itself is loaded in full: checked below)
    missing = set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                             options=StateDictOptions(strict=False))
    if missing.missing_keys or missing.unexpected_keys:
        raise RuntimeError(f"checkpoint {path} does not match the model: missing {sorted(missing.missing_keys)[:5]}, "
                           f"unexpected {sorted(missing.unexpected_keys)[:5]}")
    return int(state["step"])
