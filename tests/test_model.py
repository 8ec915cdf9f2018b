"""Model construction, presets, fused inputs, plug-in modalities and our checkpoint format."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import onepeace
from onepeace.errors import CheckpointError, ConfigError, InputError
from onepeace.modalities.base import Modality, register_modality


def small(**kw):
    torch.manual_seed(0)
    m = onepeace.create_model("tiny", layers=2, layer_scale_init=0.5, **kw)
    return m


def test_presets_and_meta_device():
    assert set(onepeace.list_presets()) >= {"tiny", "base", "large", "one-peace-4b", "one-peace-vision"}
    big = onepeace.create_model("one-peace-4b", device="meta")
    assert big.num_parameters() == 3_884_740_545
    assert all(p.is_meta for p in big.parameters())
    vision = onepeace.create_model("one-peace-vision", device="meta")
    assert list(vision.adapters) == ["image"] and not vision.proj and not len(vision.encoder.norms)
    assert 1.50e9 < vision.num_parameters() < 1.53e9
    with pytest.raises(ConfigError, match="unknown model preset"):
        onepeace.create_model("huge")
    with pytest.raises(ConfigError, match="unknown modality"):
        onepeace.create_model("tiny", modalities={"smell": {}})


def test_text_batching_and_padding_do_not_change_embeddings():
    m = small()
    texts = ["a cat", "a much longer sentence about a dog running in the park", ""]
    together = m.embed(text=texts)["text"]
    alone = torch.cat([m.embed(text=[t])["text"] for t in texts])
    assert torch.allclose(together, alone, atol=1e-6)
    assert torch.allclose(together.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_audio_batch_invariance(tmp_path):
    m = small()
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(16000 * 2, generator=g).numpy(), torch.randn(16000, generator=g).numpy()]
    together = m.embed(audio=clips)["audio"]
    alone = torch.cat([m.embed(audio=[c])["audio"] for c in clips])
    assert torch.allclose(together, alone, atol=1e-5)
    m.adapters["audio"].official_padding_leak = True
    leaky = m.embed(audio=clips)["audio"]
    assert not torch.allclose(leaky[1], alone[1], atol=1e-4)


def test_fused_encoding_returns_each_modality():
    m = small()
    p = m.processor
    out = m.encode(text=p.get("text")(["a", "b c"]), image={"pixels": torch.randn(2, 3, 256, 256)})
    assert out.features["text"].shape == (2, 4, 128) and out.features["image"].shape == (2, 257, 128)
    with pytest.raises(InputError, match="equal batch sizes"):
        m.encode(text=p.get("text")(["a"]), image={"pixels": torch.randn(2, 3, 256, 256)})


def test_other_image_resolutions_interpolate_positions():
    m = onepeace.create_model("tiny", layers=1, modalities={"image": {"image_size": 384}})
    x, _ = m.adapters["image"].embed(torch.randn(1, 3, 384, 384))
    assert x.shape == (1, 577, 128)
    assert m.adapters["image"].rel_tables[0].weight.shape[0] == 47 * 47 + 3
    with pytest.raises(InputError, match="384x384"):
        m.adapters["image"](torch.randn(1, 3, 256, 256))


def test_drop_path_only_in_training():
    m = onepeace.create_model("tiny", layers=2, drop_path_rate=0.5, layer_scale_init=1.0)
    batch = m.processor.get("text")(["hello world"] * 8)
    with torch.no_grad():
        a = m.embed_batch("text", batch)
        b = m.embed_batch("text", batch)
        assert torch.equal(a, b)
        m.train()
        torch.manual_seed(1)
        c = m.embed_batch("text", batch)
    assert not torch.allclose(a, c)


def test_save_load_roundtrip_fp32_bf16_and_shards(tmp_path):
    m = small()
    texts = ["a red circle"]
    ref = m.embed(text=texts)["text"]
    m.save_pretrained(tmp_path / "fp32")
    back = onepeace.OnePeace.from_pretrained(tmp_path / "fp32")
    assert torch.equal(back.embed(text=texts)["text"], ref)
    m.save_pretrained(tmp_path / "shards", max_shard_bytes=4 * 1024**2)
    files = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    assert torch.equal(onepeace.OnePeace.from_pretrained(tmp_path / "shards").embed(text=texts)["text"], ref)
    # re-saving unsharded (overwrite=True) removes the old shards and index
    m.save_pretrained(tmp_path / "shards", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["config.json", "model.safetensors"]
    bf = onepeace.OnePeace.from_pretrained(tmp_path / "fp32", dtype="bf16")
    assert bf.dtype == torch.bfloat16
    out = bf.embed(text=texts)["text"]
    assert out.dtype == torch.float32 and torch.nn.functional.cosine_similarity(out, ref).item() > 0.99
    m.save_pretrained(tmp_path / "bf16", dtype="bf16")
    assert onepeace.OnePeace.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16


def test_safetensors_files_are_standard(tmp_path):
    from safetensors.torch import load_file

    m = small()
    m.save_pretrained(tmp_path)
    loaded = load_file(tmp_path / "model.safetensors")
    sd = m.state_dict()
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        onepeace.OnePeace.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="onepeace convert"):
        onepeace.OnePeace.from_pretrained(tmp_path / "empty")
    m = small()
    m.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["dim"] = 256
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        onepeace.OnePeace.from_pretrained(tmp_path / "m")


@dataclass
class VectorOptions:
    in_dim: int = 6


@register_modality
class VectorModality(Modality):
    """A toy plug-in: a set of feature vectors, each a token. Registered only by this test."""

    name = "vector"
    Options = VectorOptions
    input_keys = ("vectors",)

    def __init__(self, config, options):
        super().__init__(config, options)
        self.proj = nn.Linear(options.in_dim, config.dim)

    def forward(self, vectors):
        x = self.proj(vectors)
        return self.output(torch.cat([self.cls_embedding.expand(x.shape[0], -1, -1), x], 1), None)

    @classmethod
    def make_processor(cls, options):
        return lambda items: {"vectors": torch.stack([torch.as_tensor(i, dtype=torch.float32) for i in items])}


def test_new_modality_is_a_plugin(tmp_path):
    m = onepeace.create_model("tiny", layers=2, modalities={"text": {}, "vector": {"in_dim": 6}})
    assert set(m.encoder.layers[0].ffns) == {"text", "vector"}
    e = m.embed(vector=[torch.randn(5, 6), torch.randn(5, 6)], text=["x"])
    assert e["vector"].shape == (2, 128)
    fused = m.encode(text=m.processor.get("text")(["x", "y"]), vector={"vectors": torch.randn(2, 5, 6)})
    assert fused.features["vector"].shape == (2, 6, 128)
    m.save_pretrained(tmp_path)
    assert torch.allclose(onepeace.OnePeace.from_pretrained(tmp_path).embed(text=["x"])["text"], e["text"])
