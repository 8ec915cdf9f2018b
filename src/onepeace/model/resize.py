"""Moving a model to a new image resolution (e.g. fine-tuning a 256 px checkpoint at 384 px).

The learned absolute positions are already resized on the fly (bicubic, ``ImageModality.positions``);
what is tied to the resolution is each relative-position table: ``(2g - 1)^2`` rows of 2D offsets for a
``g x g`` patch grid, plus three CLS rows (kept as they are).

Enlarging reproduces the official loader (``ImageAdapter.upgrade_state_dict_named``, BEiT's scheme):
the old offsets are placed on a geometric progression that spans the new range (near offsets keep
their spacing, far ones spread out), and each head's map is resampled at the new integer offsets with
the bicubic interpolating spline that ``scipy.interpolate.interp2d(kind="cubic")`` builds on a grid
(FITPACK ``regrid`` with ``s=0``: knots at the data points except the second and the second-last,
i.e. not-a-knot ends). Like FITPACK's evaluation, points outside the data range are clamped to its
edge: the geometric grid usually stops just short of the outermost new offset (22.99987 for ±23 at
384 px), so the outermost rows and columns take the spline's edge value, as officially. Here the
spline is computed in float64 with numpy (no scipy at run time) and the result is rounded to float32,
as the official ``torch.Tensor(f(dx, dy))`` does.

What is ours (the official loader has no such path):

* ``round_to``: the official loader casts the resized table back to the checkpoint's dtype (bf16 for
  the released checkpoints) before loading it; our checkpoints are usually converted to fp32, so the
  resized table keeps fp32 precision unless ``round_to`` names the dtype to round it through
  (``round_to="bf16"`` gives the official values bit for bit).
* Every relative table is resized, the same way: the official code resizes only the first one
  (``rel_pos_table_list.0``) and then copies it to every layer, so a checkpoint that already has
  per-layer tables cannot be loaded at a new size officially; a shared table copied per layer and
  then resized here equals the official result.
* Shrinking keeps the centre of the table (the offsets a smaller grid still has, with their learned
  values); the official code only enlarges.
* A 2x2 grid (3 offsets, too few for a cubic spline) is enlarged by plain bicubic resampling.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..modalities.image import PATCH
from .precision import resolve_dtype


def _bspline_basis(knots: np.ndarray, v: np.ndarray, k: int) -> np.ndarray:
    """``[len(v), len(knots) - k - 1]`` values of the degree-``k`` B-splines at ``v`` (inside the
    knots' span; the last interval is closed on the right, as in FITPACK)."""
    n = len(knots) - k - 1
    span = np.clip(np.searchsorted(knots, v, side="right") - 1, k, n - 1)
    b = np.zeros((len(v), len(knots) - 1))
    b[np.arange(len(v)), span] = 1.0
    col = v[:, None]
    for d in range(1, k + 1):
        m = len(knots) - d - 1
        lo, hi = knots[:m], knots[d : d + m]
        lo1, hi1 = knots[1 : m + 1], knots[d + 1 : d + 1 + m]
        up = np.where(hi > lo, (col - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
        down = np.where(hi1 > lo1, (hi1 - col) / np.where(hi1 > lo1, hi1 - lo1, 1.0), 0.0)
        b = up * b[:, :m] + down * b[:, 1 : m + 1]
    return b


def spline_matrix(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``[len(t), len(x)]`` float64 weights of FITPACK's interpolating cubic spline (``s=0``)
    through points at ``x`` (increasing, at least 4), evaluated at ``t`` clamped to
    ``[x[0], x[-1]]``: ``spline_matrix(x, t) @ y`` is what ``splev(t, splrep(x, y, s=0))`` gives
    inside the range, and the edge value outside it (FITPACK's ``fpbisp`` clamps)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 4:
        raise ConfigError("spline interpolation needs at least 4 points")
    knots = np.concatenate([np.repeat(x[0], 4), x[2:-2], np.repeat(x[-1], 4)])
    colloc = _bspline_basis(knots, x, 3)  # [n, n]: coefficients -> values at x
    at = _bspline_basis(knots, np.clip(np.asarray(t, dtype=np.float64), x[0], x[-1]), 3)
    return np.linalg.solve(colloc.T, at.T).T


def geometric_offsets(src: int, dst: int) -> np.ndarray:
    """Positions for the ``src`` old offsets (odd count) such that they span ``dst`` new ones:
    0, then gaps 1, q, q^2, ... on each side, q found by bisection in [1.01, 1.5] (the official
    scheme; the span lands within about 1e-4 of ``dst // 2``, on either side)."""
    half = src // 2
    lo_q, hi_q = 1.01, 1.5
    while hi_q - lo_q > 1e-6:
        q = (lo_q + hi_q) / 2
        if (1 - q**half) / (1 - q) > dst // 2:
            hi_q = q
        else:
            lo_q = q
    dis, cur = [], 1.0
    for i in range(half):
        dis.append(cur)
        cur += q ** (i + 1)
    return np.array([-d for d in reversed(dis)] + [0.0] + dis)


def _float_dtype(dtype: torch.dtype | str | None, what: str) -> torch.dtype | None:
    try:
        out = resolve_dtype(dtype)
    except ConfigError:
        out = None
    if dtype is not None and (out is None or not out.is_floating_point):
        raise ConfigError(f"{what} must be a float dtype (fp32, bf16 or fp16), got {dtype!r}")
    return out


def resize_rel_table(weight: torch.Tensor, old_grid: int, new_grid: int, *,
                     round_to: torch.dtype | str | None = None) -> torch.Tensor:
    """``[(2g-1)^2 + 3, H]`` -> ``[(2g'-1)^2 + 3, H]`` in ``weight``'s dtype (see the module notes).

    ``round_to``: a dtype the resized rows are rounded through (``"bf16"``: as the official loader
    does on the released bf16 checkpoints); ``None`` keeps the float32 result.
    """
    round_to = _float_dtype(round_to, "round_to")
    a, b = 2 * old_grid - 1, 2 * new_grid - 1
    if weight.shape[0] != a * a + 3:
        raise ConfigError(f"relative table has {weight.shape[0]} rows, expected {a * a + 3} for a {old_grid}x{old_grid} grid")
    if a == b:
        return weight.clone()
    maps = weight[: a * a].detach().cpu().double().T.reshape(-1, a, a)  # H, a, a (rows: first coordinate)
    if b < a:  # ours: keep the offsets the smaller grid still has
        lo = (a - b) // 2
        maps = maps[:, lo : lo + b, lo : lo + b]
    elif a >= 5:  # the official scheme
        x = geometric_offsets(a, b)
        t = np.arange(-(b // 2), b // 2 + 0.1, 1.0)
        w = torch.from_numpy(spline_matrix(x, t))
        maps = w @ maps @ w.T
    else:  # a 2x2 grid: 3 offsets, too few for a cubic spline
        maps = F.interpolate(maps[None], size=(b, b), mode="bicubic", align_corners=False)[0]
    rows = maps.reshape(-1, b * b).T
    # the official result goes float64 -> float32 -> the checkpoint's dtype
    rows = rows.to(torch.promote_types(weight.dtype, torch.float32))
    if round_to is not None:
        rows = rows.to(round_to)
    rows = rows.to(device=weight.device, dtype=weight.dtype)
    return torch.cat([rows, weight[a * a :].detach()], dim=0)


def with_image_size(model, image_size: int, *, round_to: torch.dtype | str | None = None):
    """A copy of ``model`` taking ``image_size`` px images; every other weight is kept.

    Every image relative table is resized with :func:`resize_rel_table` (the official loader's
    interpolation when enlarging; ``round_to="bf16"`` also reproduces its rounding to the released
    checkpoints' dtype). Absolute positions keep their learned grid and are resized on the fly.
    """
    if "image" not in model.modality_names:
        raise ConfigError("the model has no image branch to resize")
    round_to = _float_dtype(round_to, "round_to (model.resize_round_to in a recipe)")
    old = model.options["image"].image_size
    if image_size == old:
        return model
    if image_size % PATCH or image_size < PATCH:
        raise ConfigError(f"image_size must be a positive multiple of {PATCH}, got {image_size}")
    mods = {k: dict(v) for k, v in model.config.modalities.items()}
    mods["image"]["image_size"] = image_size
    # the absolute positions keep their learned grid (resized on the fly)
    mods["image"].setdefault("pos_grid", model.options["image"].pos_grid)
    state = model.state_dict()
    prefix = "adapters.image.rel_tables."
    for k in list(state):
        if k.startswith(prefix):
            state[k] = resize_rel_table(state[k], old // PATCH, image_size // PATCH, round_to=round_to)
    return model.grown(model.config.replace(modalities=mods), state)


def with_per_layer_tables(model):
    """A copy of ``model`` with one relative-position table per layer, each starting as the shared
    table (the official fine-tuning of classify models does this when loading ``one-peace.pt``)."""
    if model.config.per_layer_rel_tables:
        return model
    state = model.state_dict()
    for name in model.modality_names:
        key = f"adapters.{name}.rel_tables.0.weight"
        if key in state:
            shared = state.pop(key)
            for i in range(model.config.layers):
                state[f"adapters.{name}.rel_tables.{i}.weight"] = shared.clone()
    return model.grown(model.config.replace(per_layer_rel_tables=True), state)
