"""Audio: wav2vec-style conv stem on raw 16 kHz audio, conv positional stack, 1D relative buckets
(the official ``AudioAdapter``, github.com/OFA-Sys/ONE-PEACE, one_peace/models/adapter/audio.py).

Two deliberate differences from the official code, neither changing a single-clip result:

* The conv stem runs as im2col GEMMs on a channels-last layout (the same maths as ``Conv1d``
  followed by a LayerNorm over channels, without the transposes), which keeps it near GEMM peak;
  the first block's LayerNorm is folded into its GEMM (:func:`normed_linear`).
* Batches are batch-invariant by default: padded frames are zeroed before every block of the
  conv positional stack, so a clip's embedding does not depend on its batch-mates. Set the option
  ``official_padding_leak=True`` (or the attribute of the same name) to reproduce the official
  behaviour, where the stack reads the padded frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import OFFICIAL_AUDIO_STEM
from ..errors import InputError
from ..processing.audio import AUDIO_EXTENSIONS, AudioProcessor, stem_frames
from .base import AdapterOutput, Modality, register_modality, trunc_normal_
from .masking import span_keep
from .relpos import token_buckets, token_num_buckets


class ConvStem(nn.Module):
    """Blocks of Conv1d (no bias) -> LayerNorm over channels -> GELU, run as im2col GEMMs."""

    def __init__(self, spec: list[tuple[int, int, int]], eps: float = 1e-5):
        super().__init__()
        self.spec = [tuple(s) for s in spec]
        c_in = 1
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for c, k, s in self.spec:
            self.convs.append(nn.Conv1d(c_in, c, k, stride=s, bias=False))
            self.norms.append(nn.LayerNorm(c, eps=eps))
            c_in = c

    #: first-block frames (about 5 s of 16 kHz audio) per pass: a batch runs in groups of clips,
    #: so that each block's activations stay within the caches (a 4 x 5 s batch in one pass ran at
    #: 58% of the bf16 GEMM peak, clip by clip at 86%). A clip's result does not depend on its
    #: batch-mates either way (up to the GEMM's float rounding).
    FRAMES_PER_PASS = 16384

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, S] -> [B, T, C]."""
        b, n = wave.shape
        _, k, s = self.spec[0]
        per_pass = max(1, self.FRAMES_PER_PASS // max(1, (n - k) // s + 1))
        if b > per_pass:
            return torch.cat([self._forward(part) for part in wave.split(per_pass)])
        return self._forward(wave)

    def _forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave.unsqueeze(-1)  # B, S, 1 (channels last)
        for (c, k, s), conv, norm in zip(self.spec, self.convs, self.norms):
            cols = windows(x, k, s)  # B, T', k * C_in, frame-major
            w = conv.weight.permute(0, 2, 1).reshape(c, -1)  # C_out, k * C_in, the same order
            if cols.shape[-1] <= self.FOLD_NORM_MAX_K and norm.elementwise_affine:
                x = F.gelu(normed_linear(cols, w, norm))
            else:
                x = F.gelu(norm(F.linear(cols, w)))
        return x

    #: contraction width up to which a block's LayerNorm statistics come from the input windows
    #: (a k x k Gram matrix) instead of a pass over the C-wide output: the first block (k = 10)
    FOLD_NORM_MAX_K = 32


def windows(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """im2col of a channels-last [B, S, C] signal: [B, T, k * C], output frame t holding input
    frames t*s .. t*s+k-1 one after the other. Each window is one contiguous run of x, so the copy is
    a row-by-row memcpy (an ``unfold(...).reshape`` in (C, k) order transposes every window)."""
    b, n, c = x.shape
    t = (n - k) // s + 1
    return x.unfold(1, k, s).transpose(2, 3).reshape(b, t, k * c).contiguous()


def normed_linear(cols: torch.Tensor, w: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(F.linear(cols, w))`` for a narrow contraction (cols [B, T, K], w [C, K], K small),
    with one pass over the [B, T, C] output instead of three.

    Over the C outputs of a frame, y = w @ x has mean m @ x (m the column means of w) and variance
    x^T G x with G = (w - m)^T (w - m) / C, the Gram matrix of the centred weights (a sum of squares:
    no cancellation). So LayerNorm(y) = ((g * (w - m)) @ x) / sqrt(x^T G x + eps) + b: the statistics
    are K-wide, the per-frame scale goes onto the K inputs, the gain into the weights and the bias
    into the GEMM. The small tensors are computed in at least float32 (bf16 models included).
    """
    dt = torch.promote_types(cols.dtype, torch.float32)
    xs, ws = cols.to(dt), w.to(dt)
    wc = ws - ws.mean(0)
    gram = wc.t() @ wc / w.shape[0]
    var = ((xs @ gram) * xs).sum(-1, keepdim=True)
    scaled = (xs * torch.rsqrt(var + norm.eps)).to(cols.dtype)
    return F.linear(scaled, (wc * norm.weight.to(dt)[:, None]).to(w.dtype), norm.bias)


class ConvPositions(nn.Module):
    """``depth`` blocks of grouped Conv1d -> LayerNorm (no affine) -> GELU; output = positions."""

    def __init__(self, dim: int, depth: int, width: int, groups: int, eps: float = 1e-5):
        super().__init__()
        k = max(3, width // depth)
        self.trim = 1 if k % 2 == 0 else 0
        self.convs = nn.ModuleList(
            [nn.Conv1d(dim, dim, k, padding=k // 2, groups=groups) for _ in range(depth)]
        )
        self.eps = eps

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, T, D]; pad: [B, T] frames to treat as absent (zeroed before every conv)."""
        keep = None if pad is None else (~pad).unsqueeze(-1).to(x.dtype)
        for conv in self.convs:
            if keep is not None:
                x = x * keep
            y = conv(x.transpose(1, 2))
            if self.trim:
                y = y[:, :, : -self.trim]
            x = F.gelu(F.layer_norm(y.transpose(1, 2), (conv.out_channels,), eps=self.eps))
        return x


@dataclass
class AudioOptions:
    stem: list[list[int]] = field(default_factory=lambda: [list(s) for s in OFFICIAL_AUDIO_STEM])
    conv_pos_depth: int = 5
    conv_pos_width: int = 95
    conv_pos_groups: int = 16
    bucket_size: int = 512
    sample_rate: int = 16000
    max_seconds: float = 15.0
    min_seconds: float = 1.0
    official_padding_leak: bool = False


@register_modality
class AudioModality(Modality):
    name = "audio"
    Options = AudioOptions
    input_keys = ("waveform", "padding_mask")
    packable = True
    file_extensions = AUDIO_EXTENSIONS

    def __init__(self, config, options: AudioOptions):
        super().__init__(config, options)
        d = config.dim
        spec = [tuple(s) for s in options.stem]
        self.stem = ConvStem(spec, eps=config.norm_eps)
        self.stem_norm = nn.LayerNorm(spec[-1][0], eps=config.norm_eps)
        self.stem_proj = nn.Linear(spec[-1][0], d)
        self.conv_pos = ConvPositions(
            d, options.conv_pos_depth, options.conv_pos_width, options.conv_pos_groups, config.norm_eps
        )
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, d))
        self.mask_embedding = nn.Parameter(torch.zeros(1, d))  # kept for checkpoint parity; unused
        self.official_padding_leak = options.official_padding_leak

    @property
    def batch_invariant(self) -> bool:
        """False with ``official_padding_leak``: then embed() keeps the official padded batches."""
        return not self.official_padding_leak

    def num_buckets(self) -> int:
        return token_num_buckets(self.options.bucket_size)

    def bucket_table(self) -> torch.Tensor:
        return token_buckets(self.options.bucket_size)

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        """[B, S] waveform -> [B, T, D] frame features (memoised inside :meth:`caching`)."""
        return self.cached(waveform, self._features)

    def _features(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise InputError(f"waveform must be [B, samples], got {tuple(waveform.shape)}")
        if stem_frames(waveform.shape[1], self.stem.spec) < 1:
            raise InputError(f"audio of {waveform.shape[1]} samples is too short for the conv stem")
        x = self.stem(waveform.to(self.cls_embedding.dtype))
        return self.stem_proj(self.stem_norm(x))

    def embed(
        self, waveform: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.features(waveform)
        b, t = feats.shape[:2]
        if padding_mask is not None and padding_mask.shape != (b, t + 1):
            raise InputError(
                f"audio padding_mask has shape {tuple(padding_mask.shape)}; the waveform makes "
                f"{t} frames, so it must be ({b}, {t + 1}) (CLS slot first)"
            )
        frame_pad = None if padding_mask is None else padding_mask[:, 1:]
        leak = self.official_padding_leak or frame_pad is None or not bool(frame_pad.any())
        pos = self.conv_pos(feats, None if leak else frame_pad)
        x = torch.cat([self.cls_embedding.expand(b, -1, -1), feats], dim=1)
        x = x + torch.cat([self.cls_pos_embed.expand(b, -1, -1), pos], dim=1)
        return x, padding_mask

    def forward(self, waveform: torch.Tensor, padding_mask: torch.Tensor | None = None):
        return self.output(*self.embed(waveform, padding_mask))

    def valid_mask(self, waveform: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if padding_mask is not None:
            return ~padding_mask
        t = stem_frames(waveform.shape[1], self.stem.spec)
        return torch.ones(waveform.shape[0], t + 1, dtype=torch.bool, device=waveform.device)

    def max_tokens(self) -> int:
        return 1026

    def sample_keep(self, inputs, ratio, gen, complement=None):
        """data2vec-style span masking (never complementary)."""
        return span_keep(self.valid_mask(*inputs), ratio, gen)

    def forward_kept(self, positions: torch.Tensor, waveform: torch.Tensor,
                     padding_mask: torch.Tensor | None = None):
        """Stem on the whole clip, frames gathered, then the conv positions on the compacted
        sequence (as the official pretraining does)."""
        feats = self.features(waveform)
        b = feats.shape[0]
        pad = positions.lt(0)
        frames = (positions[:, 1:] - 1).clamp(min=0)
        kept = feats.gather(1, frames[..., None].expand(-1, -1, feats.shape[-1]))
        frame_pad = pad[:, 1:]
        pos = self.conv_pos(kept, frame_pad if bool(frame_pad.any()) else None)
        x = torch.cat([self.cls_embedding.expand(b, -1, -1), kept], dim=1)
        x = x + torch.cat([self.cls_pos_embed.expand(b, -1, -1), pos], dim=1)
        idx = positions.clamp(min=0)
        rel = lambda t: self.relative_bias(idx.shape[1], t, idx)  # noqa: E731
        return AdapterOutput(self.name, x, pad if bool(pad.any()) else None, rel, max(1, len(self.rel_tables)))

    @classmethod
    def make_processor(cls, options: AudioOptions) -> AudioProcessor:
        return AudioProcessor(
            [tuple(s) for s in options.stem],
            options.sample_rate,
            options.max_seconds,
            options.min_seconds,
        )

    def reset_parameters(self) -> None:
        super().reset_parameters()
        trunc_normal_(self.cls_pos_embed)
        trunc_normal_(self.mask_embedding)
        for conv in self.stem.convs:
            nn.init.kaiming_normal_(conv.weight)
        for conv in self.conv_pos.convs:
            conv.reset_parameters()
