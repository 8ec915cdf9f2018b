"""`onepeace data prepare`: ESC folds, COCO retrieval/grounding/segmentation manifests, RLE decoding."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from onepeace.cli import main
from onepeace.data.prepare import decode_rle, prepare_coco, prepare_esc, rle_from_string
from onepeace.errors import InputError, OnePeaceError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "esc10").is_dir() or not (DATA / "coco-mini").is_dir(),
                                reason="../shared/data (esc10/, coco-mini/) is absent: developer/CI machines only")


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _resolve(manifest, rel):
    assert not os.path.isabs(rel), rel
    return os.path.normpath(os.path.join(os.path.dirname(manifest), rel))


# ---------------------------------------------------------------------------------------------- ESC
def _esc(tmp_path):
    root = tmp_path / "esc"
    for cls in ("002 - Rain", "001 - Dog bark"):
        (root / cls).mkdir(parents=True)
        for fold in (3, 1, 2):
            sf.write(root / cls / f"{fold}-1{fold}-A.ogg", np.zeros(800, np.float32), 8000)
    (root / "README.txt").write_text("not a class")
    return root


def test_esc_folds(tmp_path):
    root, out = _esc(tmp_path), tmp_path / "out"
    s = prepare_esc(str(root), str(out))
    assert s["classes"] == 2 and s["clips"] == 6 and s["folds"] == {1: 2, 2: 2, 3: 2}
    assert (out / "labels.txt").read_text() == "Dog bark\nRain\n"
    every = _rows(out / "all.jsonl")
    assert [r["id"] for r in every] == sorted(r["id"] for r in every)  # deterministic order
    assert every[0] == {"audio": every[0]["audio"], "label": 0, "text": "This is a sound of Dog bark.", "fold": 1,
                        "id": "001 - Dog bark/1-11-A"}
    all_ids = {r["id"] for r in every}
    for k in (1, 2, 3):
        train = _rows(out / f"fold{k}" / "train.jsonl")
        test = _rows(out / f"fold{k}" / "test.jsonl")
        assert {r["fold"] for r in test} == {k} and k not in {r["fold"] for r in train}
        tr, te = {r["id"] for r in train}, {r["id"] for r in test}
        assert not tr & te and tr | te == all_ids and len(train) + len(test) == 6
        for name, rows in (("train", train), ("test", test)):
            for r in rows:
                p = _resolve(out / f"fold{k}" / f"{name}.jsonl", r["audio"])
                assert os.path.isfile(p) and r["label"] == (0 if "Dog bark" in p else 1)
    # a second run is refused, unless overwrite; then it gives the same bytes
    before = (out / "fold2" / "train.jsonl").read_bytes()
    with pytest.raises(OnePeaceError, match="already holds a prepared data set"):
        prepare_esc(str(root), str(out))
    prepare_esc(str(root), str(out), overwrite=True)
    assert (out / "fold2" / "train.jsonl").read_bytes() == before
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_esc_errors(tmp_path):
    root = _esc(tmp_path)
    with pytest.raises(InputError, match="not a directory"):
        prepare_esc(str(tmp_path / "nope"), str(tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no class folders"):
        prepare_esc(str(tmp_path / "empty"), str(tmp_path / "o"))
    bad = root / "001 - Dog bark" / "bad.ogg"
    bad.write_bytes(b"")
    with pytest.raises(InputError, match=re.escape(str(bad)) + ".*fold number"):
        prepare_esc(str(root), str(tmp_path / "o"))
    bad.rename(root / "001 - Dog bark" / "123456-A-0.ogg")  # a Freesound id where the fold should be
    with pytest.raises(InputError, match="fold number"):
        prepare_esc(str(root), str(tmp_path / "o"))


# ---------------------------------------------------------------------------------------------- RLE
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


def _naive_decode(counts: list[int], h: int, w: int) -> np.ndarray:
    """Pixel by pixel: walk the runs down each column, left to right, starting with zeros."""
    m = np.zeros((h, w), bool)
    i, value = 0, False
    for c in counts:
        for _ in range(c):
            m[i % h, i // h] = value
            i += 1
        value = not value
    return m


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


def test_uncompressed_rle_matches_naive_decoding():
    rng = np.random.default_rng(1)
    for h, w in ((1, 1), (3, 4), (9, 6), (25, 30)):
        counts = []
        left = h * w
        while left:
            c = int(min(left, rng.integers(0, 7)))  # zero-length runs too
            counts.append(c)
            left -= c
        assert np.array_equal(decode_rle({"size": [h, w], "counts": counts}), _naive_decode(counts, h, w))
    # a known case: 2x2 with only the bottom-left pixel set -> runs [1, 1, 2] column-major
    assert decode_rle({"size": [2, 2], "counts": [1, 1, 2]}).tolist() == [[False, False], [True, False]]
    assert decode_rle({"size": [2, 3], "counts": [0, 6]}).all()
    with pytest.raises(InputError, match="not 2x2"):
        decode_rle({"size": [2, 2], "counts": [1, 1]})


def test_compressed_rle_round_trips():
    rng = np.random.default_rng(0)
    for shape in ((7, 5), (13, 17), (40, 31), (64, 300)):
        for p in (0.02, 0.3, 0.9):
            m = rng.random(shape) < p
            m[2:5, 1:4] = True
            counts = _encode_rle(m)
            s = _to_string(counts)
            assert rle_from_string(s) == counts
            assert np.array_equal(decode_rle({"size": list(shape), "counts": s}), m)
            assert np.array_equal(decode_rle({"size": list(shape), "counts": s.encode()}), m)
    # known strings: single 5-bit chunks; 100 = 4 + 3*32 -> 'T' (4|0x20) then '3';
    # the 4th run is stored as 2 - 5 = -3 -> 29 = 'M' (sign bit 0x10 set, no continuation)
    assert rle_from_string("112") == [1, 1, 2]
    assert rle_from_string("T3") == [100]
    assert rle_from_string("05:M") == [0, 5, 10, 2]
    assert _to_string([0, 5, 10, 2]) == "05:M"


# ---------------------------------------------------------------------------------------------- COCO
def _coco(tmp_path):
    """val: image 7 (20x10) with a big person, a small dog on it, a crowd region at the right, and a
    small crowd over the person; image 3 (8x6) with no instances. train: image 7 only."""
    root = tmp_path / "coco"
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True)
        Image.new("RGB", (20, 10), (200, 10, 10)).save(root / f"{split}2017" / "a.jpg")
    Image.new("RGB", (8, 6)).save(root / "val2017" / "b.jpg")
    (root / "annotations").mkdir()
    crowd = np.zeros((10, 20), bool)
    crowd[:, 15:] = True
    small_crowd = np.zeros((10, 20), bool)
    small_crowd[6:8, 6:8] = True
    cats = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}]
    a_jpg = {"id": 7, "file_name": "a.jpg", "width": 20, "height": 10}
    b_jpg = {"id": 3, "file_name": "b.jpg", "width": 8, "height": 6}
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 80, "bbox": [0, 0, 10, 8],
         "segmentation": [[0, 0, 10, 0, 10, 8, 0, 8]]},
        {"id": 2, "image_id": 7, "category_id": 18, "iscrowd": 0, "area": 4, "bbox": [2, 2, 2, 2],
         "segmentation": [[2, 2, 4, 2, 4, 4, 2, 4]]},
        {"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 1, "area": 50, "bbox": [15, 0, 5, 10],
         "segmentation": {"size": [10, 20], "counts": _to_string(_encode_rle(crowd))}},
        {"id": 4, "image_id": 7, "category_id": 5, "iscrowd": 1, "area": 4, "bbox": [6, 6, 2, 2],
         "segmentation": {"size": [10, 20], "counts": _encode_rle(small_crowd)}},
    ]
    for split, images in (("train", [a_jpg]), ("val", [a_jpg, b_jpg])):
        inst = {"images": images, "categories": cats, "annotations": anns}
        caps = {"images": images, "annotations": [{"id": 10 * im["id"] + i, "image_id": im["id"], "caption": f" cap {im['id']} {i} "}
                                                  for im in images for i in range(3)]}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(inst))
        (root / "annotations" / f"captions_{split}2017.json").write_text(json.dumps(caps))
    return root


def test_coco_manifests_and_masks(tmp_path):
    out = tmp_path / "out"
    s = prepare_coco(str(_coco(tmp_path)), str(out))
    assert s["categories"] == 3 and s["val"]["images"] == 2 and s["val"]["retrieval_pairs"] == 6
    assert s["train"] == {"images": 1, "retrieval_pairs": 3, "grounding_queries": 1, "segmentation_images": 1}
    assert (out / "categories.txt").read_text() == "background\nperson\nairplane\ndog\n"
    ret = _rows(out / "val_retrieval.jsonl")
    # images sorted by id: image 3 is label 0, image 7 label 1
    assert [(r["label"], r["id"], r["text"]) for r in ret[:4]] == [
        (0, "3-0", "cap 3 0"), (0, "3-1", "cap 3 1"), (0, "3-2", "cap 3 2"), (1, "7-0", "cap 7 0")]
    assert Image.open(_resolve(out / "val_retrieval.jsonl", ret[3]["image"])).size == (20, 10)
    # "person" also has a crowd region, so the phrase is ambiguous: only the dog is a query
    ground = _rows(out / "val_grounding.jsonl")
    assert ground == [{"image": ret[3]["image"], "text": "dog", "box": [2, 2, 4, 4], "id": "2"}]
    seg = {r["id"]: r for r in _rows(out / "val_segmentation.jsonl")}
    assert set(seg) == {"3", "7"}
    m = np.asarray(Image.open(_resolve(out / "val_segmentation.jsonl", seg["7"]["mask"])))
    assert m.dtype == np.uint8 and m.shape == (10, 20)
    assert m[3, 3] == 3  # the small dog on top of the person
    assert m[1, 1] == 1 and m[9, 12] == 0 and m[5, 17] == 255
    assert m[6, 6] == 255 and m[7, 7] == 255  # the small crowd region on top of the person
    assert set(np.unique(m).tolist()) == {0, 1, 3, 255}
    empty = np.asarray(Image.open(_resolve(out / "val_segmentation.jsonl", seg["3"]["mask"])))
    assert empty.shape == (6, 8) and not empty.any()
    assert seg["7"]["mask"] == os.path.join("masks", "val", "7.png")
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_coco_errors(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        prepare_coco(str(tmp_path / "nope"), str(tmp_path / "o"))
    (tmp_path / "c" / "val2017").mkdir(parents=True)
    with pytest.raises(InputError, match="captions_val2017.json"):
        prepare_coco(str(tmp_path / "c"), str(tmp_path / "o"), splits=["val"])
    with pytest.raises(InputError, match="instances_val2017.json"):
        prepare_coco(str(tmp_path / "c"), str(tmp_path / "o"), splits=["val"], tasks=["grounding"])
    with pytest.raises(InputError, match="train2017"):
        prepare_coco(str(tmp_path / "c"), str(tmp_path / "o"), splits=["train"])
    with pytest.raises(InputError, match="unknown COCO task"):
        prepare_coco(str(tmp_path / "c"), str(tmp_path / "o"), tasks=["captioning"])


def test_coco_retrieval_needs_no_instances_and_skips_missing_images(tmp_path):
    root = _coco(tmp_path)
    (root / "annotations" / "instances_val2017.json").unlink()
    (root / "val2017" / "b.jpg").unlink()
    s = prepare_coco(str(root), str(tmp_path / "o"), splits=["val"], tasks=["retrieval"])
    assert s["val"] == {"images": 1, "retrieval_pairs": 3, "missing_images": 1}
    assert {r["label"] for r in _rows(tmp_path / "o" / "val_retrieval.jsonl")} == {0}


def test_prepare_commands(tmp_path, capsys):
    assert main(["data", "prepare", "coco", "--root", str(_coco(tmp_path)), "--out", str(tmp_path / "o"),
                 "--splits", "val", "--tasks", "grounding", "segmentation"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["val"] == {"images": 2, "grounding_queries": 1, "segmentation_images": 2} and "train" not in s
    assert (tmp_path / "o" / "masks" / "val" / "7.png").is_file()
    assert not (tmp_path / "o" / "val_retrieval.jsonl").exists()
    assert main(["data", "prepare", "esc", "--root", str(_esc(tmp_path)), "--out", str(tmp_path / "e")]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["classes"] == 2 and s["clips"] == 6 and s["folds"] == {"1": 2, "2": 2, "3": 2}
    assert (tmp_path / "e" / "fold3" / "test.jsonl").is_file()
    assert main(["data", "prepare", "esc", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "not a directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- real data
@needs_data
def test_real_esc10(tmp_path):
    s = prepare_esc(str(DATA / "esc10"), str(tmp_path / "esc"))
    assert s["classes"] == 10 and s["clips"] == 400 and s["folds"] == {k: 80 for k in range(1, 6)}
    labels = (tmp_path / "esc" / "labels.txt").read_text().splitlines()
    assert labels[0] == "Dog bark" and len(labels) == 10
    for k in range(1, 6):
        test = _rows(tmp_path / "esc" / f"fold{k}" / "test.jsonl")
        assert len(test) == 80 and len(_rows(tmp_path / "esc" / f"fold{k}" / "train.jsonl")) == 320
        assert os.path.isfile(_resolve(tmp_path / "esc" / f"fold{k}" / "test.jsonl", test[0]["audio"]))


@needs_data
def test_real_coco_mini(tmp_path):
    out = tmp_path / "coco"
    c = prepare_coco(str(DATA / "coco-mini"), str(out), splits=["val"])
    assert c["val"]["images"] == 79 and "missing_images" not in c["val"]
    ret = _rows(out / "val_retrieval.jsonl")
    per_image: dict[int, int] = {}
    for r in ret:
        per_image[r["label"]] = per_image.get(r["label"], 0) + 1
    assert sorted(per_image) == list(range(79)) and min(per_image.values()) >= 5
    k = c["categories"]
    assert k == 80 and len((out / "categories.txt").read_text().splitlines()) == k + 1
    seg = _rows(out / "val_segmentation.jsonl")
    assert len(seg) == 79
    objects = 0
    for r in seg:
        m = np.asarray(Image.open(_resolve(out / "val_segmentation.jsonl", r["mask"])))
        with Image.open(_resolve(out / "val_segmentation.jsonl", r["image"])) as im:
            assert m.shape == (im.height, im.width) and m.dtype == np.uint8
        vals = set(np.unique(m).tolist())
        assert vals <= set(range(k + 1)) | {255}
        objects += bool(vals - {0, 255})
    assert objects >= 70
    ground = _rows(out / "val_grounding.jsonl")
    assert len(ground) > 79
    for r in ground:
        with Image.open(_resolve(out / "val_grounding.jsonl", r["image"])) as im:
            w, h = im.size
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert (x1 - x0) * (y1 - y0) >= 0.01 * w * h - 1e-6


@needs_data
def test_real_crowd_rle_lies_in_its_box():
    """COCO-MINI's crowd masks (uncompressed column-major RLE) decode onto their boxes (to 1 px)."""
    from onepeace.data.prepare import annotation_mask

    inst = json.loads((DATA / "coco-mini" / "annotations" / "instances_val2017.json").read_text())
    size = {im["id"]: (im["height"], im["width"]) for im in inst["images"]}
    crowds = [a for a in inst["annotations"] if a["iscrowd"]]
    assert crowds
    for a in crowds:
        m = annotation_mask(a, *size[a["image_id"]])
        assert m.sum() == sum(a["segmentation"]["counts"][1::2])
        ys, xs = np.nonzero(m)
        x, y, w, h = a["bbox"]
        assert np.allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [x, y, x + w, y + h], atol=1.5)
