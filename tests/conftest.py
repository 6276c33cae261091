"""Shared fixtures and pytest hooks; the helpers that tests import live in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vision_mnv2.data import write_classification_dataset

from .helpers import TEST_THREADS

torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session")
def tiny_cls_root(tmp_path_factory) -> Path:
    """4 classes, 8 training and 4 validation images per class, 64 px."""
    root = tmp_path_factory.mktemp("data") / "tiny_cls"
    return write_classification_dataset(root, num_classes=4, train_per_class=8, val_per_class=4, image_size=64, seed=1)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``--dist loadgroup``, pyproject.toml) a test module runs on one worker,
    so that its module-scoped fixtures (a trained checkpoint, a generated dataset) are built once,
    not once per worker; a module that marks its own groups (test_readme.py's two halves) keeps them."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
