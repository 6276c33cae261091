"""Semantic segmentation scores from one confusion matrix accumulated over the whole dataset.

mIoU is computed once from the summed matrix (as DeepLab and the VOC devkit do), never as a mean
of per-batch or per-image values, which would weight small images and rare classes differently.
Accumulation itself is torchmetrics' ``MulticlassConfusionMatrix`` (ignore label, DDP reduction);
this module turns the matrix into the numbers people report.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

__all__ = ["segmentation_confusion_matrix", "segmentation_scores"]


def segmentation_confusion_matrix(num_classes: int, ignore_index: int = 255) -> MulticlassConfusionMatrix:
    """An accumulating confusion matrix (rows: ground truth, columns: prediction) over pixels whose
    label is not ``ignore_index``. ``update(pred_labels, target_labels)`` takes N x H x W tensors."""
    return MulticlassConfusionMatrix(num_classes=num_classes, ignore_index=ignore_index, validate_args=False)


def segmentation_scores(confusion: Tensor, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """mIoU, pixel accuracy, mean class accuracy and per-class IoU from a confusion matrix.

    A class that appears neither in the ground truth nor in the predictions has no IoU (NaN in
    ``IoU/<name>``) and is left out of the mean, as in DeepLab's evaluation.
    """
    confusion = confusion.double()
    num_classes = confusion.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}-class confusion matrix")
    true_positive = confusion.diag()
    ground_truth = confusion.sum(dim=1)
    predicted = confusion.sum(dim=0)
    union = ground_truth + predicted - true_positive
    iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, float("nan")))
    accuracy = torch.where(
        ground_truth > 0, true_positive / ground_truth.clamp(min=1), torch.full_like(union, float("nan"))
    )
    total = confusion.sum()
    scores = {
        "mIoU": float(iou.nanmean()) if (union > 0).any() else float("nan"),
        "pixel_acc": float(true_positive.sum() / total) if total > 0 else float("nan"),
        "mean_acc": float(accuracy.nanmean()) if (ground_truth > 0).any() else float("nan"),
    }
    scores.update({f"IoU/{name}": float(value) for name, value in zip(names, iou)})
    return scores
