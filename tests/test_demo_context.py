"""The word in context (issue 24, item 5): the ``silence`` and ``bed`` audio options, their
procedural beds, the demo's stage-2 recipe that trains with them, and ``onepeace try --no-trim``."""

from __future__ import annotations

import random

import numpy as np
import pytest
import soundfile as sf

from onepeace.data.augment import AUDIO_OPS, BED_KINDS, parse_augment, procedural_bed, surround_with_silence
from onepeace.errors import ConfigError

SR = 16000


def _word(seconds=0.4, freq=300.0):
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.5).astype(np.float32)  # never near zero: easy to find


def _only(name, lo, hi, p=1.0):
    return parse_augment({"audio": {name: {"p": p, AUDIO_OPS[name].param: [lo, hi]}}})["audio"]


def _db(power):
    return 10 * np.log10(power)


# ---- silence ---------------------------------------------------------------------------------------

def test_silence_puts_the_word_whole_inside_a_longer_clip_split_at_random():
    x = _word()
    aug = _only("silence", 0.6, 0.6)
    befores, floors = set(), 0
    for seed in range(24):
        y = aug(x, random.Random(seed))
        assert len(y) == len(x) + int(0.6 * SR)
        o = int(np.flatnonzero(np.abs(y) > 0.1)[0])  # where the word starts (a floor is far fainter)
        befores.add(o)
        assert np.allclose(y[o: o + len(x)], x, atol=0.05)
        outside = np.concatenate([y[:o], y[o + len(x):]])
        if outside.any():  # a noise floor, far under the word
            floors += 1
            assert _db(np.mean(x**2) / np.mean(outside**2)) >= 38
            assert not np.array_equal(y[o: o + len(x)], x)  # under the word too
        else:
            assert np.array_equal(y[o: o + len(x)], x)
    assert len(befores) > 10 and min(befores) < 0.2 * SR and max(befores) > 0.4 * SR  # split at random
    assert 4 <= floors <= 20  # digital zeros or a floor, about half and half


def test_silence_floor_level_and_the_noise_snr_refer_to_the_word():
    x = _word()
    rng = np.random.default_rng(0)
    y = surround_with_silence(x, 1000, 3000, rng, floor_db=50.0)
    assert len(y) == len(x) + 4000
    assert abs(_db(np.mean(x**2) / np.mean(y[:1000] ** 2)) - 50) < 2.5
    assert np.array_equal(surround_with_silence(x, 5, 7, rng)[5:-7], x)  # no floor: zeros either side
    # a later noise option measures its SNR against the word, not the word diluted by the silence
    aug = parse_augment({"audio": {"silence": {"p": 1.0, "seconds": [2.0, 2.0]},
                                   "noise": {"p": 1.0, "snr_db": [10.0, 10.0]}}})["audio"]
    y = aug(x, random.Random(2))
    edge = min(np.mean(y[:1000] ** 2), np.mean(y[-1000:] ** 2))  # one end at least is silence (and noise)
    assert abs(_db(np.mean(x**2) / edge) - 10) < 2.0


# ---- beds -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(BED_KINDS))
def test_every_bed_kind_is_unit_rms_finite_and_reproducible(kind):
    a = procedural_bed(24000, SR, np.random.default_rng(5), kind)
    b = procedural_bed(24000, SR, np.random.default_rng(5), kind)
    c = procedural_bed(24000, SR, np.random.default_rng(6), kind)
    assert a.dtype == np.float32 and a.shape == (24000,) and np.isfinite(a).all()
    assert abs(float(np.sqrt(np.mean(a.astype(np.float64) ** 2))) - 1.0) < 1e-3
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert procedural_bed(10, SR, np.random.default_rng(0), kind).shape == (10,)  # shorter than any filter
    assert procedural_bed(0, SR, np.random.default_rng(0), kind).shape == (0,)


def test_bed_kinds_sound_different():
    def spectrum(kind):
        x = procedural_bed(32000, SR, np.random.default_rng(1), kind).astype(np.float64)
        s = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / SR)
        return np.array([s[(f >= lo) & (f < hi)].sum() for lo, hi in ((0, 250), (250, 1000), (1000, 4000), (4000, 8000))]) / s.sum()

    bands = {k: spectrum(k) for k in BED_KINDS}
    assert bands["brown"][0] > 0.8 and bands["wind"][0] > 0.8 and bands["engine"][0] > 0.5  # low rumble
    assert bands["rain"][2:].sum() > 0.5 and bands["pink"][3] > bands["brown"][3]  # hiss and clicks
    hum = procedural_bed(32000, SR, np.random.default_rng(1), "hum").astype(np.float64)
    spec = np.abs(np.fft.rfft(hum)) ** 2
    peak_hz = np.argmax(spec) * SR / len(hum)
    assert min(abs(peak_hz / 50 - round(peak_hz / 50)), abs(peak_hz / 60 - round(peak_hz / 60))) < 0.02  # mains
    # each draw picks a kind at random: every kind comes up
    seen = set()
    for s in range(60):
        same = np.random.default_rng(s)
        kind = list(BED_KINDS)[int(same.integers(len(BED_KINDS)))]  # the kind is the bed's first draw
        assert np.array_equal(procedural_bed(800, SR, np.random.default_rng(s)), procedural_bed(800, SR, same, kind))
        seen.add(kind)
    assert seen == set(BED_KINDS)


