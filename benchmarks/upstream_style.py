"""An "upstream-style" ONE-PEACE forward, for a same-machine speed comparison (bench_model.py
``--only sidebyside``).

This is **our own code**, written from the official model's description (the encoder layers and
attention of github.com/OFA-Sys/ONE-PEACE, ``one_peace/models/transformer/``), not a copy of it. It computes the same maths as ``onepeace.OnePeace`` but the way the
official fairseq code computes it, so that timing both on the same machine in the same run says
how our implementation compares with the official *way of computing*:

* the module tree and parameter names follow the official state dict (``encoder_wrapper.*``,
  ``{m}_proj``), so the weights of an ``onepeace.OnePeace`` are mapped onto it by name
  (:func:`official_state_dict`) and loaded with ``assign=True``: the two models **share** the weight
  tensors, nothing is copied;
* the adapters return a per-batch relative bias ``table(rp_bucket[:N, :N])`` expanded to
  [B, H, N, N]; the encoder materialises it once per forward into a zeros [B, H, N, N] tensor (the
  official code does this once per table, i.e. once per forward with the shared table) and fills
  padded keys with -inf;
* inside the encoder the activations are sequence-first, (N, B, D);
* attention: separate q / k / v ``nn.Linear``, q scaled by head_dim^-0.5 after the projection,
  ``torch.bmm`` for q kᵀ, the bias added as a [B·H, N, N] view, softmax in float32 then cast back,
  ``torch.bmm`` with v, then the sub-LN and ``out_proj``;
* FFN: ``Sequential(GeGLU(wi_0, wi_1, nn.GELU), Dropout(0), LayerNorm(F), Linear(F, D))``;
  LayerScale residuals ``residual + gamma * h``;
* image stem: Conv2d -> channels-last LayerNorm (permute) -> GELU, twice, then Conv2d;
* audio stem: wav2vec2 "layer_norm" blocks, each ``Conv1d`` -> Dropout(0) -> transpose -> LayerNorm
  -> transpose -> GELU on a (B, C, T) layout, then transpose -> LayerNorm(512) -> Linear; the conv
  positional stack is ``transpose, 5 x (Conv1d, SamePad, transpose, LayerNorm, transpose, GELU),
  transpose``.

Only inference (``eval``, no dropout / drop path) and the retrieval embedding of one modality at a
time are implemented: what ``OnePeace.embed_batch`` computes.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn


# ------------------------------------------------------------------------------------------------
# Relative-position buckets, from the spec formulas (independent of onepeace.model.relpos)
# ------------------------------------------------------------------------------------------------
def token_bucket_table(bucket_size: int, max_position: int = 1024) -> torch.Tensor:
    """Spec §2.1: r = i - j; exact within mid = bucket_size // 2, log-spaced (float32) beyond;
    shifted by bucket_size - 1; CLS row / column / corner get the three extra buckets."""
    i = torch.arange(max_position)[:, None]
    j = torch.arange(max_position)[None, :]
    r = i - j
    mid = bucket_size // 2
    a = r.abs()
    # log bucket for |r| > mid (a is clamped to mid where unused, so the log stays finite)
    safe = torch.maximum(a, torch.full_like(a, mid)).float()
    logb = mid + torch.ceil(torch.log(safe / mid) / math.log((max_position - 1) / mid) * (mid - 1)).long()
    bucket = torch.where(a <= mid, r, torch.sign(r) * logb) + bucket_size - 1
    n = 2 * bucket_size - 1
    bucket[0, :] = n
    bucket[:, 0] = n + 1
    bucket[0, 0] = n + 2
    return bucket


def image_bucket_table(r_size: int) -> torch.Tensor:
    """Spec §2.2: (h_i - h_j + R - 1) * (2R - 1) + (w_i - w_j + R - 1), CLS extras at the end."""
    p = r_size * r_size
    h = torch.arange(p) // r_size
    w = torch.arange(p) % r_size
    idx = (h[:, None] - h[None, :] + r_size - 1) * (2 * r_size - 1) + (w[:, None] - w[None, :] + r_size - 1)
    num = (2 * r_size - 1) ** 2 + 3
    out = torch.empty(p + 1, p + 1, dtype=torch.long)
    out[1:, 1:] = idx
    out[0, :] = num - 3
    out[:, 0] = num - 2
    out[0, 0] = num - 1
    return out


# ------------------------------------------------------------------------------------------------
# Small modules
# ------------------------------------------------------------------------------------------------
class TransposeLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)


class SamePad(nn.Module):
    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.remove] if self.remove else x


class LayerNorm2D(nn.Module):
    """LayerNorm over the channels of an NCHW map, via a channels-last permute."""

    def __init__(self, c: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def rel_bias_list(tables: nn.ModuleList, rp_bucket: torch.Tensor, bsz: int, n: int) -> list[torch.Tensor]:
    """Per table: [B, H, N, N] (an expanded view of table(rp_bucket[:N, :N]))."""
    out = []
    for t in tables:
        v = t(rp_bucket[:n, :n]).unsqueeze(0).expand(bsz, -1, -1, -1)  # B, N, N, H
        out.append(v.permute(0, 3, 1, 2))
    return out


# ------------------------------------------------------------------------------------------------
# Adapters
# ------------------------------------------------------------------------------------------------
class TextAdapter(nn.Module):
    def __init__(self, dim: int, heads: int, vocab: int, n_pos: int, bucket_size: int, n_tables: int):
        super().__init__()
        self.pad_id = 1  # fairseq's <pad>; from_onepeace sets the id our tokenizer uses
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.embed_positions = nn.Embedding(n_pos, dim)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(2 * bucket_size - 1 + 3, heads) for _ in range(n_tables)])
        self.register_buffer("rp_bucket", torch.zeros(1024, 1024, dtype=torch.long))

    def forward(self, tokens: torch.Tensor):
        bsz, n = tokens.shape[0], tokens.shape[1] + 1
        pad = tokens.new_zeros(bsz, n).bool()
        pad[:, 1:] = tokens.eq(self.pad_id)
        position_ids = torch.arange(n, device=tokens.device).expand(bsz, n)
        pos = self.embed_positions(position_ids)
        bias = rel_bias_list(self.rel_pos_table_list, self.rp_bucket, bsz, n)
        x = torch.cat([self.cls_embedding.expand(bsz, -1, -1), self.embed_tokens(tokens)], dim=1)
        return x + pos, pad, bias


class ImageAdapter(nn.Module):
    def __init__(self, dim: int, heads: int, image_size: int, pos_grid: int, n_tables: int):
        super().__init__()
        c = dim // 4
        self.embed_images = nn.Sequential(
            nn.Conv2d(3, c, 4, 4), LayerNorm2D(c), nn.GELU(),
            nn.Conv2d(c, c, 2, 2), LayerNorm2D(c), nn.GELU(),
            nn.Conv2d(c, dim, 2, 2),
        )
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(pos_grid * pos_grid + 1, dim))
        r_size = image_size // 16
        self.rel_pos_table_list = nn.ModuleList(
            [nn.Embedding((2 * r_size - 1) ** 2 + 3, heads) for _ in range(n_tables)])
        self.register_buffer("rp_bucket", torch.zeros(r_size * r_size + 1, r_size * r_size + 1, dtype=torch.long))
        self.pos_grid = pos_grid

    def forward(self, pixels: torch.Tensor):
        bsz = pixels.shape[0]
        x = self.embed_images(pixels).flatten(2).transpose(1, 2)  # B, P, D
        window = pixels.shape[-2] // 16
        if window != self.pos_grid:
            raise NotImplementedError("the upstream-style reference only does the native grid")
        x = torch.cat([self.cls_embedding.expand(bsz, -1, -1), x], dim=1)
        n = x.shape[1]
        x = x + self.pos_embed.unsqueeze(0)
        pad = torch.zeros(bsz, n, dtype=torch.bool, device=x.device)
        return x, pad, rel_bias_list(self.rel_pos_table_list, self.rp_bucket, bsz, n)


class FeatureExtractor(nn.Module):
    """wav2vec2 "layer_norm" conv stem on (B, C, T): Conv1d -> Dropout -> (T, LN, T) -> GELU."""

    def __init__(self, spec: list[tuple[int, int, int]]):
        super().__init__()
        self.conv_layers = nn.ModuleList()
        c_in = 1
        for c, k, s in spec:
            self.conv_layers.append(nn.Sequential(
                nn.Conv1d(c_in, c, k, stride=s, bias=False),
                nn.Dropout(0.0),
                nn.Sequential(TransposeLast(), nn.LayerNorm(c), TransposeLast()),
                nn.GELU(),
            ))
            c_in = c

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave.unsqueeze(1)  # B, 1, S
        for block in self.conv_layers:
            x = block(x)
        return x  # B, C, T


class AudioAdapter(nn.Module):
    def __init__(self, dim: int, heads: int, spec, depth: int, width: int, groups: int,
                 bucket_size: int, n_tables: int):
        super().__init__()
        c = spec[-1][0]
        self.embed_audios = nn.Sequential(FeatureExtractor(spec), TransposeLast(), nn.LayerNorm(c), nn.Linear(c, dim))
        k = max(3, width // depth)
        self.embed_positions = nn.Sequential(
            TransposeLast(),
            *[nn.Sequential(nn.Conv1d(dim, dim, k, padding=k // 2, groups=groups), SamePad(k), TransposeLast(),
                            nn.LayerNorm(dim, elementwise_affine=False), TransposeLast(), nn.GELU())
              for _ in range(depth)],
            TransposeLast(),
        )
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_embedding = nn.Parameter(torch.zeros(1, dim))  # unused, as upstream
        self.rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(2 * bucket_size - 1 + 3, heads) for _ in range(n_tables)])
        self.register_buffer("rp_bucket", torch.zeros(1024, 1024, dtype=torch.long))

    def forward(self, waveform: torch.Tensor, padding_mask: torch.Tensor):
        bsz, n = padding_mask.shape
        bias = rel_bias_list(self.rel_pos_table_list, self.rp_bucket, bsz, n)
        feats = self.embed_audios(waveform)  # B, T, D
        pos = self.embed_positions(feats)
        pos = torch.cat([self.cls_pos_embed.expand(bsz, -1, -1), pos], dim=1)
        x = torch.cat([self.cls_embedding.expand(bsz, -1, -1), feats], dim=1)
        return x + pos, padding_mask, bias


# ------------------------------------------------------------------------------------------------
# Encoder
# ------------------------------------------------------------------------------------------------
class MultiheadAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scaling = self.head_dim ** -0.5
        self.ln = nn.LayerNorm(dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=True)
        self.q_proj = nn.Linear(dim, dim, bias=True)
        self.out_proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        n, bsz, d = x.shape  # sequence first
        q = self.q_proj(x).view(n, bsz * self.heads, self.head_dim).transpose(0, 1)
        k = self.k_proj(x).view(n, bsz * self.heads, self.head_dim).transpose(0, 1)
        v = self.v_proj(x).view(n, bsz * self.heads, self.head_dim).transpose(0, 1)
        q *= self.scaling
        w = torch.bmm(q, k.transpose(1, 2))  # B*H, N, N
        if attn_bias is not None:
            w += attn_bias.view(-1, n, n)
        p = F.softmax(w, dim=-1, dtype=torch.float32).type_as(w)
        o = torch.bmm(p, v)  # B*H, N, hd
        o = o.transpose(0, 1).reshape(n, bsz, d)
        return self.out_proj(self.ln(o))


class GeGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.wi_0 = nn.Linear(dim, hidden, bias=False)
        self.wi_1 = nn.Linear(dim, hidden, bias=False)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.wi_0(x)) * self.wi_1(x)


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, modalities):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        for m in modalities:
            self.add_module(f"{m}_ffn", nn.Sequential(GeGLU(dim, ffn_dim), nn.Dropout(0.0),
                                                      nn.LayerNorm(ffn_dim), nn.Linear(ffn_dim, dim)))
        self.gamma_1 = nn.Parameter(torch.ones(dim))
        self.gamma_2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None, modality: str) -> torch.Tensor:
        residual = x
        x = self.self_attn(self.self_attn_layer_norm(x), attn_bias)
        x = torch.add(self.gamma_1 * x, residual)
        residual = x
        x = getattr(self, f"{modality}_ffn")(self.final_layer_norm(x))
        return torch.add(self.gamma_2 * x, residual)


class FusionEncoder(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, layers: int, modalities):
        super().__init__()
        self.heads = heads
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn_dim, modalities) for _ in range(layers))
        for m in modalities:
            self.add_module(f"{m}_layer_norm", nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor, bias_list: list[torch.Tensor],
                modality: str) -> torch.Tensor:
        has_pads = bool(padding_mask.any())
        if has_pads:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        bsz, n, _ = x.shape
        pad_mask = padding_mask.view(bsz, 1, 1, n).expand(-1, self.heads, n, -1)
        biases = []
        for b in bias_list:  # one per table (one here: shared tables)
            full = x.new_zeros(bsz, self.heads, n, n)
            full[:, :, :n, :n] += b
            if has_pads:
                full.masked_fill_(pad_mask, float("-inf"))
            biases.append(full)
        x = x.transpose(0, 1)  # N, B, D
        for i, layer in enumerate(self.layers):
            bias = None if not biases else biases[0] if len(biases) == 1 else biases[i]
            x = layer(x, bias, modality)
        return getattr(self, f"{modality}_layer_norm")(x)  # N, B, D


class EncoderWrapper(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        mods = list(cfg.modalities)
        n_tables = cfg.layers if cfg.per_layer_rel_tables else 1
        o = cfg.modalities
        if "text" in mods:
            t = {"vocab_size": 50264, "max_positions": 514, "bucket_size": 256, **o["text"]}
            self.text_adapter = TextAdapter(cfg.dim, cfg.heads, t["vocab_size"], t["max_positions"],
                                            t["bucket_size"], n_tables)
        if "image" in mods:
            im = {"image_size": 256, "pos_grid": 16, **o["image"]}
            self.image_adapter = ImageAdapter(cfg.dim, cfg.heads, im["image_size"], im["pos_grid"], n_tables)
        if "audio" in mods:
            from onepeace.config import OFFICIAL_AUDIO_STEM

            a = {"stem": OFFICIAL_AUDIO_STEM, "conv_pos_depth": 5, "conv_pos_width": 95, "conv_pos_groups": 16,
                 "bucket_size": 512, **o["audio"]}
            self.audio_adapter = AudioAdapter(cfg.dim, cfg.heads, [tuple(s) for s in a["stem"]], a["conv_pos_depth"],
                                              a["conv_pos_width"], a["conv_pos_groups"], a["bucket_size"], n_tables)
        self.fusion_model = FusionEncoder(cfg.dim, cfg.heads, cfg.ffn_dim, cfg.layers, mods)


class UpstreamStyleOnePeace(nn.Module):
    """The retrieval model, official layout. Build with :func:`from_onepeace`."""

    def __init__(self, cfg):
        super().__init__()
        self.modalities = list(cfg.modalities)
        self.encoder_wrapper = EncoderWrapper(cfg)
        for m in self.modalities:
            self.add_module(f"{m}_proj", nn.Linear(cfg.dim, cfg.dim))
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def embed_batch(self, name: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalised retrieval embedding of one modality: what ``OnePeace.embed_batch`` gives."""
        adapter = getattr(self.encoder_wrapper, f"{name}_adapter")
        if name == "text":
            x, pad, bias = adapter(batch["tokens"])
        elif name == "image":
            x, pad, bias = adapter(batch["pixels"])
        elif name == "audio":
            wave = batch["waveform"]
            pm = batch.get("padding_mask")
            if pm is None:
                raise ValueError("the upstream-style audio path takes the processor's padding_mask")
            x, pad, bias = adapter(wave, pm)
        else:
            raise ValueError(name)
        out = self.encoder_wrapper.fusion_model(x, pad, bias, name)  # N, B, D
        feats = out.transpose(0, 1)  # B, N, D
        return F.normalize(getattr(self, f"{name}_proj")(feats[:, 0]), p=2, dim=-1)


