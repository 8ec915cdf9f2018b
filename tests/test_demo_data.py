"""The bundled demo set (src/onepeace_train/demo/assets): present, well-formed, split as documented."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from onepeace_train.demo import data as demo

DEMO = demo.demo_data_dir()


def test_files_present_and_small():
    total = 0
    for name in ("digits.npz", "speech.npz", "fonts.npz", "README.md"):
        p = Path(str(DEMO.joinpath(name)))
        assert p.is_file(), name
        total += p.stat().st_size
    assert total <= 12e6, f"demo assets are {total / 1e6:.1f} MB (the budget is 12 MB)"


def test_raw_layout_and_dtypes():
    with DEMO.joinpath("digits.npz").open("rb") as f, np.load(f) as z:
        assert z["images"].dtype == np.uint8 and z["images"].shape == (5000, 28, 28)
        assert z["labels"].dtype == np.uint8 and z["labels"].shape == (5000,)
        assert z["split"].dtype == np.uint8 and set(np.unique(z["split"])) == {0, 1}
    with DEMO.joinpath("speech.npz").open("rb") as f, np.load(f) as z:
        n = len(z["labels"])
        assert 300 <= n <= 1200
        assert z["audio"].dtype == np.int16 and z["audio"].ndim == 1
        off = z["offsets"]
        assert off.dtype == np.int64 and off.shape == (n + 1,)
        assert off[0] == 0 and off[-1] == len(z["audio"]) and np.all(np.diff(off) > 0)
        for k, dt in (
            ("labels", np.uint8),
            ("split", np.uint8),
            ("voice", np.uint8),
            ("speed", np.uint16),
            ("pitch", np.uint8),
            ("engine", np.uint8),
        ):
            assert z[k].dtype == dt and z[k].shape == (n,), k
        assert z["voices"].dtype.kind == "U" and z["voice"].max() < len(z["voices"])
        assert list(z["engines"]) == ["espeak-ng", "flite", "festival"] and z["engine"].max() < 3
        assert set(np.unique(z["split"])) == {0, 1, 2, 3}
        assert int(z["sample_rate"]) == demo.SAMPLE_RATE


@pytest.mark.parametrize("split,n", [("train", 4000), ("test", 1000), (None, 5000)])
def test_digits(split, n):
    images, labels = demo.load_digits(split)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,)
    assert np.array_equal(np.bincount(labels, minlength=10), np.full(10, n // 10))
    assert images.max() == 255 and images.mean() > 10  # real ink, not blank


def test_digit_splits_disjoint():
    tr, _ = demo.load_digits("train")
    te, _ = demo.load_digits("test")
    a = {x.tobytes() for x in tr}
    assert not any(x.tobytes() in a for x in te)


def test_speech():
    seen, engines = {}, {}
    for split in ("train", "test", "extra", "heldout"):
        waves, labels, voices, engine = demo.load_speech(split, engines=True)
        assert len(engine) == len(voices)
        engines[split] = set(engine.tolist())
        assert len(waves) == len(labels) == len(voices) > 0
        assert set(labels.tolist()) == set(range(10))
        # every voice says every digit
        for v in set(voices.tolist()):
            assert sorted(labels[voices == v].tolist()) == list(range(10)), v
        for w in waves:
            assert w.dtype == np.float32 and w.ndim == 1
            assert np.isfinite(w).all() and np.abs(w).max() <= 1.0
            assert 0.15 <= len(w) / demo.SAMPLE_RATE <= 2.5
            assert np.sqrt(np.mean(w**2)) > 0.01  # not silent
        seen[split] = set(voices.tolist())
    assert seen["train"].isdisjoint(seen["test"])
    # held-out voices use espeak-ng variants (speaker timbres) never heard in training
    variant = lambda v: v.split("+")[1]  # noqa: E731
    assert {variant(v) for v in seen["train"]}.isdisjoint({variant(v) for v in seen["test"]})
    espeak_extra = {v for v in seen["extra"] if ":" not in v}
    assert espeak_extra and {variant(v) for v in espeak_extra}.isdisjoint({variant(v) for v in seen["test"]})
    # the original splits are espeak-ng only; the added voices add flite; festival is held out whole
    assert engines == {"train": {"espeak-ng"}, "test": {"espeak-ng"}, "extra": {"espeak-ng", "flite"},
                       "heldout": {"festival"}}
    assert len(set().union(*seen.values())) == sum(len(v) for v in seen.values())  # no voice in two splits
    n_all = len(demo.load_speech(None)[0])
    assert n_all == sum(len(demo.load_speech(s)[0]) for s in ("train", "test", "extra", "heldout"))


def test_font_digits_framed_like_mnist():
    images, labels, fonts = demo.load_font_digits()
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28) and len(images) == len(labels) == len(fonts)
    for f in set(fonts.tolist()):  # every font writes every digit
        assert set(labels[fonts == f].tolist()) == set(range(10)), f
    # white ink on black (the paper is the typical pixel), fitted into MNIST's 20 px box, centred by mass
    assert np.median(images) == 0 and images.max() == 255
    rows, cols = images.any(axis=2), images.any(axis=1)
    height = 28 - rows.argmax(1) - rows[:, ::-1].argmax(1)
    width = 28 - cols.argmax(1) - cols[:, ::-1].argmax(1)
    assert np.maximum(height, width).max() <= 20 and np.maximum(height, width).min() >= 19
    ys, xs = np.mgrid[:28, :28]
    mass = images.astype(np.float64).sum(axis=(1, 2))
    cy = (images * ys).sum(axis=(1, 2)) / mass
    cx = (images * xs).sum(axis=(1, 2)) / mass
    assert np.abs(cy - 13.5).max() <= 0.5 + 1e-6 and np.abs(cx - 13.5).max() <= 0.5 + 1e-6  # whole-pixel placement


def test_captions():
    assert demo.DIGIT_WORDS[7] == "seven" and len(demo.DIGIT_WORDS) == 10
    assert len(demo.IMAGE_TEMPLATES) >= 4 and len(demo.AUDIO_TEMPLATES) >= 4
    rng = np.random.default_rng(0)
    caps = {demo.image_captions(3, rng) for _ in range(200)}
    assert len(caps) == len(demo.IMAGE_TEMPLATES) and all("three" in c for c in caps)
    r = random.Random(0)
    caps = {demo.audio_captions(np.uint8(9), r) for _ in range(200)}
    assert len(caps) == len(demo.AUDIO_TEMPLATES) and all("nine" in c for c in caps)
    assert demo.eval_caption(0, "image") == demo.eval_caption(0, "image")
    assert "zero" in demo.eval_caption(0, "audio")
    with pytest.raises(ValueError):
        demo.eval_caption(10)
    with pytest.raises(ValueError):
        demo.load_digits("val")


def test_the_demo_data_set_is_found_through_the_env_var_or_named_in_one_line(tmp_path, monkeypatch, capsys):
    """The wheel carries no demo data: ``onepeace demo`` without it says where to get it (exit 2)
    before creating anything; ONEPEACE_DEMO_DATA pointing at a copy is used."""
    from onepeace.cli import main

    monkeypatch.setenv(demo.DEMO_DATA_ENV, str(tmp_path / "nowhere"))
    out = tmp_path / "run"
    assert main(["demo", "--out", str(out), "--stage1-steps", "1", "--stage2-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and demo.DEMO_DATA_ENV in err and "Traceback" not in err, err
    assert not out.exists()
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("digits.npz", "fonts.npz", "speech.npz"):
        (copy / name).symlink_to(Path(str(DEMO.joinpath(name))))
    monkeypatch.setenv(demo.DEMO_DATA_ENV, str(copy))
    assert demo.demo_data_dir() == copy


def test_real_speech_fsdd():
    """fsdd.npz: 600 real recordings (6 speakers x 10 digits x 10 takes, 8 kHz int16, CC BY-SA 4.0)
    read back at 16 kHz (soxr), peak-normalised, with labels and speaker names; one speaker or a list
    selects; an unknown name is named."""
    p = Path(str(DEMO.joinpath("fsdd.npz")))
    assert p.is_file() and p.stat().st_size <= 4e6
    with p.open("rb") as f, np.load(f) as z:
        assert z["audio"].dtype == np.int16 and int(z["sample_rate"]) == 8000
        assert z["offsets"].shape == (601,) and z["offsets"][-1] == len(z["audio"])
        assert "CC BY-SA 4.0" in str(z["source"])
        raw = z["audio"][z["offsets"][0] : z["offsets"][1]]
    speakers = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    assert demo.real_speakers() == speakers
    waves, labels, who = demo.load_real_speech()
    assert len(waves) == len(labels) == len(who) == 600 and labels.dtype == np.uint8
    assert sorted(set(who.tolist())) == speakers
    for s in speakers:  # every speaker says every digit ten times
        assert np.array_equal(np.bincount(labels[who == s], minlength=10), np.full(10, 10)), s
    for w in waves:
        assert w.dtype == np.float32 and w.ndim == 1 and np.isfinite(w).all()
        assert 0.79 <= np.abs(w).max() <= 0.81
        assert 0.1 <= len(w) / demo.SAMPLE_RATE <= 1.5
    assert len(waves[0]) == 2 * len(raw)  # 8 kHz -> 16 kHz
    two, lab2, who2 = demo.load_real_speech(["theo", "lucas"])
    assert len(two) == 200 and set(who2.tolist()) == {"theo", "lucas"}
    one = demo.load_real_speech("theo")
    assert len(one[0]) == 100 and set(one[2].tolist()) == {"theo"}
    assert np.array_equal(one[0][0], waves[int(np.flatnonzero(who == "theo")[0])])
    with pytest.raises(ValueError, match="george"):
        demo.load_real_speech(["nobody"])
