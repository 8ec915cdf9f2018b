"""Shared self-attention, as the official ``MultiheadAttention`` (github.com/OFA-Sys/ONE-PEACE,
one_peace/models/transformer/multihead_attention.py): q bias, no k bias, Magneto sub-LN before out_proj."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, sub_norm: bool = True, eps: float = 1e-5):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q_proj = nn.Linear(dim, dim, bias=True)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=True)
        self.sub_norm = nn.LayerNorm(dim, eps=eps) if sub_norm else nn.Identity()
        self.out_proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x: [B, N, D]; bias: additive float mask broadcastable to [B, H, N, N] (or None)."""
        b, n, d = x.shape
        shape = (b, n, self.heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        if bias is not None and bias.dtype != q.dtype:
            bias = bias.to(q.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.head_dim**-0.5)
        o = o.transpose(1, 2).reshape(b, n, d)
        return self.out_proj(self.sub_norm(o))
