"""The two ONE-PEACE objectives (the official ``compute_itc_loss`` and ``compute_dcl_loss`` of
``ImageTextPretrainLossCriterion``, one_peace/criterions/image_text_pretrain_loss.py of
github.com/OFA-Sys/ONE-PEACE).

* Cross-modal aligning contrast: symmetric InfoNCE with a learnable temperature; negatives are
  gathered from all ranks. ``gather_with_grad=True`` (default) lets gradients flow through the
  gathered features, as open_clip does; ``False`` reproduces the official no-grad gather (only the
  local rows get gradients).
* Intra-modal denoising contrast: each masked student token must pick out the teacher feature of
  its own position among all teacher tokens of the local batch (CLS and padding excluded);
  tau = 0.4, fairseq-style label smoothing 0.1, mean over masked tokens.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_features(z: torch.Tensor, with_grad: bool = True) -> tuple[torch.Tensor, int]:
    """All ranks' rows concatenated (rank order) and this rank's row offset."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    if with_grad:
        import torch.distributed.nn as dist_nn

        parts = list(dist_nn.all_gather(z))
    else:
        parts = [torch.empty_like(z) for _ in range(world)]
        dist.all_gather(parts, z.detach().contiguous())
        parts[rank] = z  # local rows keep their gradient
    return torch.cat(parts), rank * z.shape[0]


def clamp_logit_scale(logit_scale: torch.Tensor, max_scale: float = 100.0) -> torch.Tensor:
    """exp(logit_scale) with logit_scale clamped to [0, ln max] (gradient flows inside the range)."""
    return logit_scale.clamp(0.0, math.log(max_scale)).exp()


def contrastive_loss(za: torch.Tensor, zb: torch.Tensor, logit_scale: torch.Tensor,
                     gather_with_grad: bool = True) -> torch.Tensor:
    """(CE(s * za zb_all^T) + CE(s * zb za_all^T)) / 2 over L2-normalised za, zb [B, D]."""
    s = clamp_logit_scale(logit_scale)
    za_all, offset = gather_features(za, gather_with_grad)
    zb_all, _ = gather_features(zb, gather_with_grad)
    labels = torch.arange(za.shape[0], device=za.device) + offset
    la = (s * za @ zb_all.T).float()
    lb = (s * zb @ za_all.T).float()
    return (F.cross_entropy(la, labels) + F.cross_entropy(lb, labels)) / 2


def denoising_loss(student: torch.Tensor, teacher: torch.Tensor, masked: torch.Tensor,
                   valid: torch.Tensor, tau: float = 0.4, smoothing: float = 0.1) -> torch.Tensor:
    """student, teacher [B, N, D]; masked [B, N] student positions to score; valid [B, N] real
    tokens (padding False). Position 0 (CLS) is never a candidate nor a target."""
    valid = valid.clone()
    valid[:, 0] = False
    masked = masked & valid
    if not bool(masked.any()):
        return student.sum() * 0.0
    cand = F.normalize(teacher.detach()[valid].float(), dim=-1)  # M, D
    index = torch.full(valid.shape, -1, dtype=torch.long, device=valid.device)
    index[valid] = torch.arange(int(valid.sum()), device=valid.device)
    s = F.normalize(student[masked].float(), dim=-1)  # K, D
    logits = (s.to(student.dtype) @ cand.to(student.dtype).T).float() / tau
    lprobs = F.log_softmax(logits, dim=-1)
    target = index[masked]
    nll = -lprobs.gather(1, target[:, None]).squeeze(1)
    m = lprobs.shape[1]
    if smoothing > 0 and m > 1:
        eps_i = smoothing / (m - 1)
        loss = (1.0 - smoothing - eps_i) * nll + eps_i * (-lprobs.sum(-1))
    else:
        loss = nll
    return loss.mean()