# ------------------------------------------------------------------------------------------------
# Weight mapping: onepeace.OnePeace names -> official names
# ------------------------------------------------------------------------------------------------
_RULES = [
    (r"adapters\.(\w+)\.rel_tables\.(\d+)\.weight", r"encoder_wrapper.\1_adapter.rel_pos_table_list.\2.weight"),
    (r"adapters\.(\w+)\.cls_embedding", r"encoder_wrapper.\1_adapter.cls_embedding"),
    (r"adapters\.text\.(embed_tokens|embed_positions)\.weight", r"encoder_wrapper.text_adapter.\1.weight"),
    (r"adapters\.image\.pos_embed", r"encoder_wrapper.image_adapter.pos_embed"),
    (r"adapters\.image\.stem\.conv1\.(\w+)", r"encoder_wrapper.image_adapter.embed_images.0.\1"),
    (r"adapters\.image\.stem\.norm1\.(\w+)", r"encoder_wrapper.image_adapter.embed_images.1.layer_norm.\1"),
    (r"adapters\.image\.stem\.conv2\.(\w+)", r"encoder_wrapper.image_adapter.embed_images.3.\1"),
    (r"adapters\.image\.stem\.norm2\.(\w+)", r"encoder_wrapper.image_adapter.embed_images.4.layer_norm.\1"),
    (r"adapters\.image\.stem\.conv3\.(\w+)", r"encoder_wrapper.image_adapter.embed_images.6.\1"),
    (r"adapters\.audio\.stem\.convs\.(\d+)\.weight", r"encoder_wrapper.audio_adapter.embed_audios.0.conv_layers.\1.0.weight"),
    (r"adapters\.audio\.stem\.norms\.(\d+)\.(\w+)", r"encoder_wrapper.audio_adapter.embed_audios.0.conv_layers.\1.2.1.\2"),
    (r"adapters\.audio\.stem_norm\.(\w+)", r"encoder_wrapper.audio_adapter.embed_audios.2.\1"),
    (r"adapters\.audio\.stem_proj\.(\w+)", r"encoder_wrapper.audio_adapter.embed_audios.3.\1"),
    (r"adapters\.audio\.(cls_pos_embed|mask_embedding)", r"encoder_wrapper.audio_adapter.\1"),
    (r"encoder\.layers\.(\d+)\.attn\.(q_proj|k_proj|v_proj|out_proj)\.(\w+)",
     r"encoder_wrapper.fusion_model.layers.\1.self_attn.\2.\3"),
    (r"encoder\.layers\.(\d+)\.attn\.sub_norm\.(\w+)", r"encoder_wrapper.fusion_model.layers.\1.self_attn.ln.\2"),
    (r"encoder\.layers\.(\d+)\.attn_norm\.(\w+)", r"encoder_wrapper.fusion_model.layers.\1.self_attn_layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.ffn_norm\.(\w+)", r"encoder_wrapper.fusion_model.layers.\1.final_layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.(gamma_1|gamma_2)", r"encoder_wrapper.fusion_model.layers.\1.\2"),
    (r"encoder\.layers\.(\d+)\.ffns\.(\w+)\.(wi_0|wi_1)\.weight", r"encoder_wrapper.fusion_model.layers.\1.\2_ffn.0.\3.weight"),
    (r"encoder\.layers\.(\d+)\.ffns\.(\w+)\.sub_norm\.(\w+)", r"encoder_wrapper.fusion_model.layers.\1.\2_ffn.2.\3"),
    (r"encoder\.layers\.(\d+)\.ffns\.(\w+)\.wo\.(\w+)", r"encoder_wrapper.fusion_model.layers.\1.\2_ffn.3.\3"),
    (r"encoder\.norms\.(\w+)\.(\w+)", r"encoder_wrapper.fusion_model.\1_layer_norm.\2"),
    (r"proj\.(\w+)\.(\w+)", r"\1_proj.\2"),
    (r"logit_scale", r"logit_scale"),
]
_RULES = [(re.compile(a + r"\Z"), b) for a, b in _RULES]


