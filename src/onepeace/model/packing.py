"""Embedding variable-length batches without computing their padding.

A padded batch of captions of 3-70 tokens, or of clips of 1-15 s, spends most of its time on
padding: every row is as long as the longest. :func:`embed_scheduled` takes such a processed
batch and computes (almost) only its real tokens, in one of two ways, whichever the cost model
below finds cheaper:

* **buckets**: the items sorted by length and cut into sub-batches, each padded only to its own
  longest (a dynamic programme over the sorted lengths, :func:`buckets`): short items go many at a
  time, long ones few;
* **packing** (modalities whose adapter declares ``packable``): several sequences share one row of
  the encoder, first-fit decreasing (:func:`pack`), with a block-diagonal attention bias (each
  sequence's own relative-position bias on its block, ``-inf`` across sequences), and each
  sequence's CLS feature is read at its own start. The adapters (embedding lookup, audio stem) run
  bucketed first, so they skip the padding too.

Either way every item's embedding is what it gets alone: attention never crosses sequences
(``exp(-inf)`` is exactly 0), every other operation is per token, and the adapters of
``packable`` modalities are batch-invariant. Only the float rounding of differently shaped
kernels can differ (about 1e-7 in float32).

The cost of a forward pass over ``rows`` rows of ``length`` tokens is counted in tokens:
``overhead + rows * length * (1 + length / attn_scale)``. ``attn_scale = 2 d + 1.5 f`` comes
from the FLOPs of a layer (``8 d^2 + 6 d f`` per token in the linear layers, ``4 t d`` in the
attention of a ``t``-token sequence); ``overhead`` is the fixed cost of one more forward pass
(per-op latency, reading the weights, smaller GEMMs), a scheduling constant, not a tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: the fixed cost of one forward pass, in tokens (see the module docstring)
FORWARD_OVERHEAD_TOKENS = 64
#: packed rows are tried this many times as wide as the longest item: a little wider often packs
#: tighter (fewer padded tokens) for a little more attention
PACK_WIDTHS = (1.0, 1.125, 1.25, 1.5)


@dataclass(frozen=True)
class Cost:
    """Cost of a forward pass in tokens: ``overhead + rows * length * (1 + length / attn_scale)``."""

    attn_scale: float
    overhead: float = FORWARD_OVERHEAD_TOKENS

    @classmethod
    def for_config(cls, config: Any) -> Cost:
        return cls(2 * config.dim + 1.5 * config.ffn_dim)

    def __call__(self, rows: int, length: int) -> float:
        return self.overhead + rows * length * (1 + length / self.attn_scale)


@dataclass(frozen=True)
class Step:
    """One forward pass: ``rows[r]`` are the items (indices) sharing row ``r``; ``packed`` is False
    when every row holds one item (a bucket)."""

    rows: list[list[int]]
    packed: bool

    @property
    def items(self) -> list[int]:
        return [i for row in self.rows for i in row]

    def width(self, lengths: Sequence[int]) -> int:
        return max(sum(lengths[i] for i in row) for row in self.rows)

    def cost(self, lengths: Sequence[int], cost: Cost) -> float:
        return cost(len(self.rows), self.width(lengths))


def _longest_first(lengths: Sequence[int]) -> list[int]:
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def buckets(lengths: Sequence[int], max_tokens: int, cost: Cost) -> list[list[int]]:
    """Sub-batches (lists of item indices) of least total cost, each padded to its own longest.

    The items are sorted by length (longest first) and cut into contiguous runs; a run of ``n``
    items whose longest has ``L`` tokens is allowed while ``n * L <= max_tokens`` (one item always
    is). Exact minimum over such cuts by dynamic programming, ``O(items x run length)``.
    """
    order = _longest_first(lengths)
    n = len(order)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):  # best[j]: the j longest items
        for i in range(j - 1, -1, -1):  # last run: order[i:j], its longest is order[i]
            longest = lengths[order[i]]
            if j - i > 1 and (j - i) * longest > max_tokens:
                break  # longer runs only grow
            c = best[i] + cost(j - i, longest)
            if c < best[j]:
                best[j], cut[j] = c, i
    runs, j = [], n
    while j > 0:
        runs.append(order[cut[j] : j])
        j = cut[j]
    return runs[::-1]


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Rows of at most ``capacity`` tokens holding every item (first-fit decreasing)."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in _longest_first(lengths):
        if lengths[i] > capacity:
            raise ValueError(f"item {i} of {lengths[i]} tokens exceeds the row capacity {capacity}")
        for r, f in enumerate(free):
            if lengths[i] <= f:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


def schedule(lengths: Sequence[int], max_tokens: int, cost: Cost, packable: bool) -> list[Step]:
    """The forward passes that embed items of ``lengths`` tokens, at most ``max_tokens`` tokens
    each (padding included; a single item may exceed it): buckets, or for a ``packable`` modality
    rows packed first-fit decreasing (as wide as the longest item, or :data:`PACK_WIDTHS` times
    that), whichever costs least."""
    if not lengths:
        return []
    bucketed = [Step([[i] for i in run], False) for run in buckets(lengths, max_tokens, cost)]
    if not packable or len(lengths) < 2:
        return bucketed
    total = lambda steps: sum(s.cost(lengths, cost) for s in steps)  # noqa: E731
    best, best_cost = bucketed, total(bucketed)
    longest = max(lengths)
    for width in sorted({max(longest, int(longest * f)) for f in PACK_WIDTHS}):
        if width > max(longest, max_tokens):
            break
        rows = pack(lengths, width)
        per = max(1, max_tokens // width)
        packed = [Step(rows[k : k + per], True) for k in range(0, len(rows), per)]
        c = total(packed)
        if c < best_cost:
            best, best_cost = packed, c
    return best


def padded_tokens(steps: Sequence[Step], lengths: Sequence[int]) -> int:
    """Tokens the encoder computes for ``steps`` (rows x width, padding included)."""
    return sum(len(s.rows) * s.width(lengths) for s in steps)


# ------------------------------------------------------------------------------------------------
# Running a schedule
# ------------------------------------------------------------------------------------------------
def embed_scheduled(model: Any, name: str, batch: dict[str, torch.Tensor], *, normalize: bool = True,
                    max_tokens: int | None = None,
                    on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Embeddings ``[B, D]`` (model dtype) of the processed, padded ``batch`` of modality ``name``,
    in its row order, computed by :func:`schedule` without the padding. The processor of ``name``
    must offer ``lengths(batch)`` and ``select(batch, rows)``. ``max_tokens`` (default: the batch's
    own padded size, so no step needs more memory than the padded batch) bounds each forward pass.
    ``on_step(n)`` is called after each forward pass with the number of items it embedded."""
    proc = model.processor.get(name)
    lengths = proc.lengths(batch)
    if max_tokens is None:
        max_tokens = len(lengths) * max(lengths)
    if max_tokens < 1:
        from ..errors import InputError

        raise InputError(f"max_tokens must be at least 1, got {max_tokens}")
    cost = Cost.for_config(model.config)
    packable = bool(getattr(model.adapters[name], "packable", False))
    out: list[torch.Tensor | None] = [None] * len(lengths)
    for step in schedule(lengths, max_tokens, cost, packable):
        items = step.items
        if step.packed:
            z = _embed_packed(model, name, proc, batch, step.rows, lengths, max_tokens, cost, normalize)
        else:
            z = model.embed_batch(name, proc.select(batch, items), normalize)
        for i, row in zip(items, z):
            out[i] = row
        if on_step is not None:
            on_step(len(items))
    return torch.stack(out)


