"""Downstream pieces: retrieval metrics, zero-shot, retrieval evaluation and the prediction CLIs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import onepeace
from conftest import (
    DICT,
    EPS32,
    ROW_GBOX,
    ROW_VGG,
    TINY,
    assert_parity,
    load_fp64,
    maxdiff,
    model_depth,
    needs_fixtures,
)
from onepeace.cli import main
from onepeace.tasks.retrieval import Rows, retrieval_metrics
from onepeace.tasks.zeroshot import class_embeddings, parse_labels, zero_shot


def _reference_metrics(q, g, lq, lg, ks=(1, 5, 10)):
    """Plain loops: rank of the first relevant gallery item per query."""
    ranks, shares = [], []
    for i in range(q.shape[0]):
        sims = [(float(q[i] @ g[j]), j) for j in range(g.shape[0])]
        sims.sort(key=lambda t: -t[0])
        rank = next(r for r, (_, j) in enumerate(sims) if lq[i] == lg[j])
        ranks.append(rank)
        shares.append(sum(1 for j in range(g.shape[0]) if lq[i] == lg[j]) / g.shape[0])
    out = {f"R@{k}": 100 * sum(r < k for r in ranks) / len(ranks) for k in ks}
    out["mean_rank"] = sum(r + 1 for r in ranks) / len(ranks)
    out["chance"] = 100 * sum(shares) / len(shares)
    return out


def test_retrieval_metrics_match_reference():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(30, 8, generator=g), dim=-1)
    gal = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=-1)
    lq, lg = torch.randint(0, 4, (30,), generator=g), torch.randint(0, 4, (40,), generator=g)
    lg[:4] = torch.arange(4)
    got = retrieval_metrics(Rows(q, labels=lq), Rows(gal, labels=lg))  # every row a distinct item
    ref = _reference_metrics(q, gal, lq.tolist(), lg.tolist())
    assert got["protocol"] == "class" and (got["queries"], got["gallery"]) == (30, 40)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-4), k
    diag = retrieval_metrics(Rows(q), Rows(q), paired=True)
    assert diag["R@1"] == 100.0 and diag["mean_rank"] == 1.0 and diag["protocol"] == "instance"


def test_parse_labels(tmp_path):
    assert parse_labels("cat, dog,bird") == ["cat", "dog", "bird"]
    (tmp_path / "l.txt").write_text("a\nb\n\nc\n")
    assert parse_labels(str(tmp_path / "l.txt")) == ["a", "b", "c"]
    (tmp_path / "l.json").write_text(json.dumps({"1": "y", "0": "x"}))
    assert parse_labels(str(tmp_path / "l.json")) == ["x", "y"]
    with pytest.raises(onepeace.InputError):
        parse_labels("single")


def test_zero_shot_ensembles_templates():
    m = onepeace.create_model("tiny", layers=1, layer_scale_init=0.5)
    labels, tpl = ["cat", "dog", "bird"], ["a {}", "the {} here"]
    c = class_embeddings(m, labels, tpl)
    per = m.embed(text=[t.format(lab) for lab in labels for t in tpl])["text"].view(3, 2, -1)
    assert torch.allclose(c, torch.nn.functional.normalize(per.mean(1), dim=-1), atol=1e-6)
    p = zero_shot(m, labels, templates=tpl, audio=[np.zeros(16000, np.float32), np.ones(20000, np.float32)])
    assert p["audio"].shape == (2, 3) and torch.allclose(p["audio"].sum(-1), torch.ones(2), atol=1e-5)
    with pytest.raises(onepeace.InputError, match="template"):
        class_embeddings(m, labels, ["no slot"])


@needs_fixtures
def test_ground_and_classify_commands_reproduce_official(converted, tmp_path, capsys, ref_out, texts):
    args = ["ground", "--model", str(converted["one-peace-tiny-grounding-refcocog"])]
    for img, txt in texts["grounding_pairs"]:
        args += ["--image", str(TINY / "inputs" / img), "--text", txt]
    assert main(args) == 0
    printed = capsys.readouterr().out
    boxes = [json.loads(line)["box"] for line in printed.strip().splitlines()]
    # the command prints the API's boxes rounded (to at most half a unit of the last decimal shown);
    # the API's boxes are held to the derived parity tolerance
    g = onepeace.OnePeace.from_pretrained(converted["one-peace-tiny-grounding-refcocog"])
    imgs, caps = [str(TINY / "inputs" / i) for i, _ in texts["grounding_pairs"]], [t for _, t in texts["grounding_pairs"]]
    api = g.ground(imgs, caps)
    decimals = max(len(v.partition(".")[2]) for b in re.findall(r'"box": \[([^\]]*)\]', printed) for v in b.split(","))
    assert maxdiff(boxes, api) <= 0.5 * 10.0**-decimals + EPS32 * float(api.abs().max())
    depth = model_depth(g) + 1
    assert_parity(api, load_fp64(converted["one-peace-tiny-grounding-refcocog"]).ground(imgs, caps),
                  ref_out["grounding_coords"], depth=depth, row=ROW_GBOX)
    out = tmp_path / "logits.npz"
    audios = [str(TINY / "inputs" / "audio0.wav"), str(TINY / "inputs" / "audio1.wav")]
    assert main(["classify", "--model", str(converted["one-peace-tiny-vggsound"]), "--official-padding-leak",
                 "--audio", audios[0], "--audio", audios[1], "--out", str(out)]) == 0
    v64 = load_fp64(converted["one-peace-tiny-vggsound"])
    v64.adapters["audio"].official_padding_leak = True
    assert_parity(np.load(out)["logits"], v64.classify(audio=audios), ref_out["vggsound_logits"], depth=depth, row=ROW_VGG)
    assert "audio0.wav:" in capsys.readouterr().out
    # the retrieval model has no head: a clear error
    assert main(["classify", "--model", str(converted["one-peace-tiny"]), "--image", str(TINY / "inputs" / "image0.png")]) == 2


@needs_fixtures
def test_convert_with_labels_names_the_classes(tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(309)))
    assert main(["convert", str(TINY / "one-peace-tiny-vggsound.pt"), str(tmp_path / "v"), "--labels", str(labels)]) == 0
    assert main(["classify", "--model", str(tmp_path / "v"), "--audio", str(TINY / "inputs" / "audio0.wav"), "--top-k", "2"]) == 0
    assert "class " in capsys.readouterr().out
    assert DICT.exists()


@pytest.mark.slow
def test_zeroshot_and_eval_commands(tmp_path, capsys):
    import soundfile as sf
    from PIL import Image

    from onepeace.data.manifest import write_manifest

    m = onepeace.create_model("tiny", layers=1, layer_scale_init=0.5,
                              modalities={"text": {}, "image": {"image_size": 32}, "audio": {"stem": [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2}})
    m.save_pretrained(tmp_path / "m")
    rng = np.random.default_rng(0)
    imgs, auds = [], []
    for i in range(6):
        Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(tmp_path / f"i{i}.png")
        sf.write(tmp_path / f"a{i}.wav", rng.standard_normal(8000).astype(np.float32) * 0.1, 16000)
        imgs.append({"image": f"i{i}.png", "text": f"thing {i % 3}", "label": i % 3})
        auds.append({"audio": f"a{i}.wav", "text": f"sound {i % 3}", "label": i % 3})
    write_manifest(tmp_path / "img.jsonl", imgs)
    write_manifest(tmp_path / "aud.jsonl", auds)
    assert main(["zeroshot", "--model", str(tmp_path / "m"), "--labels", "a,b,c", "--image", str(tmp_path / "i0.png"),
                 "--audio", str(tmp_path / "a0.wav"), "--top-k", "2", "--out", str(tmp_path / "z.npz")]) == 0
    z = np.load(tmp_path / "z.npz")
    assert z["image"].shape == (1, 3) and list(z["labels"]) == ["a", "b", "c"]
    out = tmp_path / "r.json"
    assert main(["eval", "retrieval", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "img.jsonl"),
                 "--data", str(tmp_path / "aud.jsonl"), "--query", "audio", "--gallery", "image", "--out", str(out)]) == 0
    r = json.loads(out.read_text())["audio->image"]
    assert r["chance"] == pytest.approx(100 / 3, abs=1e-3) and 0 <= r["R@1"] <= 100
    assert main(["eval", "retrieval", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "img.jsonl"),
                 "--query", "image", "--gallery", "text"]) == 0
    assert "image -> text" in capsys.readouterr().out
    assert main(["eval", "retrieval", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "img.jsonl"),
                 "--query", "audio", "--gallery", "image"]) == 2
