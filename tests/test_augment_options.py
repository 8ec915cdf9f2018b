"""Recipe augmentation options ([data.augment], onepeace.data.augment) and `onepeace try`."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from onepeace.cli import main
from onepeace.data.augment import AUDIO_OPS, IMAGE_OPS, parse_augment, pitch_shift, time_stretch
from onepeace.errors import ConfigError, InputError

SR = 16000


def _only(modality: str, name: str, lo=None, hi=None):
    op = (AUDIO_OPS if modality == "audio" else IMAGE_OPS)[name]
    spec = {"p": 1.0}
    if op.param:
        spec[op.param] = [lo, hi] if lo is not None else list(op.default)
    return parse_augment({modality: {name: spec}})[modality]


def _tone(freq=440.0, seconds=0.5, sr=SR, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x, sr=SR):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spec) * sr / len(x)


def _band_db(x, lo, hi, sr=SR):
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / sr)
    return 10 * np.log10(spec[(f >= lo) & (f < hi)].sum() + 1e-30)


def _digit():
    """A bright bar-and-ring 'digit' on black, 28 x 28 RGB (as MNIST)."""
    a = np.zeros((28, 28), np.uint8)
    a[6:22, 12:16] = 255
    a[6:9, 8:20] = 255
    return Image.fromarray(a).convert("RGB")


def _ink(img):
    return np.asarray(img.convert("L"), dtype=np.float64)


# ---- determinism -----------------------------------------------------------------------------------

def test_every_option_is_reproducible_from_the_seed():
    aug = parse_augment({"audio": {k: {"p": 0.7} for k in AUDIO_OPS}, "image": {k: {"p": 0.7} for k in IMAGE_OPS}})
    x, img = _tone(), _digit()
    for seed in range(4):
        a1, a2 = aug["audio"](x, random.Random(seed)), aug["audio"](x, random.Random(seed))
        assert np.array_equal(a1, a2)
        assert np.array_equal(np.asarray(aug["image"](img, random.Random(seed))),
                              np.asarray(aug["image"](img, random.Random(seed))))
    outs = [aug["audio"](x, random.Random(s)) for s in range(4)]
    assert len({(len(o), float(o.sum())) for o in outs}) > 1  # other seeds, other draws
    assert x.shape == (8000,) and np.array_equal(x, _tone())  # the input is never changed in place


def test_dataset_applies_augmentation_in_training_only(tmp_path):
    from onepeace.data.dataset import PairDataset

    sf.write(tmp_path / "a.wav", _tone(seconds=0.3), SR)
    (tmp_path / "m.jsonl").write_text('{"audio": "a.wav", "text": "a tone"}\n')
    aug = {"audio": {"pad": {"p": 1.0, "seconds": [0.5, 0.5]}}}
    src = str(tmp_path / "m.jsonl")

    padded = PairDataset(src, "tiny", train=True, augment=aug)
    (s,) = list(padded)
    assert s["audio"].numel() == 16000  # 0.8 s, tiled to 1 s: the silence is in it
    plain = list(PairDataset(src, "tiny", train=True))[0]["audio"]
    assert not np.allclose(s["audio"].numpy(), plain.numpy())
    evaluated = list(PairDataset(src, "tiny", train=False, augment=aug))[0]["audio"]
    assert np.array_equal(evaluated.numpy(), plain.numpy())  # evaluation is never augmented
    with pytest.raises(ConfigError, match="unknown data.augment.video"):
        PairDataset(src, "tiny", augment={"video": {}})


# ---- audio options ---------------------------------------------------------------------------------

def test_speed_resamples_tempo_and_pitch_together():
    x = _tone(500.0)
    y = _only("audio", "speed", 1.25, 1.25)(x, random.Random(0))
    assert abs(len(y) - len(x) / 1.25) <= 1
    assert abs(_peak_hz(y) - 625.0) <= 2 * SR / len(y)  # two FFT bins


def test_pitch_shifts_pitch_and_keeps_duration():
    x = _tone(400.0, seconds=1.0)
    y = _only("audio", "pitch", 3.0, 3.0)(x, random.Random(0))
    assert len(y) == len(x)
    want = 400.0 * 2 ** (3 / 12)
    assert abs(_peak_hz(y) - want) <= 2 * SR / len(y)
    stretched = time_stretch(x, 0.8)
    assert abs(len(stretched) - len(x) / 0.8) <= 1 and abs(_peak_hz(stretched) - 400.0) <= 2 * SR / len(stretched)
    assert np.array_equal(pitch_shift(x, 0.0, SR)[:100].round(3), pitch_shift(x, 0.0, SR)[:100].round(3))


def test_crop_keeps_a_contiguous_part():
    x = np.arange(10000, dtype=np.float32)
    y = _only("audio", "crop", 0.5, 0.5)(x, random.Random(3))
    assert len(y) == 5000 and np.array_equal(y, x[int(y[0]): int(y[0]) + 5000])


def test_reverb_adds_a_decaying_tail():
    x = np.zeros(8000, np.float32)
    x[:800] = _tone(seconds=0.05)
    y = _only("audio", "reverb", 0.4, 0.4)(x, random.Random(0))
    assert len(y) == len(x) + int(0.4 * SR / 2)
    tail = y[800:]  # after the tone: room sound, decaying
    assert np.sqrt(np.mean(tail[:1600] ** 2)) > 10 * np.sqrt(np.mean(tail[-1600:] ** 2)) > 0


def test_pad_adds_silence_around_the_word():
    x = _tone(seconds=0.2) + np.float32(0.25)  # no zero sample in the word itself
    y = _only("audio", "pad", 0.5, 0.5)(x, random.Random(1))
    assert len(y) == len(x) + 8000
    start = int(np.flatnonzero(y)[0])
    assert np.array_equal(y[start: start + len(x)], x) and not y[:start].any() and not y[start + len(x):].any()


def test_telephone_removes_the_band_above_4khz():
    x = _tone(1000.0, seconds=0.5) + _tone(6000.0, seconds=0.5)
    y = _only("audio", "telephone")(x, random.Random(0))
    assert len(y) == len(x)
    assert _band_db(y, 5500, 6500) < _band_db(x, 5500, 6500) - 40
    assert abs(_band_db(y, 900, 1100) - _band_db(x, 900, 1100)) < 1.0


def test_lowpass_cuts_above_the_drawn_frequency():
    x = _tone(500.0, seconds=0.5) + _tone(6000.0, seconds=0.5)
    y = _only("audio", "lowpass", 2000.0, 3000.0)(x, random.Random(0))
    assert len(y) == len(x)
    assert _band_db(y, 5500, 6500) < _band_db(x, 5500, 6500) - 30  # 4th order: >= 24 dB/octave above the cut-off
    assert abs(_band_db(y, 400, 600) - _band_db(x, 400, 600)) < 1.0
    # a cut-off at or above Nyquist leaves the clip as it was
    assert np.array_equal(_only("audio", "lowpass", 9000.0, 12000.0)(x, random.Random(0)), x)


def test_envelope_varies_the_gain_smoothly_within_the_depth():
    x = np.full(SR, 0.5, np.float32)  # 1 s of a constant: the output is the gain curve itself
    y = _only("audio", "envelope", -12.0, -12.0)(x, random.Random(3))
    gain_db = 20 * np.log10(y / 0.5)
    assert len(y) == len(x)
    assert gain_db.max() <= 1e-4 and gain_db.min() >= -12.0 - 1e-4
    assert gain_db.max() - gain_db.min() > 3.0  # it does vary ...
    # ... smoothly: cosine steps between gains in [g_min, 1], 80 ms apart, move at most this many dB per sample
    g_min, step = 10 ** (-12.0 / 20), 0.08 * SR
    assert np.abs(np.diff(gain_db)).max() <= 20 / np.log(10) * (1 - g_min) * (np.pi / 2) / step / g_min + 1e-6


@pytest.mark.parametrize("slope", [-6.0, 3.0])
def test_tilt_slopes_the_spectrum_about_1khz_and_keeps_the_energy(slope):
    x = _tone(250.0, seconds=0.5) + _tone(1000.0, seconds=0.5) + _tone(4000.0, seconds=0.5)
    y = _only("audio", "tilt", slope, slope)(x, random.Random(0))
    assert len(y) == len(x)
    # two octaves either side of the pivot: the 250 Hz and 4 kHz tones move apart by 4 octaves x slope
    spread = (_band_db(y, 3900, 4100) - _band_db(y, 240, 260)) - (_band_db(x, 3900, 4100) - _band_db(x, 240, 260))
    assert abs(spread - 4 * slope) < 0.5
    assert math.isclose(float(np.sum(y.astype(np.float64) ** 2)), float(np.sum(x.astype(np.float64) ** 2)), rel_tol=1e-4)


def test_noise_lands_at_an_snr_in_the_range():
    x = _tone(seconds=0.5)
    for seed in range(5):
        y = _only("audio", "noise", 10.0, 20.0)(x, random.Random(seed))
        snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((y - x).astype(np.float64) ** 2))
        assert 10.0 - 0.01 <= snr <= 20.0 + 0.01


def test_gain_scales_by_decibels_in_the_range():
    x = _tone()
    y = _only("audio", "gain", -12.0, -6.0)(x, random.Random(0))
    db = 20 * np.log10(np.abs(y).max() / np.abs(x).max())
    assert -12.0 - 1e-3 <= db <= -6.0 + 1e-3


# ---- image options ---------------------------------------------------------------------------------

def test_stroke_thickens_and_thins_the_ink():
    img = _digit()
    base = (_ink(img) > 127).sum()
    assert (_ink(_only("image", "stroke", 1, 1)(img, random.Random(0))) > 127).sum() > base
    assert (_ink(_only("image", "stroke", -1, -1)(img, random.Random(0))) > 127).sum() < base


def test_scale_shift_and_rotate_move_the_ink():
    img = _digit()
    ys, xs = np.nonzero(_ink(img) > 127)
    small = _ink(_only("image", "scale", 0.5, 0.5)(img, random.Random(0)))
    sy, sx = np.nonzero(small > 64)
    assert np.ptp(sy) < 0.7 * np.ptp(ys) and np.ptp(sx) < 0.7 * np.ptp(xs)
    moved = _ink(_only("image", "shift", 0.25, 0.25)(img, random.Random(0)))
    mass = moved.sum()
    cy = (moved * np.arange(28)[:, None]).sum() / mass
    cx = (moved * np.arange(28)[None, :]).sum() / mass
    base = _ink(img)
    by = (base * np.arange(28)[:, None]).sum() / base.sum()
    bx = (base * np.arange(28)[None, :]).sum() / base.sum()
    assert abs(cy - by - 7) <= 1 and abs(cx - bx - 7) <= 1
    turned = _ink(_only("image", "rotate", 90.0, 90.0)(img, random.Random(0)))
    assert np.allclose(turned, np.rot90(base), atol=64)  # a quarter turn (PIL: counter-clockwise)


def test_lowres_blur_contrast_and_invert():
    checker = Image.fromarray((np.indices((28, 28)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB")
    assert _ink(_only("image", "lowres", 0.5, 0.5)(checker, random.Random(0))).std() < 0.5 * _ink(checker).std()
    assert _ink(_only("image", "blur", 1.0, 1.0)(checker, random.Random(0))).std() < 0.5 * _ink(checker).std()
    img = _digit()
    low = _ink(_only("image", "contrast", 0.5, 0.5)(img, random.Random(0)))
    assert abs(low.std() - 0.5 * _ink(img).std()) <= 1.0
    assert np.array_equal(_ink(_only("image", "invert")(img, random.Random(0))), 255 - _ink(img))
    grey = img.convert("L")
    assert _only("image", "invert")(grey, random.Random(0)).mode == "L"  # the mode is kept


# ---- config ----------------------------------------------------------------------------------------

def test_recipe_keys_parse_from_toml_and_overrides(tmp_path):
    from onepeace_train.recipe import load_config

    p = tmp_path / "r.toml"
    p.write_text('[data.augment.audio]\nnoise = { p = 0.5, snr_db = [5, 30] }\ntelephone = true\n'
                 '[data.augment.image]\nrotate = { degrees = [-10, 10] }\n')
    cfg = load_config(str(p), ["data.augment.audio.gain={p = 1.0, db = [-6, 0]}"])
    aug = parse_augment(cfg.data.augment)
    assert aug["audio"].ops == {"telephone": (0.2, 0.0, 0.0), "noise": (0.5, 5.0, 30.0), "gain": (1.0, -6.0, 0.0)}
    assert aug["image"].ops == {"rotate": (IMAGE_OPS["rotate"].p, -10.0, 10.0)}
    from onepeace_train.demo.run import recipe  # the demo's stage-2 recipe uses the options; stage 1 has none
    assert parse_augment(load_config(recipe("demo_stage2.toml")).data.augment)["audio"]
    assert load_config(recipe("demo_stage1.toml")).data.augment == {}


def test_demo_recipes_default_plain_and_heavy():
    from onepeace_train.demo.run import _NO_DATA, HEAVY_AUGMENT, PLAIN_STAGE2_STEPS, stage_config

    default = [stage_config(k, "out", _NO_DATA) for k in (1, 2)]
    plain = [stage_config(k, "out", _NO_DATA, plain=True) for k in (1, 2)]
    heavy = [stage_config(k, "out", _NO_DATA, augment=True) for k in (1, 2)]
    assert plain[0] == default[0] and default[0].data.augment == {}  # stage 1: the same recipe, no augmentation
    # the default stage 2 trains longer than the earlier (plain) recipe, with mild audio augmentation only
    assert plain[1].optim.max_steps == PLAIN_STAGE2_STEPS < default[1].optim.max_steps
    assert plain[1].data.augment == {}
    ops = parse_augment(default[1].data.augment)["audio"].ops
    assert set(default[1].data.augment) == {"audio"} and "pad" not in ops and "telephone" not in ops
    assert ops["noise"][1] >= 20  # mild: faint noise only
    # --augment swaps in the heavy sets (both stages), keeping each recipe's step count unless --plain
    assert heavy[0].data.augment == {"image": HEAVY_AUGMENT["image"]} and heavy[0].optim == default[0].optim
    assert heavy[1].data.augment == {"audio": HEAVY_AUGMENT["audio"]} and heavy[1].optim == default[1].optim
    assert stage_config(2, "out", _NO_DATA, augment=True, plain=True).optim.max_steps == PLAIN_STAGE2_STEPS
    heavy[1].data.augment["audio"]["speed"]["p"] = 0.0  # each config holds its own copy
    assert HEAVY_AUGMENT["audio"]["speed"]["p"] == 0.5
    assert all(parse_augment(h.data.augment) for h in heavy)
    assert stage_config(2, "out", _NO_DATA, plain=True, steps=7).optim.max_steps == 7  # --stage2-steps wins


@pytest.mark.parametrize("spec, message", [
    ({"audio": {"echo": {}}}, "unknown option data.augment.audio.echo; known: speed, pitch"),
    ({"sound": {}}, "unknown data.augment.sound; known: audio, image"),
    ({"audio": {"noise": {"p": 1.5}}}, "data.augment.audio.noise.p must be a probability in [0, 1], got 1.5"),
    ({"audio": {"speed": {"factor": [1.2, 0.8]}}}, "data.augment.audio.speed.factor must satisfy 0.5 <= low <= high <= 2.0"),
    ({"audio": {"noise": {"snr_db": 10}}}, "data.augment.audio.noise.snr_db must be [low, high] (two numbers), got 10"),
    ({"audio": {"noise": {"snr": [1, 2]}}}, "unknown key data.augment.audio.noise.snr; known: p, snr_db"),
    ({"image": {"stroke": {"width": [0.5, 1]}}}, "data.augment.image.stroke.width must be whole numbers"),
    ({"image": {"blur": 3}}, "data.augment.image.blur must be true, false or a table like { p = 0.2, radius = [0.3, 1.5] }"),
    ({"image": []}, "data.augment.image must be a table of options"),
])
def test_bad_options_are_one_clear_error(spec, message):
    with pytest.raises(ConfigError) as e:
        parse_augment(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_option_in_a_recipe_fails_the_command_in_one_line(tmp_path, capsys):
    p = tmp_path / "r.toml"
    p.write_text('[data]\ntrain = "nowhere"\n[data.augment.audio]\nnoise = { p = 2 }\n')
    assert main(["pretrain", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.augment.audio.noise.p must be a probability" in err, err


# ---- onepeace try ----------------------------------------------------------------------------------

def test_trim_silence_finds_the_word_in_a_noisy_recording():
    from onepeace_train.demo.try_it import trim_silence

    rng = np.random.default_rng(0)
    word = _tone(300.0, seconds=0.4)
    x = np.concatenate([np.zeros(12000), word, np.zeros(16000)]).astype(np.float32)
    x += (rng.standard_normal(len(x)) * 0.002).astype(np.float32)
    y = trim_silence(x)
    assert abs(len(y) - len(word)) <= 0.05 * SR  # the word, give or take the kept context
    with pytest.raises(InputError, match="no speech found"):
        trim_silence((rng.standard_normal(SR) * 0.01).astype(np.float32))


def test_prepare_image_frames_a_photo_like_mnist():
    from onepeace_train.demo.try_it import prepare_image

    # dark ink on lit paper, off-centre, with shading and noise: a phone photo of a "1"
    rng = np.random.default_rng(0)
    paper = np.full((300, 400), 210.0) + np.linspace(-40, 20, 400)[None, :] + rng.standard_normal((300, 400)) * 3
    paper[40:200, 250:275] = 40.0
    out = prepare_image(Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert np.median(out) == 0 and out.max() == 255  # white ink on black
    ys, xs = np.nonzero(out > 64)
    assert np.ptp(ys) + 1 in (19, 20, 21) and np.ptp(xs) < 8  # a tall thin stroke in the 20 px box
    assert abs(ys.mean() - 13.5) <= 1.5 and abs(xs.mean() - 13.5) <= 1.5  # centred
    with pytest.raises(InputError, match="no digit found"):
        prepare_image(Image.new("L", (200, 200), 128))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from onepeace.factory import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("try") / "model"
    create_model("tiny").save_pretrained(str(path))
    return str(path)


def test_try_prints_a_digit_and_its_probability(tmp_path, tiny_model, capsys):
    import soxr

    word = np.concatenate([_tone(250.0, 0.2), _tone(500.0, 0.2)])
    rec = np.concatenate([np.zeros(8000), word, np.zeros(12000)]).astype(np.float32)
    stereo = soxr.resample(rec, SR, 44100)
    sf.write(tmp_path / "rec.flac", np.stack([stereo, stereo], 1), 44100)  # any rate, format, channels
    a = np.full((120, 90), 230, np.uint8)
    a[20:100, 40:52] = 30
    Image.fromarray(a).save(tmp_path / "digit.jpg")
    assert main(["try", "--model", tiny_model, "--audio", str(tmp_path / "rec.flac"),
                 "--image", str(tmp_path / "digit.jpg")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, name in zip(lines, ("rec.flac", "digit.jpg")):
        assert name in line and "probability" in line
        p = float(line.split("probability ")[1].split(";")[0])
        rest = [float(t.split()[1]) for t in line.split("next ")[1].split(", ")]
        assert 0.1 <= p <= 1.0 and all(0 <= r <= p for r in rest) and p + sum(rest) <= 1.0 + 1e-2


def test_try_probabilities_sum_to_one(tiny_model):
    import torch

    from onepeace import OnePeace
    from onepeace_train.demo.try_it import classify_digit

    model = OnePeace.from_pretrained(tiny_model)
    p = classify_digit(model, "audio", _tone(seconds=0.5))
    assert p.shape == (10,) and math.isclose(float(p.sum()), 1.0, rel_tol=1e-5) and bool((p >= 0).all())
    assert torch.equal(p, classify_digit(model, "audio", _tone(seconds=0.5)))


@pytest.mark.parametrize("make, args, message", [
    (None, ["--audio", "missing.wav"], "not found"),
    (lambda d: sf.write(d / "quiet.wav", np.zeros(SR, np.float32), SR), ["--audio", "quiet.wav"], "no speech found"),
    (lambda d: sf.write(d / "long.wav", _tone(seconds=11.0), SR), ["--audio", "long.wav"], "at most 10 s"),
    (lambda d: (d / "bad.wav").write_bytes(b"not audio"), ["--audio", "bad.wav"], "cannot decode audio"),
    (lambda d: Image.new("RGB", (50, 50), "white").save(d / "blank.png"), ["--image", "blank.png"], "no digit found"),
    (None, [], "give a recording with --audio"),
])
def test_try_bad_input_is_one_line_exit_2(tmp_path, tiny_model, capsys, monkeypatch, make, args, message):
    monkeypatch.chdir(tmp_path)
    if make:
        make(tmp_path)
    assert main(["try", "--model", tiny_model, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("onepeace try: error: ") and message in err, err
