"""Image: hMLP stem (16x16 effective patch), learned 2D positions, 2D relative buckets, as the
official ``ImageAdapter`` (github.com/OFA-Sys/ONE-PEACE, one_peace/models/adapter/image.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..processing.image import IMAGE_EXTENSIONS, ImageProcessor
from .base import Modality, register_modality, trunc_normal_
from .relpos import grid_buckets, grid_num_buckets

PATCH = 16


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class HMLPStem(nn.Module):
    """conv4x4/4 -> LN -> GELU -> conv2x2/2 -> LN -> GELU -> conv2x2/2, width dim/4 inside."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        c = dim // 4
        self.conv1 = nn.Conv2d(3, c, kernel_size=4, stride=4)
        self.norm1 = ChannelLayerNorm(c, eps=eps)
        self.conv2 = nn.Conv2d(c, c, kernel_size=2, stride=2)
        self.norm2 = ChannelLayerNorm(c, eps=eps)
        self.conv3 = nn.Conv2d(c, dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(self.conv1(x)))
        x = F.gelu(self.norm2(self.conv2(x)))
        return self.conv3(x).flatten(2).transpose(1, 2)  # B, (S/16)^2, D, row-major


def resized_positions(pos_embed: torch.Tensor, pos_grid: int, grid: int) -> torch.Tensor:
    """[grid^2 + 1, D] from a CLS-first ``pos_grid x pos_grid`` table of learned positions,
    bicubically resized (in fp32) when the sizes differ."""
    g = pos_grid
    if grid == g:
        return pos_embed
    cls, table = pos_embed[:1], pos_embed[1:]
    t = table.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=(grid, grid), mode="bicubic", align_corners=False)
    t = t.to(table.dtype).permute(0, 2, 3, 1).reshape(grid * grid, -1)
    return torch.cat([cls, t], dim=0)


@dataclass
class ImageOptions:
    image_size: int = 256  # input resolution; fixes the relative-position grid (image_size // 16)
    pos_grid: int = 16  # grid of the learned absolute positions; interpolated to the input grid
    # NLVR2: learned vectors added to every token (zero init), the second one only to the tokens
    # of a pair's second image (the processed batch's optional "second" flag, bool [B] or scalar)
    type_embedding: bool = False


@register_modality
class ImageModality(Modality):
    name = "image"
    Options = ImageOptions
    input_keys = ("pixels", "second")
    file_extensions = IMAGE_EXTENSIONS

    def __init__(self, config, options: ImageOptions):
        if options.image_size % PATCH or options.image_size < PATCH:
            raise InputError(f"image_size must be a positive multiple of {PATCH}, got {options.image_size}")
        super().__init__(config, options)
        self.grid = options.image_size // PATCH
        self.stem = HMLPStem(config.dim, eps=config.norm_eps)
        self.pos_embed = nn.Parameter(torch.zeros(options.pos_grid**2 + 1, config.dim))
        self.type_embedding = self.type_embedding_2 = None
        if options.type_embedding:
            self.type_embedding = nn.Parameter(torch.zeros(1, 1, config.dim))
            self.type_embedding_2 = nn.Parameter(torch.zeros(1, 1, config.dim))

    def num_buckets(self) -> int:
        return grid_num_buckets(self.options.image_size // PATCH)

    def bucket_table(self) -> torch.Tensor:
        return grid_buckets(self.grid)

    def positions(self, grid: int) -> torch.Tensor:
        """[grid^2 + 1, D]: the learned grid bicubically resized (in fp32) when sizes differ."""
        return resized_positions(self.pos_embed, self.options.pos_grid, grid)

    def embed(self, pixels: torch.Tensor, second: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise InputError(f"pixels must be [B, 3, S, S], got {tuple(pixels.shape)}")
        h, w = pixels.shape[-2:]
        if h != w or h != self.options.image_size:
            raise InputError(
                f"this model takes {self.options.image_size}x{self.options.image_size} images "
                f"(its relative-position table is built for that size), got {h}x{w}"
            )
        x = self.stem(pixels.to(self.pos_embed.dtype))
        x = torch.cat([self.cls_embedding.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.positions(self.grid)
        if self.type_embedding is not None:
            x = x + self.type_embedding
            if second is not None:
                flag = torch.as_tensor(second, device=x.device).bool().to(x.dtype).reshape(-1, 1, 1)
                if flag.shape[0] not in (1, x.shape[0]):
                    raise InputError(f"'second' must be one flag or one per image, got {flag.shape[0]} for {x.shape[0]} images")
                x = x + flag * self.type_embedding_2
        return x, None

    def forward(self, pixels: torch.Tensor, second: torch.Tensor | None = None):
        return self.output(*self.embed(pixels, second))

    def valid_mask(self, pixels: torch.Tensor, second: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ones(pixels.shape[0], self.grid**2 + 1, dtype=torch.bool, device=pixels.device)

    def max_tokens(self) -> int:
        return self.grid**2 + 1

    @classmethod
    def make_processor(cls, options: ImageOptions) -> ImageProcessor:
        return ImageProcessor(options.image_size)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        trunc_normal_(self.pos_embed)
        for t in (self.type_embedding, self.type_embedding_2):
            if t is not None:
                nn.init.zeros_(t)  # official: zero init, untouched by init_one_peace_params
        for m in self.stem.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()
                nn.init.zeros_(m.bias)
