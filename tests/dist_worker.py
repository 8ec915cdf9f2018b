"""Worker functions for the multi-process tests (spawned; kept importable at module level)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

import onepeace
from onepeace_train.pretrain.model import PretrainModel
from onepeace_train.pretrain.objective import ObjectiveConfig

SMALL = {"text": {}, "image": {"image_size": 32}}


def build(seed: int = 0) -> PretrainModel:
    torch.manual_seed(seed)
    m = onepeace.create_model("tiny", layers=2, layer_scale_init=0.5, modalities=SMALL)
    pm = PretrainModel(m)
    pm.reset_decoder_parameters()
    return pm.train()


def batch(n: int = 8, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven"]
    proc = onepeace.modalities.Processor(onepeace.get_preset("tiny", modalities=SMALL))
    return {"text": proc.get("text")([f"a handwritten digit {words[i % 8]}" for i in range(n)]),
            "image": {"pixels": torch.randn(n, 3, 32, 32, generator=g)}}


def align_only() -> ObjectiveConfig:
    return ObjectiveConfig(weights={"align": 1.0})


def grads(pm: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in pm.named_parameters():
        if p.grad is not None:
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            out[name.replace("module.", "", 1)] = g.detach().clone()
    return out


def worker(rank: int, world: int, port: int, kind: str, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from onepeace_train.distributed import DistInfo, parallelize

        pm = build()
        wrapped = parallelize(pm, kind, DistInfo(rank, world, 0, torch.device("cpu")))
        full = batch()
        half = full["text"]["tokens"].shape[0] // world
        sl = slice(rank * half, (rank + 1) * half)
        local = {"text": {"tokens": full["text"]["tokens"][sl]}, "image": {"pixels": full["image"]["pixels"][sl]}}
        out = wrapped("loss", local, align_only(), torch.Generator().manual_seed(0))
        out["loss"].backward()
        g = grads(wrapped)
        if rank == 0:
            torch.save(g, out_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()
