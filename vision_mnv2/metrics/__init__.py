"""Metrics: COCO box mAP through pycocotools; segmentation mIoU from an accumulated confusion matrix."""

from .coco_eval import COCO_STAT_NAMES, CocoEvaluator, evaluate_coco_results
from .segmentation import segmentation_confusion_matrix, segmentation_scores

__all__ = [
    "COCO_STAT_NAMES",
    "CocoEvaluator",
    "evaluate_coco_results",
    "segmentation_confusion_matrix",
    "segmentation_scores",
]
