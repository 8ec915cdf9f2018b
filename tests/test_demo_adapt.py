"""`make demo-adapt`: the real-speech pairs it writes (whole speakers held out, captions from the
labels, the rehearsed synthetic clips) and, in miniature, the run on a tiny model: metrics.json
before and after, the adapter loadable with adapter=, a finished run refused without --force."""

from __future__ import annotations

import json

import pytest

import onepeace
from onepeace.errors import ConfigError, OutputError
from onepeace_train.demo import adapt as demo_adapt
from onepeace_train.demo.data import DIGIT_WORDS, eval_caption

STEM = [[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 2, 2], [32, 2, 2]]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_pairs_hold_out_whole_speakers_with_captions_from_the_labels(tmp_path):
    info = demo_adapt.write_pairs(str(tmp_path / "data"), ("theo", "yweweler"), seed=0)
    assert info["train_speakers"] == ["george", "jackson", "lucas", "nicolas"]
    assert (info["train_pairs"], info["rehearsal_pairs"], info["heldout_pairs"]) == (400, 330, 200)
    train, held = _rows(tmp_path / "data" / "train.jsonl"), _rows(tmp_path / "data" / "heldout.jsonl")
    assert len(train) == 730 and len(held) == 200
    real = [r for r in train if r["id"].split("-")[0] in info["train_speakers"]]
    assert len(real) == 400
    assert not {r["id"].split("-")[0] for r in train} & {"theo", "yweweler"}  # never trained on
    assert {r["id"].split("-")[0] for r in held} == {"theo", "yweweler"}
    for r in train:  # a caption from the demo's templates, naming the clip's digit
        assert DIGIT_WORDS[r["label"]] in r["text"].split() and (tmp_path / "data" / r["audio"]).is_file()
    assert all(r["text"] == eval_caption(r["label"], "audio") for r in held)
    assert len({r["text"] for r in real}) > 10  # several templates
    # depends only on the seed: rewritten elsewhere, the same captions
    again = demo_adapt.write_pairs(str(tmp_path / "again"), ("theo", "yweweler"), seed=0)
    assert _rows(tmp_path / "again" / "train.jsonl") == train and again["train_pairs"] == 400
    bare = demo_adapt.write_pairs(str(tmp_path / "bare"), ("george",), seed=1, rehearse=False)
    assert (bare["train_pairs"], bare["rehearsal_pairs"], bare["heldout_pairs"]) == (500, 0, 100)


@pytest.mark.parametrize("held", [(), ("nobody",), ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")])
def test_bad_held_out_speakers_are_refused(tmp_path, held):
    with pytest.raises(ConfigError, match="hold out"):
        demo_adapt.write_pairs(str(tmp_path / "d"), held)


def test_no_demo_model_is_one_line(tmp_path, capsys):
    from onepeace.cli import main

    assert main(["demo-adapt", "--demo-model", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "make demo" in err


@pytest.mark.slow
def test_demo_adapt_end_to_end_on_a_tiny_model(tmp_path, capsys, monkeypatch):
    pytest.importorskip("peft")
    from onepeace.cli import main

    model = onepeace.create_model("tiny", layers=1, modalities={"text": {}, "image": {"image_size": 32},
                                                                "audio": {"stem": STEM}})
    model.save_pretrained(tmp_path / "demo")
    monkeypatch.setitem(demo_adapt.DEFAULTS, "steps", 2)
    out = tmp_path / "da"
    args = ["demo-adapt", "--demo-model", str(tmp_path / "demo"), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "held-out speakers, zero-shot" in printed and "forgetting" in printed
    m = json.loads((out / "metrics.json").read_text())
    for key in ("heldout_zero_shot", "forgetting"):
        assert 0 <= m[key]["before"] <= 100 and 0 <= m[key]["after"] <= 100
        assert m[key]["change"] == pytest.approx(m[key]["after"] - m[key]["before"], abs=0.02)
    assert m["adapt"]["steps"] == 2 and m["data"]["heldout_speakers"] == list(demo_adapt.HELD_OUT)
    assert m["settings"]["targets"] == demo_adapt.TARGETS and m["settings"]["branches"] == "audio"
    adapted = onepeace.OnePeace.from_pretrained(tmp_path / "demo", adapter=out / "adapter")
    z = adapted.embed(audio=[str(out / "data" / "clips" / "0_theo_0.wav")])["audio"]
    assert z.shape[0] == 1
    # the figure after is the adapted model's: scoring it again gives the same numbers
    again = demo_adapt.score(adapted.eval(), str(out / "data" / "heldout.jsonl"),
                             demo_adapt.synthetic_test_set(str(out / "data")))
    assert again == {"zero-shot": m["heldout_zero_shot"]["after"], "demo audio->text R@1": m["forgetting"]["after"]}
    # a finished run is not overwritten without --force; one line, exit status 2
    assert main(args) == 2
    assert "holds a finished adapting demo" in capsys.readouterr().err
    with pytest.raises(OutputError, match="not an adapting demo directory"):
        demo_adapt.run_demo_adapt(str(tmp_path), str(tmp_path / "demo"))
