"""Model configuration as plain data, and the named presets.

A checkpoint directory carries its ``config.json`` (``ModelConfig.to_dict``); presets are named,
open_clip-style, and listed by :func:`list_presets`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

#: official wav2vec-style audio stem: (channels, kernel, stride) per conv block
OFFICIAL_AUDIO_STEM: list[tuple[int, int, int]] = (
    [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
)


HEAD_TYPES = ("classify", "linear", "dense")


@dataclass
class HeadConfig:
    """A task head on the encoder's features.

    ``type``:

    * ``"classify"``: the attention-pooling classification head of the official fine-tuned
      models (``OnePeaceClassifyHead``, one_peace/models/one_peace/one_peace_base.py of
      github.com/OFA-Sys/ONE-PEACE): classification, grounding, VQA, AQA, NLVR2;
    * ``"linear"``: the vision branch's ImageNet head: mean of the patch tokens -> LayerNorm ->
      Linear;
    * ``"dense"``: a light per-patch head for semantic segmentation (LayerNorm -> Linear ->
      GELU -> Linear on every patch token, logits upsampled to the input size).
    """

    num_classes: int
    type: str = "classify"
    feature_source: str = "text"  # which modality's tokens are pooled
    attn_pooling: bool = True
    use_pooler: bool = False
    head_scale_ratio: float = 2.0
    two_inputs: bool = False  # NLVR2: pooled features of two passes are concatenated
    labels: list[str] | None = None  # optional class names, index order
    inputs: list[str] | None = None  # the modalities the head was trained on (fused when several)

    def __post_init__(self) -> None:
        if self.type not in HEAD_TYPES:
            raise ConfigError(f"unknown head type {self.type!r}; choose one of {list(HEAD_TYPES)}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ConfigError(f"head num_classes must be a positive integer, got {self.num_classes!r}")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ConfigError(f"head has {self.num_classes} classes but {len(self.labels)} labels")


@dataclass
class ModelConfig:
    """Everything needed to build a :class:`onepeace.OnePeace`.

    ``modalities`` maps a registered modality name to that modality's own options (see
    ``onepeace.modalities``); unknown names fail at build time naming the registered ones.
    """

    dim: int = 1536
    layers: int = 40
    heads: int = 24
    ffn_dim: int = 6144
    modalities: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"text": {}, "image": {}, "audio": {}}
    )
    per_layer_rel_tables: bool = False  # False: one relative-position table per modality
    attn_sub_norm: bool = True  # Magneto sub-LN before out_proj
    ffn_sub_norm: bool = True  # LN between the GeGLU product and the FFN output projection
    layer_scale: bool = True
    layer_scale_init: float = 1e-6
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-5
    final_norm: bool = True  # per-modality LayerNorm after the last layer
    projection: bool = True  # per-modality embedding projections (retrieval models)
    logit_scale: bool = True
    head: HeadConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.head, dict):
            self.head = HeadConfig(**self.head)
        if self.dim % self.heads:
            raise ConfigError(f"dim={self.dim} is not divisible by heads={self.heads}")
        if self.layers < 1 or self.dim < 1 or self.ffn_dim < 1:
            raise ConfigError("dim, layers and ffn_dim must be positive")
        if not self.modalities:
            raise ConfigError("a model needs at least one modality")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config fields {unknown}; known: {sorted(known)}")
        return cls(**copy.deepcopy(data))

    def to_json(self) -> str:
        # insertion order kept: the modality order is the fused-sequence order (text first)
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **changes: Any) -> ModelConfig:
        data = self.to_dict()
        data.update(changes)
        return ModelConfig.from_dict(data)


def _tri(audio_channels: int = 512) -> dict[str, dict[str, Any]]:
    stem = [(audio_channels, k, s) for _, k, s in OFFICIAL_AUDIO_STEM]
    return {"text": {}, "image": {}, "audio": {"stem": [list(t) for t in stem]}}


_PRESETS: dict[str, dict[str, Any]] = {
    # small enough for tests and the laptop demo
    "tiny": dict(dim=128, layers=4, heads=4, ffn_dim=512, modalities=_tri(128)),
    # the width-768 configuration the official speed measurements used
    "base": dict(dim=768, layers=12, heads=12, ffn_dim=3072, modalities=_tri()),
    "large": dict(dim=1024, layers=24, heads=16, ffn_dim=4096, modalities=_tri()),
    # the released retrieval model behind one-peace.pt: 3,884,740,545 parameters
    "one-peace-4b": dict(dim=1536, layers=40, heads=24, ffn_dim=6144, modalities=_tri()),
    # the released 1.5B vision branch: image path only, no final norm, no projection
    "one-peace-vision": dict(
        dim=1536,
        layers=40,
        heads=24,
        ffn_dim=6144,
        modalities={"image": {}},
        final_norm=False,
        projection=False,
        logit_scale=False,
    ),
}


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in _PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {list_presets()}")
    data = copy.deepcopy(_PRESETS[name])
    data.update(overrides)
    return ModelConfig.from_dict(data)
