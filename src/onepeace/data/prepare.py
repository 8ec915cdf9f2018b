"""Turn public data sets into fine-tuning task manifests (``onepeace data prepare``).

* :func:`prepare_esc`: ESC-10 / ESC-50 laid out as ``NNN - Class name/F-ID-T.ogg`` (F = fold):
  ``labels.txt``, ``all.jsonl`` and ``fold{k}/{train,test}.jsonl`` for the 5-fold protocol.
* :func:`prepare_coco`: COCO-style ``annotations/{captions,instances}_{split}2017.json`` and
  ``{split}2017/`` images: retrieval pairs, grounding queries (a category name and the box of its
  only instance in the image) and semantic-segmentation category maps (PNG) from the instance
  polygons / RLE masks.

Media paths in the manifests are relative to the manifest's own directory; every file is written
atomically.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..checkpoints.format import write_png_atomic, write_text_atomic
from ..errors import InputError
from ..processing.audio import AUDIO_EXTENSIONS

_CLASS_DIR = re.compile(r"^(\d+)\s*-\s*(.+)$")
_FOLD = re.compile(r"^(\d+)-")
AUDIO_EXTS = AUDIO_EXTENSIONS
MAX_FOLD = 5
COCO_TASKS = ("retrieval", "grounding", "segmentation")


def _jsonl(path: str, rows: Iterable[dict[str, Any]]) -> int:
    rows = list(rows)
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


def _rel(path: str, start: str) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive (Windows)
        return os.path.abspath(path)


# ====================================================================== ESC
_PREPARED = re.compile(r"^(labels\.txt|all\.jsonl|fold\d+|categories\.txt|masks|"
                       r"\w+_(retrieval|grounding|segmentation)\.jsonl)(\.tmp-\d+)?$")


def is_prepared_file(name: str) -> bool:
    """Whether ``name`` is one of the files or folders :func:`prepare_esc` / :func:`prepare_coco` write."""
    return _PREPARED.match(name) is not None


def _staged(out_dir: str, root: str, overwrite: bool):
    """``out_dir`` written as a whole: new or empty, or (``overwrite``) an earlier prepared set
    replaced atomically; media paths relative to the staging sibling equal those relative to
    ``out_dir`` (same parent)."""
    from ..outputs import staged_dir

    return staged_dir(out_dir, overwrite, owned=is_prepared_file, inputs=[root], what="prepared data set")


def prepare_esc(root: str, out_dir: str, template: str = "This is a sound of {}.", *,
                overwrite: bool = False) -> dict[str, Any]:
    """ESC-style folders -> 5-fold manifests. Labels follow the folder numbers (``NNN``).

    ``out_dir`` must be new or empty; ``overwrite=True`` replaces an earlier prepared set there."""
    if not os.path.isdir(root):
        raise InputError(f"ESC root {root} is not a directory; give --root the folder holding "
                         "'NNN - Class name/' folders (e.g. '001 - Dog bark')")
    with _staged(out_dir, root, overwrite) as tmp:
        summary = _write_esc(root, tmp, template)
    return {**summary, "out": out_dir}


def _write_esc(root: str, out_dir: str, template: str) -> dict[str, Any]:
    classes = []
    for name in os.listdir(root):
        m = _CLASS_DIR.match(name)
        if m and os.path.isdir(os.path.join(root, name)):
            classes.append((int(m.group(1)), m.group(2).strip(), name))
    if not classes:
        raise InputError(f"no class folders named 'NNN - Class name' under {root}; point --root at the folder "
                         "that holds them (e.g. '001 - Dog bark/')")
    classes.sort()
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for label, (_, cname, folder) in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, folder))):
            if not f.lower().endswith(AUDIO_EXTS):
                continue
            m = _FOLD.match(f)
            if not m or not 1 <= int(m.group(1)) <= MAX_FOLD:
                raise InputError(f"{os.path.join(root, folder, f)}: the file name must start with its fold number "
                                 f"1..{MAX_FOLD} ('F-ID-T.ogg'); rename it or move it out of the class folder")
            path = os.path.join(root, folder, f)
            rows.append({"audio": path, "label": label, "text": template.format(cname), "fold": int(m.group(1)),
                         "id": f"{folder}/{os.path.splitext(f)[0]}"})
    if not rows:
        raise InputError(f"no audio files ({', '.join(AUDIO_EXTS)}) in the class folders under {root}")
    write_text_atomic(os.path.join(out_dir, "labels.txt"), "".join(c + "\n" for _, c, _ in classes))

    def rel(rs, d):
        return [{**r, "audio": _rel(r["audio"], d)} for r in rs]

    _jsonl(os.path.join(out_dir, "all.jsonl"), rel(rows, out_dir))
    folds = sorted({r["fold"] for r in rows})
    per_fold = {}
    for k in folds:
        d = os.path.join(out_dir, f"fold{k}")
        os.makedirs(d, exist_ok=True)
        test = [r for r in rows if r["fold"] == k]
        _jsonl(os.path.join(d, "train.jsonl"), rel([r for r in rows if r["fold"] != k], d))
        _jsonl(os.path.join(d, "test.jsonl"), rel(test, d))
        per_fold[k] = len(test)
    return {"classes": len(classes), "clips": len(rows), "folds": per_fold, "out": out_dir}


# ====================================================================== COCO masks
def rle_from_string(s: str) -> list[int]:
    """COCO's compressed RLE string -> run lengths (pycocotools' ``rleFrString`` format: 5-bit
    chunks, continuation bit 0x20, sign-extended, each run after the second stored as a delta
    against the run two before)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (``counts`` as a list or a compressed string, column-major, starting with a run of
    zeros) -> a bool mask ``[h, w]``."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = rle_from_string(counts.decode("ascii") if isinstance(counts, bytes) else counts)
    if sum(counts) != h * w:
        raise InputError(f"RLE runs sum to {sum(counts)}, not {h}x{w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T


def annotation_mask(ann: dict[str, Any], h: int, w: int) -> np.ndarray:
    """One instance's mask from its polygons or RLE."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(img)
        for poly in seg:
            if len(poly) >= 6:
                draw.polygon([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)], fill=1)
        return np.asarray(img, dtype=bool)
    if isinstance(seg, dict):
        m = decode_rle(seg)
        if m.shape != (h, w):
            raise InputError(f"annotation {ann.get('id')}: RLE size {m.shape} is not the image's {(h, w)}")
        return m
    raise InputError(f"annotation {ann.get('id')} has no polygon or RLE segmentation")


# ====================================================================== COCO
def _load_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise InputError(f"COCO annotation file not found: {path} (download the COCO 2017 annotations, or drop "
                         "that split with --splits)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON ({e.msg})") from None


def _present_images(data: dict[str, Any], img_dir: str) -> tuple[list[dict[str, Any]], int]:
    """The json's images sorted by id, less those whose file is absent (and how many those were)."""
    images = sorted(data.get("images", []), key=lambda im: im["id"])
    present = [im for im in images if os.path.isfile(os.path.join(img_dir, im["file_name"]))]
    return present, len(images) - len(present)


def _paint_categories(anns: list[dict[str, Any]], h: int, w: int, cat_index: dict[int, int]) -> np.ndarray:
    """One image's category map: instances painted largest first (smaller ones end up on top),
    crowd regions painted as 255 (ignore) in the same order."""
    canvas = np.zeros((h, w), dtype=np.uint8)
    masks = [(a, annotation_mask(a, h, w)) for a in anns]
    masks.sort(key=lambda am: (-float(am[0].get("area") or am[1].sum()), am[0].get("id", 0)))
    for a, m in masks:
        canvas[m] = 255 if a.get("iscrowd") else cat_index[a["category_id"]]
    return canvas


def prepare_coco(root: str, out_dir: str, splits: Iterable[str] = ("train", "val"),
                 tasks: Iterable[str] = COCO_TASKS, min_box_fraction: float = 0.01, *,
                 overwrite: bool = False) -> dict[str, Any]:
    """COCO 2017-style annotations -> ``{split}_{task}.jsonl`` manifests (+ masks, categories).

    Reads ``root/annotations/{captions,instances}_{split}2017.json`` (captions only for retrieval,
    instances only for grounding and segmentation) and ``root/{split}2017/`` images; images whose
    file is absent are left out (counted as ``missing_images``). ``out_dir`` must be new or empty;
    ``overwrite=True`` replaces an earlier prepared set there."""
    tasks, splits = list(tasks), list(splits)
    unknown = sorted(set(tasks) - set(COCO_TASKS))
    if unknown:
        raise InputError(f"unknown COCO task(s) {unknown}; choose from {', '.join(COCO_TASKS)}")
    if not os.path.isdir(root):
        raise InputError(f"COCO root {root} is not a directory; give --root the folder holding annotations/ "
                         "and <split>2017/")
    with _staged(out_dir, root, overwrite) as tmp:
        summary = _write_coco(root, tmp, splits, tasks, min_box_fraction)
    return {**summary, "out": out_dir}


def _write_coco(root: str, out_dir: str, splits: Iterable[str], tasks: Iterable[str],
                min_box_fraction: float) -> dict[str, Any]:
    tasks = list(tasks)
    splits = list(splits)
    os.makedirs(out_dir, exist_ok=True)
    summary: dict[str, Any] = {"out": out_dir}
    categories = None
    for split in splits:
        img_dir = os.path.join(root, f"{split}2017")
        if not os.path.isdir(img_dir):
            raise InputError(f"COCO image folder not found: {img_dir} (expected {split}2017/ beside annotations/)")
        counts: dict[str, int] = {}
        missing = 0

        def path_of(im, img_dir=img_dir):
            return _rel(os.path.join(img_dir, im["file_name"]), out_dir)

        if "retrieval" in tasks:
            caps = _load_json(os.path.join(root, "annotations", f"captions_{split}2017.json"))
            images, missing = _present_images(caps, img_dir)
            by_image = defaultdict(list)
            for c in sorted(caps.get("annotations", []), key=lambda c: c["id"]):
                by_image[c["image_id"]].append(c["caption"].strip())
            rows = [{"image": path_of(im), "text": cap, "label": idx, "id": f"{im['id']}-{k}"}
                    for idx, im in enumerate(images) for k, cap in enumerate(by_image[im["id"]])]
            counts["images"] = len(images)
            counts["retrieval_pairs"] = _jsonl(os.path.join(out_dir, f"{split}_retrieval.jsonl"), rows)
        if "grounding" in tasks or "segmentation" in tasks:
            inst = _load_json(os.path.join(root, "annotations", f"instances_{split}2017.json"))
            cats = sorted(inst["categories"], key=lambda c: c["id"])
            if categories is None:
                categories = cats
                write_text_atomic(os.path.join(out_dir, "categories.txt"),
                                  "background\n" + "".join(c["name"] + "\n" for c in cats))
            elif [c["id"] for c in cats] != [c["id"] for c in categories]:
                raise InputError(f"the {split} split has different categories from the first split; "
                                 "prepare it into its own --out directory")
            if len(categories) > 254:
                raise InputError(f"{len(categories)} categories do not fit a uint8 map with 255 = ignore")
            cat_index = {c["id"]: i + 1 for i, c in enumerate(categories)}
            cat_name = {c["id"]: c["name"] for c in categories}
            images, missing = _present_images(inst, img_dir)
            counts["images"] = len(images)
            anns = defaultdict(list)
            for a in inst.get("annotations", []):
                anns[a["image_id"]].append(a)
        if "grounding" in tasks:
            rows = []
            for im in images:
                w, h = im["width"], im["height"]
                per_cat = defaultdict(list)
                for a in anns[im["id"]]:
                    per_cat[a["category_id"]].append(a)
                for cid, group in sorted(per_cat.items()):
                    # one instance and no crowd region of the same category: the phrase is unambiguous
                    if len(group) != 1 or group[0].get("iscrowd"):
                        continue
                    x, y, bw, bh = (float(v) for v in group[0]["bbox"])
                    if bw * bh < min_box_fraction * w * h:
                        continue
                    box = [max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)]
                    rows.append({"image": path_of(im), "text": cat_name[cid], "box": [round(v, 2) for v in box],
                                 "id": str(group[0]["id"])})
            counts["grounding_queries"] = _jsonl(os.path.join(out_dir, f"{split}_grounding.jsonl"), rows)
        if "segmentation" in tasks:
            mask_dir = os.path.join(out_dir, "masks", split)
            os.makedirs(mask_dir, exist_ok=True)
            rows = []
            for im in images:
                canvas = _paint_categories(anns[im["id"]], im["height"], im["width"], cat_index)
                dest = os.path.join(mask_dir, f"{im['id']}.png")
                write_png_atomic(dest, canvas)  # temp file in the same folder, then os.replace
                rows.append({"image": path_of(im), "mask": _rel(dest, out_dir), "id": str(im["id"])})
            counts["segmentation_images"] = _jsonl(os.path.join(out_dir, f"{split}_segmentation.jsonl"), rows)
        if missing:
            counts["missing_images"] = missing
        summary[split] = counts
    if categories is not None:
        summary["categories"] = len(categories)
    return summary
