"""Metrics: COCO box mAP through pycocotools."""

from .coco_eval import COCO_STAT_NAMES, CocoEvaluator, evaluate_coco_results

__all__ = ["COCO_STAT_NAMES", "CocoEvaluator", "evaluate_coco_results"]
