"""Issue 20, the model side: honest precision (float32 unit vectors whatever the model computes
in, ``model.precision``), long texts (warned, or chunked), and the CLIP-style API
(``encode_text``/``encode_image``/``encode_audio``/``encode_<modality>``, ``get_tokenizer``,
``get_processor``, no positional inputs)."""

from __future__ import annotations

import functools
import warnings
from importlib import resources

import numpy as np
import pytest
import torch

import onepeace
from conftest import EPS32, derived_tol, maxdiff, model_depth
from onepeace.errors import InputError, OnePeaceWarning
from onepeace.model import precision as precision_mod
from onepeace.model.precision import x86_int8_kernels

SAMPLES = resources.files("onepeace") / "assets" / "samples"
PNG = str(SAMPLES / "red_circle.png")
WAV = str(SAMPLES / "tone_440hz.wav")
MODALITIES = {"text": {}, "image": {"image_size": 64}, "audio": {}}
LONG = "a photo of " + " ".join(f"thing{i}" for i in range(60))  # well over 70 tokens


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = onepeace.create_model("tiny", layers=2, layer_scale_init=0.5, modalities=MODALITIES)
    path = tmp_path_factory.mktemp("issue20") / "model"
    m.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    return onepeace.OnePeace.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model64(model_dir):
    return onepeace.OnePeace.from_pretrained(model_dir, dtype=torch.float64)


def _norm_tol(dim: int) -> float:
    """|‖z‖ - 1| for a float32 vector normalised in float32: its norm is a sum of ``dim`` squares
    (relative error at most ~dim/2 eps), then each entry is divided (eps/2 each); (dim + 4) eps
    bounds both. A bf16 normalisation is off by ~2^-9 = 2e-3, a hundred times more."""
    return (dim + 4) * EPS32


def _fp16_runs() -> bool:
    try:
        torch.nn.functional.linear(torch.ones(2, 4, dtype=torch.float16), torch.ones(3, 4, dtype=torch.float16))
        torch.nn.functional.layer_norm(torch.ones(2, 4, dtype=torch.float16), (4,))
        return True
    except RuntimeError:
        return False


PRECISIONS = ["fp32", "bf16",
              pytest.param("fp16", marks=pytest.mark.skipif(not _fp16_runs(), reason="this CPU build has no fp16 kernels")),
              pytest.param("int8", marks=pytest.mark.skipif(not x86_int8_kernels(), reason="no x86 int8 kernels"))]


# ------------------------------------------------------------------------------------ precision
@pytest.mark.parametrize("dtype", PRECISIONS)
def test_embeddings_are_float32_unit_vectors_in_every_precision(model_dir, dtype):
    m = onepeace.OnePeace.from_pretrained(model_dir, dtype=dtype)
    assert m.precision == dtype
    tol = _norm_tol(m.config.dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OnePeaceWarning)  # LONG is over the limit (tested below)
        out = m.embed(text=["a red circle", LONG], image=[PNG], audio=[WAV])
    out["text-chunked"] = m.embed(text=[LONG], long_text="chunk")["text"]
    out["fused"] = m.embed_fused(text=["a red circle"], image=[PNG])
    out["encode_text"] = m.encode_text(["a red circle"])
    batch = m.processor.get("text")(["a red circle", "two words"])
    with torch.no_grad():
        out["embed_batch"] = m.embed_batch("text", batch)
        out["embed_batch/bucket"] = m.embed_batch("text", batch, bucket=True)
    for what, z in out.items():
        assert z.dtype == torch.float32, (dtype, what, z.dtype)
        err = float((z.double().norm(dim=-1) - 1).abs().max())
        assert err <= tol, f"{dtype} {what}: |norm - 1| = {err:.3g} > {tol:.3g}"


def test_auto_reports_what_it_chose(model_dir, monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_features",
                        lambda: precision_mod.CpuFeatures(native_bf16=True, int8_dot=False))
    m = onepeace.OnePeace.from_pretrained(model_dir, dtype="auto")
    assert m.precision == "bf16" and m.dtype == torch.bfloat16
    z = m.embed(text=["a dog"])["text"]
    assert abs(float(z.double().norm()) - 1) <= _norm_tol(m.config.dim)
    if x86_int8_kernels():
        monkeypatch.setattr(precision_mod, "cpu_features",
                            lambda: precision_mod.CpuFeatures(native_bf16=False, int8_dot=True))
        assert onepeace.OnePeace.from_pretrained(model_dir, dtype="auto").precision == "int8"
    monkeypatch.setattr(precision_mod, "cpu_features",
                        lambda: precision_mod.CpuFeatures(native_bf16=False, int8_dot=False))
    assert onepeace.OnePeace.from_pretrained(model_dir, dtype="auto").precision == "fp32"


# ------------------------------------------------------------------------------------ long texts
def test_a_text_over_the_limit_warns_with_its_name_and_token_count(model):
    tok = onepeace.get_tokenizer(model)
    n = tok.count(LONG)
    assert n > tok.context_length
    with pytest.warns(OnePeaceWarning) as caught:
        model.embed(text=["short", LONG])
    messages = [str(w.message) for w in caught]
    assert any(f"is {n} tokens long" in m and "a photo of thing0" in m and "long_text='chunk'" in m
               for m in messages), messages
    fits = " ".join(["word"] * (tok.context_length - 1))  # " word" is one token each
    assert tok.count(fits) <= tok.context_length
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.embed(text=[fits, "short"])


