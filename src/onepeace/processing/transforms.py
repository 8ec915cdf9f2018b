"""The official ONE-PEACE pretraining image transform, with Pillow only.

``RandomResizedCrop(size, scale=(0.9, 1.0), interpolation=BICUBIC)`` -> ``ToTensor`` -> CLIP
``Normalize``. :func:`random_resized_crop` follows torchvision's algorithm
(``RandomResizedCrop.get_params``) step for step, drawing its randomness from a
:class:`random.Random` instead of torch's global generator. The training-time augmentation options
(:mod:`onepeace.data.augment`) build on these.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image

#: CLIP's per-channel normalisation, which ONE-PEACE's image and video processors use
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
_STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def crop_params(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: random.Random,
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``: ``(top, left, h, w)`` of the crop box.

    Ten tries of a random area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``;
    if none fits, a centre crop clamped to the ratio range (the whole image when it is in range).
    """
    if scale[0] > scale[1] or ratio[0] > ratio[1]:
        raise ValueError(f"scale and ratio must be (min, max); got scale={scale}, ratio={ratio}")
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    img: Image.Image,
    size: int,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    rng: random.Random | None = None,
) -> Image.Image:
    """Crop a random box (torchvision's RandomResizedCrop) and bicubic-resize it to size x size."""
    rng = rng if rng is not None else random.Random()
    top, left, h, w = crop_params(img.width, img.height, scale, ratio, rng)
    return img.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float [3, H, W]: ``ToTensor`` ([0, 1]) then CLIP ``Normalize``."""
    t = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    return (t.float().div(255.0) - _MEAN) / _STD
