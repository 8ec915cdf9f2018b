"""NLVR2 type embeddings (the official adapters' ``add_type_embedding``): zero-initialised [1,1,D]
vectors added after the positions to every token (CLS included); the image adapter's second vector
only on a pair's second image, flagged by the processed batch's optional ``second`` key. Converter
keys and round trips."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from onepeace import OnePeace, create_model
from onepeace.checkpoints.official import KEY_MAP, convert, infer_config
from onepeace.config import HeadConfig
from onepeace.errors import InputError
from onepeace.processing.tokenizer import GPT2_VOCAB, SPECIAL_SYMBOLS, VOCAB_SIZE

D = 128
TYPED = {"text": {"type_embedding": True}, "image": {"image_size": 32, "type_embedding": True}}
PLAIN = {"text": {}, "image": {"image_size": 32}}


def _model(mods=TYPED, **kw):
    return create_model("tiny", layers=2, modalities=mods, **kw)


def _pair(seed: int = 0):
    """A typed model and an untyped one with the same weights otherwise; random type vectors."""
    torch.manual_seed(seed)
    plain = _model(PLAIN)
    typed = _model(TYPED)
    missing, unexpected = typed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected
    assert sorted(missing) == ["adapters.image.type_embedding", "adapters.image.type_embedding_2",
                               "adapters.text.type_embedding"]
    vec = {k: torch.randn(1, 1, D) for k in ("text", "image", "image_2")}
    with torch.no_grad():
        typed.adapters["text"].type_embedding.copy_(vec["text"])
        typed.adapters["image"].type_embedding.copy_(vec["image"])
        typed.adapters["image"].type_embedding_2.copy_(vec["image_2"])
    return plain, typed, vec


def _inputs(b: int = 3):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 1000, (b, 6), generator=g)
    tokens[0, -2:] = 50258  # <pad>: the official adapter adds the vector to padding too
    return {"tokens": tokens}, {"pixels": torch.randn(b, 3, 32, 32, generator=g)}


def test_parameters_are_zero_initialised_and_named():
    m = _model()
    sd = m.state_dict()
    for k in ("adapters.text.type_embedding", "adapters.image.type_embedding", "adapters.image.type_embedding_2"):
        assert sd[k].shape == (1, 1, D) and not sd[k].any(), k
    assert "adapters.text.type_embedding_2" not in sd
    # the from-scratch init keeps them at zero (the official init never touches them)
    with torch.no_grad():
        for p in (m.adapters["text"].type_embedding, m.adapters["image"].type_embedding_2):
            p.fill_(1.0)
    m.reset_parameters()
    assert not m.adapters["text"].type_embedding.any() and not m.adapters["image"].type_embedding_2.any()
    # off by default: no parameters at all
    assert not any("type_embedding" in k for k in _model(PLAIN).state_dict())
    # zero vectors leave every output unchanged
    torch.manual_seed(0)
    plain = _model(PLAIN)
    typed = _model(TYPED)
    typed.load_state_dict(plain.state_dict(), strict=False)
    text, image = _inputs()
    with torch.no_grad():
        a = plain.encode(text=text, image=image).features
        b = typed.encode(text=text, image={**image, "second": torch.tensor(True)}).features
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vectors_are_added_to_every_token_after_positions():
    plain, typed, vec = _pair()
    text, image = _inputs()
    with torch.no_grad():
        xt = plain.adapt("text", text).x
        xi = plain.adapt("image", image).x
        # text: every token, CLS and padding included
        assert torch.allclose(typed.adapt("text", text).x, xt + vec["text"], atol=1e-6)
        # first image: the key absent, or present and false
        for batch in (image, {**image, "second": torch.tensor(False)}, {**image, "second": torch.zeros(3, dtype=torch.bool)}):
            assert torch.allclose(typed.adapt("image", batch).x, xi + vec["image"], atol=1e-6)
        # second image: one flag for the batch, or one per image
        both = xi + vec["image"] + vec["image_2"]
        assert torch.allclose(typed.adapt("image", {**image, "second": torch.tensor(True)}).x, both, atol=1e-6)
        got = typed.adapt("image", {**image, "second": torch.tensor([True, False, True])}).x
        assert torch.allclose(got[[0, 2]], both[[0, 2]], atol=1e-6)
        assert torch.allclose(got[1], (xi + vec["image"])[1], atol=1e-6)
        # the text adapter has no second vector: the text tokens are the same in both passes
        assert not hasattr(typed.adapters["text"], "type_embedding_2") or typed.adapters["text"].type_embedding_2 is None


def test_second_flag_reaches_every_adapter_path():
    plain, typed, vec = _pair()
    _, image = _inputs()
    a = typed.adapters["image"]
    n = a.max_tokens()
    pos = torch.tensor([[0, 2, 4], [1, 3, 4], [0, 1, 2]])  # kept tokens of the 5 (CLS + 2x2)
    with torch.no_grad():
        full = plain.adapters["image"].embed(image["pixels"])[0]
        for second, extra in ((None, 0), (torch.tensor(True), vec["image_2"])):
            args = [{**image, "second": second}.get(k) for k in a.input_keys]  # as adapt / _args do
            kept = a.forward_kept(pos, *args)
            want = full.gather(1, pos[..., None].expand(-1, -1, D)) + vec["image"] + extra
            assert torch.allclose(kept.x, want, atol=1e-6)
            assert a.valid_mask(*args).shape == (3, n) and a.valid_mask(*args).all()
            with a.caching():
                assert torch.allclose(a(*args).x, full + vec["image"] + extra, atol=1e-6)


def test_second_flag_without_type_embeddings_and_bad_flags():
    torch.manual_seed(0)
    plain = _model(PLAIN)
    _, image = _inputs()
    with torch.no_grad():
        x = plain.adapt("image", image).x
        # as officially (image.py: `is_second_image and self.type_embedding_2 is not None`): ignored
        assert torch.equal(plain.adapt("image", {**image, "second": torch.tensor(True)}).x, x)
    _, typed, _ = _pair()
    with pytest.raises(InputError, match="second"):
        typed.adapt("image", {**image, "second": torch.tensor([True, False])})


def test_gradient_of_second_vector_comes_from_second_images_only():
    _, typed, _ = _pair()
    text, image = _inputs()
    a = typed.adapters["image"]
    typed.encode(text=text, image=image).features["text"].sum().backward()
    assert a.type_embedding.grad.abs().sum() > 0
    assert a.type_embedding_2.grad is None or not a.type_embedding_2.grad.any()
    typed.zero_grad()
    out = typed.encode(text=text, image={**image, "second": torch.tensor([False, True, False])})
    out.features["text"][1].sum().backward()
    assert a.type_embedding_2.grad.abs().sum() > 0


def test_processor_output_is_unchanged():
    m = _model()
    img = Image.fromarray(np.full((40, 50, 3), 128, dtype=np.uint8))
    batch = m.processor.get("image")([img, img])
    assert "second" not in batch and batch["pixels"].shape == (2, 3, 32, 32)
    with torch.no_grad():
        assert m.adapt("image", batch).x.shape == (2, 5, D)


def test_nlvr2_two_passes_differ_only_by_the_second_vector():
    plain, typed, vec = _pair()
    head = HeadConfig(num_classes=2, two_inputs=True)
    torch.manual_seed(2)
    typed_h = _model(TYPED, head=head)
    typed_h.load_state_dict(typed.state_dict(), strict=False)
    text, image = _inputs()
    with torch.no_grad():
        one = typed_h.encode(text=text, image=image)
        two = typed_h.encode(text=text, image={**image, "second": torch.ones(3, dtype=torch.bool)})
        assert not torch.allclose(one.features["text"], two.features["text"])
        typed_h.adapters["image"].type_embedding_2.zero_()
        same = typed_h.encode(text=text, image={**image, "second": torch.ones(3, dtype=torch.bool)})
        assert torch.equal(one.features["text"], same.features["text"])
        logits = typed_h.head(one.features["text"], one.padding_masks["text"], two.features["text"])
    assert logits.shape == (3, 2)
    assert typed_h.head.fc1.in_features == 2 * D


# ------------------------------------------------------------------------------ conversion
def _invert(ours: str) -> str:
    """Our key -> an official key, through the converter's own table (first template that fits)."""
    fields = {"i": r"\d+", "j": r"\d+", "m": "text|image|audio", "p": "weight|bias", "n": "k|v|out"}
    for src, dst in KEY_MAP:
        if dst is None or "{k" in dst or "{rest}" in src:
            continue
        names = re.findall(r"\{(\w+)\}", dst)
        pat = re.escape(dst)
        for f in names:
            pat = pat.replace(re.escape("{" + f + "}"), f"(?P<{f}>{fields[f]})", 1)
        mt = re.fullmatch(pat, ours)
        if mt is not None:
            return re.sub(r"\{(\w+)\}", lambda x, mt=mt: mt.group(x.group(1)), src)
    raise KeyError(ours)


