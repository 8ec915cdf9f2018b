"""Parity with the official implementation (../shared/fixtures/upstream-tiny)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import onepeace
from conftest import FIX, TINY, maxdiff, needs_fixtures
from onepeace.checkpoints.official import load_official, map_key, normalize_keys
from onepeace.checkpoints.safe_pickle import read_checkpoint
from onepeace.model.relpos import grid_buckets, token_buckets

pytestmark = needs_fixtures
IMAGES = [str(TINY / "inputs" / "image0.png"), str(TINY / "inputs" / "image1.png")]
AUDIOS = [str(TINY / "inputs" / "audio0.wav"), str(TINY / "inputs" / "audio1.wav")]


@pytest.fixture(scope="module")
def model(converted):
    return onepeace.OnePeace.from_pretrained(converted["one-peace-tiny"])


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
    p = model.processor
    img = p.get("image")(IMAGES)
    assert maxdiff(img["pixels"], ref_in["image_src_images"]) <= 1e-6
    aud = p.get("audio")(AUDIOS)
    assert maxdiff(aud["waveform"], ref_in["audio_src_audios"]) <= 1e-6
    assert np.array_equal(aud["padding_mask"].numpy(), ref_in["audio_padding_masks"])
    short = p.get("audio")([str(TINY / "inputs" / "audio_short.wav")])
    assert maxdiff(short["waveform"], ref_in["audio_short_src_audios"]) <= 1e-6
    assert np.array_equal(short["padding_mask"].numpy(), ref_in["audio_short_padding_masks"])
    g = onepeace.processing.image.ImageProcessor(384)([str(TINY / "inputs" / a) for a, _ in texts["grounding_pairs"]])
    assert maxdiff(g["pixels"], ref_in["grounding_src_images"]) <= 1e-6
    assert g["sizes"][:, 0].tolist() == ref_in["grounding_image_widths"].tolist()
    assert g["sizes"][:, 1].tolist() == ref_in["grounding_image_heights"].tolist()


def test_embeddings_from_raw_files(model, ref_out, texts):
    single = model.embed(text=texts["texts"], image=IMAGES, audio=AUDIOS, batch_size=1)
    for m in ("text", "image", "audio"):
        assert maxdiff(single[m], ref_out[f"{m}_embed_single"]) <= 1e-5, m
    batch = model.embed(text=texts["texts"], image=IMAGES)
    assert maxdiff(batch["text"], ref_out["text_embed"]) <= 1e-5
    assert maxdiff(batch["image"], ref_out["image_embed"]) <= 1e-5
    short = model.embed(audio=[str(TINY / "inputs" / "audio_short.wav")])
    assert maxdiff(short["audio"], ref_out["audio_short_embed"]) <= 1e-5


def test_audio_batch_invariant_by_default_and_official_leak_on_request(model, ref_in, ref_out):
    batch = {"waveform": torch.tensor(ref_in["audio_src_audios"]), "padding_mask": torch.tensor(ref_in["audio_padding_masks"])}
    with torch.no_grad():
        inv = model.embed_batch("audio", batch)
        assert maxdiff(inv, ref_out["audio_embed_single"]) <= 1e-5
        model.adapters["audio"].official_padding_leak = True
        try:
            leak = model.embed_batch("audio", batch)
        finally:
            model.adapters["audio"].official_padding_leak = False
    assert maxdiff(leak, ref_out["audio_embed"]) <= 1e-5
    assert maxdiff(leak[1:], ref_out["audio_embed_single"][1:]) > 1e-3  # the leak is real


@pytest.mark.parametrize("m,key", [("text", "tokens"), ("image", "pixels"), ("audio", None)])
def test_token_features_layer_states_adapter_outputs(model, ref_in, ref_out, m, key):
    if m == "text":
        batch = {"tokens": model.processor.get("text")(json.loads((TINY / "inputs" / "texts.json").read_text())["texts"])["tokens"]}
    elif m == "image":
        batch = {"pixels": torch.tensor(ref_in["image_src_images"])}
    else:
        batch = {"waveform": torch.tensor(ref_in["audio_src_audios"]), "padding_mask": torch.tensor(ref_in["audio_padding_masks"])}
        model.adapters["audio"].official_padding_leak = True
    try:
        with torch.no_grad():
            out = model.encode(return_layer_states=True, **{m: batch})
            adapted = model.adapt(m, batch)
    finally:
        model.adapters["audio"].official_padding_leak = False
    pad = ref_out.get(f"{m}_padding_mask", ref_out.get(f"{m}_padding_mask_out"))
    assert maxdiff(adapted.x, ref_out[f"{m}_adapter_out"], pad) <= 2e-5
    for i, state in enumerate(out.layer_states):
        assert maxdiff(state, ref_out[f"{m}_layer_states"][i], pad) <= 2e-5
    assert maxdiff(out.features[m], ref_out[f"{m}_token_features"], pad) <= 2e-5
    if pad is not None:
        assert np.array_equal((out.padding_masks[m] if out.padding_masks[m] is not None else torch.zeros(pad.shape, dtype=torch.bool)).numpy(), pad)


def test_fused_vl_and_al(model, ref_in, ref_out, texts):
    tokens = model.processor.get("text")(texts["texts"][:2])
    audio = {"waveform": torch.tensor(ref_in["audio_src_audios"]), "padding_mask": torch.tensor(ref_in["audio_padding_masks"])}
    with torch.no_grad():
        vl = model.encode(text=tokens, image={"pixels": torch.tensor(ref_in["image_src_images"])})
        model.adapters["audio"].official_padding_leak = True
        try:
            al = model.encode(text=tokens, audio=audio)
        finally:
            model.adapters["audio"].official_padding_leak = False
    tpad = (tokens["tokens"] == model.options["text"].pad_id).numpy()
    tpad = np.concatenate([np.zeros((2, 1), bool), tpad], 1)
    assert maxdiff(vl.features["text"], ref_out["vl_text_features"], tpad) <= 2e-5
    assert maxdiff(vl.features["image"], ref_out["vl_image_features"]) <= 2e-5
    assert maxdiff(al.features["text"], ref_out["al_text_features"], tpad) <= 2e-5
    assert maxdiff(al.features["audio"], ref_out["al_audio_features"], ref_in["audio_padding_masks"]) <= 2e-5
    assert abs(float(model.logit_scale_exp().detach()) - float(ref_out["logit_scale_exp"])) <= 1e-5


def test_grounding_checkpoint(converted, ref_in, ref_out, texts):
    g = onepeace.OnePeace.from_pretrained(converted["one-peace-tiny-grounding-refcocog"])
    assert g.config.head.feature_source == "text" and g.config.per_layer_rel_tables
    assert g.options["image"].image_size == 384
    imgs = [str(TINY / "inputs" / a) for a, _ in texts["grounding_pairs"]]
    caps = [t for _, t in texts["grounding_pairs"]]
    assert maxdiff(g.classify(image=imgs, text=caps), ref_out["grounding_logits"]) <= 1e-5
    assert maxdiff(g.ground(imgs, caps), ref_out["grounding_coords"]) <= 1e-3
    with torch.no_grad():
        vl = g.encode(text={"tokens": g.processor.get("text")(caps)["tokens"]}, image={"pixels": torch.tensor(ref_in["grounding_src_images"])})
        assert maxdiff(vl.features["image"], ref_out["grounding_vl_image_features"]) <= 2e-5
        g.config.head.feature_source = "image"  # the same weights pooling image tokens
        logits = g.head(vl.features["image"], vl.padding_masks["image"])
    assert maxdiff(logits, ref_out["grounding_logits_use_image_features"]) <= 1e-5


def test_vggsound_checkpoint(converted, ref_in, ref_out):
    v = onepeace.OnePeace.from_pretrained(converted["one-peace-tiny-vggsound"])
    assert list(v.config.modalities) == ["audio"] and v.config.head.num_classes == 309
    batch = {"waveform": torch.tensor(ref_in["audio_src_audios"]), "padding_mask": torch.tensor(ref_in["audio_padding_masks"])}
    v.adapters["audio"].official_padding_leak = True
    with torch.no_grad():
        logits = v.classify_batch(audio=batch)
    assert maxdiff(logits, ref_out["vggsound_logits"]) <= 1e-5
    v.adapters["audio"].official_padding_leak = False
    single = v.classify(audio=AUDIOS[1:])
    with torch.no_grad():
        alone = v.classify_batch(audio=v.processor.get("audio")(AUDIOS[1:]))
    assert maxdiff(single, alone) == 0.0


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
