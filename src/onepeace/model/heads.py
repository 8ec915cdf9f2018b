"""Task heads: the attention-pooling classifier of the official fine-tuned models
(``OnePeaceClassifyHead`` and ``MultiheadAttentionPooling`` in
one_peace/models/one_peace/one_peace_base.py of github.com/OFA-Sys/ONE-PEACE),
the vision branch's mean-pool linear head, and a light dense head for segmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HeadConfig


class AttentionPooling(nn.Module):
    """A learned query per head attends over the tokens; q.k is *not* scaled (official)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Parameter(torch.zeros(1, 1, heads, self.head_dim))
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=True)
        self.out_proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        k = self.k_proj(x).view(b, n, self.heads, self.head_dim)
        v = self.v_proj(x).view(b, n, self.heads, self.head_dim)
        logits = torch.einsum("hd,bnhd->bhn", self.q[0, 0], k)
        if padding_mask is not None:
            logits = logits.masked_fill(padding_mask[:, None, :], float("-inf"))
        p = F.softmax(logits.float(), dim=-1).to(v.dtype)
        return self.out_proj(torch.einsum("bhn,bnhd->bhd", p, v).reshape(b, d))


class ClassifyHead(nn.Module):
    def __init__(self, dim: int, heads: int, cfg: HeadConfig, eps: float = 1e-5):
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pool = AttentionPooling(dim, heads) if cfg.attn_pooling else None
        self.pooler = nn.Linear(dim, dim) if cfg.use_pooler else None
        inner = int(dim * cfg.head_scale_ratio)
        in_dim = dim * 2 if cfg.two_inputs else dim
        self.fc1 = nn.Linear(in_dim, inner)
        self.fc_norm = nn.LayerNorm(inner, eps=eps)
        self.fc2 = nn.Linear(inner, cfg.num_classes)

    def pooled(self, features: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        if self.pool is not None:
            mask = None if padding_mask is None else padding_mask[:, 1:]
            x = self.norm(self.pool(features[:, 1:], mask))  # CLS excluded
        else:
            x = features[:, 0]
        if self.pooler is not None:
            x = torch.tanh(self.pooler(x))
        return x

    def forward(
        self,
        features: torch.Tensor,
        padding_mask: torch.Tensor | None,
        features_2: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.pooled(features, padding_mask)
        if features_2 is not None:
            x = torch.cat([x, self.pooled(features_2, padding_mask)], dim=-1)
        return self.fc2(F.gelu(self.fc_norm(self.fc1(x))))


class LinearHead(nn.Module):
    """Vision-branch ImageNet head: mean of the patch tokens (CLS excluded) -> LayerNorm -> Linear
    (official ``fc_norm`` / ``head``; the Linear starts at 1e-3 times the usual init)."""

    def __init__(self, dim: int, cfg: HeadConfig, eps: float = 1e-5):
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc = nn.Linear(dim, cfg.num_classes)

    def pooled(self, features: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        x = features[:, 1:]
        if padding_mask is None:
            return self.norm(x.mean(1))
        keep = (~padding_mask[:, 1:]).to(x.dtype)[..., None]
        return self.norm((x * keep).sum(1) / keep.sum(1).clamp(min=1))

    def forward(self, features: torch.Tensor, padding_mask: torch.Tensor | None, features_2=None) -> torch.Tensor:
        return self.fc(self.pooled(features, padding_mask))


class DenseHead(nn.Module):
    """Per-patch classifier for semantic segmentation: LayerNorm -> Linear -> GELU -> Linear on
    every patch token of a square grid, logits bilinearly upsampled by the patch size.

    Returns ``[B, num_classes, g * patch, g * patch]`` for a ``g x g`` patch grid."""

    def __init__(self, dim: int, cfg: HeadConfig, patch: int = 16, eps: float = 1e-5):
        super().__init__()
        self.cfg = cfg
        self.patch = patch
        inner = max(1, int(dim * cfg.head_scale_ratio / 2))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, inner)
        self.fc2 = nn.Linear(inner, cfg.num_classes)

    def forward(self, features: torch.Tensor, padding_mask: torch.Tensor | None = None, features_2=None) -> torch.Tensor:
        x = features[:, 1:]
        b, n, _ = x.shape
        g = int(round(n**0.5))
        if g * g != n:
            raise ValueError(f"the dense head needs a square patch grid, got {n} patch tokens")
        logits = self.fc2(F.gelu(self.fc1(self.norm(x))))  # B, g*g, C
        logits = logits.transpose(1, 2).reshape(b, -1, g, g)
        return F.interpolate(logits.float(), scale_factor=self.patch, mode="bilinear", align_corners=False)


def build_head(dim: int, heads: int, cfg: HeadConfig, eps: float = 1e-5) -> nn.Module:
    if cfg.type == "linear":
        return LinearHead(dim, cfg)
    if cfg.type == "dense":
        return DenseHead(dim, cfg, eps=eps)
    return ClassifyHead(dim, heads, cfg, eps)