def _official_dict(path):
    """A fairseq dict.txt with every GPT-2 id as a symbol (our row o sits at official row o + 4)."""
    extra = [s for s in SPECIAL_SYMBOLS.values() if s.startswith("madeup")]
    path.write_text("".join(f"{s} 1\n" for s in [*map(str, range(GPT2_VOCAB)), *extra]))
    perm = torch.empty(VOCAB_SIZE, dtype=torch.long)
    perm[:GPT2_VOCAB] = torch.arange(GPT2_VOCAB) + 4
    index = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{s: GPT2_VOCAB + 4 + i for i, s in enumerate(extra)}}
    for ours, sym in SPECIAL_SYMBOLS.items():
        perm[ours] = index[sym]
    return perm


def _official_nlvr2(tmp_path):
    """An official-style NLVR2 classify checkpoint (fairseq names) built from one of our models."""
    _, typed, _ = _pair()
    torch.manual_seed(3)
    src = _model(TYPED, head=HeadConfig(num_classes=2, two_inputs=True), projection=False, logit_scale=False)
    src.load_state_dict(typed.state_dict(), strict=False)
    with torch.no_grad():
        for p in src.head.parameters():
            p.normal_()
    perm = _official_dict(tmp_path / "dict.txt")
    sd = {}
    for k, v in src.state_dict().items():
        if k == "adapters.text.embed_tokens.weight":
            v = torch.empty_like(v).index_copy_(0, perm, v)
        sd[_invert(k)] = v.clone()
    cfg = {"task": {"head_type": "vl", "patch_image_size": 32, "use_two_images": True},
           "model": {"use_image_features": False}}
    torch.save({"cfg": cfg, "model": sd}, tmp_path / "nlvr2.pt")
    return src, sd


