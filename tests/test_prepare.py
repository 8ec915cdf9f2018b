"""`onepeace data prepare`: ESC folds, COCO retrieval/grounding/segmentation manifests, RLE decoding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from onepeace.cli import main
from onepeace.data.prepare import decode_rle, prepare_coco, prepare_esc, rle_from_string
from onepeace.errors import InputError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "esc10").is_dir() or not (DATA / "coco-mini").is_dir(),
                                reason="../shared/data is absent (developer/CI machines only)")


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _resolve(manifest, rel):
    return os.path.normpath(os.path.join(os.path.dirname(manifest), rel))


def test_esc_folds(tmp_path):
    root = tmp_path / "esc"
    for cls in ("002 - Rain", "001 - Dog bark"):
        (root / cls).mkdir(parents=True)
        for fold in (1, 2, 3):
            sf.write(root / cls / f"{fold}-1{fold}-A.ogg", np.zeros(800, np.float32), 8000)
    (root / "README.txt").write_text("not a class")
    s = prepare_esc(str(root), str(tmp_path / "out"))
    assert s["classes"] == 2 and s["clips"] == 6 and s["folds"] == {1: 2, 2: 2, 3: 2}
    assert (tmp_path / "out" / "labels.txt").read_text() == "Dog bark\nRain\n"
    for k in (1, 2, 3):
        train = _rows(tmp_path / "out" / f"fold{k}" / "train.jsonl")
        test = _rows(tmp_path / "out" / f"fold{k}" / "test.jsonl")
        assert {r["fold"] for r in test} == {k} and k not in {r["fold"] for r in train}
        assert len(train) + len(test) == 6
        for r in test:
            p = _resolve(tmp_path / "out" / f"fold{k}" / "test.jsonl", r["audio"])
            assert os.path.isfile(p)
            assert r["label"] == (0 if "Dog bark" in p else 1)
    (root / "001 - Dog bark" / "bad.ogg").write_bytes(b"")
    with pytest.raises(InputError, match="fold number"):
        prepare_esc(str(root), str(tmp_path / "out2"))
    with pytest.raises(InputError, match="not a directory"):
        prepare_esc(str(tmp_path / "nope"), str(tmp_path / "out3"))


def _encode_rle(mask: np.ndarray) -> list[int]:
    flat = mask.T.flatten().astype(np.uint8)  # column-major
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return counts


def _to_string(counts: list[int]) -> str:
    """The inverse of COCO's compressed RLE string format, written independently for the test."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        while True:
            chunk = x & 0x1F
            x >>= 5
            more = not ((x == 0 and not chunk & 0x10) or (x == -1 and chunk & 0x10))
            out.append(chr(chunk + 48 + (0x20 if more else 0)))
            if not more:
                break
    return "".join(out)


def test_rle_decoding_round_trips():
    rng = np.random.default_rng(0)
    for shape in ((7, 5), (13, 17), (40, 31)):
        m = rng.random(shape) < 0.3
        m[2:5, 1:4] = True
        counts = _encode_rle(m)
        assert np.array_equal(decode_rle({"size": list(shape), "counts": counts}), m)
        assert rle_from_string(_to_string(counts)) == counts
        assert np.array_equal(decode_rle({"size": list(shape), "counts": _to_string(counts)}), m)
    # a known case: 2x2 with only the bottom-left pixel set -> runs [1, 1, 2] column-major
    assert decode_rle({"size": [2, 2], "counts": [1, 1, 2]}).tolist() == [[False, False], [True, False]]
    with pytest.raises(InputError):
        decode_rle({"size": [2, 2], "counts": [1, 1]})


