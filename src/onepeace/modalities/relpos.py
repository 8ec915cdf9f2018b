"""Relative-position bucket tables, as the official ``make_token_bucket_position`` (text, audio) and
``make_image_bucket_position`` (image) build them (github.com/OFA-Sys/ONE-PEACE, one_peace/models/adapter/).

Each table maps (query index, key index) in a CLS-prefixed sequence to a row of a learned
``Embedding(num_buckets, heads)``. The last three rows are reserved for the CLS: CLS as query,
CLS as key, and CLS to itself.
"""

from __future__ import annotations

import math

import torch


def token_buckets(bucket_size: int, max_positions: int = 1024) -> torch.Tensor:
    """1D buckets for text and audio: exact offsets within ``bucket_size // 2``, log-spaced beyond.

    Computed in float32 exactly as the official tables, so the log buckets agree bit for bit.
    Returns an int64 [max_positions, max_positions] table with values in ``[0, 2*bucket_size+2]``.
    """
    if bucket_size >= max_positions:
        raise ValueError("bucket_size must be smaller than max_positions")
    # the bucket depends on the offset i - j only: compute it for the 2M - 1 offsets, then gather
    # (the same float32 values per offset as the full-table formula, at 1/M of the cost)
    rel = torch.arange(-(max_positions - 1), max_positions, dtype=torch.long)
    mid = bucket_size // 2
    sign = torch.sign(rel)
    near = (rel < mid) & (rel > -mid)
    abs_rel = torch.where(near, torch.full_like(rel, mid - 1), rel.abs())
    log_rel = mid + torch.ceil(
        torch.log(abs_rel / mid) / math.log((max_positions - 1) / mid) * (mid - 1)
    ).long()
    per_offset = torch.where(abs_rel.le(mid), rel, log_rel * sign).long() + bucket_size - 1
    pos = torch.arange(max_positions, dtype=torch.long)
    bucket = per_offset[pos[:, None] - pos[None, :] + (max_positions - 1)]
    n = 2 * bucket_size - 1
    bucket[0, :] = n
    bucket[:, 0] = n + 1
    bucket[0, 0] = n + 2
    return bucket


def token_num_buckets(bucket_size: int) -> int:
    return 2 * bucket_size - 1 + 3


def grid_buckets(grid: int) -> torch.Tensor:
    """2D buckets for a ``grid x grid`` patch layout plus a leading CLS (row-major patches)."""
    hh, ww = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    coords = torch.stack([hh.flatten(), ww.flatten()])  # 2, P
    rel = coords[:, :, None] - coords[:, None, :]  # 2, P, P
    idx = (rel[0] + grid - 1) * (2 * grid - 1) + (rel[1] + grid - 1)
    n = grid_num_buckets(grid)
    out = torch.zeros(grid * grid + 1, grid * grid + 1, dtype=torch.long)
    out[1:, 1:] = idx
    out[0, :] = n - 3
    out[:, 0] = n - 2
    out[0, 0] = n - 1
    return out


def grid_num_buckets(grid: int) -> int:
    return (2 * grid - 1) ** 2 + 3
