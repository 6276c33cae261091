"""Datasets, transforms and the synthetic data generator."""

from .classification import DatasetError, ImageFolderClassification
from .synthetic import SHAPES, render_scene, write_classification_dataset
from .transforms import classification_eval_transform, classification_train_transform

__all__ = [
    "SHAPES",
    "DatasetError",
    "ImageFolderClassification",
    "classification_eval_transform",
    "classification_train_transform",
    "render_scene",
    "write_classification_dataset",
]