def _coco(tmp_path):
    root = tmp_path / "coco"
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True)
        Image.new("RGB", (20, 10)).save(root / f"{split}2017" / "a.jpg")
    (root / "annotations").mkdir()
    crowd = np.zeros((10, 20), bool)
    crowd[:, 15:] = True
    inst = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 20, "height": 10}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 80, "bbox": [0, 0, 10, 8],
             "segmentation": [[0, 0, 10, 0, 10, 8, 0, 8]]},
            {"id": 2, "image_id": 7, "category_id": 18, "iscrowd": 0, "area": 4, "bbox": [2, 2, 2, 2],
             "segmentation": [[2, 2, 4, 2, 4, 4, 2, 4]]},
            {"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 1, "area": 50, "bbox": [15, 0, 5, 10],
             "segmentation": {"size": [10, 20], "counts": _to_string(_encode_rle(crowd))}},
        ],
    }
    caps = {"images": inst["images"], "annotations": [{"id": i, "image_id": 7, "caption": f" cap {i} "} for i in range(3)]}
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(inst))
        (root / "annotations" / f"captions_{split}2017.json").write_text(json.dumps(caps))
    return root


def test_coco_manifests_and_masks(tmp_path):
    out = tmp_path / "out"
    s = prepare_coco(str(_coco(tmp_path)), str(out))
    assert s["categories"] == 2 and s["val"]["retrieval_pairs"] == 3
    assert (out / "categories.txt").read_text() == "background\nperson\ndog\n"
    ret = _rows(out / "val_retrieval.jsonl")
    assert [r["text"] for r in ret] == ["cap 0", "cap 1", "cap 2"] and {r["label"] for r in ret} == {0}
    assert os.path.isfile(_resolve(out / "val_retrieval.jsonl", ret[0]["image"]))
    # "person" also has a crowd region, so the phrase is ambiguous: only the dog is a query
    ground = _rows(out / "val_grounding.jsonl")
    assert {r["text"]: r["box"] for r in ground} == {"dog": [2, 2, 4, 4]}
    seg = _rows(out / "val_segmentation.jsonl")
    m = np.asarray(Image.open(_resolve(out / "val_segmentation.jsonl", seg[0]["mask"])))
    assert m.shape == (10, 20)
    assert m[3, 3] == 2  # the small dog on top of the person
    assert m[1, 1] == 1 and m[9, 12] == 0 and m[5, 17] == 255


def test_coco_errors(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        prepare_coco(str(tmp_path / "nope"), str(tmp_path / "o"))
    (tmp_path / "c").mkdir()
    with pytest.raises(InputError, match="not found"):
        prepare_coco(str(tmp_path / "c"), str(tmp_path / "o"))


def test_prepare_commands(tmp_path, capsys):
    assert main(["data", "prepare", "coco", "--root", str(_coco(tmp_path)), "--out", str(tmp_path / "o"),
                 "--splits", "val", "--tasks", "grounding"]) == 0
    assert json.loads(capsys.readouterr().out)["val"]["grounding_queries"] == 1
    assert main(["data", "prepare", "esc", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "e")]) == 2


@needs_data
def test_real_data(tmp_path):
    s = prepare_esc(str(DATA / "esc10"), str(tmp_path / "esc"))
    assert s["classes"] == 10 and s["clips"] == 400 and s["folds"] == {k: 80 for k in range(1, 6)}
    c = prepare_coco(str(DATA / "coco-mini"), str(tmp_path / "coco"))
    assert c["val"]["images"] == 79 and c["val"]["retrieval_pairs"] >= 5 * 79
    k = c["categories"]
    saw_objects = False
    for r in _rows(tmp_path / "coco" / "val_segmentation.jsonl")[:20]:
        m = np.asarray(Image.open(_resolve(tmp_path / "coco" / "val_segmentation.jsonl", r["mask"])))
        vals = set(np.unique(m).tolist())
        assert vals <= set(range(k + 1)) | {255}
        saw_objects |= bool(vals - {0, 255})
    assert saw_objects
    for r in _rows(tmp_path / "coco" / "val_grounding.jsonl"):
        with Image.open(_resolve(tmp_path / "coco" / "val_grounding.jsonl", r["image"])) as im:
            w, h = im.size
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 < x1 <= w + 0.5 and 0 <= y0 < y1 <= h + 0.5