def test_bed_lands_at_an_snr_to_the_word_in_the_range():
    x = _word(0.5)
    for seed in range(6):
        y = _only("bed", 12.0, 12.0)(x, random.Random(seed))
        assert len(y) == len(x)
        assert abs(_db(np.mean(x**2) / np.mean((y - x) ** 2)) - 12.0) < 0.5
    # after silence, the bed covers the whole clip and its SNR is still to the word
    aug = parse_augment({"audio": {"silence": {"p": 1.0, "seconds": [1.0, 1.0]},
                                   "bed": {"p": 1.0, "snr_db": [6.0, 6.0]}}})["audio"]
    y = aug(x, random.Random(3))
    assert len(y) == len(x) + SR
    assert np.abs(y[:200]).max() > 0 and np.abs(y[-200:]).max() > 0
    assert np.abs(_db(np.mean(x**2) / np.mean(y[:1600] ** 2)) - 6.0) < 6.0  # about the drawn level


def test_context_options_are_off_unless_asked_and_cost_no_draws_then():
    """Adding the options changed nothing for recipes without them (the same draws, bit for bit)."""
    x = _word()
    old = parse_augment({"audio": {"speed": {"p": 0.5}, "noise": {"p": 0.5}}})["audio"]
    off = parse_augment({"audio": {"speed": {"p": 0.5}, "silence": False, "bed": False, "noise": {"p": 0.5}}})["audio"]
    for seed in range(4):
        assert np.array_equal(old(x, random.Random(seed)), off(x, random.Random(seed)))


# ---- the demo's recipe ------------------------------------------------------------------------------

def test_demo_stage2_trains_with_context_by_default_and_plain_without():
    from onepeace_train.demo.run import _NO_DATA, stage_config

    ops = parse_augment(stage_config(2, "out", _NO_DATA).data.augment)["audio"].ops
    assert {"silence", "bed"} <= set(ops)
    p_sil, lo, hi = ops["silence"]
    assert 0 < lo <= hi <= 2.0  # seconds in all, around a word under a second
    p_bed, snr_lo, snr_hi = ops["bed"]
    assert snr_lo >= 0 and snr_hi <= 40
    assert (1 - p_sil) * (1 - p_bed) >= 0.4  # tightly cut, clean words still a good share
    assert stage_config(2, "out", _NO_DATA, plain=True).data.augment == {}
    assert stage_config(1, "out", _NO_DATA).data.augment == {}  # images: unchanged


def test_demo_no_context_is_the_recipe_before_the_context_ops():
    from onepeace_train.demo.run import _NO_DATA, CONTEXT_OPS, NO_CONTEXT_STAGE2_STEPS, run_demo, stage_config

    full = stage_config(2, "out", _NO_DATA)
    before = stage_config(2, "out", _NO_DATA, context=False)
    kept = {k: v for k, v in full.data.augment["audio"].items() if k not in CONTEXT_OPS}
    assert before.data.augment == {"audio": kept} and kept  # tempo and noise stay
    assert before.optim.max_steps == NO_CONTEXT_STAGE2_STEPS < full.optim.max_steps
    assert stage_config(2, "out", _NO_DATA, context=False, steps=7).optim.max_steps == 7  # --stage2-steps wins
    assert stage_config(1, "out", _NO_DATA, context=False).optim.max_steps == stage_config(1, "out", _NO_DATA).optim.max_steps
    assert full.data.augment["audio"].keys() >= set(CONTEXT_OPS)  # the default is not changed by the call
    with pytest.raises(ConfigError, match="--plain already trains without the word in context"):
        run_demo("never-made", plain=True, context=False)


# ---- onepeace try without the trim ------------------------------------------------------------------

def test_prepare_audio_without_trim_keeps_the_recording_whole():
    from onepeace.errors import InputError
    from onepeace_train.demo.try_it import prepare_audio

    rec = np.concatenate([np.zeros(8000), _word(), np.zeros(8000)]).astype(np.float32)
    whole = prepare_audio((rec, SR), trim=False)
    assert len(whole) == len(rec) and abs(float(np.abs(whole).max()) - 0.8) < 1e-6
    assert len(prepare_audio((rec, SR), trim=True)) < len(_word()) + 2000
    with pytest.raises(InputError, match="no speech found"):
        prepare_audio((np.zeros(SR, np.float32), SR), trim=False)


def test_try_takes_trim_and_no_trim(tmp_path, capsys):
    import torch

    from onepeace.cli import main
    from onepeace.inference import create_model

    torch.manual_seed(0)
    model = tmp_path / "model"
    create_model("tiny").save_pretrained(str(model))
    rec = np.concatenate([np.zeros(8000), _word(), np.zeros(8000)]).astype(np.float32)
    sf.write(tmp_path / "rec.wav", rec, SR)
    for flag in ("--trim", "--no-trim"):
        assert main(["try", "--model", str(model), "--audio", str(tmp_path / "rec.wav"), flag]) == 0
        out = capsys.readouterr().out
        assert "rec.wav:" in out and "probability" in out
