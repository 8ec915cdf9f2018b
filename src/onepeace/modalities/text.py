"""Text: GPT-2 BPE token embedding + learned absolute positions + 1D relative buckets, as the
official ``TextAdapter`` (github.com/OFA-Sys/ONE-PEACE, one_peace/models/adapter/text.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from ..processing.text import TextProcessor
from ..processing.tokenizer import PAD_ID, VOCAB_SIZE, default_bpe
from .base import Modality, embedding, register_modality, trunc_normal_
from .masking import random_keep, word_keep
from .relpos import token_buckets, token_num_buckets


@dataclass
class TextOptions:
    vocab_size: int = VOCAB_SIZE
    max_positions: int = 514  # rows of the absolute position table (CLS at 0)
    bucket_size: int = 256
    context_length: int = 70  # BPE tokens kept before </s>
    pad_id: int = PAD_ID
    type_embedding: bool = False  # NLVR2: a learned vector added to every token (zero init)


@register_modality
class TextModality(Modality):
    name = "text"
    Options = TextOptions
    input_keys = ("tokens",)
    packable = True

    def __init__(self, config, options: TextOptions):
        super().__init__(config, options)
        self.embed_tokens = embedding(options.vocab_size, config.dim)
        self.embed_positions = embedding(options.max_positions, config.dim)
        self._word_start: torch.Tensor | None = None
        self.type_embedding = nn.Parameter(torch.zeros(1, 1, config.dim)) if options.type_embedding else None

    def num_buckets(self) -> int:
        return token_num_buckets(self.options.bucket_size)

    def bucket_table(self) -> torch.Tensor:
        return token_buckets(self.options.bucket_size)

    def embed(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token + position embeddings with the CLS prepended, and the padding mask."""
        if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32):
            raise InputError(f"text tokens must be an integer [B, L] tensor, got {tuple(tokens.shape)} {tokens.dtype}")
        b, n = tokens.shape[0], tokens.shape[1] + 1
        if n > self.options.max_positions:
            raise InputError(
                f"text of {n - 1} tokens is longer than the {self.options.max_positions - 1} "
                "positions the model has"
            )
        x = torch.cat([self.cls_embedding.expand(b, -1, -1), self.embed_tokens(tokens)], dim=1)
        x = x + self.embed_positions.weight[:n]
        if self.type_embedding is not None:
            x = x + self.type_embedding
        pad = torch.cat([tokens.new_zeros(b, 1, dtype=torch.bool), tokens.eq(self.options.pad_id)], 1)
        return x, pad

    def forward(self, tokens: torch.Tensor):
        return self.output(*self.embed(tokens))

    def valid_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = torch.ones(tokens.shape[0], 1, dtype=torch.bool, device=tokens.device)
        return torch.cat([cls, tokens.ne(self.options.pad_id)], 1)

    def max_tokens(self) -> int:
        return self.options.max_positions

    def word_starts(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N] (CLS-prefixed): tokens whose GPT-2 piece starts with a space begin a word."""
        if self._word_start is None:
            bpe = default_bpe()
            table = torch.zeros(self.options.vocab_size, dtype=torch.bool)
            for piece, i in bpe.encoder.items():
                if i < table.numel() and piece.startswith("\u0120"):
                    table[i] = True
            self._word_start = table
        ws = self._word_start.to(tokens.device)[tokens.clamp(0, self.options.vocab_size - 1)]
        return torch.cat([torch.zeros_like(ws[:, :1]), ws], 1)

    def sample_keep(self, inputs, ratio, gen, complement=None):
        """Whole-word masking; with ``complement``, token-level over the caption tokens (never the
        CLS or ``</s>``), keeping first what the other mask hid (the official joint text mask)."""
        (tokens,) = inputs
        valid = self.valid_mask(tokens)
        if complement is not None:
            eos = torch.zeros_like(valid)
            eos[torch.arange(valid.shape[0]), valid.sum(1) - 1] = True
            return random_keep(valid, ratio, gen, ~complement, fixed=eos)
        return word_keep(valid, self.word_starts(tokens), ratio, gen)

    @classmethod
    def make_processor(cls, options: TextOptions) -> TextProcessor:
        return TextProcessor(options.context_length)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        trunc_normal_(self.embed_tokens.weight)
        trunc_normal_(self.embed_positions.weight)
        with torch.no_grad():
            self.embed_tokens.weight[self.options.pad_id].zero_()
        if self.type_embedding is not None:
            nn.init.zeros_(self.type_embedding)
