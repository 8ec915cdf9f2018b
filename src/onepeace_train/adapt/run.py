"""``run_adapt``: LoRA adaptation of a ONE-PEACE model to a user's pairs, scored before and after."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import torch

from onepeace.checkpoints.fingerprint import model_fingerprint, model_name
from onepeace.checkpoints.format import write_text_atomic
from onepeace.errors import ConfigError, InputError, SkipGuard
from onepeace.inference import OnePeace
from onepeace.outputs import check_output_dir, staged_dir
from onepeace.progress import progress_bar
from onepeace_train.distributed import enable_activation_checkpointing
from onepeace_train.optim import lr_at, set_lr
from onepeace_train.pretrain.losses import contrastive_loss
from onepeace_train.pretrain.model import PretrainModel
from onepeace_train.pretrain.objective import ObjectiveConfig

from . import state as st
from .data import MIN_PAIRS, Decoder, Pairs, Skips, Stream, check_modalities, is_fraction, read_pairs, split
from .lora import adapter_state, add_lora, lora_config, require_peft
from .metrics import evaluate, label_texts
from .options import AdaptOptions
from .output import FORMAT, adapter_files, write_adapter

log = logging.getLogger(__name__)
HINT = "--force (force=True in Python)"


@dataclass
class Data:
    train: Pairs
    held: Pairs
    skips: Skips
    decoder: Decoder
    classes: list[str] | None


def _load_base(model: Any, opts: AdaptOptions) -> tuple[OnePeace, str, str]:
    """The model to adapt (a copy: a model given in Python is left as it was), its fingerprint and name."""
    dtype = torch.bfloat16 if opts.bf16 else torch.float32
    if isinstance(model, OnePeace):
        fp, name = model_fingerprint(model), model_name(model)
        base = copy.deepcopy(model).to(dtype=dtype)
    elif isinstance(model, (str, os.PathLike)):
        base = OnePeace.from_pretrained(model, dtype=dtype)
        fp, name = model_fingerprint(base), model_name(base)
    else:
        raise ConfigError(f"the model to adapt must be a OnePeace model or a path, got {type(model).__name__}")
    if base.logit_scale is None or not base.proj:
        raise ConfigError(f"{name} has no embedding projections (a classification or vision-branch checkpoint): "
                          "adapt aligns the embeddings of a retrieval model")
    return base, fp, name


def _prepare_data(source: Any, model: OnePeace, opts: AdaptOptions) -> Data:
    """Pairs read, checked against the model, split, and missing files counted, before any training."""
    pairs = read_pairs(source)
    check_modalities(pairs, model.modality_names)
    train, held = split(pairs, opts.val, opts.seed)
    check_modalities(held, model.modality_names, "the held-out pairs")
    skips = Skips(SkipGuard(f"the pairs {pairs.source}", opts.max_skip_share))
    train, held = skips.check_present(train), skips.check_present(held)
    total, bad = len(pairs) + (0 if held.source == pairs.source else len(held)), len(skips.bad)
    if len(train) < MIN_PAIRS or len(held) < MIN_PAIRS:
        found = f"{total} pair{'s' * (total != 1)}" + (f", {bad} with a missing file" if bad else "")
        raise InputError(f"{pairs.source} holds {found}: adapt needs at least {MIN_PAIRS} usable pairs to train on "
                         f"and {MIN_PAIRS} held out ({len(train)} and {len(held)} here); give more pairs")
    decoder = Decoder(model.config, pairs.modalities, skips)
    return Data(train, held, skips, decoder, label_texts(held, train))


def _signature(fp: str, data: Data, opts: AdaptOptions, total: int) -> dict[str, Any]:
    """What a resumed run must share with the one it resumes."""
    h = hashlib.sha256()
    for part in (data.train, data.held):
        h.update(json.dumps(part.rows, sort_keys=True).encode())
    sig = opts.signature()
    if not isinstance(opts.val, float):
        sig["val"] = os.path.abspath(os.fspath(opts.val)) if not is_fraction(opts.val) else float(opts.val)
    return {"base_fingerprint": fp, "pairs_sha256": h.hexdigest(), "total_steps": total, **sig}


def _autocast(opts: AdaptOptions):
    if opts.bf16:
        return lambda: torch.autocast(torch.device(opts.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _step_seed(seed: int, micro_step: int) -> int:
    return (seed * 1_000_003 + micro_step * 7_919) % (2**62)


def _restore(staging: str, model: OnePeace, optimizer, stream: Stream, skips: Skips) -> tuple[int, list[float]]:
    """Resume from the staging area's last checkpoint: (step, losses so far)."""
    path = st.latest_checkpoint(staging)
    if path is None:
        return 0, []
    ck = st.load_checkpoint(path)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in ck["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(ck["optimizer"])
    torch.set_rng_state(ck["torch_rng"])
    stream.restore(ck["data"])
    for f in ck["bad"]:
        skips.mark(f, "could not be read (an earlier attempt of this run)", quiet=True)
    log.info("resumed from %s", path)
    return int(ck["step"]), [float(x) for x in ck["losses"]]


def _checkpoint(staging: str, step: int, model: OnePeace, optimizer, stream: Stream, skips: Skips,
                losses: list[float]) -> None:
    st.save_checkpoint(staging, step, {
        "trainable": {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(), "data": stream.state(),
        "bad": sorted(skips.bad), "losses": losses})


def _loss(model: torch.nn.Module, batch: dict, modalities: tuple[str, str], denoise: float,
          gen: torch.Generator) -> torch.Tensor:
    """The aligning contrast of the pair (the model's logit scale frozen); with ``denoise``, the
    pretraining objective's (:mod:`onepeace_train.pretrain.objective`) plus ``denoise`` x the
    intra-modal denoising contrast of the media side (``model`` is then a PretrainModel)."""
    a, b = modalities
    if isinstance(model, PretrainModel):
        cfg = ObjectiveConfig(other=a, weights={"align": 1.0, "dcl_other": denoise})
        return model("loss", batch, cfg, gen)["loss"]
    za, zb = model.embed_batch(a, batch[a]), model.embed_batch(b, batch[b])
    return contrastive_loss(za, zb, model.logit_scale.detach())


def _train(model: torch.nn.Module, data: Data, opts: AdaptOptions, staging: str, total: int) -> tuple[list[float], float]:
    """The optimizer steps (resumed where a checkpoint is); (loss per step, seconds per step run now).
    ``model``: the LoRA'd network, or the PretrainModel around it (``--denoise``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    stream = Stream(data.train, data.decoder, opts.seed)
    start, losses = _restore(staging, model, optimizer, stream, data.skips)
    a, b = data.train.modalities
    size = min(opts.batch_size, len(data.train))
    warmup, autocast = int(opts.warmup * total), _autocast(opts)
    model.train()
    t0 = time.perf_counter()
    with progress_bar(opts.progress, total=total, desc="adapt", unit="step") as bar:
        bar.update(start)
        for step in range(start, total):
            set_lr(optimizer, lr_at(step, opts.lr, 0.0, warmup, total))
            loss_sum = 0.0
            for micro in range(opts.accum):
                batch = stream.next_batch(size)
                seed = _step_seed(opts.seed, step * opts.accum + micro)
                torch.manual_seed(seed)
                with autocast():
                    loss = _loss(model, batch, (a, b), opts.denoise, torch.Generator().manual_seed(seed))
                (loss / opts.accum).backward()
                loss_sum += float(loss.detach()) / opts.accum
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(loss_sum, 6))
            bar.set_postfix(loss=f"{loss_sum:.3f}")
            bar.update(1)
            if (step + 1) % opts.save_every == 0 and step + 1 < total:
                _checkpoint(staging, step + 1, model, optimizer, stream, data.skips, losses)
    return losses, (time.perf_counter() - t0) / max(1, total - start)


def _with_decoder(base: OnePeace, opts: AdaptOptions) -> PretrainModel:
    """``--denoise``: the pretraining wrapper's light decoder (fresh, seeded, trained with the LoRA
    weights and discarded afterwards) around the LoRA'd network."""
    torch.manual_seed(opts.seed + 1)
    pm = PretrainModel(base)
    pm.reset_decoder_parameters()
    pm.to(opts.device)
    if opts.checkpointing:
        enable_activation_checkpointing(pm.decoder)
    return pm


def _meta(fp: str, name: str, data: Data, opts: AdaptOptions, branches: tuple[str, ...], total: int) -> dict:
    return {"format": FORMAT, "base_fingerprint": fp, "base_name": name, "modalities": list(data.train.modalities),
            "branches": list(branches), "targets": list(opts.targets), "rank": opts.rank, "alpha": opts.alpha,
            "peft_version": require_peft().__version__, "steps": total, "seed": opts.seed}


def _card_options(opts: AdaptOptions, total: int, batch: int) -> dict[str, Any]:
    return {"rank": opts.rank, "alpha": opts.alpha, "targets": ",".join(opts.targets), "steps": total,
            "batch size": batch, "accumulation": opts.accum, "learning rate": opts.lr, "bf16": opts.bf16,
            "seed": opts.seed, "logit scale": "frozen (the base model's)",
            "denoising contrast": f"weight {opts.denoise}" if opts.denoise else "off"}


def _setup(model: Any, pairs: Any, out: str, opts: AdaptOptions):
    """Everything checked before any training: the output, the model, the data, the options."""
    val_input = None if is_fraction(opts.val) else opts.val
    check_output_dir(out, opts.force, owned=adapter_files(out), what="adapter", inputs=[pairs, val_input], hint=HINT)
    require_peft()
    base, fp, name = _load_base(model, opts)
    data = _prepare_data(pairs, base, opts)
    if opts.denoise and "text" not in data.train.modalities:
        raise ConfigError("--denoise adds the pretraining's denoising contrast of media paired with text; these "
                          f"pairs are {' and '.join(data.train.modalities)}: drop --denoise")
    branches = tuple(opts.branches or data.train.modalities)
    lacking = [m for m in branches if m not in base.modality_names]
    if lacking:
        raise ConfigError(f"--branches names {lacking[0]}, but the model has no {lacking[0]} branch "
                          f"(it has {', '.join(base.modality_names)})")
    return base, fp, name, data, branches


def run_adapt(model: Any, pairs: Any, out: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Adapt ``model`` (a OnePeace model, left unchanged, or a model path / hub id) to ``pairs`` (a
    JSONL manifest or a folder, see :mod:`onepeace_train.adapt.data`) with LoRA; write the adapter
    directory ``out`` (see :mod:`onepeace_train.adapt.output`) and return its metrics: ``before`` and
    ``after`` (held-out figures), ``steps``, ``trainable_params``, ``adapter_bytes``, ``pairs``,
    ``loss`` (per step), ``seconds_per_step``. Options: :class:`~onepeace_train.adapt.options.AdaptOptions`.
    An unfinished run of the same command (killed) is resumed."""
    opts = AdaptOptions.build(options)
    out = os.fspath(out)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    base, fp, name, data, branches = _setup(model, pairs, out, opts)
    total = opts.total_steps(len(data.train))
    lcfg = lora_config(opts.rank, opts.alpha, opts.targets, branches)
    staging = st.open_staging(out, _signature(fp, data, opts, total), opts.force)
    torch.manual_seed(opts.seed)
    base.set_drop_path(0.0)
    trainable = add_lora(base, lcfg)
    base.to(opts.device)
    if opts.checkpointing:
        enable_activation_checkpointing(base.encoder)
    autocast = _autocast(opts)
    score = dict(batch_size=opts.eval_batch_size, classes=data.classes, autocast=autocast)
    before = st.read_json(os.path.join(staging, "before.json"))
    if before is None:
        before = evaluate(base, data.decoder, data.held, **score)
        write_text_atomic(os.path.join(staging, "before.json"), json.dumps(before) + "\n")
    losses, per_step = _train(_with_decoder(base, opts) if opts.denoise else base, data, opts, staging, total)
    after = evaluate(base, data.decoder, data.held, **score)
    params = dict(base.named_parameters())
    metrics = {"before": before, "after": after, "steps": total,
               "trainable_params": sum(params[n].numel() for n in trainable),
               "pairs": {"train": len(data.train), "val": len(data.held), "skipped": len(data.skips.bad),
                         "source": data.train.source, "held_out": data.held.source if data.held.source !=
                         data.train.source else f"a seeded {float(opts.val):.0%} of the pairs"},
               "modalities": list(data.train.modalities), "loss": losses,
               "seconds_per_step": round(per_step, 4)}
    batch = min(opts.batch_size, len(data.train))
    with staged_dir(out, opts.force, owned=adapter_files(out), what="adapter", hint=HINT) as folder:
        metrics["adapter_bytes"] = write_adapter(folder, lcfg, adapter_state(base),
                                                 _meta(fp, name, data, opts, branches, total), metrics,
                                                 _card_options(opts, total, batch))
    shutil.rmtree(staging, ignore_errors=True)
    metrics["out"] = out
    return metrics
