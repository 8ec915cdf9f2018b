"""Text preprocessing identical to the official hub (``OnePeaceHubInterface.process_text`` in
one_peace/models/one_peace/hub_interface.py of github.com/OFA-Sys/ONE-PEACE): lower-cased, a
leading space, GPT-2 BPE, the first 70 tokens, then ``</s>``; no ``<s>``."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .tokenizer import EOS_ID, PAD_ID, default_bpe

#: what ``embed(long_text=...)`` does with a text over the model's token limit
LONG_TEXT_MODES = ("truncate", "chunk")


def check_long_text(mode: str) -> str:
    """``mode`` if it is one of :data:`LONG_TEXT_MODES`; an InputError otherwise."""
    if mode not in LONG_TEXT_MODES:
        raise InputError(f"long_text must be one of {', '.join(LONG_TEXT_MODES)}, got {mode!r}")
    return mode


def shorten(text: str, n: int = 40) -> str:
    """``text`` as a message quotes it: one line, at most ``n`` characters."""
    one = " ".join(text.split())
    return repr(one if len(one) <= n else one[: n - 1] + "…")


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

    def ids(self, text: Any) -> list[int]:
        """All the BPE ids of ``text`` (no limit, no ``</s>``)."""
        if not isinstance(text, str):
            raise InputError(f"text inputs must be strings, got {type(text).__name__}")
        return self.bpe.encode(" " + text.lower())

    def count(self, text: Any) -> int:
        """How many tokens ``text`` has (the model reads the first ``context_length``)."""
        return len(self.ids(text))

    def decode(self, tokens: Any) -> str:
        """The text of token ids (a row of ``tokens``); ``</s>`` and padding are left out."""
        ids = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
        return self.bpe.decode([i for i in ids if i not in (self.pad_id, self.eos_id)])[1:]

    def windows(self, text: Any, long_text: str = "truncate") -> tuple[list[list[int]], list[float]]:
        """The token windows to embed for one text and their weights (tokens each covers), as
        :meth:`AudioProcessor.windows <onepeace.processing.audio.AudioProcessor.windows>` for clips.

        ``"truncate"``: one window, the first ``context_length`` tokens (callers warn, see
        :meth:`OnePeace.embed`). ``"chunk"``: consecutive windows of ``context_length`` tokens,
        each ended with ``</s>``."""
        check_long_text(long_text)
        ids = self.ids(text)
        cap = self.context_length
        if len(ids) <= cap or long_text == "truncate":
            head = ids[:cap]
            return [head + [self.eos_id]], [float(max(1, len(head)))]
        parts = [ids[s : s + cap] for s in range(0, len(ids), cap)]
        return [p + [self.eos_id] for p in parts], [float(len(p)) for p in parts]

    def collate(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """Token-id rows (each ended with ``</s>``) as a right-padded batch."""
        if not rows:
            raise InputError("no texts given")
        tokens = torch.full((len(rows), max(map(len, rows))), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = torch.tensor(r)
        return {"tokens": tokens}

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
