"""Training configuration: TOML recipe files under ``configs/`` with ``--key=value`` overrides."""

from __future__ import annotations

import ast
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import tomllib

from onepeace.errors import ConfigError
from onepeace_train.finetune.tasks import TaskSection
from onepeace_train.pretrain.objective import ObjectiveConfig


@dataclass
class ModelSection:
    preset: str = "tiny"
    init: str = ""  # an onepeace model directory to start from (e.g. stage 1's output)
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    reset_logit_scale: bool = False
    # new modality branches to add to an ``init`` model (name -> options), freshly initialised
    add_modalities: dict[str, dict[str, Any]] = field(default_factory=dict)
    # stochastic depth at the last layer (ramped from 0); < 0 keeps the model's own setting
    drop_path_rate: float = -1.0
    # > 0: fine-tune at this image resolution (relative tables resized as the official loader does)
    image_size: int = 0
    # with image_size: round the resized relative tables through this dtype ("bf16": the official
    # loader's values for the released bf16 checkpoints, bit for bit); empty keeps float32 precision
    resize_round_to: str = ""
    # true: give every layer its own copy of the shared relative tables (official classify fine-tuning)
    per_layer_rel_tables: bool = False


@dataclass
class DataSection:
    train: str = ""  # JSONL manifest, directory of .tar shards, or a glob
    eval: list[str] = field(default_factory=list)  # held-out manifests (with labels) for retrieval
    batch_size: int = 32  # per rank and micro-step
    num_workers: int = 0
    # shards: draw them with replacement, an endless seeded stream per rank and worker (multi-node runs)
    resample: bool = False
    shuffle_buffer: int = 1000  # samples in the shard shuffle buffer
    # media fields of the records to decode (empty: all of them), e.g. ["video"] for clips whose
    # records also name a soundtrack that the objective does not use
    fields: list[str] = field(default_factory=list)
    # per-modality options of the processors' sample() (e.g. {image = {scale = [0.8, 1.0]}})
    sample_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # training-time augmentation per modality, e.g. {audio = {noise = {p = 0.5, snr_db = [5, 30]}}}
    # (options and defaults: onepeace.data.augment.AUDIO_OPS / IMAGE_OPS; README "Augmentation")
    augment: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class OptimSection:
    lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0
    max_steps: int = 1000
    clip_norm: float = 3.0
    layer_decay: float = 1.0  # < 1: layer-wise lr decay
    grad_accum: int = 1


@dataclass
class TrainSection:
    output: str = "runs/pretrain"
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    parallel: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard)
    activation_checkpointing: bool = False
    trainable: list[str] = field(default_factory=list)  # fnmatch patterns; empty = everything
    log_every: int = 10
    eval_every: int = 0
    save_every: int = 100
    keep_checkpoints: int = 2
    progress: bool = True
    threads: int = 0


#: dict settings an override replaces whole (a recipe's new branch is not kept next to another)
REPLACED = {("model", "add_modalities"), ("objective", "align_with")}


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    task: TaskSection = field(default_factory=TaskSection)  # fine-tuning (empty name: pretraining)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        out = cls()
        for sec_name, values in data.items():
            if not hasattr(out, sec_name):
                raise ConfigError(f"unknown config section [{sec_name}]; known: {[f.name for f in dataclasses.fields(cls)]}")
            sec = getattr(out, sec_name)
            known = {f.name for f in dataclasses.fields(sec)}
            for k, v in values.items():
                if k not in known:
                    raise ConfigError(f"unknown key {sec_name}.{k}; known: {sorted(known)}")
                cur = getattr(sec, k)
                if isinstance(cur, dict) and isinstance(v, dict) and (sec_name, k) not in REPLACED:
                    v = {**cur, **v}  # partial dict overrides keep the other entries
                setattr(sec, k, copy.deepcopy(v))
        return out


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text  # a bare string


def load_config(path: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """A TOML recipe plus ``section.key=value`` overrides (values in TOML syntax; bare strings ok)."""
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"invalid TOML in {path}: {e}") from None
    for item in overrides or []:
        key, sep, value = item.lstrip("-").partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. optim.lr=1e-4)")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[leaf] = _parse_value(value)
    cfg = TrainConfig.from_dict(data)
    from onepeace.data.augment import parse_augment

    parse_augment(cfg.data.augment)  # a bad option fails here, naming its key, not when training starts
    return cfg
