"""Video: T frames through the image stem, pooled patches, a learned temporal embedding and
space-time relative buckets; optionally its soundtrack as a companion audio segment.

Designed for a CPU budget and for being *added to a trained model* rather than pretrained:

* **Inflation.** Each frame goes through an hMLP stem and the learned 2D positions with exactly
  the image branch's shapes, so a video branch added with ``add_modalities`` (``OnePeace.grown``)
  starts as a copy of the trained image branch (``inflate_from="image"``): stem, positions, CLS,
  its FFN in every layer, final norm and projection, and its 2D relative table repeated for every
  frame offset. The temporal embedding starts at zero. So before any video training a clip embeds
  close to its frames' image embeddings (a frame average, attended jointly), and alignment only
  has to learn what motion and order add. That is what makes a few minutes of CPU training enough.
* **Token budget.** The encoder's cost grows with the tokens (quadratically in attention), and a
  256 px frame is 256 patch tokens: 16 frames would be 4,096. The patches of each frame are
  average-pooled ``pool x pool`` after the stem (default 2: 64 tokens a frame, the image tokens'
  positions already added), so 8 frames make 513 tokens and 16 frames 1,025 — two and four times
  an image — which keeps 8–16 frames affordable on a CPU. ``pool=4`` (16 tokens a frame) or fewer
  frames buy more speed; ``pool=1`` keeps every patch.
* **Relative positions.** One learned bucket per (frame offset, row offset, column offset) of a
  pair of tokens (plus the three CLS buckets), in units of the image grid so that the image
  table maps onto it; ``temporal_buckets=False`` shares one spatial table for all frame offsets.
* **Masking** (pretraining's denoising contrast): tube masking, the same patches hidden in
  every frame, so a hidden patch cannot be copied from the next frame.

The processor (:mod:`onepeace.processing.video`) decodes with PyAV and samples ``frames`` frames
(``"uniform"`` or every ``stride``); with ``audio=True`` (or per call) it also hands the sound to
the model's audio processor, for a fused audio-visual pass (``OnePeace.embed_fused``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InputError
from ..processing.video import SAMPLING, VIDEO_EXTENSIONS, VideoProcessor
from .base import Modality, register_modality, trunc_normal_
from .image import PATCH, HMLPStem, resized_positions
from .masking import random_keep


@dataclass
class VideoOptions:
    frames: int = 8  # frames sampled per clip (at most max_frames)
    sampling: str = "uniform"  # "uniform": centres of T equal segments; "stride": every `stride` frames
    stride: int = 4  # source frames between two sampled frames ("stride" sampling)
    image_size: int = 256  # frame resolution (as the image branch's, for inflation)
    pool: int = 2  # average-pool the patch grid of each frame pool x pool: (image_size/16/pool)^2 tokens a frame
    max_frames: int = 16  # frames the temporal embedding and buckets cover (the longest clip the model takes)
    pos_grid: int = 16  # grid of the learned spatial positions (as the image branch's)
    temporal_embedding: bool = True  # a learned vector per frame index (zero init)
    temporal_buckets: bool = True  # relative buckets per frame offset (False: one spatial table for all)
    audio: bool = False  # processors decode the soundtrack by default (fused audio-visual embedding)
    inflate_from: str | None = "image"  # the trained branch a new video branch starts from (None: fresh)


@register_modality
class VideoModality(Modality):
    name = "video"
    Options = VideoOptions
    input_keys = ("frames",)
    file_extensions = VIDEO_EXTENSIONS
    prompt_templates = ("a video of a {}.", "a video of the {}.", "a clip of a {}.")

    def __init__(self, config, options: VideoOptions):
        _check(options)
        super().__init__(config, options)
        self.grid = options.image_size // PATCH
        self.pooled = self.grid // options.pool
        self.per_frame = self.pooled**2
        self.stem = HMLPStem(config.dim, eps=config.norm_eps)
        self.pos_embed = nn.Parameter(torch.zeros(options.pos_grid**2 + 1, config.dim))
        self.temporal = nn.Parameter(torch.zeros(options.max_frames, config.dim)) if options.temporal_embedding else None

    # ---- relative positions -----------------------------------------------------------------
    def _spatial_buckets(self) -> int:
        return (2 * (self.options.image_size // PATCH) - 1) ** 2

    def _offsets(self) -> int:
        return 2 * self.options.max_frames - 1 if self.options.temporal_buckets else 1

    def num_buckets(self) -> int:
        return self._offsets() * self._spatial_buckets() + 3

    def bucket_table(self) -> torch.Tensor:
        """Frame-major tokens: bucket = frame-offset slot * S + the image grid's 2D bucket of the
        (row, column) offset scaled by ``pool`` (so slot k holds an image-shaped table)."""
        o, g, p = self.options, self.grid, self.options.pool
        t = torch.arange(o.max_frames).repeat_interleave(self.per_frame)
        yy, xx = torch.meshgrid(torch.arange(self.pooled), torch.arange(self.pooled), indexing="ij")
        y, x = yy.flatten().repeat(o.max_frames), xx.flatten().repeat(o.max_frames)
        dy = (y[:, None] - y[None, :]) * p + g - 1
        dx = (x[:, None] - x[None, :]) * p + g - 1
        spatial = dy * (2 * g - 1) + dx
        slot = (t[:, None] - t[None, :] + o.max_frames - 1) if o.temporal_buckets else torch.zeros_like(spatial)
        n = self.num_buckets()
        m = t.numel() + 1
        out = torch.empty(m, m, dtype=torch.long)
        out[1:, 1:] = slot * self._spatial_buckets() + spatial
        out[0, :] = n - 3
        out[:, 0] = n - 2
        out[0, 0] = n - 1
        return out

    # ---- adapter --------------------------------------------------------------------------------
    def _check_frames(self, frames: torch.Tensor) -> None:
        o = self.options
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise InputError(f"video frames must be [B, T, 3, S, S], got {tuple(frames.shape)}")
        t, h, w = frames.shape[1], frames.shape[-2], frames.shape[-1]
        if h != w or h != o.image_size:
            raise InputError(f"this model takes {o.image_size}x{o.image_size} video frames, got {h}x{w}")
        if not 1 <= t <= o.max_frames:
            raise InputError(f"this model takes clips of 1 to {o.max_frames} frames (max_frames), got {t}")

    def _tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, S, S] -> [B, T * per_frame, D]: stem, spatial positions, pooling, temporal."""
        b, t = frames.shape[:2]
        x = self.stem(frames.flatten(0, 1).to(self.pos_embed.dtype))  # B*T, g*g, D
        x = x + resized_positions(self.pos_embed, self.options.pos_grid, self.grid)[1:]
        p = self.options.pool
        if p > 1:
            g = self.grid
            x = x.transpose(1, 2).reshape(b * t, -1, g, g)
            x = F.avg_pool2d(x, p).flatten(2).transpose(1, 2)
        x = x.reshape(b, t, self.per_frame, -1)
        if self.temporal is not None:
            x = x + self.temporal[:t, None, :]
        return x.reshape(b, t * self.per_frame, -1)

    def embed(self, frames: torch.Tensor) -> tuple[torch.Tensor, None]:
        self._check_frames(frames)
        x = self.cached(frames, self._tokens)
        cls = self.cls_embedding + self.pos_embed[:1]
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1), None

    def forward(self, frames: torch.Tensor):
        return self.output(*self.embed(frames))

    def valid_mask(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.ones(frames.shape[0], frames.shape[1] * self.per_frame + 1, dtype=torch.bool,
                          device=frames.device)

    def max_tokens(self) -> int:
        return self.options.max_frames * self.per_frame + 1

    def sample_keep(self, inputs, ratio, gen, complement=None):
        """Tube masking: the same ``ratio`` of patch positions hidden in every frame."""
        (frames,) = inputs[:1]
        b, t = frames.shape[:2]
        valid = torch.ones(b, self.per_frame + 1, dtype=torch.bool, device=frames.device)
        allowed = None if complement is None else ~complement[:, : self.per_frame + 1]
        keep = random_keep(valid, ratio, gen, allowed)
        return torch.cat([keep[:, :1], keep[:, 1:].repeat(1, t)], dim=1)

    # ---- processing ---------------------------------------------------------------------------
    @classmethod
    def make_processor(cls, options: VideoOptions) -> VideoProcessor:
        return VideoProcessor(options.frames, options.sampling, options.stride, options.image_size,
                              audio=options.audio)

    # ---- init -------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        super().reset_parameters()
        trunc_normal_(self.pos_embed)
        if self.temporal is not None:
            nn.init.zeros_(self.temporal)
        for m in self.stem.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()
                nn.init.zeros_(m.bias)

    @classmethod
    def donor(cls, options: VideoOptions) -> str | None:
        return options.inflate_from or None

    @torch.no_grad()
    def inherit(self, donor: Modality) -> None:
        """Inflate a trained image adapter: stem, CLS, positions (resized if the grids differ) and
        the 2D relative table copied into every frame-offset slot; the temporal embedding stays 0."""
        for name in ("stem", "pos_embed", "cls_embedding"):
            if not hasattr(donor, name):
                raise ConfigError(f"video inflate_from={donor.name!r}: that branch has no {name} to inflate "
                                  "(use an image branch, or inflate_from=None for a fresh init)")
        self.stem.load_state_dict(donor.stem.state_dict())
        self.cls_embedding.copy_(donor.cls_embedding)
        src = donor.pos_embed
        src_grid = int(round((src.shape[0] - 1) ** 0.5))
        self.pos_embed.copy_(resized_positions(src, src_grid, self.options.pos_grid))
        if getattr(donor, "grid", None) != self.grid:
            return  # a differently sized image table does not map onto these buckets
        s = self._spatial_buckets()
        for mine, theirs in zip(self.rel_tables, donor.rel_tables):
            w = theirs.weight
            if w.shape[0] != s + 3:
                continue
            mine.weight[:-3].copy_(w[:s].repeat(self._offsets(), 1))
            mine.weight[-3:].copy_(w[-3:])


def _check(o: VideoOptions) -> None:
    if o.image_size % PATCH or o.image_size < PATCH:
        raise ConfigError(f"video image_size must be a positive multiple of {PATCH}, got {o.image_size}")
    grid = o.image_size // PATCH
    if o.pool < 1 or grid % o.pool:
        raise ConfigError(f"video pool must divide the patch grid ({grid} for image_size {o.image_size}), got {o.pool}")
    if o.sampling not in SAMPLING:
        raise ConfigError(f"video sampling must be one of {', '.join(SAMPLING)}, got {o.sampling!r}")
    if o.stride < 1:
        raise ConfigError(f"video stride must be at least 1, got {o.stride}")
    if not 1 <= o.frames <= o.max_frames:
        raise ConfigError(f"video frames must be 1 to max_frames ({o.max_frames}), got {o.frames}")
