"""The command line, in process and (for exit codes and messages) as a subprocess."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import DICT, TINY, maxdiff, needs_fixtures
from onepeace.cli import main


@needs_fixtures
def test_convert_then_embed_writes_npz_in_input_order(tmp_path, capsys, ref_out, texts):
    assert main(["convert", str(TINY / "one-peace-tiny.pt"), str(tmp_path / "m"), "--dict", str(DICT)]) == 0
    imgs = [str(TINY / "inputs" / "image1.png"), str(TINY / "inputs" / "image0.png")]
    args = ["embed", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "e.npz"), "--batch-size", "1"]
    for t in texts["texts"][:3]:
        args += ["--text", t]
    for i in imgs:
        args += ["--image", i]
    args += ["--audio", str(TINY / "inputs" / "audio0.wav")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "text x image cosine similarity" in out and "image x audio" in out
    e = np.load(tmp_path / "e.npz")
    assert set(e.files) == {"text", "image", "audio", "text_inputs", "image_inputs", "audio_inputs", "dtype"}
    assert e["text"].dtype == np.float32 and list(e["image_inputs"]) == imgs
    assert maxdiff(e["text"], ref_out["text_embed_single"][:3]) <= 1e-5
    assert maxdiff(e["image"], ref_out["image_embed_single"][::-1]) <= 1e-5
    assert maxdiff(e["audio"], ref_out["audio_embed_single"][:1]) <= 1e-5
    assert main(["embed", "--model", str(tmp_path / "m"), "--dtype", "bf16", "--text", "a cat"]) == 0


@pytest.mark.slow
def test_demo_runs_and_saves(tmp_path, capsys):
    assert main(["demo", "--samples", "--save", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "text x image cosine similarity" in out and (tmp_path / "d" / "config.json").exists()
    assert main(["info", str(tmp_path / "d")]) == 0
    assert "parameters:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["embed", "--model", "/nonexistent/model", "--text", "x"], "model directory not found"),
        (["convert", "/nonexistent.pt", "/tmp/x"], "checkpoint not found"),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(args, message):
    r = subprocess.run([sys.executable, "-m", "onepeace", *args], capture_output=True, text=True)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_bad_inputs_via_cli(tmp_path, capsys):
    assert main(["demo", "--samples", "--save", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    assert main(["embed", "--model", str(tmp_path / "d"), "--image", str(tmp_path / "bad.jpg")]) == 2
    err = capsys.readouterr().err
    assert "cannot decode image" in err and "bad.jpg" in err
    assert main(["embed", "--model", str(tmp_path / "d")]) == 2
    assert main(["embed", "--model", str(tmp_path / "d"), "--text", "x", "--out", "/nonexistent/dir/e.npz"]) == 2
