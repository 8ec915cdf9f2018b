"""Issue 20, item 7 (truncated audio): decoding that stops before the end the file declares warns,
naming the file and how much was read, instead of embedding the fragment without a word."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import soundfile as sf

from onepeace.cli import main
from onepeace.errors import OnePeaceWarning
from onepeace.processing.audio import load_audio

SR = 16000
SECONDS = 3.4


def _encoded(fmt: str, subtype: str) -> bytes:
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(int(SECONDS * SR))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, SR, format=fmt, subtype=subtype)
    return buf.getvalue()


def _load(path) -> tuple[np.ndarray, list[str]]:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        wav = load_audio(str(path))
    return wav, [str(m.message) for m in w if issubclass(m.category, OnePeaceWarning)]


@pytest.mark.parametrize("fmt, subtype, ext", [("OGG", "VORBIS", "ogg"), ("OGG", "OPUS", "opus"),
                                               ("WAV", "PCM_16", "wav")])
def test_a_truncated_file_warns_naming_it_and_what_was_read(tmp_path, fmt, subtype, ext):
    data = _encoded(fmt, subtype)
    whole = tmp_path / f"whole.{ext}"
    whole.write_bytes(data)
    wav, caught = _load(whole)
    assert len(wav) == int(SECONDS * SR) and caught == []  # a whole file: no word
    cut = tmp_path / f"x.{ext}"
    cut.write_bytes(data[: len(data) * 6 // 10])
    wav, caught = _load(cut)
    assert 0 < len(wav) < int(SECONDS * SR)
    assert len(caught) == 1 and str(cut) in caught[0] and "truncated or corrupt" in caught[0], caught
    assert f"decoding stopped at {len(wav) / SR:.1f} s" in caught[0]
    if ext == "wav":  # the header says how long it was
        assert f"of {SECONDS:.1f} s" in caught[0]


def test_the_command_line_shows_it_as_one_warning_line(tmp_path, capsys):
    import torch

    from onepeace.factory import create_model

    torch.manual_seed(0)
    create_model("tiny").save_pretrained(tmp_path / "m")
    data = _encoded("OGG", "VORBIS")
    (tmp_path / "x.ogg").write_bytes(data[: len(data) // 2])
    assert main(["embed", "--model", str(tmp_path / "m"), "--audio", str(tmp_path / "x.ogg"),
                 "--out", str(tmp_path / "e.npz")]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "x.ogg" in ln]
    assert len(err) == 1 and "warning" in err[0] and "truncated or corrupt" in err[0], err
