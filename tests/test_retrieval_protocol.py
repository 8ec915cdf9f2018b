"""Retrieval over distinct items: galleries and queries de-duplicated by identity, instance vs class
protocol, against brute-force references; skipped inputs reported on stderr and in the JSON."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

import onepeace
from onepeace.cli import main
from onepeace.data.dataset import make_loader
from onepeace.data.manifest import write_manifest
from onepeace.data.shards import write_shards_from_samples
from onepeace.tasks.retrieval import Rows, pair_metrics, retrieval_metrics
from onepeace_train.recipe import TrainConfig
from onepeace_train.trainer import PretrainJob

STEM = [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2
KS = (1, 5, 10)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def brute_force(queries: dict, gallery: dict, relevant) -> dict:
    """Plain loops over distinct items: ``queries`` / ``gallery`` map item -> vector,
    ``relevant(q, g)`` -> bool. Rank of the first relevant gallery item per query."""
    ranks, shares = [], []
    for q, zq in queries.items():
        order = sorted(gallery, key=lambda g: -float(np.dot(zq, gallery[g])))
        ranks.append(next(r for r, g in enumerate(order) if relevant(q, g)))
        shares.append(sum(relevant(q, g) for g in gallery) / len(gallery))
    out = {f"R@{k}": 100 * sum(r < k for r in ranks) / len(ranks) for k in KS if k <= len(gallery)}
    out["mean_rank"] = sum(r + 1 for r in ranks) / len(ranks)
    out["chance"] = 100 * sum(shares) / len(shares)
    return out


def assert_matches(got: dict, ref: dict) -> None:
    assert {k for k in got if k.startswith("R@")} == {k for k in ref if k.startswith("R@")}
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k


def test_five_captions_per_image_match_brute_force():
    """COCO-like: 6 images x 5 captions = 30 lines; one caption string belongs to two images."""
    g = torch.Generator().manual_seed(0)
    images = {f"img{i}.jpg": _unit(torch.randn(16, generator=g)).double() for i in range(6)}
    lines = []
    for i, name in enumerate(images):
        for j in range(5):
            cap = "a photo" if (j == 4 and i < 2) else f"caption {j} of {name}"
            lines.append((name, cap, i))
    captions = {}
    for name, cap, _ in lines:  # a caption near its image(s), noisy enough that ranks vary
        captions.setdefault(cap, _unit(images[name] + 1.2 * torch.randn(16, generator=g).double()))
    media = Rows(torch.stack([images[n] for n, _, _ in lines]), [n for n, _, _ in lines])
    texts = Rows(torch.stack([captions[c] for _, c, _ in lines]), [c for _, c, _ in lines], media=False)
    pairs = {(n, c) for n, c, _ in lines}
    ref_i2t = brute_force({k: v.numpy() for k, v in images.items()}, {k: v.numpy() for k, v in captions.items()},
                          lambda q, c: (q, c) in pairs)
    ref_t2i = brute_force({k: v.numpy() for k, v in captions.items()}, {k: v.numpy() for k, v in images.items()},
                          lambda c, q: (q, c) in pairs)
    assert 0 < ref_i2t["R@1"] < 100 and 0 < ref_t2i["R@1"] < 100  # the toy set is not trivial
    for labels in (None, [i for _, _, i in lines]):  # no label, or label = image: both instance-level
        media.labels, texts.labels = labels, labels
        res = pair_metrics(media, texts, "image")
        i2t, t2i = res["image->text"], res["text->image"]
        assert i2t["protocol"] == t2i["protocol"] == "instance"
        assert (i2t["queries"], i2t["gallery"]) == (6, 29) and (t2i["queries"], t2i["gallery"]) == (29, 6)
        assert_matches(i2t, ref_i2t)
        assert_matches(t2i, ref_t2i)
        assert 1 <= t2i["mean_rank"] <= 6 and 1 <= i2t["mean_rank"] <= 29
        assert i2t["chance"] == pytest.approx(100 * (4 * 5 + 2 * 5) / 6 / 29)  # every image has 5 of 29


def test_class_level_with_one_prompt_per_class():
    """The demo's evaluation: 30 images of 10 digits, one fixed prompt per digit, so the text rows
    are 3 copies of 10 strings; relevance is the digit, over 10 distinct captions."""
    g = torch.Generator().manual_seed(1)
    protos = _unit(torch.randn(10, 16, generator=g)).double()
    labels = [i % 10 for i in range(30)]
    zi = _unit(protos[labels] + 0.9 * torch.randn(30, 16, generator=g).double())
    zt = protos[labels]  # the same prompt embeds the same
    media = Rows(zi, [f"digit-{i}.png" for i in range(30)], labels)
    texts = Rows(zt, [f"the number {lab}" for lab in labels], labels, media=False)
    res = pair_metrics(media, texts, "image")
    i2t, t2i = res["image->text"], res["text->image"]
    assert i2t["protocol"] == t2i["protocol"] == "class"
    assert (i2t["queries"], i2t["gallery"], t2i["queries"], t2i["gallery"]) == (30, 10, 10, 30)
    imgs = {i: zi[i].numpy() for i in range(30)}
    caps = {d: protos[d].numpy() for d in range(10)}
    assert_matches(i2t, brute_force(imgs, caps, lambda i, d: labels[i] == d))
    assert_matches(t2i, brute_force(caps, imgs, lambda d, i: labels[i] == d))
    assert i2t["R@1"] < i2t["R@5"] < i2t["R@10"] == 100.0  # 10 distinct captions, not 30 copies
    assert i2t["chance"] == pytest.approx(10.0) and t2i["chance"] == pytest.approx(10.0)
    # forcing instance-level on class labels: a caption matches the images it is written for,
    # which for one prompt per class is again its class
    forced = pair_metrics(media, texts, "image", protocol="instance")["image->text"]
    assert forced["protocol"] == "instance" and forced["R@1"] == i2t["R@1"]


def test_emergent_pairs_need_labels_and_count_unmatched_queries():
    g = torch.Generator().manual_seed(2)
    za, zi = _unit(torch.randn(5, 8, generator=g)), _unit(torch.randn(6, 8, generator=g))
    la, li = [0, 1, 2, 3, 9], [0, 0, 1, 1, 2, 3]  # label 9 has no image
    r = retrieval_metrics(Rows(za, labels=la), Rows(zi, labels=li))
    assert r["protocol"] == "class" and r["no_match"] == 1 and r["queries"] == 5 and r["gallery"] == 6
    ref = brute_force({i: za[i].numpy() for i in range(4)}, {j: zi[j].numpy() for j in range(6)},
                      lambda i, j: la[i] == li[j])
    assert_matches(r, ref)
    one_each = retrieval_metrics(Rows(za[:4], labels=[0, 1, 2, 3]), Rows(zi[:4], labels=[3, 2, 1, 0]))
    assert one_each["protocol"] == "instance"  # labels naming one item per modality
    with pytest.raises(onepeace.InputError, match="needs a 'label'"):
        retrieval_metrics(Rows(za), Rows(zi))
    with pytest.raises(onepeace.InputError, match="class-level retrieval needs a 'label'"):
        retrieval_metrics(Rows(za), Rows(za), paired=True, protocol="class")


@pytest.fixture(scope="module")
def tiny():
    return onepeace.create_model("tiny", layers=1, layer_scale_init=0.5, modalities={
        "text": {}, "image": {"image_size": 32}, "audio": {"stem": STEM}})


class _Trainer:
    """What PretrainJob.evaluate uses of a Trainer."""

    def __init__(self, model):
        self.pm = torch.nn.Module()
        self.pm.model = model
        self.module = lambda kind, m, inputs: model.embed_batch(m, inputs)
        self._autocast = contextlib.nullcontext


def test_demo_style_evaluation_is_class_level_over_distinct_items(tmp_path, tiny):
    """Shards as `onepeace demo` writes them (digit arrays, one prompt per digit, label = digit),
    through PretrainJob.evaluate (the demo's and periodic evaluation); one image is stored twice."""
    rng = np.random.default_rng(0)
    digits = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(20)]
    rows = [(digits[i], i % 10) for i in range(20)] + [(digits[3], 3)]  # the same bytes again
    write_shards_from_samples(({"image": x, "text": f"a handwritten digit {lab}", "label": lab, "id": f"i{k}"}
                               for k, (x, lab) in enumerate(rows)), tmp_path / "img", samples_per_shard=8)
    write_shards_from_samples(({"audio": rng.standard_normal(4000).astype(np.float32) * 0.1,
                                "text": f"someone saying {k % 10}", "label": k % 10} for k in range(20)),
                              tmp_path / "aud")
    cfg = TrainConfig()
    cfg.data.eval, cfg.data.batch_size = [str(tmp_path / "img"), str(tmp_path / "aud")], 8
    out = PretrainJob(cfg).evaluate(_Trainer(tiny))
    assert set(out) == {"image->text", "text->image", "audio->text", "text->audio", "audio->image", "image->audio"}
    assert all(m["protocol"] == "class" and m["skipped"] == 0 for m in out.values())
    shape = {p: (m["queries"], m["gallery"]) for p, m in out.items()}
    assert shape == {"image->text": (20, 10), "text->image": (10, 20), "audio->text": (20, 10),
                     "text->audio": (10, 20), "audio->image": (20, 20), "image->audio": (20, 20)}
    assert out["image->text"]["R@10"] == 100.0 and out["image->text"]["chance"] == pytest.approx(10.0)
    assert all(1 <= m["mean_rank"] <= m["gallery"] for m in out.values())


