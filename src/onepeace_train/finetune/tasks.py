"""Fine-tuning tasks: what a manifest line holds, how it becomes a batch, the head, the loss and the
metrics (the official recipes: one_peace/run_scripts/<task>/ of github.com/OFA-Sys/ONE-PEACE).

Every task follows one small contract, so a new one is a new class plus ``register_task``:

* ``required_fields``: manifest fields every line must hold;
* ``head_config(config)``: the head the task trains (or None: retrieval uses the projections);
* ``modalities``: the branches it trains (the others are frozen);
* ``sample(record, train, rng)`` -> one processed sample; ``collate(samples)`` -> a batch;
* ``loss(model, batch)`` -> ``{"loss": ..., other scalars}``;
* ``predict(model, batch)`` -> per-batch tensors; ``metrics(parts)`` -> ``{name: value}``;
* ``main_metric``: the number a recipe selects checkpoints by.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from onepeace.config import HeadConfig, ModelConfig
from onepeace.data.dataset import media_identity
from onepeace.errors import ConfigError, DecodeError, InputError, not_the_input
from onepeace.modalities import Processor
from onepeace.processing.image import load_image
from onepeace.tasks.retrieval import Rows, pair_metrics
from onepeace_train.finetune.objectives import (
    aqa_hinge_loss,
    box_iou_and_giou,
    classification_loss,
    confusion_matrix,
    grounding_loss,
    mean_average_precision,
    miou_from_confusion,
    top1_accuracy,
    vqa_loss,
    vqa_score,
)
from onepeace_train.pretrain.losses import contrastive_loss

CLASSIFY_HEADS = ("classify", "linear")  # the head types of the classify task


@dataclass
class TaskSection:
    """``[task]`` of a fine-tuning recipe."""

    name: str = ""  # empty: pretraining
    num_classes: int = 0  # 0: the number of lines of ``labels`` (or the model head's)
    labels: str = ""  # class names / answer vocabulary, one per line (index order)
    head: str = "classify"  # classify task: classify (attention pooling) | linear (vision-branch mean-pool head)
    feature_source: str = ""  # which tokens the head pools; default per task
    modality: str = ""  # classify: the input modality (default: from the manifest)
    use_text: bool = False  # classify: fuse the line's "text" with the media (vl / al heads)
    multi_label: bool = False  # classify: BCE over "labels" lists, mAP
    label_smoothing: float = 0.0
    use_pooler: bool | None = None  # classify head pooler (default: on for vqa only)
    reset_head: bool = False  # replace an existing head of the init model
    train_audio_seconds: float = 0.0  # > 0: train on random crops of this length
    scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # RandomResizedCrop area range
    hflip: bool = True  # segmentation: random horizontal flips
    ignore_index: int = 255  # segmentation
    gather_with_grad: bool = True  # retrieval: false = the official no-grad gather of negatives


def read_lines(path: str, what: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f]
    except OSError as e:
        raise ConfigError(f"cannot read {what} file {path}: {e.strerror or e}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ConfigError(f"{what} file {path} is empty")
    return lines


class Task:
    name = ""
    required_fields: tuple[str, ...] = ()
    main_metric = ""

    def __init__(self, tc: TaskSection, config: ModelConfig):
        self.tc = tc
        self.config = config
        self.proc = Processor(config)
        self.labels = read_lines(tc.labels, "labels") if tc.labels else None

    # ---- setup
    def bind(self, config: ModelConfig) -> None:
        """Use ``config`` (the model with the task's head) from now on."""
        self.config = config
        self.proc = Processor(config)

    @property
    def modalities(self) -> set[str]:
        raise NotImplementedError

    def head_config(self, config: ModelConfig) -> HeadConfig | None:
        return None

    def num_classes(self, config: ModelConfig) -> int:
        if self.tc.num_classes:
            if self.labels is not None and len(self.labels) != self.tc.num_classes:
                raise ConfigError(f"task.num_classes = {self.tc.num_classes} but {self.tc.labels} has {len(self.labels)} lines")
            return self.tc.num_classes
        if self.labels is not None:
            return len(self.labels)
        if config.head is not None:
            return config.head.num_classes
        raise ConfigError(f"task {self.name}: set task.num_classes or task.labels (a file of class names)")

    def check_records(self, records: list[dict[str, Any]], source: str) -> None:
        for m in self.modalities:
            if m not in self.config.modalities:
                raise ConfigError(f"task {self.name} needs a {m} branch; the model has {list(self.config.modalities)}")

    def update_config(self, config: ModelConfig) -> ModelConfig:
        """Model options the task needs (e.g. NLVR2's type embeddings)."""
        return config

    # ---- data helpers
    def image(self, src: str, train: bool, rng: random.Random) -> torch.Tensor:
        if train and self.tc.scale[0] < 1.0:
            from onepeace.data.augment import random_resized_crop, to_normalized_tensor

            img = random_resized_crop(load_image(src), self.proc.get("image").image_size,
                                      tuple(self.tc.scale), (3 / 4, 4 / 3), rng)
            return to_normalized_tensor(img)
        return self.proc.get("image").one(src)[0]

    def audio(self, src: str, train: bool, rng: random.Random) -> torch.Tensor:
        ap = self.proc.get("audio")
        wav = ap.one(src)
        secs = self.tc.train_audio_seconds
        if train and secs > 0:
            n = int(secs * ap.sample_rate)
            if wav.numel() > n:
                start = rng.randint(0, wav.numel() - n)
                wav = wav[start : start + n]
        return wav

    def media(self, kind: str, src: str, train: bool, rng: random.Random) -> torch.Tensor:
        return self.image(src, train, rng) if kind == "image" else self.audio(src, train, rng)

    def stack(self, kind: str, items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if kind == "image":
            return {"pixels": torch.stack(items)}
        return self.proc.get("audio").collate(items)

    def text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.proc.get("text")(texts)

    # ---- training and evaluation
    def sample(self, rec: dict[str, Any], train: bool, rng: random.Random) -> dict[str, Any]:
        raise NotImplementedError

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def loss(self, model, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict(self, model, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def metrics(self, parts: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        raise NotImplementedError

    @staticmethod
    def cat(parts: list[dict[str, torch.Tensor]], key: str) -> torch.Tensor:
        return torch.cat([p[key] for p in parts])


def _int_label(value: Any, where: str, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise InputError(f"{where}: label {value!r} is not an integer in [0, {n})")
    return value


# ====================================================================== classification
class ClassifyTask(Task):
    """Single-label (CE, top-1/top-5) or multi-label (BCE, macro mAP) classification of an image
    or an audio clip, optionally fused with the line's text (vl / al heads). Lines:
    ``{"audio": "a.wav", "label": 3}``, ``{"image": "x.jpg", "labels": [1, 7]}``."""

    name = "classify"

    def __init__(self, tc: TaskSection, config: ModelConfig):
        super().__init__(tc, config)
        if tc.head not in CLASSIFY_HEADS:
            raise ConfigError(f"task.head = {tc.head!r}; the classify task takes one of {list(CLASSIFY_HEADS)}")
        self.kind = tc.modality or None
        self.required_fields = ("labels",) if tc.multi_label else ("label",)
        self.main_metric = "mAP" if tc.multi_label else "acc"

    @property
    def modalities(self) -> set[str]:
        base = {self.kind} if self.kind else set()
        return base | ({"text"} if self.tc.use_text else set())

    def check_records(self, records, source):
        kinds = {k for r in records for k in ("image", "audio") if k in r}
        if len(kinds) != 1:
            raise InputError(f"{source}: every line needs exactly one kind of media (image or audio); found {sorted(kinds) or 'none'}")
        (kind,) = kinds
        if self.kind and self.kind != kind:
            raise InputError(f"{source} holds {kind} samples but task.modality = {self.kind!r}")
        self.kind = kind
        if self.tc.use_text and any("text" not in r for r in records):
            raise InputError(f"{source}: task.use_text needs a 'text' field on every line")
        super().check_records(records, source)

    def head_config(self, config):
        src = self.tc.feature_source or self.kind
        if src is None:
            raise ConfigError("task.modality is unknown: set it or give a training manifest")
        return HeadConfig(num_classes=self.num_classes(config), type=self.tc.head, feature_source=src,
                          use_pooler=bool(self.tc.use_pooler), labels=self.labels,
                          inputs=sorted(self.modalities))

    def sample(self, rec, train, rng):
        n = self.config.head.num_classes
        out = {"media": self.media(self.kind, rec[self.kind], train, rng)}
        if self.tc.multi_label:
            labels = rec["labels"]
            if not isinstance(labels, list):
                raise InputError(f"{rec['_where']}: 'labels' must be a list of class indices")
            target = torch.zeros(n)
            for v in labels:
                target[_int_label(v, rec["_where"], n)] = 1.0
            out["target"] = target
        else:
            out["target"] = _int_label(rec["label"], rec["_where"], n)
        if self.tc.use_text:
            out["text"] = rec["text"]
        return out

    def collate(self, samples):
        batch = {self.kind: self.stack(self.kind, [s["media"] for s in samples]), "size": len(samples)}
        if self.tc.multi_label:
            batch["target"] = torch.stack([s["target"] for s in samples])
        else:
            batch["target"] = torch.tensor([s["target"] for s in samples], dtype=torch.long)
        if self.tc.use_text:
            batch["text"] = self.text([s["text"] for s in samples])
        return batch

    def logits(self, model, batch):
        inputs = {k: batch[k] for k in (self.kind, "text") if k in batch}
        return model.classify_batch(**inputs)

    def loss(self, model, batch):
        logits = self.logits(model, batch)
        target = batch["target"].to(logits.device)
        loss = classification_loss(logits, target, self.tc.multi_label, self.tc.label_smoothing)
        out = {"loss": loss}
        if not self.tc.multi_label:
            out["acc"] = (logits.argmax(-1) == target).float().mean() * 100
        return out

    def predict(self, model, batch):
        return {"logits": self.logits(model, batch).float().cpu(), "target": batch["target"]}

    def metrics(self, parts):
        logits, target = self.cat(parts, "logits"), self.cat(parts, "target")
        if self.tc.multi_label:
            return {"mAP": mean_average_precision(logits.sigmoid(), target), "n": len(target)}
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=-1).indices
        return {"acc": top1_accuracy(logits, target),
                f"top{k}": float((top == target[:, None]).any(-1).float().mean() * 100), "n": len(target)}


# ====================================================================== retrieval
class RetrievalTask(Task):
    """Retrieval fine-tuning: symmetric InfoNCE between text and image (or audio) embeddings with
    the model's learnable temperature. Lines are pretraining pairs ``{"image", "text"}`` with an
    optional ``label`` (all lines or none). Evaluation is over distinct items
    (:mod:`onepeace.tasks.retrieval`): each media file and each caption string is queried once and
    is one gallery entry; the protocol is ``"instance"`` (the items of a line match: image -> text
    is a hit when any of the image's captions is in the top K) without labels or when each label
    names one media file (``label`` = image, as ``onepeace data prepare coco`` writes), and
    ``"class"`` (same label) when a label spans several files."""

    name = "retrieval"
    required_fields = ("text",)
    main_metric = "R@1"

    def __init__(self, tc, config):
        super().__init__(tc, config)
        self.kind = tc.modality or None

    @property
    def modalities(self):
        return {"text"} | ({self.kind} if self.kind else set())

    def check_records(self, records, source):
        kinds = {k for r in records for k in ("image", "audio") if k in r}
        if len(kinds) != 1:
            raise InputError(f"{source}: every line needs exactly one kind of media (image or audio)")
        self.kind = kinds.pop()
        labelled = [r.get("label") is not None for r in records]
        if any(labelled) and not all(labelled):
            first = records[labelled.index(False)]["_where"]
            raise InputError(f"{first}: no 'label', while other lines of {source} have one; label all lines or none")
        for r in records:
            label = r.get("label")
            if labelled[0] and (isinstance(label, bool) or not isinstance(label, int) or label < 0):
                raise InputError(f"{r['_where']}: 'label' must be a non-negative integer (the item or its class), "
                                 f"got {label!r}")
        if not self.config.projection or not self.config.logit_scale:
            raise ConfigError("retrieval fine-tuning needs a model with embedding projections and a logit_scale")
        super().check_records(records, source)

    def sample(self, rec, train, rng):
        label = rec.get("label")
        return {"media": self.media(self.kind, rec[self.kind], train, rng), "text": rec["text"],
                "label": -1 if label is None else label, "item": media_identity(rec[self.kind])}

    def collate(self, samples):
        return {self.kind: self.stack(self.kind, [s["media"] for s in samples]),
                "text": self.text([s["text"] for s in samples]),
                "label": torch.tensor([s["label"] for s in samples]), "size": len(samples),
                "item": [s["item"] for s in samples], "caption": [s["text"] for s in samples]}

    def embed(self, model, batch):
        return model.embed_batch(self.kind, batch[self.kind]), model.embed_batch("text", batch["text"])

    def loss(self, model, batch):
        zm, zt = self.embed(model, batch)
        return {"loss": contrastive_loss(zm, zt, model.logit_scale, self.tc.gather_with_grad)}

    def predict(self, model, batch):
        zm, zt = self.embed(model, batch)
        return {"media": zm.float().cpu(), "text": zt.float().cpu(), "label": batch["label"],
                "item": batch["item"], "caption": batch["caption"]}

    def metrics(self, parts):
        zm, zt, label = self.cat(parts, "media"), self.cat(parts, "text"), self.cat(parts, "label")
        labels = None if bool((label < 0).any()) else label.tolist()
        items = [i for p in parts for i in p["item"]]
        captions = [c for p in parts for c in p["caption"]]
        res = pair_metrics(Rows(zm, items, labels), Rows(zt, captions, labels, media=False), self.kind)
        out: dict[str, Any] = {}
        for pair, m in res.items():
            out.update({f"{pair} {k}": v for k, v in m.items() if k != "protocol"})
        out["protocol"] = res[f"{self.kind}->text"]["protocol"]
        out["R@1"] = (res[f"{self.kind}->text"]["R@1"] + res[f"text->{self.kind}"]["R@1"]) / 2
        return out


# ====================================================================== grounding
class GroundingTask(Task):
    """Visual grounding: ``{"image", "text", "box": [x0, y0, x1, y1]}`` (pixels). The head pools
    image tokens (RefCOCO/+; set ``feature_source = "text"`` for RefCOCOg) and its sigmoid is the
    box relative to the image size; L1 + GIoU; Acc@IoU>=0.5 in original pixels."""

    name = "grounding"
    required_fields = ("image", "text", "box")
    main_metric = "acc@0.5"

    @property
    def modalities(self):
        return {"image", "text"}

    def head_config(self, config):
        return HeadConfig(num_classes=4, feature_source=self.tc.feature_source or "image")

    def sample(self, rec, train, rng):
        box = rec["box"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise InputError(f"{rec['_where']}: 'box' must be [x0, y0, x1, y1] in pixels")
        pixels, (w, h) = self.proc.get("image").one(rec["image"])
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        target = (torch.tensor(box, dtype=torch.float32) / scale).clamp(0, 1)
        if not (target[0] < target[2] and target[1] < target[3]):
            raise InputError(f"{rec['_where']}: box {box} is empty or not inside the image")
        return {"pixels": pixels, "text": rec["text"], "target": target, "scale": scale}

    def collate(self, samples):
        return {"image": self.stack("image", [s["pixels"] for s in samples]),
                "text": self.text([s["text"] for s in samples]),
                "target": torch.stack([s["target"] for s in samples]),
                "scale": torch.stack([s["scale"] for s in samples]), "size": len(samples)}

    def boxes(self, model, batch):
        return model.classify_batch(text=batch["text"], image=batch["image"]).float().sigmoid()

    def loss(self, model, batch):
        pred = self.boxes(model, batch)
        return {"loss": grounding_loss(pred, batch["target"].to(pred.device))}

    def predict(self, model, batch):
        pred = self.boxes(model, batch).cpu()
        return {"pred": pred * batch["scale"], "target": batch["target"] * batch["scale"]}

    def metrics(self, parts):
        iou, _ = box_iou_and_giou(self.cat(parts, "pred"), self.cat(parts, "target"))
        return {"acc@0.5": float((iou >= 0.5).float().mean() * 100), "mIoU": float(iou.mean() * 100), "n": len(iou)}


# ====================================================================== VQA
class VQATask(Task):
    """VQA: ``{"image", "text": question, "answers": {"yes": 1.0, "no": 0.3}}`` with the answer
    vocabulary in ``task.labels``; attention pooling over the text tokens + tanh pooler; BCE on
    the soft scores; VQA score. Answers outside the vocabulary count as 0."""

    name = "vqa"
    required_fields = ("image", "text", "answers")
    main_metric = "vqa_score"

    def __init__(self, tc, config):
        super().__init__(tc, config)
        if self.labels is None and config.head is not None and config.head.labels:
            self.labels = list(config.head.labels)  # a fine-tuned VQA model carries its vocabulary
        if self.labels is None:
            raise ConfigError("task vqa needs task.labels: the answer vocabulary, one answer per line")
        self.index = {a: i for i, a in enumerate(self.labels)}

    @property
    def modalities(self):
        return {"image", "text"}

    def head_config(self, config):
        use_pooler = True if self.tc.use_pooler is None else self.tc.use_pooler
        return HeadConfig(num_classes=self.num_classes(config), feature_source=self.tc.feature_source or "text",
                          use_pooler=use_pooler, labels=self.labels)

    def sample(self, rec, train, rng):
        answers = rec["answers"]
        if not isinstance(answers, dict):
            raise InputError(f"{rec['_where']}: 'answers' must map answer text to a soft score")
        target = torch.zeros(len(self.labels))
        for a, s in answers.items():
            if a in self.index:
                target[self.index[a]] = float(s)
        return {"pixels": self.image(rec["image"], train, rng), "text": rec["text"], "target": target}

    def collate(self, samples):
        return {"image": self.stack("image", [s["pixels"] for s in samples]),
                "text": self.text([s["text"] for s in samples]),
                "target": torch.stack([s["target"] for s in samples]), "size": len(samples)}

    def loss(self, model, batch):
        logits = model.classify_batch(text=batch["text"], image=batch["image"])
        return {"loss": vqa_loss(logits, batch["target"].to(logits.device))}

    def predict(self, model, batch):
        return {"logits": model.classify_batch(text=batch["text"], image=batch["image"]).float().cpu(),
                "target": batch["target"]}

    def metrics(self, parts):
        return {"vqa_score": vqa_score(self.cat(parts, "logits"), self.cat(parts, "target")),
                "n": sum(len(p["target"]) for p in parts)}


# ====================================================================== AQA
class AQATask(Task):
    """Audio question answering (AVQA): ``{"audio", "text": question, "choices": [...], "label": k}``.
    Each choice becomes the text " {question} answer: {choice}" fused with the clip; a 1-output
    head scores it; multi-class hinge over the choices; accuracy."""

    name = "aqa"
    required_fields = ("audio", "text", "choices", "label")
    main_metric = "acc"

    @property
    def modalities(self):
        return {"audio", "text"}

    def head_config(self, config):
        return HeadConfig(num_classes=1, feature_source=self.tc.feature_source or "text")

    def sample(self, rec, train, rng):
        choices = rec["choices"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise InputError(f"{rec['_where']}: 'choices' must be a list of at least two answer strings")
        return {"wav": self.audio(rec["audio"], train, rng),
                "texts": [f" {rec['text']} answer: {c}" for c in choices],
                "target": _int_label(rec["label"], rec["_where"], len(choices))}

    def collate(self, samples):
        k = {len(s["texts"]) for s in samples}
        if len(k) > 1:
            raise InputError(f"AQA samples in one batch have different numbers of choices: {sorted(k)}")
        k = k.pop()
        wavs = [s["wav"] for s in samples for _ in range(k)]
        return {"audio": self.stack("audio", wavs),
                "text": self.text([t for s in samples for t in s["texts"]]),
                "target": torch.tensor([s["target"] for s in samples]), "choices": k, "size": len(samples)}

    def scores(self, model, batch):
        return model.classify_batch(text=batch["text"], audio=batch["audio"]).float().view(-1, batch["choices"])

    def loss(self, model, batch):
        s = self.scores(model, batch)
        target = batch["target"].to(s.device)
        return {"loss": aqa_hinge_loss(s, target), "acc": (s.argmax(-1) == target).float().mean() * 100}

    def predict(self, model, batch):
        return {"scores": self.scores(model, batch).cpu(), "target": batch["target"]}

    def metrics(self, parts):
        target = self.cat(parts, "target")
        return {"acc": top1_accuracy(self.cat(parts, "scores"), target), "n": len(target)}


# ====================================================================== NLVR2
class NLVR2Task(Task):
    """NLVR2: ``{"image", "image2", "text", "label"}``; ``label`` is 0/1 or true/false (official
    mapping: true -> 0, false -> 1). Two fused passes (text with each image; the second image's
    tokens get ``type_embedding_2``), the text tokens pooled in each, concatenated, classified."""

    name = "nlvr2"
    required_fields = ("image", "image2", "text", "label")
    main_metric = "acc"

    @property
    def modalities(self):
        return {"image", "text"}

    def update_config(self, config):
        mods = {k: dict(v) for k, v in config.modalities.items()}
        for m in ("text", "image"):
            if m not in mods:
                raise ConfigError(f"nlvr2 needs a {m} branch")
            mods[m]["type_embedding"] = True
        return config.replace(modalities=mods)

    def head_config(self, config):
        return HeadConfig(num_classes=2, feature_source=self.tc.feature_source or "text", two_inputs=True,
                          labels=self.labels)

    def sample(self, rec, train, rng):
        label = rec["label"]
        if isinstance(label, bool):
            label = 0 if label else 1
        elif isinstance(label, str) and label.lower() in ("true", "false"):
            label = 0 if label.lower() == "true" else 1
        return {"a": self.image(rec["image"], train, rng), "b": self.image(rec["image2"], train, rng),
                "text": rec["text"], "target": _int_label(label, rec["_where"], 2)}

    def collate(self, samples):
        return {"image": self.stack("image", [s["a"] for s in samples]),
                "image2": self.stack("image", [s["b"] for s in samples]),
                "text": self.text([s["text"] for s in samples]),
                "target": torch.tensor([s["target"] for s in samples]), "size": len(samples)}

    def logits(self, model, batch):
        return model.classify_batch(text=batch["text"], image=batch["image"], image2=batch["image2"])

    def loss(self, model, batch):
        logits = self.logits(model, batch)
        target = batch["target"].to(logits.device)
        return {"loss": F.cross_entropy(logits.float(), target), "acc": (logits.argmax(-1) == target).float().mean() * 100}

    def predict(self, model, batch):
        return {"logits": self.logits(model, batch).float().cpu(), "target": batch["target"]}

    def metrics(self, parts):
        target = self.cat(parts, "target")
        return {"acc": top1_accuracy(self.cat(parts, "logits"), target), "n": len(target)}


# ====================================================================== segmentation
class SegmentationTask(Task):
    """Semantic segmentation: ``{"image", "mask"}`` with ``mask`` a single-channel PNG of class
    ids (``ignore_index``, default 255, is not scored). A dense head on the patch features;
    pixel CE; mIoU (and pixel accuracy) at the model's input resolution."""

    name = "segmentation"
    required_fields = ("image", "mask")
    main_metric = "mIoU"

    @property
    def modalities(self):
        return {"image"}

    def head_config(self, config):
        return HeadConfig(num_classes=self.num_classes(config), type="dense",
                          feature_source=self.tc.feature_source or "image", labels=self.labels)

    def sample(self, rec, train, rng):
        img = load_image(rec["image"])
        try:
            with Image.open(rec["mask"]) as m:
                mask = m.copy()
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad files ...
            if not_the_input(e):  # ... but out of memory or file handles is not the mask's fault
                raise
            raise DecodeError(f"cannot read mask {rec['mask']}: {e}") from None
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise InputError(f"mask {rec['mask']} must be a single-channel image of class ids, got mode {mask.mode}")
        if mask.size != img.size:
            raise InputError(f"mask {rec['mask']} is {mask.size}, its image is {img.size}")
        s = self.proc.get("image").image_size
        if train:
            from onepeace.data.augment import crop_params

            top, left, h, w = crop_params(img.width, img.height, tuple(self.tc.scale), (3 / 4, 4 / 3), rng)
            box = (left, top, left + w, top + h)
            img, mask = img.crop(box), mask.crop(box)
            if self.tc.hflip and rng.random() < 0.5:
                img, mask = img.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
        img = img.resize((s, s), Image.BICUBIC)
        mask = mask.resize((s, s), Image.NEAREST)
        from onepeace.data.augment import to_normalized_tensor

        target = torch.from_numpy(np.asarray(mask, dtype=np.int64).copy())
        n = self.config.head.num_classes
        bad = (target != self.tc.ignore_index) & ((target < 0) | (target >= n))
        if bool(bad.any()):
            raise InputError(f"mask {rec['mask']} holds class ids >= {n} (the head's classes) other than {self.tc.ignore_index}")
        return {"pixels": to_normalized_tensor(img), "target": target}

    def collate(self, samples):
        return {"image": self.stack("image", [s["pixels"] for s in samples]),
                "target": torch.stack([s["target"] for s in samples]), "size": len(samples)}

    def loss(self, model, batch):
        logits = model.classify_batch(image=batch["image"])
        return {"loss": F.cross_entropy(logits.float(), batch["target"].to(logits.device), ignore_index=self.tc.ignore_index)}

    def predict(self, model, batch):
        pred = model.classify_batch(image=batch["image"]).argmax(1).cpu()
        n = model.config.head.num_classes
        return {"confusion": confusion_matrix(pred, batch["target"], n, self.tc.ignore_index)[None],
                "images": len(pred)}

    def metrics(self, parts):
        conf = torch.cat([p["confusion"] for p in parts]).sum(0)
        return {**miou_from_confusion(conf), "n": sum(p["images"] for p in parts)}


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


for _cls in (ClassifyTask, RetrievalTask, GroundingTask, VQATask, AQATask, NLVR2Task, SegmentationTask):
    register_task(_cls)


def get_task(tc: TaskSection, config: ModelConfig) -> Task:
    if tc.name not in TASKS:
        raise ConfigError(f"unknown task {tc.name!r}; choose one of {sorted(TASKS)}")
    if not math.isfinite(tc.label_smoothing) or not 0 <= tc.label_smoothing < 1:
        raise ConfigError("task.label_smoothing must be in [0, 1)")
    return TASKS[tc.name](tc, config)