def test_official_type_embedding_keys_convert(tmp_path):
    src, sd = _official_nlvr2(tmp_path)
    for k in ("encoder_wrapper.text_adapter.type_embedding", "encoder_wrapper.image_adapter.type_embedding",
              "encoder_wrapper.image_adapter.type_embedding_2"):
        assert k in sd and sd[k].shape == (1, 1, D)
    assert sd["classify_head.classifier.0.weight"].shape == (2 * D, 2 * D)
    cfg = convert(tmp_path / "nlvr2.pt", tmp_path / "out", tmp_path / "dict.txt")
    assert cfg.modalities["text"]["type_embedding"] and cfg.modalities["image"]["type_embedding"]
    assert cfg.head.two_inputs and cfg.head.num_classes == 2 and cfg.head.feature_source == "text"
    m = OnePeace.from_pretrained(tmp_path / "out")
    ours = m.state_dict()
    assert set(ours) == set(src.state_dict())
    for k, v in src.state_dict().items():
        assert torch.equal(ours[k], v), k
    text, image = _inputs()
    with torch.no_grad():
        for b in (image, {**image, "second": torch.tensor(True)}):
            # allclose: the saved config lists modalities sorted, so the fused order differs
            assert torch.allclose(m.encode(text=text, image=b).features["text"],
                                  src.encode(text=text, image=b).features["text"], atol=1e-6)


def test_infer_config_sets_the_option_only_when_the_keys_exist(tmp_path):
    _, sd = _official_nlvr2(tmp_path)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    cfg = infer_config({}, shapes)
    assert cfg.modalities["text"]["type_embedding"] and cfg.modalities["image"]["type_embedding"]
    assert cfg.head.two_inputs and cfg.head.head_scale_ratio == 2.0
    plain = {k: s for k, s in shapes.items() if "type_embedding" not in k}
    plain["classify_head.classifier.0.weight"] = (2 * D, D)
    cfg = infer_config({}, plain)
    assert "type_embedding" not in cfg.modalities["text"] and "type_embedding" not in cfg.modalities["image"]
    assert not cfg.head.two_inputs


def test_save_load_round_trip_keeps_the_vectors(tmp_path):
    _, typed, vec = _pair()
    typed.save_pretrained(tmp_path / "m")
    m = OnePeace.from_pretrained(tmp_path / "m")
    assert m.config.modalities["image"]["type_embedding"] and m.config.modalities["text"]["type_embedding"]
    assert torch.equal(m.adapters["text"].type_embedding, vec["text"])
    assert torch.equal(m.adapters["image"].type_embedding, vec["image"])
    assert torch.equal(m.adapters["image"].type_embedding_2, vec["image_2"])
    text, image = _inputs()
    with torch.no_grad():
        b = {**image, "second": torch.tensor([True, False, True])}
        assert torch.allclose(m.encode(text=text, image=b).features["image"],
                              typed.encode(text=text, image=b).features["image"], atol=1e-6)
