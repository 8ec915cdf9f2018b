"""Parity with the official implementation: its outputs on tiny random checkpoints, in
tests/fixtures/upstream-tiny (README.md there says how they were made)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import onepeace
from conftest import (
    FIX,
    ROW_EMB,
    ROW_FEAT,
    ROW_GBOX,
    ROW_GLOGITS,
    ROW_PRE,
    ROW_SCALE,
    ROW_VGG,
    TINY,
    assert_parity,
    derived_tol,
    load_fp64,
    maxdiff,
    model_depth,
    needs_fixtures,
)
from onepeace.checkpoints.official import load_official, map_key, normalize_keys
from onepeace.checkpoints.safe_pickle import read_checkpoint
from onepeace.modalities.relpos import grid_buckets, token_buckets

pytestmark = needs_fixtures
IMAGES = [str(TINY / "inputs" / "image0.png"), str(TINY / "inputs" / "image1.png")]
AUDIOS = [str(TINY / "inputs" / "audio0.wav"), str(TINY / "inputs" / "audio1.wav")]


@pytest.fixture(scope="module")
def model(converted):
    return onepeace.OnePeace.from_pretrained(converted["one-peace-tiny"])


@pytest.fixture(scope="module")
def model64(converted):
    return load_fp64(converted["one-peace-tiny"])


def test_tokenization_matches_official(model, ref_in):
    tok = json.loads((TINY / "tokenization.json").read_text())
    proc = model.processor.get("text")
    for s in tok["sentences"]:
        assert " ".join(map(str, proc.bpe.encode(s["hub_input"]))) == s["gpt2_bpe_ids"]
    ours = proc([s["text"] for s in tok["sentences"]])["tokens"]
    # our ids are GPT-2 ids; map them to fairseq dictionary rows to compare with the official rows
    from conftest import DICT
    from onepeace.checkpoints.official import read_fairseq_dict, vocab_permutation

    perm = vocab_permutation(read_fairseq_dict(DICT))
    assert np.array_equal(perm[ours].numpy(), ref_in["text_src_tokens"])
    for s, row in zip(tok["sentences"], ours):
        assert perm[row[row != proc.pad_id]].tolist() == s["src_tokens"]


def test_preprocessed_tensors_match_official(model, ref_in, texts):
    # a shallow float32 computation (resize, scale, normalise): a few ulps of the magnitude
    p = model.processor
    img = p.get("image")(IMAGES)
    assert_parity(img["pixels"], None, ref_in["image_src_images"], row=ROW_PRE)
    aud = p.get("audio")(AUDIOS)
    assert_parity(aud["waveform"], None, ref_in["audio_src_audios"], row=ROW_PRE)
    assert np.array_equal(aud["padding_mask"].numpy(), ref_in["audio_padding_masks"])
    short = p.get("audio")([str(TINY / "inputs" / "audio_short.wav")])
    assert_parity(short["waveform"], None, ref_in["audio_short_src_audios"], row=ROW_PRE)
    assert np.array_equal(short["padding_mask"].numpy(), ref_in["audio_short_padding_masks"])
    g = onepeace.processing.image.ImageProcessor(384)([str(TINY / "inputs" / a) for a, _ in texts["grounding_pairs"]])
    assert_parity(g["pixels"], None, ref_in["grounding_src_images"], row=ROW_PRE)
    assert g["sizes"][:, 0].tolist() == ref_in["grounding_image_widths"].tolist()
    assert g["sizes"][:, 1].tolist() == ref_in["grounding_image_heights"].tolist()


def test_embeddings_from_raw_files(model, model64, ref_out, texts):
    depth = model_depth(model) + 1  # + the projection
    calls = {
        "single": dict(text=texts["texts"], image=IMAGES, audio=AUDIOS, batch_size=1),
        "batch": dict(text=texts["texts"], image=IMAGES),
        "short": dict(audio=[str(TINY / "inputs" / "audio_short.wav")]),
    }
    refs = {"single": "{}_embed_single", "batch": "{}_embed", "short": "{}_short_embed"}
    for call, kw in calls.items():
        ours, ours64 = model.embed(**kw), model64.embed(**kw)
        for m in ours:
            assert_parity(ours[m], ours64[m], ref_out[refs[call].format(m)], depth=depth, row=ROW_EMB)


def _audio_batch(ref_in):
    return {"waveform": torch.tensor(ref_in["audio_src_audios"]), "padding_mask": torch.tensor(ref_in["audio_padding_masks"])}


def _embed_audio(m, batch, leak=False):
    m.adapters["audio"].official_padding_leak = leak
    try:
        with torch.no_grad():
            return m.embed_batch("audio", batch)
    finally:
        m.adapters["audio"].official_padding_leak = False


def test_audio_batch_invariant_by_default_and_official_leak_on_request(model, model64, ref_in, ref_out):
    batch, depth = _audio_batch(ref_in), model_depth(model) + 1
    inv, inv64 = _embed_audio(model, batch), _embed_audio(model64, batch)
    assert_parity(inv, inv64, ref_out["audio_embed_single"], depth=depth, row=ROW_EMB)
    leak, leak64 = _embed_audio(model, batch, True), _embed_audio(model64, batch, True)
    assert_parity(leak, leak64, ref_out["audio_embed"], depth=depth, row=ROW_EMB)
    # the leak is real: orders of magnitude beyond rounding
    tol = derived_tol(leak[1:], leak64[1:], ref_out["audio_embed_single"][1:], depth=depth)
    assert maxdiff(leak[1:], ref_out["audio_embed_single"][1:]) > 100 * tol


def _encode_one(m, ref_in, name, key):
    if name == "text":
        batch = {"tokens": m.processor.get("text")(json.loads((TINY / "inputs" / "texts.json").read_text())["texts"])["tokens"]}
    elif name == "image":
        batch = {"pixels": torch.tensor(ref_in["image_src_images"])}
    else:
        batch = _audio_batch(ref_in)
        m.adapters["audio"].official_padding_leak = True
    try:
        with torch.no_grad():
            return m.encode(return_layer_states=True, **{name: batch}), m.adapt(name, batch)
    finally:
        m.adapters["audio"].official_padding_leak = False


@pytest.mark.parametrize("m,key", [("text", "tokens"), ("image", "pixels"), ("audio", None)])
def test_token_features_layer_states_adapter_outputs(model, model64, ref_in, ref_out, m, key):
    out, adapted = _encode_one(model, ref_in, m, key)
    out64, adapted64 = _encode_one(model64, ref_in, m, key)
    pad = ref_out.get(f"{m}_padding_mask", ref_out.get(f"{m}_padding_mask_out"))
    assert_parity(adapted.x, adapted64.x, ref_out[f"{m}_adapter_out"], pad, row=ROW_FEAT)
    for i, (state, state64) in enumerate(zip(out.layer_states, out64.layer_states)):
        assert_parity(state, state64, ref_out[f"{m}_layer_states"][i], pad, depth=i + 2, row=ROW_FEAT)
    assert_parity(out.features[m], out64.features[m], ref_out[f"{m}_token_features"], pad, depth=model_depth(model), row=ROW_FEAT)
    if pad is not None:
        assert np.array_equal((out.padding_masks[m] if out.padding_masks[m] is not None else torch.zeros(pad.shape, dtype=torch.bool)).numpy(), pad)


def _fused(m, ref_in, texts):
    tokens = m.processor.get("text")(texts["texts"][:2])
    with torch.no_grad():
        vl = m.encode(text=tokens, image={"pixels": torch.tensor(ref_in["image_src_images"])})
        m.adapters["audio"].official_padding_leak = True
        try:
            al = m.encode(text=tokens, audio=_audio_batch(ref_in))
        finally:
            m.adapters["audio"].official_padding_leak = False
    return tokens, vl, al


def test_fused_vl_and_al(model, model64, ref_in, ref_out, texts):
    tokens, vl, al = _fused(model, ref_in, texts)
    _, vl64, al64 = _fused(model64, ref_in, texts)
    tpad = (tokens["tokens"] == model.options["text"].pad_id).numpy()
    tpad = np.concatenate([np.zeros((2, 1), bool), tpad], 1)
    depth = model_depth(model)
    for name, ours, ours64, pad in (
        ("vl_text_features", vl.features["text"], vl64.features["text"], tpad),
        ("vl_image_features", vl.features["image"], vl64.features["image"], None),
        ("al_text_features", al.features["text"], al64.features["text"], tpad),
        ("al_audio_features", al.features["audio"], al64.features["audio"], ref_in["audio_padding_masks"]),
    ):
        assert_parity(ours, ours64, ref_out[name], pad, depth=depth, row=ROW_FEAT)
    with torch.no_grad():
        assert_parity(model.logit_scale_exp(), model64.logit_scale_exp(), ref_out["logit_scale_exp"], row=ROW_SCALE)


def test_grounding_checkpoint(converted, ref_in, ref_out, texts):
    g = onepeace.OnePeace.from_pretrained(converted["one-peace-tiny-grounding-refcocog"])
    g64 = load_fp64(converted["one-peace-tiny-grounding-refcocog"])
    assert g.config.head.feature_source == "text" and g.config.per_layer_rel_tables
    assert g.options["image"].image_size == 384
    imgs = [str(TINY / "inputs" / a) for a, _ in texts["grounding_pairs"]]
    caps = [t for _, t in texts["grounding_pairs"]]
    depth = model_depth(g) + 1  # + the head
    assert_parity(g.classify(image=imgs, text=caps), g64.classify(image=imgs, text=caps), ref_out["grounding_logits"],
                  depth=depth, row=ROW_GLOGITS)
    assert_parity(g.ground(imgs, caps), g64.ground(imgs, caps), ref_out["grounding_coords"], depth=depth, row=ROW_GBOX)
    feats, logits = [], []
    for m in (g, g64):
        with torch.no_grad():
            vl = m.encode(text={"tokens": m.processor.get("text")(caps)["tokens"]}, image={"pixels": torch.tensor(ref_in["grounding_src_images"])})
            m.config.head.feature_source = "image"  # the same weights pooling image tokens
            feats.append(vl.features["image"])
            logits.append(m.head(vl.features["image"], vl.padding_masks["image"]))
    assert_parity(*feats, ref_out["grounding_vl_image_features"], depth=model_depth(g), row=ROW_FEAT)
    assert_parity(*logits, ref_out["grounding_logits_use_image_features"], depth=depth, row=ROW_GLOGITS)


def test_vggsound_checkpoint(converted, ref_in, ref_out):
    v = onepeace.OnePeace.from_pretrained(converted["one-peace-tiny-vggsound"])
    v64 = load_fp64(converted["one-peace-tiny-vggsound"])
    assert list(v.config.modalities) == ["audio"] and v.config.head.num_classes == 309
    batch = _audio_batch(ref_in)
    logits = []
    for m in (v, v64):
        m.adapters["audio"].official_padding_leak = True
        with torch.no_grad():
            logits.append(m.classify_batch(audio=batch))
        m.adapters["audio"].official_padding_leak = False
    assert_parity(logits[0], logits[1], ref_out["vggsound_logits"], depth=model_depth(v) + 1, row=ROW_VGG)
    single = v.classify(audio=AUDIOS[1:])
    with torch.no_grad():
        alone = v.classify_batch(audio=v.processor.get("audio")(AUDIOS[1:]))
    assert maxdiff(single, alone) == 0.0  # the same code on the same batch: bit for bit


def _text_features(path, ref_in, perturb=None):
    """Our text token features in float32 and float64 from ``path``, after ``perturb(model)``."""
    outs = []
    for dtype in (torch.float32, torch.float64):
        m = onepeace.OnePeace.from_pretrained(path, dtype=dtype)
        if perturb is not None:
            perturb(m)
        outs.append(_encode_one(m, ref_in, "text", "tokens")[0].features["text"])
    return outs


def test_derived_tolerance_catches_small_perturbations(model, converted, ref_in, ref_out, monkeypatch):
    """The derived tolerance is no blanket: a 0.1 % scale of one weight matrix fails it by more
    than 10x, and an off-by-one in the relative-position buckets by more than 1000x."""
    path, ref, pad = converted["one-peace-tiny"], ref_out["text_token_features"], ref_out["text_padding_mask"]

    def ratio(ours, ours64):
        return maxdiff(ours, ref, pad) / derived_tol(ours, ours64, ref, pad, depth=model_depth(model))

    assert ratio(*_text_features(path, ref_in)) <= 1  # unperturbed: passes

    def scale_q(m):
        with torch.no_grad():
            m.get_parameter("encoder.layers.2.attn.q_proj.weight").mul_(1.001)

    assert ratio(*_text_features(path, ref_in, scale_q)) > 10

    def shifted(bucket_size, *args, **kwargs):  # `+ bucket_size` where `+ bucket_size - 1` belongs
        table = token_buckets(bucket_size, *args, **kwargs)
        table[1:, 1:] += 1
        return table

    monkeypatch.setattr(onepeace.modalities.text, "token_buckets", shifted)
    assert ratio(*_text_features(path, ref_in)) > 1000


def test_recomputed_bucket_tables_equal_official_buffers():
    for name, r in (("one-peace-tiny", 16), ("one-peace-tiny-grounding-refcocog", 24)):
        state = read_checkpoint(TINY / f"{name}.pt")["model"]
        assert torch.equal(state["encoder_wrapper.image_adapter.rp_bucket"].load(), grid_buckets(r))
        assert torch.equal(state["encoder_wrapper.text_adapter.rp_bucket"].load(), token_buckets(256))
    state = read_checkpoint(TINY / "one-peace-tiny.pt")["model"]
    assert torch.equal(state["encoder_wrapper.audio_adapter.rp_bucket"].load(), token_buckets(512))


def _full_keys(section: str) -> dict[str, tuple]:
    text = (FIX / "full-4b-keys.txt").read_text().split("######## ")
    block = next(b for b in text if b.startswith(section + "."))
    out = {}
    for line in block.splitlines()[1:]:
        if line and not line.startswith("#"):
            k, shape, _ = line.split("\t")
            out[k] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return out


def test_full_4b_key_list_maps_onto_one_peace_4b():
    keys = _full_keys("A")
    assert len(keys) == 1394
    from onepeace.checkpoints.official import infer_config

    cfg = {"task": {"patch_image_size": 256}, "model": {"encoder": {"audio_adapter": {"feature_encoder_spec": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"}}}}
    config = infer_config(cfg, keys)
    preset = onepeace.get_preset("one-peace-4b")
    from onepeace.modalities import parse_options

    assert config.to_dict() | {"modalities": None} == preset.to_dict() | {"modalities": None}
    for m in preset.modalities:
        assert parse_options(m, config.modalities[m]) == parse_options(m, preset.modalities[m]), m
    ours = onepeace.create_model("one-peace-4b", device="meta").state_dict()
    mapped = {}
    for k, shape in keys.items():
        dst = map_key(normalize_keys([k])[k])
        if dst is not None:
            mapped[dst] = shape
    assert set(mapped) == set(ours)  # every parameter filled, nothing left over
    for k, shape in mapped.items():
        assert tuple(ours[k].shape) == shape, k
    assert sum(p.numel() for p in ours.values()) == 3_884_740_545
    # the grounding (B) and VGGSound (C) layouts map completely too
    for section in ("B", "C"):
        for k in _full_keys(section):
            map_key(k)  # raises KeyError on an unmapped key


def test_official_state_loads_as_lazy_tensors():
    cfg, state = load_official(TINY / "one-peace-tiny.pt")
    assert cfg["model"]["_name"] == "one_peace_retrieval"
    t = state["text_proj.weight"]
    assert tuple(t.shape) == (64, 64) and t.dtype == torch.bfloat16
    full = torch.load(TINY / "one-peace-tiny.pt", weights_only=True)["model"]["text_proj.weight"]
    assert torch.equal(t.load(), full)
