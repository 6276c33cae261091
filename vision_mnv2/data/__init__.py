"""Datasets (ImageNet folders, COCO, Pascal VOC), transforms and the synthetic data generator."""

from .classification import DatasetError, ImageFolderClassification, read_rgb
from .coco import AnnotationStats, CocoDetection, read_coco_json
from .synthetic import (
    SHAPES,
    coco_category_id,
    render_scene,
    write_classification_dataset,
    write_coco_sized_dataset,
    write_detection_dataset,
    write_segmentation_dataset,
)
from .transforms import classification_eval_transform, classification_train_transform
from .voc import IGNORE_INDEX, VOC_CLASSES, VOCSegmentation, read_mask, voc_palette, write_mask

__all__ = [
    "SHAPES",
    "AnnotationStats",
    "CocoDetection",
    "coco_category_id",
    "read_coco_json",
    "write_detection_dataset",
    "DatasetError",
    "ImageFolderClassification",
    "read_rgb",
    "classification_eval_transform",
    "classification_train_transform",
    "render_scene",
    "write_classification_dataset",
    "write_coco_sized_dataset",
    "write_segmentation_dataset",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "VOCSegmentation",
    "read_mask",
    "voc_palette",
    "write_mask",
]
