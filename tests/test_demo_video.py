"""`make demo-video` in miniature: generated digit clips, the align recipe on a tiny tri-modal
model, held-out retrieval with the frame-average baseline, metrics.json in the demo's layout."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import onepeace
from onepeace.errors import OutputError

pytest.importorskip("av", reason="the video plug-in decodes with PyAV (pip install 'onepeace[video]')")

STEM = [[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 2, 2], [32, 2, 2]]


def test_moving_digit_moves_the_digit_across_the_frame():
    from onepeace_train.demo.video import CANVAS, FRAMES, moving_digit

    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[10:18, 12:16] = 255
    clip = moving_digit(digit, "to the right", random.Random(0))
    assert clip.shape == (FRAMES, CANVAS, CANVAS, 3) and clip.dtype == np.uint8
    cols = [np.nonzero(f[..., 0].sum(0))[0].mean() for f in clip]
    assert all(b >= a for a, b in zip(cols, cols[1:])) and cols[-1] - cols[0] > 8
    assert all(int(f.sum()) == int(clip[0].sum()) for f in clip)  # the whole digit in every frame


@pytest.mark.slow
def test_demo_video_end_to_end_on_a_tiny_model(tmp_path, capsys):
    from onepeace.cli import main
    from onepeace_train.demo.video import PAIRS

    model = onepeace.create_model("tiny", layers=1, modalities={"text": {}, "image": {"image_size": 32},
                                                                "audio": {"stem": STEM}})
    model.save_pretrained(tmp_path / "demo")
    out = tmp_path / "dv"
    args = ["demo-video", "--demo-model", str(tmp_path / "demo"), "--out", str(out), "--steps", "2",
            "--train-clips", "8", "--test-clips", "10"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "emergent: never trained on video-audio" in printed and "frame avg" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert set(PAIRS) <= set(m["retrieval"]) and set(PAIRS) <= set(m["baseline_frame_average"])
    for pair in PAIRS:
        r = m["retrieval"][pair]
        assert 0 <= r["R@1"] <= 100 and 0 < r["chance"] < 100 and r["protocol"] == "class"
    assert m["trained_pairs"] == ["video-text"]
    grown = onepeace.OnePeace.from_pretrained(out / "model")
    assert grown.modality_names == ["text", "image", "audio", "video"]
    assert not (out / "train" / "checkpoints").exists()  # removed once finished
    # a finished run is not overwritten without --force; one line, exit status 2
    assert main(args) == 2
    assert "holds a finished video demo" in capsys.readouterr().err
    with pytest.raises(OutputError, match="not a video demo directory"):
        from onepeace_train.demo.video import run_demo_video

        run_demo_video(str(tmp_path), str(tmp_path / "demo"))
