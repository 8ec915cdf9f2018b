"""Reading official checkpoints safely and completely."""

from __future__ import annotations

import os
import pickle
import re

import pytest
import torch

import onepeace
from conftest import DICT, TINY, assert_parity, load_fp64, model_depth, needs_fixtures
from onepeace.checkpoints.official import convert, load_official, parse_stem_spec
from onepeace.checkpoints.safe_pickle import read_checkpoint
from onepeace.errors import CheckpointError


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/onepeace-pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"cfg": {}, "model": {"w": torch.zeros(2)}, "extra": Evil()}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .*(posix|os)\.system"):
        read_checkpoint(path)
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(CheckpointError, match="refusing"):
        read_checkpoint(plain)
    assert not os.path.exists("/tmp/onepeace-pwned")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a pickle"):
        read_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pt")


def test_stem_spec_parser_is_not_eval():
    assert parse_stem_spec("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")[1:3] == [(512, 3, 2)] * 2
    with pytest.raises(CheckpointError):
        parse_stem_spec("__import__('os').system('true')")


def _retrieval_state():
    return torch.load(TINY / "one-peace-tiny.pt", weights_only=True)


@needs_fixtures
def test_omegaconf_cfg_and_fp32_file_convert_identically(tmp_path, converted):
    omegaconf = pytest.importorskip("omegaconf")
    ck = _retrieval_state()
    ck["cfg"] = omegaconf.OmegaConf.create(ck["cfg"])
    ck["model"] = {k: (v.float() if v.is_floating_point() else v) for k, v in ck["model"].items()}
    torch.save(ck, tmp_path / "omega.pt")
    cfg, _ = load_official(tmp_path / "omega.pt")
    assert cfg["task"]["patch_image_size"] == 256 and cfg["model"]["encoder"]["layers"] == 3
    convert(tmp_path / "omega.pt", tmp_path / "out", DICT)
    a = onepeace.OnePeace.from_pretrained(tmp_path / "out").state_dict()
    b = onepeace.OnePeace.from_pretrained(converted["one-peace-tiny"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@needs_fixtures
def test_bf16_output_and_missing_logit_scale(tmp_path):
    ck = _retrieval_state()
    del ck["model"]["logit_scale"]  # as in the released one-peace.pt
    torch.save(ck, tmp_path / "nols.pt")
    convert(tmp_path / "nols.pt", tmp_path / "out", DICT, dtype="bf16")
    m = onepeace.OnePeace.from_pretrained(tmp_path / "out")
    assert m.dtype == torch.bfloat16
    # ln(1/0.07) = 2.6593, re-initialised, then rounded to bf16: at most half a bf16 ulp away
    assert abs(float(m.logit_scale.detach().float()) - 2.6593) <= torch.finfo(torch.bfloat16).eps / 2 * 2.6593


@needs_fixtures
def test_unmapped_and_mismatched_keys_fail_naming_them(tmp_path):
    ck = _retrieval_state()
    ck["model"]["encoder_wrapper.mystery.weight"] = torch.zeros(3)
    torch.save(ck, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"no mapping: \['encoder_wrapper.mystery.weight'\]"):
        convert(tmp_path / "extra.pt", tmp_path / "o1", DICT)
    ck = _retrieval_state()
    ck["model"]["text_proj.bias"] = torch.zeros(65)
    torch.save(ck, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="text_proj.bias"):
        convert(tmp_path / "shape.pt", tmp_path / "o2", DICT)
    ck = _retrieval_state()
    del ck["model"]["image_proj.bias"]
    torch.save(ck, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="proj.image.bias"):
        convert(tmp_path / "missing.pt", tmp_path / "o3", DICT)
    with pytest.raises(CheckpointError, match="--dict"):
        convert(TINY / "one-peace-tiny.pt", tmp_path / "o4", None)
    assert not (tmp_path / "o1" / "model.safetensors").exists()


@needs_fixtures
def test_pretraining_keys_are_dropped(tmp_path, converted):
    ck = _retrieval_state()
    ck["model"]["decoder_wrapper.fusion_model.layers.0.gamma_1"] = torch.zeros(4)
    ck["model"]["image_mask_token"] = torch.zeros(1, 4)
    ck["model"]["decoder_text_embed.weight"] = torch.zeros(4, 4)
    torch.save(ck, tmp_path / "pre.pt")
    convert(tmp_path / "pre.pt", tmp_path / "out", DICT)
    assert (tmp_path / "out" / "model.safetensors").exists()


@needs_fixtures
def test_vision_branch_pickle(tmp_path, ref_in, converted):
    """The official convert_to_vision.py output: a plain pickle of renamed image-path tensors."""
    sd = _retrieval_state()["model"]
    vision = {}
    for k, v in sd.items():
        if any(s in k for s in ("text", "audio", "decoder", "mask", "logit_scale", "version")):
            continue
        if k.startswith("image_proj") or "image_layer_norm" in k:
            continue
        k = k.replace("encoder_wrapper", "encoder").replace("fusion_model.", "")
        if "image_adapter" in k:
            k = k.replace("encoder.", "")
        vision[k] = v.float()
    (tmp_path / "vision.pkl").write_bytes(pickle.dumps({"model": vision, "__author__": "ofa"}))
    convert(tmp_path / "vision.pkl", tmp_path / "vision", None)
    vm, vm64 = onepeace.OnePeace.from_pretrained(tmp_path / "vision"), load_fp64(tmp_path / "vision")
    assert list(vm.adapters) == ["image"] and not vm.config.final_norm and not vm.config.projection
    full = onepeace.OnePeace.from_pretrained(converted["one-peace-tiny"])
    px = {"pixels": torch.tensor(ref_in["image_src_images"])}
    with torch.no_grad():
        a = vm.encode(image=px, return_layer_states=True).features["image"]
        a64 = vm64.encode(image=px).features["image"]
        b = full.encode(image=px, return_layer_states=True).layer_states[-1]
    assert_parity(a, a64, b, depth=model_depth(vm), row="vision-branch pickle vs the full model (ours)")
    # an ImageNet fine-tuned vision branch: mean of the patch tokens -> fc_norm -> head
    d = a.shape[-1]
    g = torch.Generator().manual_seed(0)
    vision.update({"fc_norm.weight": torch.rand(d, generator=g) + 0.5, "fc_norm.bias": torch.randn(d, generator=g),
                   "head.weight": torch.randn(7, d, generator=g), "head.bias": torch.randn(7, generator=g)})
    (tmp_path / "vision_in1k.pkl").write_bytes(pickle.dumps({"model": vision}))
    convert(tmp_path / "vision_in1k.pkl", tmp_path / "vision_in1k", None)
    cm, cm64 = onepeace.OnePeace.from_pretrained(tmp_path / "vision_in1k"), load_fp64(tmp_path / "vision_in1k")
    assert cm.config.head.type == "linear" and cm.config.head.num_classes == 7
    with torch.no_grad():
        logits, logits64 = cm.classify_batch(image=px), cm64.classify_batch(image=px)
        ref = torch.nn.functional.layer_norm(a[:, 1:].mean(1), (d,), vision["fc_norm.weight"], vision["fc_norm.bias"], 1e-5)
        ref = ref @ vision["head.weight"].T + vision["head.bias"]
    assert_parity(logits, logits64, ref, depth=model_depth(cm) + 1, row="vision-branch linear head vs by hand (ours)")


def test_download_helper_with_local_file(tmp_path):
    from onepeace.checkpoints.download import download

    src = tmp_path / "src.txt"
    src.write_bytes(b"13 850314647\n262 800385005\n")
    out = download(src.as_uri(), tmp_path / "cache" / "dict.txt")
    assert out.read_bytes() == src.read_bytes()
    import hashlib

    good = hashlib.sha256(src.read_bytes()).hexdigest()
    assert download(src.as_uri(), tmp_path / "c2" / "d.txt", sha256=good).exists()
    with pytest.raises(CheckpointError, match="sha256"):
        download(src.as_uri(), tmp_path / "c3" / "d.txt", sha256="0" * 64)
    assert not (tmp_path / "c3" / "d.txt").exists()
    with pytest.raises(CheckpointError, match="cannot download"):
        download((tmp_path / "absent").as_uri(), tmp_path / "c4" / "d.txt")
    assert re.match(r"https://", __import__("onepeace.checkpoints.official", fromlist=["DICT_URL"]).DICT_URL)
