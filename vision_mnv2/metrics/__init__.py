"""Metrics: COCO box mAP (COCOeval through faster-coco-eval or pycocotools); segmentation mIoU from an
accumulated confusion matrix."""

from .coco_eval import (
    COCO_BACKENDS,
    COCO_STAT_NAMES,
    CocoMeanAveragePrecision,
    coco_results,
    evaluate_coco_results,
    index_coco_ground_truth,
)
from .segmentation import segmentation_confusion_matrix, segmentation_scores

__all__ = [
    "COCO_BACKENDS",
    "COCO_STAT_NAMES",
    "CocoMeanAveragePrecision",
    "coco_results",
    "evaluate_coco_results",
    "index_coco_ground_truth",
    "segmentation_confusion_matrix",
    "segmentation_scores",
]
