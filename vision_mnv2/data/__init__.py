"""Datasets, transforms and the synthetic data generator."""

from .classification import DatasetError, ImageFolderClassification
from .coco import AnnotationStats, CocoDetection, load_coco_annotations
from .synthetic import SHAPES, coco_category_id, render_scene, write_classification_dataset, write_detection_dataset
from .transforms import classification_eval_transform, classification_train_transform

__all__ = [
    "SHAPES",
    "AnnotationStats",
    "CocoDetection",
    "coco_category_id",
    "load_coco_annotations",
    "write_detection_dataset",
    "DatasetError",
    "ImageFolderClassification",
    "classification_eval_transform",
    "classification_train_transform",
    "render_scene",
    "write_classification_dataset",
]
