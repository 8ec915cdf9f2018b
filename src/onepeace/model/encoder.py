"""The shared encoder: concatenated modality segments, one additive bias, per-modality FFNs/norms.

The bias (relative positions within each modality's block, 0 across modalities, -inf on padded
keys) is assembled once per forward for shared tables, or once per layer for per-layer tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from ..modalities.base import AdapterOutput
from .layer import Layer, Segment


@dataclass
class EncoderOutput:
    features: dict[str, torch.Tensor]  # name -> [B, N_m, D] (after the final norm, if any)
    padding_masks: dict[str, torch.Tensor | None]
    layer_states: list[torch.Tensor] | None = None  # each [B, N, D], before the final norms


def drop_path_rates(rate: float, layers: int) -> list[float]:
    """Stochastic depth per layer: 0 at the first, ``rate`` at the last, linear in between."""
    return [rate * i / max(1, layers - 1) for i in range(layers)]


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig, modalities: Sequence[str]):
        super().__init__()
        c = config
        rates = drop_path_rates(c.drop_path_rate, c.layers)
        self.layers = nn.ModuleList(
            Layer(
                c.dim,
                c.heads,
                c.ffn_dim,
                modalities,
                attn_sub_norm=c.attn_sub_norm,
                ffn_sub_norm=c.ffn_sub_norm,
                layer_scale=c.layer_scale,
                layer_scale_init=c.layer_scale_init,
                drop_path=rates[i],
                eps=c.norm_eps,
            )
            for i in range(c.layers)
        )
        self.norms = nn.ModuleDict(
            {m: nn.LayerNorm(c.dim, eps=c.norm_eps) for m in modalities} if c.final_norm else {}
        )
        #: set from outside (train/) to wrap each layer call, e.g. activation checkpointing
        self.layer_wrapper = None

    @staticmethod
    def _bias(
        parts: Sequence[AdapterOutput], table: int, pad_bias: torch.Tensor | None, dtype
    ) -> torch.Tensor | None:
        blocks = []
        for p in parts:
            blocks.append(None if p.rel_bias is None else p.rel_bias(min(table, p.num_tables - 1)))
        if len(parts) == 1:
            bias = blocks[0]
            if bias is not None and bias.dim() == 3:
                bias = bias.unsqueeze(0)
        elif all(b is None for b in blocks):
            bias = None
        else:
            sizes = [p.x.shape[1] for p in parts]
            n = sum(sizes)
            lead = max((b.shape[0] for b in blocks if b is not None and b.dim() == 4), default=1)
            ref = next(b for b in blocks if b is not None)
            bias = ref.new_zeros(lead, ref.shape[-3], n, n)
            s = 0
            for b, size in zip(blocks, sizes):
                if b is not None:
                    bias[:, :, s : s + size, s : s + size] = b
                s += size
        if bias is not None:
            bias = bias.to(dtype)
        if pad_bias is not None:
            bias = pad_bias if bias is None else bias + pad_bias
        # Once per forward, not once per layer: the table lookup is [N, N, H] permuted to [H, N, N]
        # (and a sum keeps that layout), and SDPA's CPU kernel copies a mask that is not contiguous
        # in every call.
        return None if bias is None else bias.contiguous()

    def forward(self, parts: Sequence[AdapterOutput], return_layer_states: bool = False) -> EncoderOutput:
        x = torch.cat([p.x for p in parts], dim=1) if len(parts) > 1 else parts[0].x
        b, n, _ = x.shape
        segments: list[Segment] = []
        s = 0
        for p in parts:
            segments.append((p.name, s, s + p.x.shape[1]))
            s += p.x.shape[1]
        pad = None
        if any(p.padding_mask is not None for p in parts):
            pad = torch.cat(
                [
                    p.padding_mask if p.padding_mask is not None
                    else torch.zeros(b, p.x.shape[1], dtype=torch.bool, device=x.device)
                    for p in parts
                ],
                dim=1,
            )
            x = x.masked_fill(pad.unsqueeze(-1), 0.0)
        pad_bias = None
        if pad is not None:
            pad_bias = torch.zeros(b, 1, 1, n, dtype=x.dtype, device=x.device)
            pad_bias = pad_bias.masked_fill(pad[:, None, None, :], float("-inf"))
        n_tables = max(p.num_tables for p in parts)
        bias = None
        states = [] if return_layer_states else None
        for i, layer in enumerate(self.layers):
            if i == 0 or n_tables > 1:
                bias = self._bias(parts, i if n_tables > 1 else 0, pad_bias, x.dtype)
            if self.layer_wrapper is not None:
                x = self.layer_wrapper(layer, x, bias, segments)
            else:
                x = layer(x, bias, segments)
            if states is not None:
                states.append(x)
        feats, masks = {}, {}
        for p, (name, s, e) in zip(parts, segments):
            h = x[:, s:e]
            feats[name] = self.norms[name](h) if name in self.norms else h
            masks[name] = p.padding_mask
        return EncoderOutput(feats, masks, states)
