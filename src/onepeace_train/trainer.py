"""The pretraining loop: one process or ``torchrun --nproc-per-node N``; DDP or FSDP2; bf16
autocast; activation checkpointing; accumulation and clipping; AdamW with no-decay groups and
layer-wise lr decay; warmup + cosine; DCP checkpoints; JSONL metrics; zero-shot retrieval eval.

Determinism: the masks and drop path of micro-step ``i`` on rank ``r`` come from generators
seeded by (seed, i, r), and the data order from (seed, epoch), so a run killed at any point and
resumed from its last checkpoint reproduces the losses of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
import os
import time
from typing import Any

import torch
import torch.distributed as dist

from onepeace.errors import ConfigError
from onepeace.inference import OnePeace, create_model
from onepeace_train import checkpoint as ckpt
from onepeace_train.distributed import (
    DistInfo,
    barrier,
    enable_activation_checkpointing,
    init_distributed,
    parallelize,
)
from onepeace_train.optim import lr_at, param_groups, set_lr
from onepeace_train.pretrain.model import PretrainModel
from onepeace_train.recipe import TrainConfig
from onepeace_train.runs import check_run_dir, discard_run

log = logging.getLogger(__name__)


def _branch_patterns(m: str) -> list[str]:
    return [f"model.adapters.{m}.*", f"model.encoder.layers.*.ffns.{m}.*", f"model.encoder.norms.{m}.*",
            f"model.proj.{m}.*", f"decoder_embed.{m}.*", f"mask_token.{m}", f"decoder_pos.{m}.*",
            f"mask_head.{m}.*", f"decoder.layers.*.ffns.{m}.*", f"decoder.norms.{m}.*"]


def select_trainable(pm: torch.nn.Module, used: set[str], patterns: list[str],
                     frozen: list[str] | None = None) -> list[str]:
    """Freeze branches of modalities the objective does not use and anything matching ``frozen``,
    then everything that matches no ``patterns`` (when given). Returns the trainable names."""
    unused = [p for m in pm.model.modality_names if m not in used for p in _branch_patterns(m)]
    unused += list(frozen or [])
    names = []
    for name, p in pm.named_parameters():
        off = any(fnmatch.fnmatchcase(name, pat) for pat in unused)
        if patterns and not any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            off = True
        p.requires_grad_(not off)
        if not off:
            names.append(name)
    if not names:
        raise ConfigError(f"train.trainable {patterns} matches no parameter")
    return names


def add_modalities(model: OnePeace, new: dict[str, dict[str, Any]]) -> OnePeace:
    """A copy of ``model`` with extra modality branches (adapter, an FFN per layer, final norm,
    projection), freshly initialised; every existing weight is kept."""
    clash = sorted(set(new) & set(model.modality_names))
    if clash:
        raise ConfigError(f"model.add_modalities: the model already has {clash}")
    config = model.config.replace(modalities={**model.config.modalities, **new})
    return model.grown(config, allow_missing=lambda k: any(f".{m}." in f".{k}." for m in new)).train()


def _seed_for(seed: int, micro_step: int, rank: int) -> int:
    return (seed * 1_000_003 + micro_step * 7_919 + rank * 104_729) % (2**62)


class PretrainJob:
    """Pretraining (the official one_peace/models/one_peace/one_peace_pretrain.py and
    one_peace/criterions/*_pretrain_loss.py): the model plus the decoder; ``module("loss", batch, objective,
    generator)``; zero-shot retrieval on the eval manifests."""

    name = "pretrain"
    eval_key = "retrieval"  # where metrics.jsonl and the result hold the evaluation

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def prepare(self, model: OnePeace) -> OnePeace:
        o = self.cfg.objective.other
        if o not in model.modality_names or "text" not in model.modality_names:
            raise ConfigError(f"the objective pairs text with {o!r}; the model has {model.modality_names}")
        missing = sorted(set(self.cfg.objective.align_with) - set(model.modality_names))
        if missing:
            raise ConfigError(f"objective.align_with names {missing}; the model has {model.modality_names}")
        return model

    def wrap(self, model: OnePeace) -> PretrainModel:
        pm = PretrainModel(model)
        pm.reset_decoder_parameters()
        return pm

    def used_modalities(self, model: OnePeace) -> set[str]:
        return {"text", self.cfg.objective.other}

    def frozen_patterns(self, model: OnePeace) -> list[str]:
        return []

    def encoders(self, wrapped: PretrainModel) -> list[torch.nn.Module]:
        return [wrapped.model.encoder, wrapped.decoder]

    def train_loader(self, model_config, info: DistInfo):
        from onepeace.data.dataset import make_loader

        cfg = self.cfg
        d = cfg.data
        return make_loader(d.train, model_config, d.batch_size, d.num_workers, train=True, seed=cfg.train.seed,
                           repeat=True, rank=info.rank, world_size=info.world, resample=d.resample,
                           shuffle_buffer=d.shuffle_buffer, fields=d.fields or None, sample_options=d.sample_options,
                           augment=d.augment)

    def next_batch(self, data):
        return next(data)

    def loss(self, module, batch, gen):
        return module("loss", batch, self.cfg.objective, gen)

    def count(self, batch) -> int:
        return batch["text"]["tokens"].shape[0]

    def skipped(self, loader) -> int:
        return getattr(loader.dataset, "skipped", 0)

    @torch.no_grad()
    def evaluate(self, trainer: Trainer) -> dict[str, dict[str, Any]]:
        """Zero-shot retrieval on the eval manifests/shards: each modality <-> text, and every
        pair of non-text modalities (emergent, relevance by label), over distinct items with the
        protocol of :mod:`onepeace.tasks.retrieval` (``"class"`` for the demo's digit labels);
        ``skipped`` in each result counts eval samples that could not be loaded."""
        if not self.cfg.data.eval:
            return {}
        from onepeace.tasks.evaluate import all_pairs, embed_sources

        pm = trainer.pm
        was = pm.training
        pm.eval()

        def embed(m, inputs):
            with trainer._autocast():
                return trainer.module("embed", m, inputs)

        try:
            emb = embed_sources(self.cfg.data.eval, pm.model.config, embed, self.cfg.data.batch_size)
        finally:
            pm.train(was)
        if emb.skipped:
            log.warning("evaluation skipped %d samples: %s", len(emb.skipped), ", ".join(emb.skipped[:5]))
        if len(emb.media) > 1 and any(r.labels is None for r in emb.media.values()):
            raise ConfigError(f"eval data {self.cfg.data.eval} need a 'label' per sample (relevance of the "
                              "emergent pairs between modalities)")
        out = all_pairs(emb)
        for m in out.values():
            m["skipped"] = len(emb.skipped)
        return out


def make_job(cfg: TrainConfig):
    if cfg.task.name:
        from onepeace_train.finetune.job import FinetuneJob

        return FinetuneJob(cfg)
    return PretrainJob(cfg)


class Trainer:
    """The training loop shared by pretraining and fine-tuning; what differs (the wrapped
    module, the data, the loss call, the evaluation) is the job's (:class:`PretrainJob`,
    :class:`onepeace_train.finetune.job.FinetuneJob`).

    ``existing`` decides what happens to an output directory that is not new
    (:func:`onepeace_train.runs.check_run_dir`): an unfinished run is always resumed; a finished run
    or unrelated files are refused (``"refuse"``), a finished run re-entered (``"resume"``), or
    the run restarted from scratch (``"restart"``, the CLI's ``--force``)."""

    def __init__(self, cfg: TrainConfig, *, existing: str = "refuse"):
        self.cfg = cfg
        self.job = make_job(cfg)
        self.info: DistInfo = init_distributed()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.precision not in ("fp32", "bf16"):
            raise ConfigError(f"train.precision must be fp32 or bf16, got {cfg.train.precision!r}")
        if not cfg.data.train:
            raise ConfigError("data.train is empty: point it at a JSONL manifest or a shard directory")
        action = check_run_dir(cfg.train.output, cfg.optim.max_steps, existing)  # before any work
        torch.manual_seed(cfg.train.seed)
        if cfg.model.init:
            model = OnePeace.from_pretrained(cfg.model.init, dtype="fp32")
            if cfg.model.overrides:
                log.warning("model.overrides are ignored when model.init is set")
            if cfg.model.add_modalities:
                model = add_modalities(model, cfg.model.add_modalities)
        else:
            if cfg.model.add_modalities:
                raise ConfigError("model.add_modalities needs model.init (the model to extend)")
            model = create_model(cfg.model.preset, **cfg.model.overrides)
        if cfg.model.reset_logit_scale and model.logit_scale is not None:
            with torch.no_grad():
                model.logit_scale.fill_(math.log(1 / 0.07))
        if cfg.model.per_layer_rel_tables:
            from onepeace.model.resize import with_per_layer_tables

            model = with_per_layer_tables(model)
        if cfg.model.image_size:
            from onepeace.model.resize import with_image_size

            model = with_image_size(model, cfg.model.image_size, round_to=cfg.model.resize_round_to or None)
        elif cfg.model.resize_round_to:
            raise ConfigError("model.resize_round_to needs model.image_size (the resolution to move the model to)")
        model = self.job.prepare(model)
        if cfg.model.drop_path_rate >= 0:
            model.set_drop_path(cfg.model.drop_path_rate)
        self.pm = self.job.wrap(model)
        # "{other}" in a pattern is the objective's modality (configs/align_new_modality.toml)
        patterns = [p.replace("{other}", cfg.objective.other) for p in cfg.train.trainable]
        self.trainable = select_trainable(self.pm, self.job.used_modalities(model),
                                          patterns, self.job.frozen_patterns(model))
        self.pm.to(self.info.device).train()
        if cfg.train.activation_checkpointing:
            for enc in self.job.encoders(self.pm):
                enable_activation_checkpointing(enc)
        self.module = parallelize(self.pm, cfg.train.parallel, self.info)
        oc = cfg.optim
        groups = param_groups(self.module, oc.weight_decay, oc.layer_decay, model.config.layers)
        self.optimizer = torch.optim.AdamW(groups, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps)
        self.out = cfg.train.output
        self.ckpt_dir = os.path.join(self.out, "checkpoints")
        self.metrics_path = os.path.join(self.out, "metrics.jsonl")
        self.start_step = 0
        if action == "restart":  # discarded only now that the model and optimizer are built
            barrier()
            if self.info.is_main:
                discard_run(self.out)
            barrier()
        found = ckpt.latest(self.ckpt_dir)
        if found is not None:
            self.start_step = ckpt.load(found[1], self.module, self.optimizer)
            if self.info.is_main:
                log.info("resumed from %s (step %d)", found[1], self.start_step)
        if self.info.is_main:
            os.makedirs(self.out, exist_ok=True)
            self._truncate_metrics(self.start_step)
            with open(os.path.join(self.out, "train_config.json"), "w") as f:
                json.dump(cfg.to_dict(), f, indent=1)
        self.loader = self.job.train_loader(model.config, self.info)

    # ------------------------------------------------------------------ helpers
    def _truncate_metrics(self, step: int) -> None:
        if not os.path.exists(self.metrics_path):
            return
        with open(self.metrics_path) as f:
            keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.metrics_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.metrics_path)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, record["step"])

    def _autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _mean(self, values: dict[str, float]) -> dict[str, float]:
        if not self.info.distributed:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.info.device)
        dist.all_reduce(t)
        return {k: float(v) / self.info.world for k, v in zip(keys, t.tolist())}

    def _skipped_total(self) -> int:
        """Training samples skipped so far (unloadable), all ranks and workers together."""
        n = torch.tensor([float(self.job.skipped(self.loader))], dtype=torch.float64, device=self.info.device)
        if self.info.distributed:
            dist.all_reduce(n)
        return int(n.item())

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        return self.job.evaluate(self)

    # ------------------------------------------------------------------ training
    def fit(self) -> dict[str, Any]:
        cfg, oc, info = self.cfg, self.cfg.optim, self.info
        self._tb = None
        if info.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(self.out, "tb"))
            except Exception:  # noqa: BLE001 - TensorBoard is optional
                self._tb = None
        warmup = oc.warmup_steps or int(oc.warmup_ratio * oc.max_steps)
        data = iter(self.loader)
        accum = max(1, oc.grad_accum)
        for _ in range(self.start_step * accum):  # fast-forward to the resumed position
            self.job.next_batch(data)
        params = [p for p in self.module.parameters() if p.requires_grad]
        bar = None
        if info.is_main and cfg.train.progress:
            from tqdm import tqdm

            bar = tqdm(total=oc.max_steps, initial=self.start_step, desc=self.job.name, dynamic_ncols=True)
        last: dict[str, float] = {}
        t0, samples = time.perf_counter(), 0
        for step in range(self.start_step, oc.max_steps):
            lr = lr_at(step, oc.lr, oc.min_lr, warmup, oc.max_steps)
            set_lr(self.optimizer, lr)
            sums: dict[str, float] = {}
            for micro in range(accum):
                batch = self.job.next_batch(data)
                seed = _seed_for(cfg.train.seed, step * accum + micro, info.rank)
                gen = torch.Generator().manual_seed(seed)
                torch.manual_seed(seed + 1)  # drop path
                sync = micro == accum - 1 or not hasattr(self.module, "no_sync")
                ctx = contextlib.nullcontext() if sync else self.module.no_sync()
                with ctx:
                    with self._autocast():
                        out = self.job.loss(self.module, batch, gen)
                    (out["loss"] / accum).backward()
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / accum
                samples += self.job.count(batch) * info.world
            gnorm = torch.nn.utils.clip_grad_norm_(params, oc.clip_norm) if oc.clip_norm > 0 else None
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():  # official clamp of the temperature after each update
                ls = self.pm.model.logit_scale
                if ls is not None and not hasattr(ls, "placements"):
                    ls.clamp_(0, math.log(100))
            done = step + 1
            if done % max(1, cfg.train.log_every) == 0 or done == oc.max_steps:
                last = self._mean(sums)
                rate = samples / max(1e-9, time.perf_counter() - t0)
                rec = {"step": done, "lr": lr, **{k: round(v, 6) for k, v in last.items()},
                       "samples_per_s": round(rate, 2), "skipped": self.job.skipped(self.loader)}
                if gnorm is not None:
                    rec["grad_norm"] = round(float(gnorm), 4)
                self._log(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{last['loss']:.3f}", sps=f"{rate:.1f}")
                t0, samples = time.perf_counter(), 0
            if bar is not None:
                bar.update(1)
            if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done != oc.max_steps:
                self._log({"step": done, self.job.eval_key: self.evaluate()})
            if cfg.train.save_every and done % cfg.train.save_every == 0 and done != oc.max_steps:
                ckpt.save(self.ckpt_dir, done, self.module, self.optimizer, info, cfg.train.keep_checkpoints)
        if bar is not None:
            bar.close()
        ckpt.save(self.ckpt_dir, oc.max_steps, self.module, self.optimizer, info, cfg.train.keep_checkpoints)
        result: dict[str, Any] = {"final": last, "skipped": self._skipped_total()}
        if cfg.data.eval:
            result[self.job.eval_key] = self.evaluate()
            self._log({"step": oc.max_steps, self.job.eval_key: result[self.job.eval_key]})
        self.save_model(os.path.join(self.out, "model"))
        if self._tb is not None:
            self._tb.close()
        return result

    def save_model(self, path: str) -> None:
        """The trained encoder in our format (loadable by ``onepeace embed``)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.info.is_main:
            sd = {k[len("model."):]: v for k, v in full.items() if k.startswith("model.")}
            model = create_model(self.pm.model.config, device="meta", init=False)
            model.load_state_dict(sd, assign=True)
            model.save_pretrained(path, overwrite=True)  # the run's own model: replaced atomically
        barrier()


def run(cfg: TrainConfig, *, existing: str = "refuse") -> dict[str, Any]:
    from onepeace_train.distributed import shutdown

    trainer = Trainer(cfg, existing=existing)
    try:
        return trainer.fit()
    finally:
        shutdown()
