"""Fine-tuning losses and metrics against plain reference implementations."""

from __future__ import annotations

import math

import pytest
import torch

from onepeace_train.finetune.objectives import (
    aqa_hinge_loss,
    box_iou_and_giou,
    classification_loss,
    grounding_accuracy,
    grounding_loss,
    mean_average_precision,
    mean_iou,
    top1_accuracy,
    vqa_loss,
    vqa_score,
)

G = torch.Generator().manual_seed(0)


def _ref_box(a, b):
    ix0, iy0, ix1, iy1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, ix1 - ix0) * max(0.0, iy1 - iy0)
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    iou = inter / union
    hx0, hy0, hx1, hy1 = min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])
    hull = (hx1 - hx0) * (hy1 - hy0)
    return iou, iou - (hull - union) / hull


def _boxes(n):
    xy = torch.rand(n, 2, generator=G) * 0.5
    wh = torch.rand(n, 2, generator=G) * 0.5 + 0.05
    return torch.cat([xy, xy + wh], 1)


def test_iou_giou_and_grounding_loss():
    a, b = _boxes(20), _boxes(20)
    iou, giou = box_iou_and_giou(a, b)
    for i in range(20):
        ri, rg = _ref_box(a[i].tolist(), b[i].tolist())
        assert iou[i].item() == pytest.approx(ri, abs=1e-5) and giou[i].item() == pytest.approx(rg, abs=1e-5)
    pred = a.clone()
    pred[0] = torch.tensor([0.6, 0.6, 0.5, 0.7])  # invalid (x0 > x1): only L1 counts for it
    l1 = sum(float((pred[i] - b[i]).abs().sum()) for i in range(20)) / 20
    gi = [(1 - _ref_box(pred[i].tolist(), b[i].tolist())[1]) for i in range(1, 20)]
    assert grounding_loss(pred, b).item() == pytest.approx(l1 + sum(gi) / len(gi), abs=1e-5)
    assert math.isfinite(grounding_loss(torch.tensor([[0.5, 0.5, 0.4, 0.4]]), b[:1]).item())
    assert grounding_accuracy(b * 100, b * 100) == 100.0


def test_classification_losses_and_metrics():
    logits = torch.randn(16, 5, generator=G)
    y = torch.randint(0, 5, (16,), generator=G)
    ref = -sum(torch.log_softmax(logits[i], -1)[y[i]] for i in range(16)) / 16
    assert classification_loss(logits, y).item() == pytest.approx(ref.item(), abs=1e-5)
    multi = (torch.rand(16, 5, generator=G) > 0.6).float()
    p = logits.sigmoid()
    ref_bce = -(multi * p.log() + (1 - multi) * (1 - p).log()).mean()
    assert classification_loss(logits, multi, multi_label=True).item() == pytest.approx(ref_bce.item(), abs=1e-5)
    assert top1_accuracy(logits, logits.argmax(-1)) == 100.0


def test_mean_average_precision_matches_reference():
    scores = torch.rand(30, 4, generator=G)
    target = (torch.rand(30, 4, generator=G) > 0.5).long()
    aps = []
    for c in range(4):
        pairs = sorted(zip(scores[:, c].tolist(), target[:, c].tolist()), key=lambda t: -t[0])
        hits, total = 0, 0.0
        for rank, (_, y) in enumerate(pairs, 1):
            if y:
                hits += 1
                total += hits / rank
        aps.append(total / max(1, hits))
    assert mean_average_precision(scores, target) == pytest.approx(100 * sum(aps) / 4, abs=1e-4)


def test_vqa_and_aqa():
    logits = torch.randn(6, 10, generator=G)
    soft = torch.rand(6, 10, generator=G)
    p = logits.sigmoid()
    ref = -(soft * p.log() + (1 - soft) * (1 - p).log()).sum() / 6
    assert vqa_loss(logits, soft).item() == pytest.approx(ref.item(), rel=1e-5)
    assert vqa_score(logits, soft) == pytest.approx(float(soft[torch.arange(6), logits.argmax(-1)].mean() * 100), abs=1e-5)
    s = torch.randn(5, 4, generator=G)
    ans = torch.randint(0, 4, (5,), generator=G)
    ref = sum(max(0.0, 1 + float(s[i, k]) - float(s[i, ans[i]])) for i in range(5) for k in range(4)) / 5
    assert aqa_hinge_loss(s, ans).item() == pytest.approx(ref, abs=1e-5)


def test_mean_iou():
    t = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    p = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    # class 0: inter 1 (0,0) union {(0,0),(0,1),(1,1)} = 3; class 1: inter 3, union 4; class 2: inter 1, union 2
    assert mean_iou(p, t, 3) == pytest.approx(100 * (1 / 3 + 3 / 4 + 1 / 2) / 3, abs=1e-4)