def _embed_packed(model: Any, name: str, proc: Any, batch: dict[str, torch.Tensor], rows: list[list[int]],
                  lengths: Sequence[int], max_tokens: int, cost: Cost, normalize: bool) -> torch.Tensor:
    """One packed forward pass; rows of the result follow ``[i for row in rows for i in row]``."""
    from ..modalities.base import AdapterOutput

    items = [i for row in rows for i in row]
    sub = [lengths[i] for i in items]
    segments: dict[int, torch.Tensor] = {}
    parts: list[tuple[list[int], AdapterOutput]] = []
    for run in buckets(sub, max_tokens, cost):  # the adapters, bucketed
        idx = [items[k] for k in run]
        part = model.adapt(name, proc.select(batch, idx))
        parts.append((idx, part))
        for j, i in enumerate(idx):
            segments[i] = part.x[j, : lengths[i]]
    ref = next(iter(segments.values()))
    width = max(sum(lengths[i] for i in row) for row in rows)
    x = ref.new_zeros(len(rows), width, ref.shape[-1])
    pad = torch.ones(len(rows), width, dtype=torch.bool, device=ref.device)
    start: dict[int, tuple[int, int]] = {}
    fill = []
    for r, row in enumerate(rows):
        s = 0
        for i in row:
            x[r, s : s + lengths[i]] = segments[i]
            pad[r, s : s + lengths[i]] = False
            start[i] = (r, s)
            s += lengths[i]
        fill.append(s)
    heads = model.config.heads

    def rel_bias(table: int) -> torch.Tensor:
        """[R, H, W, W]: each sequence's own bias on its diagonal block, -inf across sequences;
        a row's trailing padding attends freely (its keys are masked by the encoder)."""
        bias = x.new_full((len(rows), heads, width, width), float("-inf"))
        for r, s in enumerate(fill):
            bias[r, :, s:, :] = 0.0
        for idx, part in parts:
            full = None if part.rel_bias is None else part.rel_bias(min(table, part.num_tables - 1))
            for j, i in enumerate(idx):
                r, s = start[i]
                n = lengths[i]
                if full is None:
                    bias[r, :, s : s + n, s : s + n] = 0.0
                else:
                    blk = full[j] if full.dim() == 4 else full
                    bias[r, :, s : s + n, s : s + n] = blk[:, :n, :n]
        return bias

    packed = AdapterOutput(name, x, pad if bool(pad.any()) else None, rel_bias, parts[0][1].num_tables)
    feats = model.encoder([packed]).features[name]
    cls = torch.stack([feats[start[i]] for i in items])
    return model.project(name, cls.unsqueeze(1), normalize)
