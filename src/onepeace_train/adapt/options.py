"""The options of ``onepeace adapt`` / :func:`onepeace_train.adapt.run_adapt`, with their defaults."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from onepeace.errors import MAX_SKIP_SHARE, ConfigError

from .lora import DEFAULT_TARGETS, parse_targets

#: without --steps or --epochs: this many epochs, at most MAX_DEFAULT_STEPS optimizer steps
DEFAULT_EPOCHS = 10
MAX_DEFAULT_STEPS = 1000


@dataclass
class AdaptOptions:
    val: float | str = 0.1  # held-out: a fraction of the pairs (seeded) or a manifest / folder
    rank: int = 8
    alpha: float | None = None  # LoRA alpha; default 2 * rank (scale alpha / rank = 2)
    targets: tuple[str, ...] | str = DEFAULT_TARGETS
    branches: tuple[str, ...] | str | None = None  # default: the two modalities of the pairs
    steps: int | None = None
    epochs: float | None = None
    lr: float = 5e-4
    warmup: float = 0.1  # share of the steps with a linear warmup, then cosine to 0
    weight_decay: float = 0.0
    batch_size: int = 32
    accum: int = 1
    bf16: bool = False  # base weights in bf16 and bf16 autocast; LoRA weights stay float32
    checkpointing: bool = False  # activation checkpointing: recompute each layer in the backward pass
    seed: int = 0
    denoise: float = 0.0  # weight of the intra-modal denoising contrast of the media side (0: off)
    save_every: int = 50  # a checkpoint every this many steps (resumable after a kill)
    eval_batch_size: int = 64
    device: str = "cpu"
    threads: int | None = None
    max_skip_share: float = MAX_SKIP_SHARE
    force: bool = False
    progress: bool | None = None  # tqdm bar on stderr; None: only when stderr is a terminal

    @classmethod
    def build(cls, options: dict[str, Any]) -> AdaptOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"run_adapt has no option {unknown[0]!r}; its options: {', '.join(sorted(known))}")
        opts = cls(**options)
        opts.check()
        return opts

    def check(self) -> None:
        self.targets = parse_targets(self.targets)
        if isinstance(self.branches, str):
            self.branches = tuple(b.strip() for b in self.branches.split(",") if b.strip())
        if self.branches is not None and not self.branches:
            raise ConfigError("--branches names no branch; give e.g. audio,text (default: the pairs' modalities)")
        for name in ("rank", "batch_size", "accum", "save_every", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1):
            raise ConfigError(f"--steps must be a positive integer, got {self.steps!r}")
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("give --steps or --epochs, not both")
        for name, value in (("epochs", self.epochs), ("lr", self.lr), ("alpha", self.alpha)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"--{name} must be a positive number, got {value!r}")
        if not (math.isfinite(self.denoise) and self.denoise >= 0):
            raise ConfigError(f"--denoise is a loss weight >= 0, got {self.denoise!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"warmup is a share of the steps in [0, 1), got {self.warmup!r}")
        if self.alpha is None:
            self.alpha = 2.0 * self.rank
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def total_steps(self, n_train: int) -> int:
        per_epoch = n_train / (self.batch_size * self.accum)
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * per_epoch))
        return max(1, min(MAX_DEFAULT_STEPS, math.ceil(DEFAULT_EPOCHS * per_epoch)))

    def signature(self) -> dict[str, Any]:
        """The options that change the trained adapter (a resumed run must have the same)."""
        skip = {"force", "progress", "save_every", "eval_batch_size", "checkpointing", "device", "threads",
                "max_skip_share"}
        out = {k: v for k, v in asdict(self).items() if k not in skip}
        out["targets"], out["branches"] = list(self.targets), list(self.branches or [])
        if isinstance(out["val"], os.PathLike):
            out["val"] = os.fspath(out["val"])
        return out
