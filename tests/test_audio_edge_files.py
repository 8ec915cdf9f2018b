"""Whole-file audio loading (load_audio: embed, the CLI, the index, the server) of three kinds of
file libsndfile misreports, read as the streamed windows read them (onepeace.processing.stream):
an MP3 without a length header, a FLAC of unknown length, a WAV whose header declares no samples."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf

from conftest import mp3_files, piped_flac, unfinished_wav
from onepeace.errors import InputError, OnePeaceWarning
from onepeace.processing import audio
from onepeace.processing.audio import load_audio

SR = 16000


def wave(seconds: float, rate: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.5 * t)
    return np.stack([x * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32).squeeze()


def load(item) -> tuple[np.ndarray, list[str]]:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        wav = load_audio(item)
    return wav, [str(m.message) for m in w if issubclass(m.category, OnePeaceWarning)]


def test_an_mp3_without_a_length_header_is_not_reported_cut_short(tmp_path):
    """libsndfile's length for an MP3 without a Xing/Info/VBRI header is a guess from the file size
    and the first frame's bit rate: no evidence of damage ('decoding stopped at 10.1 s of 10.1 s'
    was warned for a whole file). With the header, a cut file is still reported."""
    x = np.concatenate([np.zeros(4 * SR, np.float32), wave(6.0)])
    mp3_files(tmp_path, x, SR)
    for item in (tmp_path / "plain.mp3", (tmp_path / "plain.mp3").read_bytes(), tmp_path / "tagged.mp3"):
        wav, caught = load(item)
        assert caught == [] and len(wav) / SR == pytest.approx(10.0, abs=0.1)
    wav, caught = load(tmp_path / "cut.mp3")
    assert len(caught) == 1 and "truncated or corrupt" in caught[0] and len(wav) < 6 * SR


def test_a_flac_of_unknown_length_is_read_whole(tmp_path):
    """libsndfile reports an endless length for it ('array is too big', or its reads fail part way);
    FFmpeg reads it whole: the same waveform as the FLAC that states its length (stereo, 22.05 kHz,
    channel mean and soxr as for any file), without a word."""
    pytest.importorskip("av", reason="reading a FLAC of unknown length whole needs PyAV")
    x = wave(30.0, 22050, channels=2)
    sf.write(tmp_path / "sized.flac", x, 22050)
    piped_flac(tmp_path / "piped.flac", x, 22050)
    ref, caught = load(tmp_path / "sized.flac")
    assert caught == [] and len(ref) == 30 * SR
    for item in (tmp_path / "piped.flac", (tmp_path / "piped.flac").read_bytes()):
        wav, caught = load(item)
        assert caught == [] and wav.shape == ref.shape
        np.testing.assert_allclose(wav, ref, atol=1e-6)


def test_a_flac_of_unknown_length_without_pyav_keeps_what_libsndfile_reads(tmp_path, monkeypatch):
    """Without PyAV: what libsndfile reads before its reads fail, with one warning line saying where
    and what would read it all (was a DecodeError: 'array is too big')."""
    x = wave(30.0)
    piped_flac(tmp_path / "piped.flac", x, SR)
    monkeypatch.setattr(audio, "_has_av", lambda: False)
    wav, caught = load(tmp_path / "piped.flac")
    assert 0 < len(wav) <= len(x)
    np.testing.assert_allclose(wav, x[: len(wav)], atol=1e-4)  # 16-bit FLAC
    if len(wav) < len(x):
        assert len(caught) == 1 and "\n" not in caught[0] and "onepeace[video]" in caught[0], caught
        assert f"stopped at {len(wav) / SR:.1f} s" in caught[0]


def test_an_unfinished_wav_whose_header_declares_no_samples_is_read_to_its_end(tmp_path):
    """It was 'has no samples' though its sound is all there: FFmpeg reads it to the end of the
    file, and one warning line says why (as the streamed windows' problem line does)."""
    pytest.importorskip("av", reason="reading a WAV that declares no samples needs PyAV")
    x = wave(6.5)
    unfinished_wav(tmp_path / "rec.wav", x, SR)
    for item in (tmp_path / "rec.wav", (tmp_path / "rec.wav").read_bytes()):
        wav, caught = load(item)
        np.testing.assert_array_equal(wav, x)
        assert len(caught) == 1 and "declares no samples" in caught[0] and "\n" not in caught[0], caught


def test_an_unfinished_wav_without_pyav_has_no_samples_as_before(tmp_path, monkeypatch):
    unfinished_wav(tmp_path / "rec.wav", wave(1.5, SR), SR)
    monkeypatch.setattr(audio, "_has_av", lambda: False)
    with pytest.raises(InputError, match="has no samples"):
        load_audio(tmp_path / "rec.wav")
