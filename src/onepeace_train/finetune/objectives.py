"""Losses and metrics of the fine-tuning tasks, as plain tensor functions (the official ones are the
criterions in one_peace/criterions/ of github.com/OFA-Sys/ONE-PEACE, set up by its
one_peace/run_scripts/).

Each is checked against a naive reference in ``tests/test_task_objectives.py``; the fine-tuning
trainer composes them with the heads of ``onepeace.model.heads``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onepeace.errors import InputError


# ------------------------------------------------------------------ classification
def classification_loss(logits: torch.Tensor, target: torch.Tensor, multi_label: bool = False,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Single-label cross-entropy, or multi-label BCE-with-logits (FSD50K)."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def top1_accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    return float((logits.argmax(-1) == target).float().mean() * 100)


def mean_average_precision(scores: torch.Tensor, target: torch.Tensor) -> float:
    """Macro mAP over classes with at least one positive (sklearn's average_precision_score)."""
    aps = []
    for c in range(scores.shape[1]):
        y = target[:, c].bool()
        if not bool(y.any()):
            continue
        order = scores[:, c].argsort(descending=True)
        hits = y[order].float()
        precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum() / hits.sum()))
    return 100 * sum(aps) / max(1, len(aps))


# ------------------------------------------------------------------ visual grounding
def box_iou_and_giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise-aligned IoU and generalised IoU of (x0, y0, x1, y1) boxes [N, 4]."""
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-12)
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    return iou, iou - (hull - union) / hull.clamp(min=1e-12)


def grounding_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 (sum over coordinates, mean over boxes) + mean(1 - GIoU) over boxes with x0<x1, y0<y1.

    ``pred`` are sigmoid outputs in [0, 1] (box / image size), like ``target``. Unlike the
    official criterion, no valid box leaves only the L1 term instead of a NaN.
    """
    l1 = (pred - target).abs().sum(-1).mean()
    valid = (pred[:, 0] < pred[:, 2]) & (pred[:, 1] < pred[:, 3])
    if not bool(valid.any()):
        return l1
    _, giou = box_iou_and_giou(pred[valid], target[valid])
    return l1 + (1 - giou).mean()


def grounding_accuracy(pred_px: torch.Tensor, target_px: torch.Tensor, threshold: float = 0.5) -> float:
    """Acc@IoU>=threshold, boxes in original pixels."""
    iou, _ = box_iou_and_giou(pred_px, target_px)
    return float((iou >= threshold).float().mean() * 100)


# ------------------------------------------------------------------ VQA / AQA
def vqa_loss(logits: torch.Tensor, soft_scores: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits against soft answer scores, summed over answers, mean over questions."""
    return F.binary_cross_entropy_with_logits(logits.float(), soft_scores.float(), reduction="sum") / logits.shape[0]


def vqa_score(logits: torch.Tensor, soft_scores: torch.Tensor) -> float:
    """The target score of the argmax answer (VQA accuracy)."""
    return float(soft_scores.gather(1, logits.argmax(-1, keepdim=True)).mean() * 100)


def aqa_hinge_loss(scores: torch.Tensor, answer: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Multi-class hinge over answer choices: sum_k max(0, margin + s_k - s_pos), the positive's
    own (constant) term included as officially; mean over questions. ``scores`` [B, K]."""
    pos = scores.gather(1, answer[:, None])
    return (margin + scores - pos).clamp(min=0).sum(-1).mean()


# ------------------------------------------------------------------ segmentation
def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> float:
    """mIoU over classes present in prediction or target (pixels with ``ignore_index`` skipped)."""
    keep = target != ignore_index
    p, t = pred[keep], target[keep]
    ious = []
    for c in range(num_classes):
        inter = ((p == c) & (t == c)).sum()
        union = ((p == c) | (t == c)).sum()
        if union > 0:
            ious.append(float(inter) / float(union))
    return 100 * sum(ious) / max(1, len(ious))


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """[C, C] counts, rows = target class, columns = predicted class; ``ignore_index`` skipped."""
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if bool(((t < 0) | (t >= num_classes)).any()):
        raise InputError(f"segmentation target holds class ids outside [0, {num_classes}) other than {ignore_index}")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).view(num_classes, num_classes)


def miou_from_confusion(conf: torch.Tensor) -> dict[str, float]:
    """mIoU over classes present in prediction or target, and pixel accuracy."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    miou = float((inter[present] / union[present]).mean() * 100) if bool(present.any()) else 0.0
    return {"mIoU": miou, "pixel_acc": float(inter.sum() / conf.sum().clamp(min=1) * 100)}
