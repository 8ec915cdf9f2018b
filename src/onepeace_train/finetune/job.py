"""Fine-tuning as a job of the shared trainer (:mod:`onepeace_train.trainer`): the model gets the
task's head, the trainer calls ``module("loss", batch)`` and evaluates with ``module("predict",
batch)`` over the eval manifests."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from onepeace import OnePeace
from onepeace.config import HeadConfig, ModelConfig
from onepeace.errors import ConfigError, InputError
from onepeace_train.finetune.data import batches, read_task_manifest, task_loader
from onepeace_train.finetune.tasks import CLASSIFY_HEADS, Task, get_task

log = logging.getLogger(__name__)


def _same_head(a: HeadConfig, b: HeadConfig) -> bool:
    keys = ("num_classes", "type", "feature_source", "attn_pooling", "use_pooler", "head_scale_ratio", "two_inputs")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def _same_kind(a: HeadConfig, b: HeadConfig) -> bool:
    return (a.type, a.num_classes, a.two_inputs) == (b.type, b.num_classes, b.two_inputs)


def _kind(h: HeadConfig) -> str:
    return f"{h.type}, {h.num_classes} outputs" + (", two images" if h.two_inputs else "")


def attach_head(model: OnePeace, head: HeadConfig | None, config: ModelConfig | None = None,
                reset: bool = False) -> OnePeace:
    """A copy of ``model`` with ``head`` (freshly initialised) and the options of ``config``;
    every other weight is kept. An existing head that matches is kept (resuming a fine-tuned
    model); a different one is an error unless ``reset``."""
    config = config or model.config
    old = model.config.head
    if head is not None and old is not None and not reset:
        if not _same_head(old, head):
            raise ConfigError(
                f"the init model already has a {old.num_classes}-class {old.type} head on {old.feature_source}; "
                f"the task needs {head.num_classes} classes ({head.type} on {head.feature_source}). "
                "Set task.reset_head = true to replace it"
            )
        head.labels = head.labels or old.labels
    if head is None and old is None and config.modalities == model.config.modalities:
        return model
    new_config = config.replace(head=None if head is None else head.__dict__.copy())
    state = model.state_dict()
    if head is None or reset or old is None:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    return model.grown(new_config, state, lambda k: k.startswith("head.") or "type_embedding" in k).train()


def score_source(task: Task, predict: Callable[[dict[str, Any]], dict[str, torch.Tensor]], source: str,
                 batch_size: int, autocast: Callable[[], Any] = contextlib.nullcontext,
                 progress: bool | None = False,
                 on_skip: Callable[[str, list[str], int], None] | None = None) -> dict[str, Any]:
    """``task.metrics`` over one ordered pass of a task manifest, plus ``skipped`` (samples that
    could not be used) when there were any, also passed to ``on_skip(source, their ids, samples
    in the manifest)``; a manifest none of whose samples loads is an
    :class:`InputError`, not an empty result. ``progress``: a bar of batches on stderr (``None``:
    only when stderr is a terminal)."""
    from onepeace.progress import progress_bar

    loader = task_loader(task, source, batch_size, train=False)
    parts = []
    with progress_bar(progress, total=_length(loader), desc=f"evaluating {source}", unit="batch") as bar:
        for batch in batches(loader):
            with autocast():
                parts.append(predict(batch))
            bar.update()
    if on_skip is not None and loader.dataset.skipped:
        on_skip(source, list(loader.dataset.skipped_ids), len(loader.dataset))
    if not parts:
        raise InputError(f"no sample of {source} could be used ({loader.dataset.skipped} skipped; "
                         "the warnings say why, e.g. with `onepeace -v`)")
    metrics = task.metrics(parts)
    if loader.dataset.skipped:
        metrics["skipped"] = loader.dataset.skipped
    return metrics


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:  # an iterable dataset of unknown length
        return None


class TaskModel(nn.Module):
    """The model plus its task; ``forward("loss"|"predict", batch)`` so DDP/FSDP see each call."""

    def __init__(self, model: OnePeace, task: Task):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, kind: str, batch: dict[str, Any]):
        if kind == "loss":
            return self.task.loss(self.model, batch)
        if kind == "predict":
            return self.task.predict(self.model, batch)
        raise ValueError(f"unknown TaskModel call {kind!r}")


class FinetuneJob:
    name = "finetune"
    eval_key = "eval"  # where metrics.jsonl and the result hold the evaluation

    def __init__(self, cfg):
        self.cfg = cfg
        self.task: Task | None = None
        self.train_records: list[dict[str, Any]] | None = None

    def prepare(self, model: OnePeace) -> OnePeace:
        tc = self.cfg.task
        task = get_task(tc, model.config)
        self.train_records = read_task_manifest(self.cfg.data.train, task.required_fields)
        task.check_records(self.train_records, self.cfg.data.train)
        config = task.update_config(model.config)
        model = attach_head(model, task.head_config(model.config), config, reset=tc.reset_head)
        task.bind(model.config)
        self.task = task
        return model

    def wrap(self, model: OnePeace) -> nn.Module:
        return TaskModel(model, self.task)

    def used_modalities(self, model: OnePeace) -> set[str]:
        return set(self.task.modalities)

    def frozen_patterns(self, model: OnePeace) -> list[str]:
        if self.task.name == "retrieval":
            return []
        return ["model.proj.*", "model.logit_scale"]  # the head replaces the embedding path

    def encoders(self, wrapped: nn.Module) -> list[nn.Module]:
        return [wrapped.model.encoder]

    def train_loader(self, model_config: ModelConfig, info):
        d = self.cfg.data
        return task_loader(self.task, d.train, d.batch_size, train=True, seed=self.cfg.train.seed,
                           num_workers=d.num_workers, rank=info.rank, world=info.world, records=self.train_records)

    def next_batch(self, data, patience: int = 20):
        """The next batch with at least one loadable sample; a stream of nothing but failures is
        an error (after ``patience`` empty batches in a row), never an endless loop."""
        for _ in range(patience):
            b = next(data)
            if b is not None:
                return b
        raise InputError(f"{patience} batches in a row had no loadable sample in {self.cfg.data.train}; "
                         "check the media paths (warnings name each skipped sample)")

    def loss(self, module: nn.Module, batch: dict[str, Any], gen: torch.Generator) -> dict[str, torch.Tensor]:
        return module("loss", batch)

    def count(self, batch: dict[str, Any]) -> int:
        return int(batch["size"])

    def skipped(self, loader) -> int:
        return loader.dataset.skipped

    @torch.no_grad()
    def evaluate(self, trainer) -> dict[str, Any]:
        if not self.cfg.data.eval:
            return {}
        was = trainer.pm.training
        trainer.pm.eval()
        out = {}
        try:
            for source in self.cfg.data.eval:
                try:
                    out[source] = score_source(self.task, lambda batch: trainer.module("predict", batch), source,
                                               self.cfg.data.batch_size, trainer._autocast)
                except InputError as e:  # the training run and its model are kept
                    log.error("evaluation skipped: %s", e)
                    out[source] = {}
        finally:
            trainer.pm.train(was)
        return out

    def summary(self, result: dict[str, Any]) -> list[str]:
        lines = []
        for source, m in result.get("eval", {}).items():
            shown = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())
            lines.append(f"{source}: {shown}")
        return lines


@torch.inference_mode()
def evaluate_task(model: OnePeace, task: str, sources, batch_size: int = 16, *, progress: bool | None = False,
                  on_skip: Callable[[str, list[str], int], None] | None = None, **options: Any) -> dict[str, Any]:
    """A (fine-tuned) model's metrics on task manifests: ``{source: {metric: value}}``
    (``progress`` and ``on_skip``, told of samples that could not be loaded, as in
    :func:`score_source`)."""
    from onepeace_train.finetune.tasks import TaskSection

    if isinstance(sources, str):
        sources = [sources]
    head = model.config.head
    if task != "retrieval" and head is None:
        raise ConfigError(f"task {task} needs a model with a task head (fine-tune one with `onepeace finetune {task}`)")
    tc = TaskSection(name=task, **options)
    if head is not None:
        tc.feature_source = head.feature_source
        tc.num_classes = head.num_classes
        if task == "classify" and head.type in CLASSIFY_HEADS:
            tc.head = head.type
        if task == "classify" and head.inputs and "text" in head.inputs and len(head.inputs) > 1:
            tc.use_text = True
    t = get_task(tc, model.config)
    t.bind(model.config)
    want = t.head_config(model.config) if head is not None else None
    if want is not None and not _same_kind(want, head):
        raise ConfigError(f"the model's head ({_kind(head)}) is not a {task} head ({_kind(want)}); "
                          "evaluate the model on the task it was fine-tuned for")
    was = model.training
    model.eval()
    try:
        return {source: score_source(t, lambda batch: t.predict(model, batch), source, batch_size,
                                     progress=progress, on_skip=on_skip)
                for source in sources}
    finally:
        model.train(was)
