"""Small local MTEB tasks built from real data on disk, run through MTEB's own task classes (no
download): ESC-10 zero-shot audio classification (:func:`esc10_zeroshot`).

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
