"""Mask samplers (officially drawn by the pretraining datasets of github.com/OFA-Sys/ONE-PEACE:
one_peace/data/pretrain_data/, audio spans by ``compute_block_mask_1d`` in
one_peace/utils/data_utils.py). Each returns a bool [B, N] *keep* mask over the CLS-prefixed
sequence (CLS always kept, padding never kept); :func:`keep_to_positions` turns it into the sorted
kept indices the encoder consumes. Modalities choose among these in their ``sample_keep`` hook.
"""

from __future__ import annotations

import math

import torch


def keep_to_positions(keep: torch.Tensor) -> torch.Tensor:
    """[B, N] bool -> [B, K] int64 kept indices, ascending, right-padded with -1."""
    counts = keep.sum(1)
    k = int(counts.max())
    idx = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    # sort kept first (stable keeps ascending order), then cut to the longest row
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :k]
    pos = idx.gather(1, order)
    return pos.masked_fill(torch.arange(k, device=keep.device)[None] >= counts[:, None], -1)


def random_keep(valid: torch.Tensor, ratio: float, gen: torch.Generator,
                allowed: torch.Tensor | None = None, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """Mask ``floor(ratio * n)`` of each row's ``n`` candidate tokens uniformly.

    Candidates are the valid tokens except the CLS and any ``fixed`` ones (always kept, e.g. the
    text ``</s>``). With ``allowed``, kept tokens are drawn among allowed ones first
    (complementary masking). Random draws happen on the CPU (``gen`` is a CPU generator).
    """
    device = valid.device
    valid = valid.cpu()
    b, n = valid.shape
    keep = torch.zeros_like(valid)
    keep[:, 0] = True
    cand = valid.clone()
    cand[:, 0] = False
    if fixed is not None:
        fixed = fixed.cpu() & valid
        keep |= fixed
        cand &= ~fixed
    allowed = None if allowed is None else allowed.cpu()
    scores = torch.rand(b, n, generator=gen)
    for i in range(b):
        c = cand[i].nonzero().squeeze(1)
        n_keep = c.numel() - int(ratio * c.numel())
        pool = c if allowed is None else c[allowed[i, c]]
        if pool.numel() < n_keep:  # not enough allowed tokens: top up from the rest
            rest = c[~allowed[i, c]]
            pool = torch.cat([pool, rest[torch.argsort(scores[i, rest])[: n_keep - pool.numel()]]])
        chosen = pool[torch.argsort(scores[i, pool])[:n_keep]]
        keep[i, chosen] = True
    return keep.to(device)


def word_keep(valid: torch.Tensor, word_start: torch.Tensor, ratio: float, gen: torch.Generator,
              last_is_eos: bool = True) -> torch.Tensor:
    """Whole-word masking: ceil(ratio * #words) words hidden with all their sub-tokens.

    ``word_start`` [B, N] marks tokens that begin a word (a leading space in GPT-2 BPE). CLS and the
    final ``</s>`` of each row are never masked.
    """
    b, n = valid.shape
    keep = valid.clone()
    for i in range(b):
        length = int(valid[i].sum())
        body_end = length - 1 if last_is_eos else length  # exclusive; position of </s>
        starts = [p for p in range(1, body_end) if bool(word_start[i, p])]
        if not starts or (starts[0] != 1 and body_end > 1):
            starts = [1] + starts
        starts = [s for s in starts if s < body_end]
        if not starts:
            continue
        n_mask = math.ceil(ratio * len(starts))
        order = torch.randperm(len(starts), generator=gen)[:n_mask].tolist()
        bounds = starts + [body_end]
        for w in order:
            keep[i, bounds[w] : bounds[w + 1]] = False
    return keep


def span_keep(valid: torch.Tensor, ratio: float, gen: torch.Generator, span: int = 5,
              adjust: float = 0.1) -> torch.Tensor:
    """data2vec-style spans: int(T*(ratio+adjust)/span) random centres grown to ``span`` frames, then
    positions unmasked or masked at random until exactly int(ratio*T) are masked (CLS excluded)."""
    b, n = valid.shape
    keep = valid.clone()
    for i in range(b):
        t = int(valid[i].sum()) - 1  # frames, without the CLS
        if t <= 0:
            continue
        masked = torch.zeros(t, dtype=torch.bool)
        n_centres = int(t * (ratio + adjust) / span)
        if n_centres:
            centres = torch.randint(0, t, (n_centres,), generator=gen)
            for off in range(-(span // 2), span - span // 2):
                masked[(centres + off).clamp(0, t - 1)] = True
        target = int(ratio * t)
        cur = int(masked.sum())
        if cur > target:
            on = masked.nonzero().squeeze(1)
            masked[on[torch.randperm(on.numel(), generator=gen)[: cur - target]]] = False
        elif cur < target:
            off = (~masked).nonzero().squeeze(1)
            masked[off[torch.randperm(off.numel(), generator=gen)[: target - cur]]] = True
        keep[i, 1 : t + 1] = ~masked
    return keep
