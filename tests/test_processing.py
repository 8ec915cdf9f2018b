"""Processors: every accepted input kind, resampling, and clear errors for bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from PIL import Image

import onepeace
from conftest import ASSETS, TINY
from onepeace.errors import InputError, OnePeaceWarning
from onepeace.processing.audio import AudioProcessor, load_audio, stem_frames
from onepeace.processing.image import ImageProcessor, load_image
from onepeace.processing.text import TextProcessor

STEM = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


def test_stem_frame_arithmetic():
    assert [stem_frames(16000 * s, STEM) for s in (1, 15, 20)] == [49, 749, 999]


def test_text_processor_truncates_and_appends_eos():
    p = TextProcessor()
    toks = p(["word " * 200, "Hi"])["tokens"]
    assert toks.shape == (2, 71) and toks[0, -1] == p.eos_id
    assert toks[1, 1] == p.eos_id and (toks[1, 2:] == p.pad_id).all()  # " hi" is one token
    with pytest.raises(InputError, match="strings"):
        p([3])


def test_image_inputs_of_every_kind_agree(tmp_path):
    img = Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8))
    path = tmp_path / "a.png"
    img.save(path)
    proc = ImageProcessor(64)
    ref = proc([img])["pixels"]
    arr = np.array(img)  # writable: torch.from_numpy warns on read-only arrays
    for item in (str(path), path, path.read_bytes(), open(path, "rb"), arr, arr / 255.0,
                 torch.from_numpy(arr).permute(2, 0, 1)):
        assert torch.allclose(proc([item])["pixels"], ref), type(item)
    assert proc([img])["sizes"].tolist() == [[60, 40]]
    gray = Image.fromarray(arr[..., 0])
    assert proc([gray])["pixels"].shape == (1, 3, 64, 64)


def test_image_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match="cannot decode image .*bad.png"):
        load_image(tmp_path / "bad.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        load_image(np.full((4, 4, 3), 7.0))
    with pytest.raises(InputError, match="unsupported image input"):
        load_image(12)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("L", (200, 200)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(InputError, match="decompression bomb"):
        load_image(tmp_path / "big.png")


def test_audio_resampling_and_channels_like_librosa(tmp_path):
    rng = np.random.default_rng(0)
    stereo = (0.1 * rng.standard_normal((44100, 2))).astype(np.float32)
    sf.write(tmp_path / "s.flac", stereo, 44100, subtype="PCM_24")
    data, _ = sf.read(tmp_path / "s.flac", dtype="float32")
    mono = data.mean(axis=1, dtype=np.float32)
    expect = soxr.resample(mono, 44100, 16000, quality="HQ")
    got = load_audio(tmp_path / "s.flac")
    assert got.shape == (16000,) and np.allclose(got[: len(expect)], expect[:16000], atol=1e-6)
    # arrays: assumed 16 kHz unless a rate is given
    assert load_audio(mono).shape == (44100,)
    assert load_audio((mono, 44100)).shape == (16000,)


def test_audio_cap_tiling_and_silence():
    p = AudioProcessor(STEM)
    with pytest.warns(OnePeaceWarning, match="only its first 15 s"):
        long = p([np.random.default_rng(0).standard_normal(16000 * 20).astype(np.float32)])
    assert long["waveform"].shape == (1, 240000) and long["padding_mask"].shape == (1, 750)
    short = p([np.ones(3000, np.float32) * np.arange(3000) / 3000])
    assert short["waveform"].shape == (1, 16000)
    assert torch.equal(short["waveform"][0, :3000], short["waveform"][0, 3000:6000])
    silent = p([np.zeros(16000, np.float32)])
    assert torch.isfinite(silent["waveform"]).all()
    m = onepeace.create_model("tiny", layers=1)
    assert torch.isfinite(m.embed(audio=[np.zeros(16000, np.float32)])["audio"]).all()


def test_audio_errors(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(InputError, match="no samples"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "notes.txt").write_text("not audio at all")
    with pytest.raises(InputError, match="cannot decode audio .*notes.txt"):
        load_audio(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="NaN"):
        load_audio(np.array([0.0, np.nan], np.float32))
    with pytest.raises(InputError, match="not found"):
        load_audio(tmp_path / "absent.wav")


@pytest.mark.skipif(not (ASSETS / "dog.flac").exists(), reason="the official demo assets (../shared/data, developer/CI machines only) are absent")
def test_real_assets_decode():
    m = onepeace.create_model("tiny", layers=1)
    e = m.embed(image=[ASSETS / "dog.JPEG", ASSETS / "pokemons.jpg"], audio=[ASSETS / "cow.flac", ASSETS / "dog.flac"])
    assert e["image"].shape == (2, 128) and e["audio"].shape == (2, 128)
    assert torch.isfinite(e["audio"]).all()


def test_bytes_and_file_objects_for_audio():
    path = TINY / "inputs" / "audio0.wav"
    a = load_audio(path)
    assert np.array_equal(load_audio(path.read_bytes()), a)
    assert np.array_equal(load_audio(io.BytesIO(path.read_bytes())), a)
