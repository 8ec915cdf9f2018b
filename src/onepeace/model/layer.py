"""One pre-LN layer: shared attention, per-modality FFNs, LayerScale and drop path, as the official
``TransformerEncoderLayer`` (github.com/OFA-Sys/ONE-PEACE, one_peace/models/transformer/transformer_layer.py):
x + gamma_1 * attn(LN(x)), then x + gamma_2 * ffn_m(LN(x)) with each token's modality FFN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .attention import SelfAttention
from .ffn import GeGLU

#: a modality's contiguous slice of the sequence: (name, start, end)
Segment = tuple[str, int, int]


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescale the kept ones."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class Layer(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_dim: int,
        modalities: Sequence[str],
        *,
        attn_sub_norm: bool = True,
        ffn_sub_norm: bool = True,
        layer_scale: bool = True,
        layer_scale_init: float = 1e-6,
        drop_path: float = 0.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads, sub_norm=attn_sub_norm, eps=eps)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.ffns = nn.ModuleDict(
            {m: GeGLU(dim, ffn_dim, sub_norm=ffn_sub_norm, eps=eps) for m in modalities}
        )
        if layer_scale:
            self.gamma_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
            self.gamma_2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        else:
            self.gamma_1 = self.gamma_2 = None
        self.drop_path = drop_path

    def _residual(self, x: torch.Tensor, h: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
        """``x + drop_path(gamma * h)``; without drop path one fused ``addcmul`` (one pass over the
        activations instead of two, and in bf16 one rounding instead of two)."""
        if self.drop_path and self.training:
            return x + drop_path(h if gamma is None else h * gamma, self.drop_path, True)
        return x + h if gamma is None else torch.addcmul(x, h, gamma)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None, segments: Sequence[Segment]
    ) -> torch.Tensor:
        x = self._residual(x, self.attn(self.attn_norm(x), bias), self.gamma_1)
        h = self.ffn_norm(x)
        if len(segments) == 1:
            h = self.ffns[segments[0][0]](h)
        else:
            h = torch.cat([self.ffns[m](h[:, s:e]) for m, s, e in segments], dim=1)
        return self._residual(x, h, self.gamma_2)
