"""Issue 20, item 6: `onepeace eval retrieval` reads the manifests the project writes: the demo's
search manifest mixes image lines, audio lines and caption-only lines sharing labels; any
query/gallery pair of it works, and an unknown modality is refused before anything is read."""

from __future__ import annotations

import json
import os

import pytest
import torch

from onepeace import OnePeace, create_model
from onepeace.cli import main
from onepeace.config import get_preset

N_IMAGES, N_CLIPS = 20, 10


@pytest.fixture(scope="module")
def demo(tmp_path_factory, monkeypatch_module):
    """The demo's own search manifest (src/onepeace/search/demo.py write_media) on a few held-out
    digits, a tiny untrained model, and the same lines split into one manifest per kind."""
    import onepeace_train.demo.data as demo_data
    from onepeace_train.demo.search import write_media

    digits, speech = demo_data.load_digits, demo_data.load_speech
    monkeypatch_module.setattr(demo_data, "load_digits", lambda split=None: tuple(a[:N_IMAGES] for a in digits(split)))
    monkeypatch_module.setattr(demo_data, "load_speech", lambda split=None: tuple(a[:N_CLIPS] for a in speech(split)))
    run = tmp_path_factory.mktemp("run")
    manifest = write_media(str(run))
    cfg = get_preset("tiny")
    cfg.modalities["image"] = {"image_size": 32}
    torch.manual_seed(0)
    create_model(cfg, layer_scale_init=0.1).save_pretrained(run / "model")
    lines = [json.loads(x) for x in open(manifest, encoding="utf-8")]
    split = {}
    for kind in ("image", "audio"):
        split[kind] = str(run / "index-media" / f"{kind}.jsonl")
        with open(split[kind], "w", encoding="utf-8") as f:
            f.writelines(json.dumps(x) + "\n" for x in lines if kind in x)
    return {"manifest": manifest, "model": str(run / "model"), "lines": lines, "split": split, "run": run}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _eval(capsys, demo, query, gallery, *data, out=None):
    out = out or str(demo["run"] / f"{query}-{gallery}-{len(os.listdir(demo['run']))}.json")
    args = ["eval", "retrieval", "--model", demo["model"], "--query", query, "--gallery", gallery, "--out", out]
    for d in data or (demo["manifest"],):
        args += ["--data", d]
    code = main(args)
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "Traceback" not in cap.err
    return json.loads(open(out).read())[f"{query}->{gallery}"]


def test_the_demo_manifest_is_mixed(demo):
    kinds = {tuple(k for k in ("image", "audio") if k in x) for x in demo["lines"]}
    assert kinds == {("image",), ("audio",), ()}  # image lines, audio lines, caption-only lines


def test_audio_to_image_on_the_mixed_manifest_equals_the_split_manifests(capsys, demo):
    mixed = _eval(capsys, demo, "audio", "image")
    split = _eval(capsys, demo, "audio", "image", demo["split"]["audio"], demo["split"]["image"])
    assert mixed == split
    labels_img = [x["label"] for x in demo["lines"] if "image" in x]
    labels_aud = [x["label"] for x in demo["lines"] if "audio" in x]
    assert mixed["protocol"] == "class" and mixed["queries"] == N_CLIPS and mixed["gallery"] == N_IMAGES
    # chance: the mean share of the gallery showing the query's digit (only queries with a match are scored)
    scored = [lab for lab in labels_aud if lab in labels_img]
    chance = sum(labels_img.count(lab) / len(labels_img) for lab in scored) / len(scored) * 100
    assert mixed["chance"] == pytest.approx(chance, abs=1e-3)
    assert mixed.get("no_match", 0) == len(labels_aud) - len(scored)


@pytest.mark.parametrize("query,gallery", [("text", "image"), ("image", "text"), ("text", "audio"),
                                           ("audio", "text"), ("image", "audio")])
def test_every_pair_of_the_mixed_manifest_works(capsys, demo, query, gallery):
    m = _eval(capsys, demo, query, gallery)
    media = gallery if query == "text" else query
    texts = {x["text"] for x in demo["lines"] if media in x or not ({"image", "audio"} & set(x))}
    n = {"image": N_IMAGES, "audio": N_CLIPS}
    expect_q = len(texts) if query == "text" else n[query]
    expect_g = len(texts) if gallery == "text" else n[gallery]
    assert (m["queries"], m["gallery"]) == (expect_q, expect_g)
    labels = [x["label"] for x in demo["lines"] if media in x]
    assert m["protocol"] == ("class" if len(set(labels)) < len(labels) else "instance") and m["skipped"] == 0
    assert 0 <= m["R@1"] <= 100 and 1 <= m["mean_rank"] <= m["gallery"]


