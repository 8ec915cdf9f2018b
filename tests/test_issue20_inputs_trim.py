"""Issue 20, item 1: ``onepeace try`` trims only real silence, so a clip cut tight around the word (the
demo's own test clips, the files ``onepeace demo`` writes to index-media) reaches the model whole."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from onepeace.errors import InputError
from onepeace_train.demo.data import SAMPLE_RATE as SR
from onepeace_train.demo.data import load_speech
from onepeace_train.demo.try_it import prepare_audio, trim_silence

HOP = SR // 100  # trim_silence works in 10 ms frames
PAD = int(0.015 * SR)  # and keeps 15 ms either side


@pytest.fixture(scope="module")
def test_clips():
    waves, labels, _ = load_speech("test")
    return waves, labels


def test_tight_demo_clips_keep_their_samples(test_clips):
    # the clips were cut at 30 dB below their loudest frame with 15 ms kept: the trim (35 dB) finds
    # the same first and last loud frame, up to the 10 ms frame grid
    waves, _ = test_clips
    short = [(i, len(x), len(trim_silence(x))) for i, x in enumerate(waves) if len(trim_silence(x)) < len(x) - HOP]
    assert not short, f"{len(short)} of {len(waves)} tight clips were cut into the word: {short[:5]}"


def test_a_demo_clip_written_to_a_file_reaches_the_model_whole(tmp_path, test_clips):
    # what `onepeace try --audio runs/demo/index-media/audio/seven-007.wav` reads (16-bit wav)
    waves, labels = test_clips
    for i in np.flatnonzero(labels == 7)[:3]:
        sf.write(tmp_path / "seven.wav", waves[i], SR, subtype="PCM_16")
        assert len(prepare_audio(str(tmp_path / "seven.wav"))) >= len(waves[i]) - HOP


@pytest.mark.parametrize("noise_dbfs", [None, -60.0, -45.0])
def test_silence_around_a_clip_is_trimmed_back_to_the_word(test_clips, noise_dbfs):
    # half a second of silence (digital, or a quiet room's hiss) either side of each clip: all of it goes,
    # none of the word does
    waves, _ = test_clips
    rng = np.random.default_rng(0)
    for x in waves[::5]:
        y = np.concatenate([np.zeros(SR // 2), x, np.zeros(SR // 2)])
        if noise_dbfs is not None:
            y = y + rng.standard_normal(len(y)) * 10 ** (noise_dbfs / 20)
        out = trim_silence(y.astype(np.float32))
        assert len(x) - HOP <= len(out) <= len(x) + 2 * (PAD + HOP), (len(x), len(out))


def test_a_noisy_room_is_trimmed_to_near_the_word(test_clips):
    # noise 30 dB above the 35 dB gate's reach: the floor is measured on the two silent ends and the
    # kept stretch is the word, at most padded, at least its part that stands out of the noise
    waves, _ = test_clips
    rng = np.random.default_rng(1)
    for x in waves[::10]:
        y = np.concatenate([np.zeros(SR // 2), x, np.zeros(SR // 2)]) + rng.standard_normal(len(x) + SR) * 10 ** (-40 / 20)
        out = trim_silence(y.astype(np.float32))
        assert len(x) // 2 <= len(out) <= len(x) + 2 * (PAD + HOP), (len(x), len(out))


def test_a_steady_sound_at_one_end_of_a_tight_clip_is_not_taken_for_noise():
    # a word ending in a long steady /s/-like hiss 22 dB down, cut tight: the hiss is speech, kept
    rng = np.random.default_rng(2)
    t = np.arange(int(0.3 * SR)) / SR
    vowel = 0.7 * np.sin(2 * np.pi * 220 * t)
    hiss = rng.standard_normal(int(0.25 * SR)) * 0.7 / np.sqrt(2) * 10 ** (-22 / 20)
    x = np.concatenate([vowel, hiss]).astype(np.float32)
    assert len(trim_silence(x)) >= len(x) - HOP


@pytest.mark.parametrize("make", [
    lambda rng: np.zeros(SR),
    lambda rng: rng.standard_normal(SR) * 0.05,
    lambda rng: 0.05 * np.sin(2 * np.pi * 50 * np.arange(SR) / SR) + rng.standard_normal(SR) * 0.01,  # hum and hiss
])
def test_silence_or_only_noise_is_refused(make):
    x = make(np.random.default_rng(3)).astype(np.float32)
    with pytest.raises(InputError, match="no speech found"):
        trim_silence(x)


DEMO_MODEL = Path(os.environ.get("ONEPEACE_DEMO_MODEL", Path(__file__).parents[1] / "runs" / "demo" / "model"))


@pytest.mark.skipif(not (DEMO_MODEL / "config.json").exists(), reason="needs a trained demo model (make demo, or "
                    "ONEPEACE_DEMO_MODEL=DIR)")
@pytest.mark.slow
def test_try_and_zeroshot_agree_on_the_demo_test_clips(test_clips):
    # the recording path of `onepeace try` (prepare_audio + classify_digit) against the model fed the
    # clip as it is, as `onepeace zeroshot` does: the same digit for every test clip
    import torch

    from onepeace import OnePeace
    from onepeace_train.demo.try_it import _prototypes, classify_digit

    model = OnePeace.from_pretrained(str(DEMO_MODEL)).eval()
    waves, _ = test_clips
    idx = np.random.default_rng(0).choice(len(waves), 30, replace=False)
    protos = _prototypes(model, "audio")
    tried, direct = [], []
    for i in idx:
        tried.append(int(classify_digit(model, "audio", prepare_audio((waves[i], SR))).argmax()))
        with torch.no_grad():
            z = model.embed_batch("audio", model.processor.get("audio")([waves[i]])).float()
        direct.append(int((z @ protos.T).argmax()))
    assert tried == direct
