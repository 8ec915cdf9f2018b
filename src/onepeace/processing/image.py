"""Image preprocessing identical to the official hub (``OnePeaceHubInterface.process_image`` in
one_peace/models/one_peace/hub_interface.py of github.com/OFA-Sys/ONE-PEACE).

RGB, square bicubic resize of the PIL image (no crop, aspect not kept), [0, 1], CLIP mean/std.
"""

from __future__ import annotations

import random
import re
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DecodeError, InputError, not_the_input
from .inputs import describe, open_binary
from .transforms import CLIP_MEAN, CLIP_STD, random_resized_crop, to_normalized_tensor

#: file name extensions of common image formats (all read by Pillow); folders are searched for these
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


def load_image(item: Any) -> Image.Image:
    """Any accepted image input -> an RGB PIL image. Raises InputError naming the input."""
    if isinstance(item, Image.Image):
        img = item
    elif isinstance(item, (np.ndarray, torch.Tensor)):
        img = _from_array(item)
    else:
        stream = open_binary(item, "image")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(stream)
                img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise InputError(_too_large(item, e)) from None
        except Image.UnidentifiedImageError:
            raise DecodeError(
                f"cannot decode image {describe(item)}: not an image in a format Pillow reads "
                f"({', '.join(x.lstrip('.') for x in IMAGE_EXTENSIONS)}, ...)"
            ) from None
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad files
            if not_the_input(e):  # out of memory, a missing module: not the file's fault
                raise
            raise DecodeError(f"cannot decode image {describe(item)}: {e}") from None
    try:
        return img.convert("RGB")
    except Exception as e:  # noqa: BLE001
        if not_the_input(e):
            raise
        raise DecodeError(f"cannot convert image {describe(item)} to RGB: {e}") from None


def _too_large(item: Any, e: Exception) -> str:
    """The decompression-bomb refusal, with both ways to raise Pillow's pixel limit."""
    found = re.search(r"\((\d+) pixels\)", str(e))  # Pillow: "Image size (N pixels) exceeds ..."
    size = f"{int(found.group(1)):,} pixels, " if found else ""
    need = found.group(1) if found else "N"
    return (
        f"image {describe(item)} is too large to decode safely ({size}over the limit of "
        f"{Image.MAX_IMAGE_PIXELS:,}; a possible decompression bomb). Downscale it first, or if you "
        f"trust it raise the limit: --max-pixels {need} on the command line, "
        f"PIL.Image.MAX_IMAGE_PIXELS = {need} in Python"
    )


def _from_array(arr: np.ndarray | torch.Tensor) -> Image.Image:
    """HxW, HxWxC numpy arrays or CxHxW / HxW tensors; uint8, or float in [0, 1]."""
    if isinstance(arr, torch.Tensor):
        t = arr.detach().cpu()
        if t.dim() == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        arr = t.numpy()
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or 0 in a.shape:
        raise InputError(f"image array of shape {a.shape} is not HxW or HxWx{{1,3,4}}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"image array has unsupported dtype {a.dtype}")
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise InputError("image array contains NaN or infinite values")
        if a.min() < 0 or a.max() > 1:
            raise InputError(
                "float image arrays must hold values in [0, 1] (use uint8 for 0..255 data)"
            )
        a = np.round(a * 255.0).astype(np.uint8)
    return Image.fromarray(a)


def thumbnail(item: Any, size: int = 256) -> tuple[bytes, str] | None:
    """A copy at most ``size`` pixels on its longer side (JPEG, or PNG with transparency);
    ``None`` if the image is already that small or cannot be read (then show the file itself)."""
    import io

    try:
        with Image.open(item) as img:
            if max(img.size) <= size:
                return None
            img.thumbnail((size, size), Image.BICUBIC)
            alpha = img.mode in ("RGBA", "LA", "P")
            img = img.convert("RGBA" if alpha else "RGB")
            buf = io.BytesIO()
            img.save(buf, format="PNG" if alpha else "JPEG", quality=85)
            return buf.getvalue(), "image/png" if alpha else "image/jpeg"
    except Exception:  # noqa: BLE001 - any unreadable file: serve it as it is
        return None


class ImageProcessor:
    """Batch of images -> ``{"pixels": [B, 3, S, S]}``; ``sizes`` gives original (width, height)."""

    def __init__(self, image_size: int = 256):
        self.image_size = image_size
        self._mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        self._std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def one(self, item: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        img = load_image(item)
        size = img.size
        s = self.image_size
        img = img.resize((s, s), Image.BICUBIC)
        t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        t = t.float().div(255.0)
        return (t - self._mean) / self._std, size

    # -- the data-loader protocol (onepeace.data.dataset): one sample, then a batch of them
    def sample(self, item: Any, *, train: bool = False, rng: random.Random | None = None,
               scale: tuple[float, float] = (0.9, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
        """One image for a data loader, [3, S, S]: with ``train`` the official RandomResizedCrop
        (``scale``, ``ratio``, bicubic, drawn from ``rng``) -> ToTensor -> CLIP Normalize; else
        exactly :meth:`one`'s square resize."""
        if not train:
            return self.one(item)[0]
        return to_normalized_tensor(random_resized_crop(load_image(item), self.image_size, scale, ratio, rng))

    def collate(self, samples: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Samples of :meth:`sample` -> ``{"pixels": [B, 3, S, S]}``."""
        return {"pixels": torch.stack(samples)}

    def load(self, item: Any) -> Image.Image:
        """Decode one input now (checking it): an RGB PIL image, which the processor takes later."""
        return load_image(item)

    def thumbnail(self, item: Any, size: int = 256) -> tuple[bytes, str] | None:
        """A small copy to show (see :func:`thumbnail`)."""
        return thumbnail(item, size)

    def __call__(self, items: list[Any]) -> dict[str, torch.Tensor]:
        if not items:
            raise InputError("no images given")
        out = [self.one(i) for i in items]
        return {
            "pixels": torch.stack([t for t, _ in out]),
            "sizes": torch.tensor([s for _, s in out], dtype=torch.long),
        }
