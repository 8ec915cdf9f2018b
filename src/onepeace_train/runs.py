"""A training run's output directory: may a run start, resume or restart there, and discarding one.

(Formerly ``onepeace.outputs.check_run_dir`` / ``discard_run``: they are about training runs, so
they live with the trainer; the library never imports ``onepeace_train``.)
"""

from __future__ import annotations

import contextlib
import os
import shutil

from onepeace.errors import OutputError
from onepeace.outputs import check_creatable, check_output_dir, is_staging_name, listing, model_files
from onepeace_train.checkpoint import latest


def check_run_dir(path: str | os.PathLike, max_steps: int, existing: str = "refuse") -> str:
    """What a training run may do with its output directory ``path``; returns ``"new"``,
    ``"resume"`` or ``"restart"`` (discard the run's checkpoints and metrics, then start anew).

    * absent or empty, or a run killed before its first checkpoint: ``"new"``;
    * a run with a checkpoint before ``max_steps`` (or without its final model): ``"resume"``;
    * a finished run (final ``model/`` present, no checkpoint before ``max_steps``): refused,
      unless ``existing`` is ``"resume"`` (re-enter it: re-evaluate, save the model again) or
      ``"restart"`` (``--force``: train again from scratch; the old model stays until the new
      one replaces it);
    * a directory with other files and no run: refused, unless ``existing == "restart"``
      (train there; the other files are left alone).
    """
    if existing not in ("refuse", "resume", "restart"):
        raise ValueError(f"existing must be 'refuse', 'resume' or 'restart', got {existing!r}")
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"the run directory {path} is a file, not a directory; give --output a directory")
    check_creatable(path)
    if not os.path.isdir(path):
        return "new"
    # the final model replaces model/: checked now (a stranded save recovered), not after training
    check_output_dir(os.path.join(path, "model"), True, owned=model_files(os.path.join(path, "model")), what="model")
    entries = [e for e in sorted(os.listdir(path)) if not is_staging_name(e)]
    if not entries:
        return "new"
    found = latest(os.path.join(path, "checkpoints"))
    has_model = os.path.isfile(os.path.join(path, "model", "config.json"))
    if found is None and "train_config.json" not in entries and "metrics.jsonl" not in entries:
        if "model" in entries:  # e.g. a converted model's folder: training would replace it
            raise OutputError(f"the run directory {path} holds model/ but no training run; "
                              "choose a new or empty --output")
        if existing == "restart":
            return "new"
        raise OutputError(f"the run directory {path} is not empty and holds no training run ({listing(entries)}); "
                          "choose a new or empty --output, or pass --force to train there anyway "
                          "(its files are left alone)")
    if existing == "restart":
        return "restart"
    finished = has_model and (found is None or found[0] >= max_steps)
    if finished and existing != "resume":
        step = f"step {found[0]} of {max_steps}, " if found is not None else ""
        raise OutputError(f"the run directory {path} holds a finished run ({step}model in "
                          f"{os.path.join(path, 'model')}); raise optim.max_steps to continue it, choose another "
                          "--output, or pass --force to train again from scratch (its checkpoints are discarded; "
                          "the old model stays until the new one replaces it)")
    return "resume" if (found is not None or finished) else "new"


def discard_run(path: str | os.PathLike) -> None:
    """Remove a run's checkpoints, metrics and TensorBoard logs (``--force``); its model stays."""
    path = os.fspath(path)
    for name in ("checkpoints", "tb"):
        shutil.rmtree(os.path.join(path, name), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(path, "metrics.jsonl"))


__all__ = ["check_run_dir", "discard_run"]