def _three_line_manifest(tmp_path, model):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    write_manifest(tmp_path / "val.jsonl", [{"image": "a.png", "text": "first"}, {"image": "gone.png", "text": "lost"},
                                            {"image": "b.png", "text": "second"}])
    model.save_pretrained(tmp_path / "m")
    return str(tmp_path / "val.jsonl")


def test_cli_reports_a_missing_image_on_stderr_and_in_the_json(tmp_path, capsys, tiny):
    data = _three_line_manifest(tmp_path, tiny)
    out = tmp_path / "r.json"
    assert main(["eval", "retrieval", "--model", str(tmp_path / "m"), "--data", data, "--query", "text",
                 "--gallery", "image", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    (line,) = [ln for ln in captured.err.splitlines() if "skipped" in ln]
    assert "skipped 1 of 3" in line and "gone.png" in line
    assert "instance-level, 2 queries, 2 distinct gallery items" in captured.out
    r = json.loads(out.read_text())["text->image"]
    assert r["skipped"] == 1 and r["queries"] == r["gallery"] == 2 and r["chance"] == 50.0
    assert r["protocol"] == "instance"
    # eval task counts in the JSON and says it on stderr too
    assert main(["eval", "task", "retrieval", "--model", str(tmp_path / "m"), "--data", data,
                 "--out", str(tmp_path / "t.json")]) == 0
    captured = capsys.readouterr()
    (line,) = [ln for ln in captured.err.splitlines() if "skipped" in ln]
    assert "skipped 1 of 3" in line and "val.jsonl:2" in line
    t = json.loads((tmp_path / "t.json").read_text())[data]
    assert t["skipped"] == 1 and t["text->image queries"] == 2 and t["protocol"] == "instance"


def test_skips_in_dataloader_workers_are_counted(tmp_path, tiny):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        if i % 3:
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "text": f"t{i}"})
    write_manifest(tmp_path / "m.jsonl", rows)
    config = tiny.config
    loader = make_loader(tmp_path / "m.jsonl", config, 2, num_workers=2, train=True, drop_last=False)
    assert sum(len(b["image"]["pixels"]) for b in loader) == 4
    assert loader.dataset.skipped == 2  # 0.png and 3.png, each skipped in a worker process


def test_finetune_reports_skipped_samples_at_the_end(tmp_path, capsys, tiny):
    data = _three_line_manifest(tmp_path, tiny)
    (tmp_path / "recipe.toml").write_text("""
[model]
preset = "tiny"
overrides = { layers = 1, modalities = { text = {}, image = { image_size = 32 } } }
[data]
batch_size = 3
[optim]
max_steps = 1
[train]
save_every = 0
progress = false
""")
    assert main(["finetune", "retrieval", str(tmp_path / "recipe.toml"), f"data.train={data}",
                 f"data.eval=['{data}']", "--output", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "onepeace finetune: skipped 1 training samples" in err
    assert f"onepeace finetune: skipped 1 samples of {data}" in err
    final = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["eval"][data]["skipped"] == 1