def official_name(name: str) -> str:
    m = re.fullmatch(r"adapters\.audio\.conv_pos\.convs\.(\d+)\.(\w+)", name)
    if m:  # index 0 of the official Sequential is a TransposeLast
        return f"encoder_wrapper.audio_adapter.embed_positions.{int(m.group(1)) + 1}.0.{m.group(2)}"
    for pat, repl in _RULES:
        if pat.match(name):
            return pat.sub(repl, name)
    raise KeyError(f"no official name for {name}")


def official_state_dict(model) -> dict[str, torch.Tensor]:
    """Our model's parameters under official names (the same tensor objects), plus the
    ``rp_bucket`` buffers computed here from the spec."""
    out = {official_name(k): v for k, v in model.named_parameters()}
    o = model.config.modalities
    if "text" in o:
        out["encoder_wrapper.text_adapter.rp_bucket"] = token_bucket_table(o["text"].get("bucket_size", 256))
    if "audio" in o:
        out["encoder_wrapper.audio_adapter.rp_bucket"] = token_bucket_table(o["audio"].get("bucket_size", 512))
    if "image" in o:
        out["encoder_wrapper.image_adapter.rp_bucket"] = image_bucket_table(o["image"].get("image_size", 256) // 16)
    return out


def from_onepeace(model) -> UpstreamStyleOnePeace:
    """An upstream-style module holding **the same weight tensors** as ``model`` (no copies)."""
    cfg = model.config
    if cfg.head is not None or not cfg.projection or not cfg.final_norm or not cfg.layer_scale:
        raise ValueError("the upstream-style reference covers the retrieval models only")
    if not (cfg.attn_sub_norm and cfg.ffn_sub_norm):
        raise ValueError("the upstream-style reference assumes the Magneto sub-LNs (as released)")
    with torch.device("meta"):
        ref = UpstreamStyleOnePeace(cfg)
    ref.load_state_dict(official_state_dict(model), strict=True, assign=True)
    if "text" in cfg.modalities:
        # our tokenizer numbers the vocabulary GPT-2 style (the converter permutes the official
        # rows), so the pad id is ours rather than fairseq's 1
        ref.encoder_wrapper.text_adapter.pad_id = model.options["text"].pad_id
    return ref.eval()


def shares_weights(ref: nn.Module, model: nn.Module) -> dict[str, int | bool]:
    """Every parameter of ``ref`` lives in a storage of ``model`` (nothing was copied)."""
    ours = {p.untyped_storage().data_ptr() for p in model.parameters()}
    params = list(ref.parameters())
    shared = sum(p.untyped_storage().data_ptr() in ours for p in params)
    return {"params": len(params), "shared": shared, "all_shared": shared == len(params),
            "ref_own_bytes": sum(b.nbytes for b in ref.buffers())}
