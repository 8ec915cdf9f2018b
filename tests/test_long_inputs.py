"""Long audio (truncate with a warning, or chunk into 15 s windows) and images over Pillow's limit.

All audio is synthetic (numpy). The window logic is checked with the official 15 s cap; the models
that run use a 2 s cap and a 32-channel stem (same code, a fraction of the compute), one layer,
and float64 where results are compared, so the tolerances come from the float32 cast at the end of
``embed``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from PIL import Image

import onepeace
from onepeace.cli import main
from onepeace.config import OFFICIAL_AUDIO_STEM
from onepeace.errors import InputError, OnePeaceWarning

SR = 16000
CAP = 2.0  # seconds: the audio cap of the models that run here
EPS32 = float(torch.finfo(torch.float32).eps)


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    """A waveform whose statistics change along it, so every window embeds differently."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    return (np.sin(2 * np.pi * (200 + 20 * t) * t) * (1 + t / 10) + 0.1 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return small_cap_model(layer_scale_init=0.5).double()


def small_cap_model(**kw):
    # the official stem's strides (so the same frame counts) with 32 channels instead of 512
    stem = [[32, k, s] for _, k, s in OFFICIAL_AUDIO_STEM]
    modalities = {"text": {}, "image": {}, "audio": {"max_seconds": CAP, "stem": stem}}
    return onepeace.create_model("tiny", layers=1, modalities=modalities, **kw)


def test_windows_cover_the_clip_and_drop_only_a_sub_second_tail():
    proc = onepeace.create_model("tiny", layers=1, device="meta").processor.get("audio")  # official 15 s
    whole = proc.normalized(clip(40))
    wins, weights = proc.windows(clip(40), "chunk")
    assert [w.numel() for w in wins] == [15 * SR, 15 * SR, 10 * SR] and weights == [15.0, 15.0, 10.0]
    assert torch.equal(torch.cat(wins), whole)  # consecutive slices of the clip normalised as a whole
    assert len(proc.windows(clip(30.5), "chunk")[0]) == 2  # a 0.5 s remainder is dropped
    assert [w.numel() for w in proc.windows(clip(31), "chunk")[0]] == [15 * SR, 15 * SR, SR]  # 1 s kept
    wins, weights = proc.windows(clip(600), "chunk")  # a 10-minute recording
    assert len(wins) == 40 and sum(weights) == 600.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clip within the cap: one window, the truncate one, no warning
        (short,), _ = proc.windows(clip(9), "chunk")
        assert torch.equal(short, proc.one(clip(9)))
    with pytest.raises(InputError, match="long_audio must be one of truncate, chunk"):
        proc.windows(clip(2), "average")


def test_truncation_warns_naming_the_file_and_its_length(model, tmp_path):
    path = tmp_path / "talk.wav"
    sf.write(path, clip(2.5), SR, subtype="FLOAT")
    with pytest.warns(OnePeaceWarning, match=r"talk\.wav is 2\.5 s long; only its first 2 s"):
        z = model.embed(audio=[path])["audio"]
    proc = model.processor.get("audio")
    with pytest.warns(OnePeaceWarning):
        assert torch.equal(proc([path])["waveform"][0], proc.one(path))  # the official cap, unchanged
    ref = model.embed_batch("audio", proc.collate([proc.one(path)])).float()
    assert torch.equal(z, ref)


def test_chunk_is_the_weighted_mean_of_normalised_windows(model):
    proc = model.processor.get("audio")
    wins, weights = proc.windows(clip(5.5), "chunk")
    assert weights == [2.0, 2.0, 1.5]
    with torch.no_grad():
        rows = torch.cat([model.embed_batch("audio", proc.collate([w])) for w in wins])  # float64
    w = torch.tensor(weights, dtype=torch.float64)[:, None]
    ref = F.normalize((rows * w).sum(0) / w.sum(), dim=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # chunk mode uses all the audio: nothing to warn about
        got = model.embed(audio=[clip(5.5)], long_audio="chunk")["audio"][0]
    # the window rows are cast to float32 before averaging, the result once more: a few ulps of 1
    assert (got.double() - ref).abs().max() <= 4 * EPS32
    with pytest.warns(OnePeaceWarning, match="5.5 s long"):
        truncated = model.embed(audio=[clip(5.5)])["audio"][0]
    assert (got - truncated).abs().max() > 1e-3  # the later windows count


def test_chunk_is_batch_invariant_and_equals_truncate_within_the_cap(model):
    clips = [clip(5.5, 1), clip(1.5, 2), clip(3.3, 3), clip(2, 4)]
    alone = torch.cat([model.embed(audio=[c], long_audio="chunk", batch_size=1)["audio"] for c in clips])
    for bs in (2, 16):
        together = model.embed(audio=clips, long_audio="chunk", batch_size=bs)["audio"]
        # float64 model: batch composition moves results far below the final float32 rounding
        assert (together - alone).abs().max() <= 2 * EPS32
    short = model.embed(audio=[clips[1], clips[3]], batch_size=1)["audio"]
    assert torch.equal(alone[[1, 3]], short)  # within the cap, chunk == truncate exactly
    with pytest.raises(InputError, match="long_audio"):
        model.embed(audio=clips, long_audio="windows")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "m"
    torch.manual_seed(0)
    small_cap_model().save_pretrained(path)
    return path


def test_cli_warns_on_one_line_and_chunks_on_request(model_dir, tmp_path, capsys):
    path = tmp_path / "lecture.flac"
    sf.write(path, clip(3), SR)
    assert main(["embed", "--model", str(model_dir), "--audio", str(path), "--text", "a talk"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    warned = [line for line in err if "warning" in line]
    assert len(warned) == 1 and warned[0].startswith("onepeace embed: warning: audio ")
    assert "lecture.flac is 3.0 s long" in warned[0] and "--long-audio chunk" in warned[0]
    out = tmp_path / "e.npz"
    assert main(["embed", "--model", str(model_dir), "--audio", str(path), "--long-audio", "chunk",
                 "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    m = onepeace.OnePeace.from_pretrained(model_dir)
    expect = m.embed(audio=[path], long_audio="chunk")["audio"]
    assert torch.equal(torch.from_numpy(np.load(out)["audio"]), expect)


def test_max_pixels_from_the_command_line(model_dir, tmp_path, monkeypatch, capsys):
    Image.new("RGB", (300, 200), (200, 30, 30)).save(tmp_path / "wide.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # restored after the test
    assert main(["embed", "--model", str(model_dir), "--image", str(tmp_path / "wide.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wide.png is too large" in err
    assert "60,000 pixels" in err and "--max-pixels 60000" in err and "PIL.Image.MAX_IMAGE_PIXELS" in err
    assert main(["embed", "--model", str(model_dir), "--image", str(tmp_path / "wide.png"),
                 "--max-pixels", "60000"]) == 0
    assert main(["embed", "--model", str(model_dir), "--image", str(tmp_path / "wide.png"),
                 "--max-pixels", "0"]) == 2
