"""Process-group set-up and parallelism applied from outside the model (torchtitan style)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_distributed() -> DistInfo:
    """Join the torchrun group when launched by torchrun (gloo on CPU, NCCL on CUDA)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return DistInfo(device=dev)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world, local, device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # a DCP save directly before destroy can abort the process otherwise
        dist.destroy_process_group()


def enable_activation_checkpointing(encoder: nn.Module) -> None:
    """Recompute each layer in the backward pass instead of keeping its activations."""
    from torch.utils.checkpoint import checkpoint

    def wrapper(layer, x, bias, segments):
        return checkpoint(layer, x, bias, segments, use_reentrant=False)

    encoder.layer_wrapper = wrapper


def _average_grad(p: torch.Tensor) -> None:
    dist.all_reduce(p.grad)
    p.grad /= dist.get_world_size()


def parallelize(module: nn.Module, kind: str, info: DistInfo) -> nn.Module:
    """DDP or FSDP2 (``fully_shard`` per encoder/decoder layer, then the root)."""
    if not info.distributed:
        return module
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.local_rank] if info.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in module.model.encoder.layers:
            fully_shard(layer)
        decoder = getattr(module, "decoder", None)  # pretraining only
        for layer in decoder.layers if decoder is not None else []:
            fully_shard(layer)
        # FSDP2 cannot shard 0-d parameters (logit_scale): keep them replicated, average grads
        scalars = {p for p in module.parameters() if p.dim() == 0}
        for p in scalars:
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(_average_grad)
        fully_shard(module, ignored_params=scalars or None)
        return module
    raise ValueError(f"unknown parallel kind {kind!r}; use ddp or fsdp")
