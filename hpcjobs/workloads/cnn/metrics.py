"""Accuracy, precision, recall and F1 from a confusion matrix, in torch.

Same definitions as scikit-learn with zero_division=0: binary (positive class = index
1) for two classes; otherwise the macro average over the classes that occur in the
targets or the predictions (sklearn's default label set).
"""

from __future__ import annotations

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[K, K] int64 counts; row = true class, column = predicted class."""
    k = num_classes
    flat = target.long().reshape(-1) * k + pred.long().reshape(-1)
    return torch.bincount(flat, minlength=k * k).reshape(k, k)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))  # 0/0 -> 0


def classification_metrics(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int
) -> dict[str, float]:
    cm = confusion_matrix(pred, target, num_classes).cpu().double()
    tp = cm.diag()
    fp = cm.sum(dim=0) - tp  # predicted as the class, but another
    fn = cm.sum(dim=1) - tp  # of the class, predicted as another
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    if num_classes == 2:
        p, r, f = precision[1], recall[1], f1[1]
    else:
        seen = (tp + fp + fn) > 0  # classes absent from both targets and predictions don't count
        p, r, f = precision[seen].mean(), recall[seen].mean(), f1[seen].mean()
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
    }
