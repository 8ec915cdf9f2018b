"""Issue 23: a local MTEB image-text retrieval task from real data (COCO-MINI, through MTEB's
AbsTaskRetrieval, both directions), scored by MTEB and by onepeace's own retrieval evaluation (what
`onepeace eval retrieval` runs) on the same images and captions. MTEB's hit_rate@K is onepeace's
R@K; MTEB's recall@K counts the share of a query's relevant documents in the top K (image -> text:
five captions), so it differs there and only there. Skips when ../shared/data/coco-mini is absent."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("mteb")

import onepeace  # noqa: E402
from conftest import SHARED  # noqa: E402
from onepeace.errors import InputError  # noqa: E402

COCO = SHARED / "data" / "coco-mini"
IMAGES = 12


def test_not_a_coco_folder(tmp_path):
    from onepeace.integrations.mteb_tasks import coco_retrieval

    with pytest.raises(InputError, match="is not a COCO folder"):
        coco_retrieval(tmp_path)
    with pytest.raises(InputError, match="direction"):
        coco_retrieval(tmp_path, "a2t")


@pytest.mark.slow
@pytest.mark.skipif(not COCO.is_dir(), reason="COCO-MINI is not at ../shared/data/coco-mini (developer and CI machines only)")
def test_coco_retrieval_mteb_agrees_with_onepeace_eval(tmp_path):
    import mteb

    from onepeace.integrations.mteb import OnePeaceEncoder
    from onepeace.integrations.mteb_tasks import coco_files, coco_retrieval
    from onepeace.tasks.evaluate import evaluate_retrieval

    torch.manual_seed(0)
    model = onepeace.create_model("tiny", layers=1)
    with torch.no_grad():  # layer scale at 1, not its 1e-6 init: inputs get embeddings apart (no ties to rank)
        for name, p in model.named_parameters():
            if name.endswith(("gamma_1", "gamma_2")):
                p.fill_(1.0)
    tasks = [coco_retrieval(COCO, d, images=IMAGES) for d in ("i2t", "t2i")]
    res = mteb.evaluate(OnePeaceEncoder(model), tasks, cache=None, raise_error=True, show_progress_bar=False)
    mt = {r.task_name: r.scores["test"][0] for r in res.task_results}

    paths, captions = coco_files(COCO, "val", IMAGES)
    manifest = tmp_path / "val_retrieval.jsonl"
    manifest.write_text("".join(json.dumps({"image": p, "text": c, "label": i, "id": f"{i}-{k}"}) + "\n"
                                for i, (p, cs) in enumerate(zip(paths, captions)) for k, c in enumerate(cs)))
    ours = {d: evaluate_retrieval(model, [str(manifest)], *q) for d, q in
            (("I2T", ("image", "text")), ("T2I", ("text", "image")))}
    assert ours["I2T"]["queries"] == IMAGES and ours["I2T"]["gallery"] == 5 * IMAGES

    # a near-tie at the first relevant item could rank differently in MTEB's float32 and onepeace's float64
    img = model.embed(image=paths)["image"].double()
    txt = model.embed(text=[c for cs in captions for c in cs])["text"].double()
    sim = img @ txt.T
    own = torch.arange(5 * IMAGES) // 5
    for s, rel in ((sim, own[None, :] == torch.arange(IMAGES)[:, None]), (sim.T, own[:, None] == torch.arange(IMAGES)[None, :])):
        best = s.masked_fill(~rel, -2).max(1).values
        gap = (s - best[:, None]).abs().masked_fill(rel, 2).min(1).values
        assert bool((gap > 1e-5).all()), "a near-tie at a relevant item: the two protocols may rank apart"

    for d in ("I2T", "T2I"):
        m = mt[f"COCO{d}RetrievalLocal"]
        for k in (1, 5, 10):
            # MTEB rounds its scores to 5 decimals
            assert m[f"hit_rate_at_{k}"] == pytest.approx(ours[d][f"R@{k}"] / 100, abs=1e-5), (d, k)
    t2i = mt["COCOT2IRetrievalLocal"]
    assert all(t2i[f"recall_at_{k}"] == t2i[f"hit_rate_at_{k}"] for k in (1, 5, 10))  # one relevant image
    i2t = mt["COCOI2TRetrievalLocal"]
    assert i2t["recall_at_1"] == pytest.approx(i2t["hit_rate_at_1"] / 5, abs=1e-5)  # one of five captions at most


def _coco_folder(root, n=3):
    """A COCO 2017-shaped folder of ``n`` generated images, two captions each."""
    from PIL import Image

    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images, anns = [], []
    for i in range(n):
        Image.new("RGB", (32, 24), (80 * i, 40, 200 - 60 * i)).save(root / "val2017" / f"{i:012d}.jpg")
        images.append({"id": 10 + i, "file_name": f"{i:012d}.jpg", "width": 32, "height": 24})
        anns += [{"id": 100 + 2 * i + k, "image_id": 10 + i, "caption": f" colour {i} view {k} "} for k in range(2)]
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root


def test_coco_files_reads_a_coco_folder(tmp_path):
    from onepeace.integrations.mteb_tasks import coco_files

    paths, captions = coco_files(_coco_folder(tmp_path / "coco"))
    assert [p.rsplit("/", 1)[1] for p in paths] == [f"{i:012d}.jpg" for i in range(3)]
    assert captions[1] == ["colour 1 view 0", "colour 1 view 1"]  # stripped, in annotation id order
    for p in paths:
        (tmp_path / "coco" / "val2017" / p.rsplit("/", 1)[1]).unlink()
    with pytest.raises(InputError, match="no image of split 'val' with captions is on disk"):
        coco_files(tmp_path / "coco")


def test_mteb_command_runs_the_local_coco_tasks(tmp_path, capsys):
    """`make mteb MTEB_COCO=DIR`: both directions scored into MTEB's results folder."""
    from onepeace.integrations.mteb import main

    torch.manual_seed(0)
    onepeace.create_model("tiny", layers=1).save_pretrained(tmp_path / "m")
    rc = main(["--model", str(tmp_path / "m"), "--coco", str(_coco_folder(tmp_path / "coco")),
               "--output", str(tmp_path / "res")])
    assert rc == 0, capsys.readouterr()
    for name in ("COCOI2TRetrievalLocal", "COCOT2IRetrievalLocal"):
        files = list((tmp_path / "res").rglob(f"{name}.json"))
        assert len(files) == 1, name
        scores = json.loads(files[0].read_text())["scores"]["test"][0]
        assert 0.0 <= scores["recall_at_1"] <= scores["hit_rate_at_1"] <= 1.0
