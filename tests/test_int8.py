"""int8 inference (dtype="int8") and the choice behind dtype="auto" (issue 12.4 and its note)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY, needs_fixtures
from onepeace import OnePeace
from onepeace.cli import main
from onepeace.errors import ConfigError
from onepeace.model import precision
from onepeace.model.precision import CpuFeatures, choose, features_from_flags, resolve_runtime

#: the issue's accuracy goal for int8 against fp32 (cosine of the embeddings)
MIN_COSINE = 0.99


def _cpu(monkeypatch, **facts):
    monkeypatch.setattr(precision, "cpu_features", lambda: CpuFeatures(**facts))


# ------------------------------------------------------------------ dtype="auto"
def test_flags_name_native_bf16_and_int8_dot_products():
    epyc = "fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni avx_vnni".split()
    xeon_no_bf16 = "fpu avx2 avx512f avx512bw avx512_vnni".split()  # Cascade/Ice Lake: bf16 emulated
    sapphire = "avx512f amx_bf16 amx_int8 amx_tile avx512_vnni".split()
    arm = "fp asimd bf16 i8mm".split()
    old = "fpu sse4_2 avx avx2 fma".split()
    assert features_from_flags(epyc) == CpuFeatures(True, True, ("avx512_bf16", "avx512_vnni", "avx_vnni"))
    assert (features_from_flags(xeon_no_bf16).native_bf16, features_from_flags(xeon_no_bf16).int8_dot) == (False, True)
    assert (features_from_flags(sapphire).native_bf16, features_from_flags(sapphire).int8_dot) == (True, True)
    assert (features_from_flags(arm).native_bf16, features_from_flags(arm).int8_dot) == (True, False)
    assert features_from_flags(old) == CpuFeatures(False, False)


@pytest.mark.parametrize("facts, expected", [
    (dict(native_bf16=True, int8_dot=True), "bf16"),  # bf16 where it is native, even with VNNI
    (dict(native_bf16=True, int8_dot=False), "bf16"),
    (dict(native_bf16=False, int8_dot=True), "int8"),  # emulated bf16 is slower than fp32: int8 instead
    (dict(native_bf16=False, int8_dot=False), "fp32"),
])
def test_auto_on_the_cpu(monkeypatch, facts, expected):
    _cpu(monkeypatch, **facts)
    assert choose("cpu") == expected
    want = {"bf16": torch.bfloat16, "fp32": torch.float32, "int8": "int8"}[expected]
    assert resolve_runtime("auto", "cpu") == want
    assert resolve_runtime("AUTO", "cpu") == want


def test_auto_int8_needs_the_x86_kernels(monkeypatch):
    _cpu(monkeypatch, native_bf16=False, int8_dot=True)
    monkeypatch.setattr(precision, "x86_int8_kernels", lambda: False)
    assert choose("cpu") == "fp32"


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda(monkeypatch, bf16, expected):
    _cpu(monkeypatch, native_bf16=False, int8_dot=True)  # the CPU's facts do not matter there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert choose("cuda") == expected
    assert choose("cuda:0") == expected


def test_explicit_dtypes_and_errors():
    assert resolve_runtime(None) is None
    assert resolve_runtime("fp32") is torch.float32 and resolve_runtime(torch.bfloat16) is torch.bfloat16
    assert resolve_runtime("int8") == "int8"
    with pytest.raises(ConfigError, match="CPU only"):
        resolve_runtime("int8", "cuda")
    with pytest.raises(ConfigError, match="auto, fp32, bf16, fp16, int8"):
        resolve_runtime("fp8")


# ------------------------------------------------------------------ dtype="int8"
def _saved_random_tiny(path):
    import onepeace

    torch.manual_seed(0)
    m = onepeace.create_model("tiny")
    with torch.no_grad():  # layer scale well above the official 1e-6, so that every layer matters
        for name, p in m.named_parameters():
            if "gamma" in name:
                p.uniform_(0.3, 1.0)
            elif "rel_tables" in name:
                p.normal_(0.0, 1.0)
    m.save_pretrained(path)
    return path


def _cosines(a: dict, b: dict) -> dict[str, np.ndarray]:
    return {k: torch.nn.functional.cosine_similarity(a[k], b[k]).numpy() for k in a}


def _inputs(n: int = 3):
    rng = np.random.default_rng(0)
    from PIL import Image

    return {"text": ["a dog", "two cats on a red sofa", "an old stone bridge over a quiet river at dawn"][:n],
            "image": [Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)) for _ in range(n)],
            "audio": [(0.1 * rng.standard_normal(16000 + 8000 * i)).astype(np.float32) for i in range(n)]}


def test_int8_quantises_the_encoder_linears_and_keeps_the_embeddings(tmp_path):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    path = _saved_random_tiny(tmp_path / "m")
    fp32 = OnePeace.from_pretrained(path, dtype="fp32")
    q = OnePeace.from_pretrained(path, dtype="int8")
    assert q.int8 and not hasattr(fp32, "int8")
    enc = [m for m in q.encoder.modules() if isinstance(m, (torch.nn.Linear, DynamicLinear))]
    assert enc and all(isinstance(m, DynamicLinear) for m in enc)
    assert isinstance(q.proj["text"], torch.nn.Linear) and not isinstance(q.proj["text"], DynamicLinear)
    a, b = fp32.embed(**_inputs()), q.embed(**_inputs())
    for name, cos in _cosines(a, b).items():
        assert cos.min() >= MIN_COSINE, name
        assert not torch.equal(a[name], b[name]), name  # int8 did run
        assert b[name].dtype == torch.float32
        np.testing.assert_allclose(b[name].norm(dim=-1).numpy(), 1.0, atol=1e-5)
    # activations are quantised per batch, so an item alone is close to, not equal to, its batched row
    alone = q.embed(text=_inputs()["text"][2:])["text"][0]
    assert float(alone @ a["text"][2]) >= MIN_COSINE
    with pytest.raises(ConfigError, match="int8 model cannot be saved"):
        q.save_pretrained(tmp_path / "again")
    assert not (tmp_path / "again").exists()


@pytest.mark.slow
def test_cli_dtype_int8_and_auto(tmp_path, capsys, monkeypatch):
    path = str(_saved_random_tiny(tmp_path / "m"))
    out = {}
    for dt in ("int8", "fp32", "auto"):
        assert main(["embed", "--model", path, "--text", "a dog", "a cat", "--dtype", dt,
                     "--out", str(tmp_path / f"{dt}.npz")]) == 0
        out[dt] = np.load(tmp_path / f"{dt}.npz")["text"]
    capsys.readouterr()
    cos = (out["int8"] * out["fp32"]).sum(1)
    assert cos.min() >= MIN_COSINE and not np.array_equal(out["int8"], out["fp32"])
    np.testing.assert_array_equal(out["auto"], out["fp32"])  # conftest pins a CPU without bf16 or VNNI
    _cpu(monkeypatch, native_bf16=False, int8_dot=True)
    for args, name in ((["--dtype", "int8"], "i.npz"), ([], "d.npz")):  # the default is auto: here int8
        assert main(["embed", "--model", path, "--text", "a dog", "a cat", "--out", str(tmp_path / name), *args]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "d.npz")["text"], np.load(tmp_path / "i.npz")["text"])
    assert not np.array_equal(np.load(tmp_path / "d.npz")["text"], out["fp32"])
    assert main(["embed", "--model", path, "--text", "x", "--dtype", "int4"]) == 2
    assert "--dtype" in capsys.readouterr().err


@needs_fixtures
def test_int8_cosine_on_the_fixture_model_and_inputs(converted, texts):
    """The converted official tiny checkpoint on the fixture's raw inputs."""
    inputs = {"text": texts["texts"], "image": [TINY / "inputs" / f"image{i}.png" for i in (0, 1)],
              "audio": [TINY / "inputs" / f"audio{i}.wav" for i in (0, 1)] + [TINY / "inputs" / "audio_short.wav"]}
    a = OnePeace.from_pretrained(converted["one-peace-tiny"], dtype="fp32").embed(**inputs)
    b = OnePeace.from_pretrained(converted["one-peace-tiny"], dtype="int8").embed(**inputs)
    for name, cos in _cosines(a, b).items():
        assert cos.min() >= MIN_COSINE, (name, cos)


@pytest.mark.parametrize("vnni", [True, False])
def test_full_8bit_activations_only_with_int8_dot_products(monkeypatch, vnni):
    """Without VNNI/AMX the int8 kernels multiply-add into 16 bits, which can saturate: activations
    keep the 7-bit range there; with them (and oneDNN) the full 8 bits."""
    import onepeace
    from onepeace.model.quant import Int8Linear, quantize_int8

    _cpu(monkeypatch, native_bf16=False, int8_dot=vnni)
    m = quantize_int8(onepeace.create_model("tiny", modalities={"text": {}}))
    layers = [x for x in m.encoder.modules() if isinstance(x, Int8Linear)]
    assert layers
    full = vnni and "onednn" in torch.backends.quantized.supported_engines
    assert all(x.reduce_range is (not full) for x in layers)
    assert m.embed(text=["a dog"])["text"].shape == (1, 128)
