"""Moving a model to a new image resolution (e.g. fine-tuning a 256 px checkpoint at 384 px).

The learned absolute positions are already resized on the fly (bicubic, ``ImageModality.positions``);
what is tied to the resolution is each relative-position table: ``(2g - 1)^2`` rows of 2D offsets for a
``g x g`` patch grid, plus three CLS rows (kept as they are). Enlarging follows the official
loader (BEiT's scheme): the old offsets are placed on a geometric progression that spans the new
range (near offsets keep their spacing, far ones spread out), and each head's map is resampled at the
new integer offsets with a tensor-product cubic spline (not-a-knot ends, as FITPACK's interpolating
spline). Shrinking uses plain bicubic resampling.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..modalities.image import PATCH


def spline_matrix(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``[len(t), len(x)]`` weights of the not-a-knot cubic spline through points at ``x``
    (increasing), evaluated at ``t`` (the end polynomials extrapolate)."""
    n = len(x)
    if n < 4:
        raise ConfigError("spline interpolation needs at least 4 points")
    h = np.diff(x)
    a = np.zeros((n, n))
    rhs = np.zeros((n, n))  # second derivatives M = inv(a) @ rhs @ y
    for i in range(1, n - 1):
        a[i, i - 1], a[i, i], a[i, i + 1] = h[i - 1], 2 * (h[i - 1] + h[i]), h[i]
        rhs[i, i + 1] += 6 / h[i]
        rhs[i, i] -= 6 / h[i] + 6 / h[i - 1]
        rhs[i, i - 1] += 6 / h[i - 1]
    a[0, :3] = [h[1], -(h[0] + h[1]), h[0]]  # continuous third derivative at x[1]
    a[-1, -3:] = [h[-1], -(h[-2] + h[-1]), h[-2]]  # and at x[-2]
    m = np.linalg.solve(a, rhs)
    out = np.zeros((len(t), n))
    for r, v in enumerate(t):
        i = int(np.clip(np.searchsorted(x, v) - 1, 0, n - 2))
        hi, lo, up = h[i], x[i + 1] - v, v - x[i]
        out[r] += (lo**3 / (6 * hi) - hi * lo / 6) * m[i] + (up**3 / (6 * hi) - hi * up / 6) * m[i + 1]
        out[r, i] += lo / hi
        out[r, i + 1] += up / hi
    return out


def geometric_offsets(src: int, dst: int) -> np.ndarray:
    """Positions for the ``src`` old offsets (odd count) such that they span ``dst`` new ones:
    0, then gaps 1, q, q^2, ... on each side, q found by bisection (the official scheme)."""
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


def resize_rel_table(weight: torch.Tensor, old_grid: int, new_grid: int) -> torch.Tensor:
    """``[(2g-1)^2 + 3, H]`` -> ``[(2g'-1)^2 + 3, H]``."""
    a, b = 2 * old_grid - 1, 2 * new_grid - 1
    if weight.shape[0] != a * a + 3:
        raise ConfigError(f"relative table has {weight.shape[0]} rows, expected {a * a + 3} for a {old_grid}x{old_grid} grid")
    if a == b:
        return weight.clone()
    maps = weight[: a * a].detach().float().T.reshape(-1, a, a)  # H, a, a (rows: first coordinate)
    if b > a and a >= 5:
        x = geometric_offsets(a, b)
        t = np.arange(-(b // 2), b // 2 + 0.1, 1.0)
        w = torch.from_numpy(spline_matrix(x, t)).float()
        maps = w @ maps @ w.T
    else:
        maps = F.interpolate(maps[None], size=(b, b), mode="bicubic", align_corners=False)[0]
    return torch.cat([maps.reshape(-1, b * b).T.to(weight.dtype), weight[a * a :].detach()], dim=0)


def with_image_size(model, image_size: int):
    """A copy of ``model`` taking ``image_size`` px images; every other weight is kept."""
    if "image" not in model.modality_names:
        raise ConfigError("the model has no image branch to resize")
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
            state[k] = resize_rel_table(state[k], old // PATCH, image_size // PATCH)
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
