"""Shared fixtures and pytest hooks; the helpers that tests import live in tests/helpers.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vision_mnv2.data import write_classification_dataset, write_detection_dataset, write_segmentation_dataset

from .helpers import SEGMENTATION_SHAPES, TEST_THREADS

torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session")
def tiny_cls_root(tmp_path_factory) -> Path:
    """4 classes, 8 training and 4 validation images per class, 64 px."""
    root = tmp_path_factory.mktemp("data") / "tiny_cls"
    return write_classification_dataset(root, num_classes=4, train_per_class=8, val_per_class=4, image_size=64, seed=1)


@pytest.fixture(scope="session")
def det_root(tmp_path_factory) -> Path:
    """COCO layout, 3 classes, 8 training and 4 validation images of 96 x 128 px."""
    root = tmp_path_factory.mktemp("det") / "shapes"
    root = write_detection_dataset(root, num_classes=3, train_images=8, val_images=4, image_size=(96, 128), seed=4)
    # Crowd regions in the validation split: kept out of targets, scored as COCOeval scores them.
    annotations = root / "annotations" / "instances_val2017.json"
    data = json.loads(annotations.read_text())
    for ann in data["annotations"][::3]:
        ann["iscrowd"] = 1
    annotations.write_text(json.dumps(data))
    return root


@pytest.fixture(scope="session")
def seg_root(tmp_path_factory) -> Path:
    """VOC layout, SEGMENTATION_SHAPES classes besides the background, 8 training and 4 validation
    images of 96 x 128 px."""
    root = tmp_path_factory.mktemp("seg") / "shapes_voc"
    return write_segmentation_dataset(
        root, num_classes=SEGMENTATION_SHAPES, train_images=8, val_images=4, image_size=(96, 128), seed=5
    )


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``--dist loadgroup``, pyproject.toml) a test module runs on one worker,
    so that its module-scoped fixtures (a trained checkpoint, a generated dataset) are built once,
    not once per worker; a module that marks its own groups (test_readme.py's two halves) keeps them."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
