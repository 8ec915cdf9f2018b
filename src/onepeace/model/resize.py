"""Moving a model to a new image resolution (e.g. fine-tuning a 256 px checkpoint at 384 px).

The learned absolute positions are already resized on the fly (bicubic, ``ImageModality.positions``);
what is tied to the resolution is each relative-position table: ``(2g - 1)^2`` rows of 2D offsets for a
``g x g`` patch grid, plus three CLS rows. The offsets are resized bicubically as a
``(2g - 1) x (2g - 1)`` map per head (as BEiT does when fine-tuning at a new size); the CLS rows
are kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..modalities.image import PATCH


def resize_rel_table(weight: torch.Tensor, old_grid: int, new_grid: int) -> torch.Tensor:
    """``[(2g-1)^2 + 3, H]`` -> ``[(2g'-1)^2 + 3, H]``."""
    a, b = 2 * old_grid - 1, 2 * new_grid - 1
    if weight.shape[0] != a * a + 3:
        raise ConfigError(f"relative table has {weight.shape[0]} rows, expected {a * a + 3} for a {old_grid}x{old_grid} grid")
    if a == b:
        return weight.clone()
    grid = weight[: a * a].float().T.reshape(1, -1, a, a)
    grid = F.interpolate(grid, size=(b, b), mode="bicubic", align_corners=False)
    return torch.cat([grid.reshape(-1, b * b).T.to(weight.dtype), weight[a * a :]], dim=0)


def with_image_size(model, image_size: int):
    """A copy of ``model`` taking ``image_size`` px images; every other weight is kept."""
    from ..factory import create_model

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
    new = create_model(model.config.replace(modalities=mods))
    state = model.state_dict()
    prefix = "adapters.image.rel_tables."
    for k in list(state):
        if k.startswith(prefix):
            state[k] = resize_rel_table(state[k], old // PATCH, image_size // PATCH)
    new.load_state_dict(state)
    return new.train(model.training)
