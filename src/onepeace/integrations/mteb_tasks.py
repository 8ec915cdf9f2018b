"""Small local MTEB tasks built from real data on disk, run through MTEB's own task classes (no
download): ESC-10 zero-shot audio classification (:func:`esc10_zeroshot`) and COCO-style
image-text retrieval (:func:`coco_retrieval`, MTEB's AbsTaskRetrieval, both directions).

The ESC-10 folder is ``NNN - Class name/fold-freesoundID-take.ogg`` (the fold is the file name's
first number). The candidate labels are the class names written into onepeace's audio zero-shot
template (``"This is a sound of {}."``, the official ESC-50 protocol), so MTEB scores exactly what
``onepeace zeroshot`` scores; audio goes to the encoder as ``{"path": file}`` items (decoded and
resampled by onepeace).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from . import require

require("mteb", "mteb", "the local MTEB tasks (onepeace.integrations.mteb_tasks)")

from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.abstasks.zeroshot_classification import AbsTaskZeroShotClassification  # noqa: E402

_GENERAL = dict(
    reference="https://github.com/karolpiczak/ESC-50",
    dataset={"path": "local/esc10", "revision": "local"},
    category="a2t",
    eval_splits=["test"],
    eval_langs=["eng-Latn"],
    main_score="accuracy",
    date=("2015-01-01", "2015-12-31"),
    domains=[],
    task_subtypes=[],
    license="cc-by-3.0",
    annotations_creators="human-annotated",
    dialect=[],
    sample_creation="found",
    bibtex_citation="",
    modalities=["audio", "text"],
)


def esc10_files(root: str | os.PathLike, folds: tuple[int, ...] | None = None,
                per_class: int | None = None) -> tuple[list[str], list[str], list[int]]:
    """(class names, clip paths, label indices) of an ESC-10 folder, in sorted order; ``folds``
    keeps those folds, ``per_class`` the first clips of each class."""
    root = Path(root)
    classes = sorted(d for d in root.iterdir() if d.is_dir() and " - " in d.name) if root.is_dir() else []
    if not classes:
        raise InputError(f"{root} is not an ESC-10 folder (no 'NNN - Class name' folders in it)")
    names, paths, labels = [], [], []
    for i, d in enumerate(classes):
        names.append(d.name.split(" - ", 1)[1].lower())
        files = sorted(f for f in d.iterdir() if f.suffix.lower() == ".ogg"
                       and (folds is None or int(f.name.split("-", 1)[0]) in folds))
        for f in files[:per_class]:
            paths.append(str(f))
            labels.append(i)
    return names, paths, labels


def esc10_zeroshot(root: str | os.PathLike, *, folds: tuple[int, ...] | None = None, per_class: int | None = None,
                   template: str = "This is a sound of {}.") -> AbsTaskZeroShotClassification:
    """An MTEB zero-shot audio classification task over a local ESC-10 folder."""
    from datasets import Dataset, DatasetDict

    names, paths, labels = esc10_files(root, folds, per_class)
    candidates = [template.format(n) for n in names]

    class ESC10ZeroShotLocal(AbsTaskZeroShotClassification):
        input_column_name = "audio"
        label_column_name = "label"
        metadata = TaskMetadata(
            name="ESC10ZeroShotLocal",
            description="ESC-10 (10 environmental sound classes) zero-shot classification from a local folder.",
            type="AudioZeroshotClassification",
            **_GENERAL,
        )

        def load_data(self, **kwargs: Any) -> None:
            self.dataset = DatasetDict({"test": Dataset.from_dict(
                {"audio": [{"path": p} for p in paths], "label": labels})})
            self.data_loaded = True

        def get_candidate_labels(self) -> list[str]:
            return list(candidates)

    task = ESC10ZeroShotLocal()
    task.class_names = names
    return task


def coco_files(root: str | os.PathLike, split: str = "val",
               images: int | None = None) -> tuple[list[str], list[list[str]]]:
    """(image paths, their captions) of a COCO 2017-style folder (``annotations/captions_{split}2017.json``
    and ``{split}2017/``), images in id order (those present on disk), captions in annotation id order,
    stripped as ``onepeace data prepare coco`` writes them; ``images`` keeps the first ones."""
    import json

    root = Path(root)
    ann = root / "annotations" / f"captions_{split}2017.json"
    img_dir = root / f"{split}2017"
    if not ann.is_file() or not img_dir.is_dir():
        raise InputError(f"{root} is not a COCO folder for split {split!r} (needs annotations/captions_{split}2017.json "
                         f"and {split}2017/)")
    data = json.loads(ann.read_text(encoding="utf-8"))
    caps: dict[int, list[str]] = {}
    for c in sorted(data.get("annotations", []), key=lambda c: c["id"]):
        caps.setdefault(c["image_id"], []).append(c["caption"].strip())
    paths, captions = [], []
    for im in sorted(data.get("images", []), key=lambda im: im["id"]):
        f = img_dir / im["file_name"]
        if f.is_file() and caps.get(im["id"]):
            paths.append(str(f))
            captions.append(caps[im["id"]])
    if not paths:
        raise InputError(f"{root}: no image of split {split!r} with captions is on disk")
    return paths[:images], captions[:images]


def coco_retrieval(root: str | os.PathLike, direction: str = "i2t", *, split: str = "val",
                   images: int | None = None) -> AbsTaskRetrieval:
    """An MTEB image-text retrieval task over a local COCO folder: ``direction`` ``"i2t"`` (each image
    queries all captions; its own five are relevant) or ``"t2i"`` (each caption queries all images;
    its image is relevant). Every caption is its own corpus document, as in MTEB's COCO tasks."""
    from datasets import Dataset, Image

    if direction not in ("i2t", "t2i"):
        raise InputError(f"COCO retrieval direction must be 'i2t' or 't2i', got {direction!r}")
    paths, captions = coco_files(root, split, images)
    img_ids = [f"img{i}" for i in range(len(paths))]
    cap_ids = [[f"img{i}-cap{k}" for k in range(len(c))] for i, c in enumerate(captions)]
    image_ds = Dataset.from_dict({"id": img_ids, "image": paths}).cast_column("image", Image())
    text_ds = Dataset.from_dict({"id": [c for ids in cap_ids for c in ids],
                                 "text": [t for c in captions for t in c]})
    if direction == "i2t":
        queries, corpus = image_ds, text_ds
        relevant = {q: {c: 1 for c in ids} for q, ids in zip(img_ids, cap_ids)}
    else:
        queries, corpus = text_ds, image_ds
        relevant = {c: {q: 1} for q, ids in zip(img_ids, cap_ids) for c in ids}
    name = f"COCO{direction.upper()}RetrievalLocal"

    class COCORetrievalLocal(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name=name,
            description=f"COCO 2017 {split} image-text retrieval ({direction}) from a local folder.",
            reference="https://cocodataset.org",
            dataset={"path": "local/coco", "revision": "local"},
            type="Any2AnyRetrieval",
            category=direction,
            eval_splits=["test"],
            eval_langs=["eng-Latn"],
            main_score="ndcg_at_10",
            date=("2017-01-01", "2017-12-31"),
            domains=[],
            task_subtypes=["Image Text Retrieval"],
            license="cc-by-4.0",
            annotations_creators="human-annotated",
            dialect=[],
            sample_creation="found",
            bibtex_citation="",
            modalities=["image", "text"],
        )

        def load_data(self, **kwargs: Any) -> None:
            self.dataset = {"default": {"test": {"corpus": corpus, "queries": queries, "relevant_docs": relevant,
                                                 "top_ranked": None}}}
            self.data_loaded = True

    COCORetrievalLocal.__name__ = COCORetrievalLocal.__qualname__ = name
    return COCORetrievalLocal()
