"""The pretraining wrapper: the encoder, plus a light decoder that reconstructs the features of
masked tokens from the kept ones, for intra-modal denoising contrast (the official
``OnePeacePretrainModel``, one_peace/models/one_peace/one_peace_pretrain.py of github.com/OFA-Sys/ONE-PEACE).

The decoder gets the encoder outputs of kept tokens through ``decoder_embed[m]``, mask tokens at
the hidden positions, its own absolute positions, 2 layers with per-modality FFNs and no relative
bias, then ``mask_head[m]`` back to the encoder width: the *student* feature of every position.
One deliberate difference: the decoder masks padded keys (the official decoder attends to them).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from onepeace import OnePeace
from onepeace.config import ModelConfig
from onepeace.modalities.base import AdapterOutput, trunc_normal_
from onepeace.model.encoder import Encoder
from onepeace_train.pretrain.objective import compute_losses


@dataclass
class DecoderConfig:
    dim: int
    layers: int = 2
    heads: int = 1
    ffn_dim: int = 256

    @classmethod
    def for_model(cls, c: ModelConfig) -> DecoderConfig:
        """768 wide / 12 heads / FFN 2048 at the 4B width of 1536; scaled with the model."""
        dim = max(32, c.dim // 2)
        return cls(dim=dim, layers=2, heads=max(1, dim // 64), ffn_dim=(dim * 8 // 3 + 7) // 8 * 8)


class PretrainModel(nn.Module):
    def __init__(self, model: OnePeace, decoder: DecoderConfig | None = None):
        super().__init__()
        self.model = model
        c = model.config
        d = decoder or DecoderConfig.for_model(c)
        self.decoder_config = d
        names = model.modality_names
        dec_cfg = c.replace(dim=d.dim, layers=d.layers, heads=d.heads, ffn_dim=d.ffn_dim,
                            layer_scale=False, drop_path_rate=0.0, head=None)
        self.decoder = Encoder(dec_cfg, names)
        self.decoder_embed = nn.ModuleDict({m: nn.Linear(c.dim, d.dim) for m in names})
        self.mask_token = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, d.dim)) for m in names})
        self.decoder_pos = nn.ModuleDict(
            {m: nn.Embedding(model.adapters[m].max_tokens(), d.dim) for m in names}
        )
        self.mask_head = nn.ModuleDict({m: nn.Linear(d.dim, c.dim) for m in names})

    def forward(self, kind: str, *args, **kwargs):
        """Everything runs through ``forward`` so DDP/FSDP wrappers see (and unshard for) each call:
        ``pm("loss", batch, objective_cfg, generator)`` or ``pm("embed", name, processed_batch)``."""
        if kind == "loss":
            with contextlib.ExitStack() as stack:
                for a in self.model.adapters.values():
                    stack.enter_context(a.caching())
                return compute_losses(self, *args, **kwargs)
        if kind == "embed":
            name, batch = args
            return self.model.embed_batch(name, batch)
        raise ValueError(f"unknown PretrainModel call {kind!r}")

    def reset_decoder_parameters(self) -> None:
        for mod in (self.decoder, self.decoder_embed, self.mask_head):
            for m in mod.modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight)
                    nn.init.zeros_(m.bias) if m.bias is not None else None
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        for p in self.mask_token.values():
            trunc_normal_(p)
        for e in self.decoder_pos.values():
            trunc_normal_(e.weight)

    # ------------------------------------------------------------------ forwards
    def _args(self, name: str, batch: dict[str, torch.Tensor]) -> list:
        a = self.model.adapters[name]
        batch = self.model._to_model(batch)
        return [batch.get(k) for k in a.input_keys]

    def unmasked(self, **inputs: dict[str, torch.Tensor]):
        """Full forward: (encoder output, {name: normalised embedding} for unimodal calls)."""
        out = self.model.encode(**inputs)
        emb = {}
        if len(out.features) == 1 and self.model.proj:
            (name, feats), = out.features.items()
            emb[name] = self.model.project(name, feats)
        return out, emb

    def masked(self, inputs: dict[str, dict[str, torch.Tensor]], positions: dict[str, torch.Tensor],
               full_lengths: dict[str, int]) -> dict[str, torch.Tensor]:
        """Encode only kept tokens (jointly when several modalities), decode every position.

        Returns the student features [B, N_m, D] per modality (N_m = full length).
        """
        names = [m for m in self.model.modality_names if m in inputs]
        parts = [self.model.adapters[m].forward_kept(positions[m], *self._args(m, inputs[m])) for m in names]
        enc = self.model.encoder(parts)
        dec_parts = []
        for m in names:
            pos = positions[m]
            b, n = pos.shape[0], full_lengths[m]
            h = self.decoder_embed[m](enc.features[m])
            full = self.mask_token[m].to(h.dtype).expand(b, n, -1).clone()
            keep = pos.ge(0)
            rows = torch.arange(b, device=pos.device)[:, None].expand_as(pos)
            full[rows[keep], pos[keep]] = h[keep]
            full = full + self.decoder_pos[m].weight[:n].to(h.dtype)
            dec_parts.append(AdapterOutput(m, full, self._full_padding(m, inputs[m], n), None, 1))
        dec = self.decoder(dec_parts)
        return {m: self.mask_head[m](dec.features[m]) for m in names}

    def _full_padding(self, name: str, batch: dict[str, torch.Tensor], n: int) -> torch.Tensor | None:
        valid = self.model.adapters[name].valid_mask(*self._args(name, batch))
        pad = ~valid[:, :n]
        return pad if bool(pad.any()) else None