def test_caption_only_lines_join_the_text_side(capsys, demo, tmp_path):
    """A caption-only line of a class whose media are in the gallery is a query with relevant
    items (class protocol), and a gallery item that ranks against the captions of the media lines."""
    lines = [x for x in demo["lines"] if "image" in x]
    extra = {"text": "a picture of a very unusual digit", "label": lines[0]["label"]}
    path = tmp_path / "m.jsonl"
    base = os.path.dirname(demo["manifest"])
    rows = [{**x, "image": os.path.join(base, x["image"])} for x in lines] + [extra]
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    with_extra = _eval(capsys, demo, "text", "image", str(path), out=str(tmp_path / "a.json"))
    without = _eval(capsys, demo, "text", "image", demo["split"]["image"], out=str(tmp_path / "b.json"))
    assert with_extra["queries"] == without["queries"] + 1
    rev = _eval(capsys, demo, "image", "text", str(path), out=str(tmp_path / "c.json"))
    assert rev["gallery"] == without["queries"] + 1


def test_unlabelled_caption_only_lines_are_distractors_and_unmatched_queries(capsys, demo, tmp_path):
    lines = [{"image": os.path.join(os.path.dirname(demo["manifest"]), x["image"]), "text": f"caption {i}"}
             for i, x in enumerate(x for x in demo["lines"] if "image" in x)]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in [*lines, {"text": "a distractor"}]))
    m = _eval(capsys, demo, "text", "image", str(path), out=str(tmp_path / "a.json"))
    assert m["protocol"] == "instance" and m["queries"] == len(lines) + 1 and m["no_match"] == 1
    r = _eval(capsys, demo, "image", "text", str(path), out=str(tmp_path / "b.json"))
    assert r["gallery"] == len(lines) + 1 and "no_match" not in r


def test_mixed_labelling_of_caption_only_lines_is_one_line(capsys, demo, tmp_path):
    path = tmp_path / "m.jsonl"
    img = os.path.join(os.path.dirname(demo["manifest"]), next(x["image"] for x in demo["lines"] if "image" in x))
    path.write_text(json.dumps({"image": img, "text": "a", "label": 1}) + "\n" + json.dumps({"text": "b"}) + "\n")
    code = main(["eval", "retrieval", "--model", demo["model"], "--data", str(path), "--query", "text",
                 "--gallery", "image"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "label all lines or none" in err, err


@pytest.mark.parametrize("query,gallery,message", [("smell", "image", "--query 'smell'"),
                                                   ("text", "smell", "--gallery 'smell'"),
                                                   ("image", "image", "both image")])
def test_unknown_modalities_are_refused_before_the_model_and_the_data(capsys, monkeypatch, demo, query, gallery,
                                                                       message):
    def refuse(*args, **kwargs):
        raise AssertionError("loaded before the modalities were checked")

    monkeypatch.setattr(OnePeace, "from_pretrained", refuse)
    monkeypatch.setattr("onepeace.data.dataset.make_loader", refuse)
    code = main(["eval", "retrieval", "--model", demo["model"], "--data", demo["manifest"], "--query", query,
                 "--gallery", gallery])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_a_modality_the_model_lacks_is_refused_before_decoding(monkeypatch, demo):
    from onepeace.errors import InputError
    from onepeace.tasks.evaluate import evaluate_retrieval

    model = OnePeace.from_pretrained(demo["model"])
    model.modality_names = [m for m in model.modality_names if m != "audio"]

    def refuse(*args, **kwargs):
        raise AssertionError("data were read before the modalities were checked")

    monkeypatch.setattr("onepeace.data.dataset.make_loader", refuse)
    with pytest.raises(InputError, match="--query 'audio'"):
        evaluate_retrieval(model, [demo["manifest"]], "audio", "image")


def test_a_pair_without_lines_is_refused_before_decoding(monkeypatch, demo):
    from onepeace.errors import InputError
    from onepeace.tasks.evaluate import evaluate_retrieval

    model = OnePeace.from_pretrained(demo["model"])

    def refuse(*args, **kwargs):
        raise AssertionError("data were decoded before the manifest was checked")

    monkeypatch.setattr("onepeace.data.dataset.make_loader", refuse)
    with pytest.raises(InputError, match="no audio samples"):
        evaluate_retrieval(model, [demo["split"]["image"]], "audio", "image")
