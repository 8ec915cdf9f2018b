"""Per-modality GeGLU feed-forward with sub-LN: GELU(W0 x) * (W1 x) -> LayerNorm -> Linear, as the
official ``build_geglu_ffn`` builds it (github.com/OFA-Sys/ONE-PEACE,
one_peace/models/transformer/transformer_layer.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, sub_norm: bool = True, eps: float = 1e-5):
        super().__init__()
        self.wi_0 = nn.Linear(dim, hidden, bias=False)
        self.wi_1 = nn.Linear(dim, hidden, bias=False)
        self.sub_norm = nn.LayerNorm(hidden, eps=eps) if sub_norm else nn.Identity()
        self.wo = nn.Linear(hidden, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.wi_0(x))
        # in place where autograd does not need the GELU output: no new [B, N, F] buffer to allocate
        h = h * self.wi_1(x) if torch.is_grad_enabled() else h.mul_(self.wi_1(x))
        return self.wo(self.sub_norm(h))