def test_chunked_texts_average_their_token_windows(model, model64):
    tok = model.processor.get("text")

    def by_hand(m):
        ids = tok.ids(LONG)
        cap = tok.context_length
        parts = [ids[s : s + cap] for s in range(0, len(ids), cap)]
        assert len(parts) >= 2
        rows = [p + [tok.eos_id] for p in parts]
        with torch.no_grad():
            z = m.embed_batch("text", tok.collate(rows)).double()
        w = torch.tensor([len(p) for p in parts], dtype=torch.float64)
        return torch.nn.functional.normalize((z * w[:, None]).sum(0) / w.sum(), dim=-1)

    chunked = model.embed(text=[LONG, "short"], long_text="chunk")["text"]
    chunked64 = model64.embed(text=[LONG, "short"], long_text="chunk")["text"]
    ref = by_hand(model)
    tol = derived_tol(chunked[0], chunked64[0], ref, depth=model_depth(model))
    assert maxdiff(chunked[0], ref) <= tol
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        truncated = model.embed(text=[LONG, "short"])["text"]
    assert maxdiff(chunked[0], truncated[0]) > tol  # the tail counts
    # a text within the limit: its own embedding (batched with other windows: up to float rounding)
    assert maxdiff(chunked[1], truncated[1]) <= derived_tol(chunked[1], chunked64[1], truncated[1],
                                                            depth=model_depth(model))
    with pytest.raises(InputError, match="long_text must be one of truncate, chunk"):
        model.embed(text=["x"], long_text="split")


# ------------------------------------------------------------------------------------ the CLIP API
def test_encode_per_modality_matches_embed(model):
    texts = ["a red circle", "a pure tone", "a green triangle"]
    got = model.encode_text(texts, batch_size=2)
    assert got.dtype == torch.float32 and tuple(got.shape) == (3, model.config.dim)
    assert torch.equal(got, model.embed(text=texts, batch_size=2)["text"])
    assert torch.equal(model.encode_image([PNG]), model.embed(image=[PNG])["image"])
    assert torch.equal(model.encode_audio(WAV), model.embed(audio=[WAV])["audio"])
    raw = model.encode_text(texts, normalize=False)
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=-1), got, atol=10 * EPS32)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))
    assert torch.equal(model.encode_media("text", texts, batch_size=2), got)
    # encode_<modality> for every branch; the tensor-level encode() is untouched
    assert torch.equal(model.encode_image([PNG]), model.encode_media("image", [PNG]))
    out = model.encode(text=model.processor.get("text")(texts))
    assert out.features["text"].shape[0] == 3
    with pytest.raises(InputError, match="no smell branch"):
        model.encode_media("smell", ["x"])
    with pytest.raises(AttributeError, match="no video branch"):
        model.encode_video  # noqa: B018


def test_encode_of_a_plugin_modality_is_generated():
    m = onepeace.create_model("tiny", layers=1, device="meta",
                              modalities={"text": {}, "video": {"image_size": 64}})
    fn = m.encode_video
    assert isinstance(fn, functools.partial) and fn.func == m.encode_media and fn.args == ("video",)
    assert "encode_video" in dir(m) and not hasattr(m, "encode_audio_clip")


def test_positional_inputs_are_refused_naming_the_modalities(model):
    with pytest.raises(InputError) as e:
        model.embed(["dog.jpg"])
    assert "embed(image=[...])" in str(e.value) and "embed(text=[...])" in str(e.value)
    with pytest.raises(InputError):
        model.embed("a dog")


def test_a_text_that_is_a_media_file_warns(model):
    with pytest.warns(OnePeaceWarning, match=r"existing image file.*embed\(image=\[\.\.\.\]\)"):
        model.embed(text=[PNG])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.embed(text=["red_circle.png is a file name that does not exist here"])


def test_get_tokenizer_and_get_processor(model):
    tok = onepeace.get_tokenizer()
    ids = tok(["A dog", "two dogs playing"])["tokens"]
    assert torch.equal(ids, model.processor.get("text")(["A dog", "two dogs playing"])["tokens"])
    assert tok.decode(ids[0]) == "a dog" and tok.count("a dog") == 2
    assert onepeace.get_tokenizer(model) is model.processor.get("text")
    assert onepeace.get_processor("image", model=model) is model.processor.get("image")
    assert onepeace.get_processor("image", model="tiny").image_size == 256  # the preset's default
    assert onepeace.get_processor("image", model=model).image_size == 64  # this model's own option
    pixels = onepeace.get_processor("image", model=model)([np.zeros((32, 48, 3), dtype=np.uint8)])["pixels"]
    assert tuple(pixels.shape) == (1, 3, 64, 64)
    assert set(onepeace.get_processor(model=model.config)._procs) == set(MODALITIES)
    with pytest.raises(InputError, match="no smell branch"):
        onepeace.get_processor("smell")
