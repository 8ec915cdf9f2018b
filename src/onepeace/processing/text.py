"""Text preprocessing identical to the official hub (spec §6.3)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .tokenizer import EOS_ID, PAD_ID, default_bpe


class TextProcessor:
    """Batch of strings -> ``{"tokens": LongTensor [B, L]}``, right-padded with ``PAD_ID``.

    Each string becomes ``" " + text.lower()`` -> GPT-2 BPE -> first ``context_length`` tokens ->
    ``</s>``. No ``<s>``: the model prepends a learned CLS.
    """

    def __init__(self, context_length: int = 70):
        self.context_length = context_length
        self.bpe = default_bpe()
        self.pad_id = PAD_ID
        self.eos_id = EOS_ID

    def encode(self, text: Any) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"text inputs must be strings, got {type(text).__name__}")
        return self.bpe.encode(" " + text.lower())[: self.context_length] + [self.eos_id]

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise InputError("no texts given")
        rows = [self.encode(t) for t in texts]
        tokens = torch.full((len(rows), max(map(len, rows))), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = torch.tensor(r)
        return {"tokens": tokens}

    # -- variable-length batches (onepeace.model.packing): real lengths, and sub-batches without padding
    def lengths(self, batch: dict[str, torch.Tensor]) -> list[int]:
        """Encoder tokens of each row of a processed batch (the CLS, the BPE tokens and ``</s>``)."""
        return (batch["tokens"] != self.pad_id).sum(1).add(1).tolist()

    def select(self, batch: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
        """Rows ``rows`` of a processed batch, padded only to the longest of them."""
        tokens = batch["tokens"][torch.as_tensor(rows, dtype=torch.long)]
        return {"tokens": tokens[:, : int((tokens != self.pad_id).sum(1).max())]}
