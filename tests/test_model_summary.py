"""The training log's model summary counts real FLOPs: each task module gives Lightning one input of
the shape it is evaluated at (``example_input_array``, set in ``setup`` from the data description)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch.utilities.model_summary import ModelSummary

from tasks.classification import ClassificationTask
from tasks.detection import DetectionTask
from tasks.segmentation import SegmentationTask
from vision_mnv2.complexity import count_macs
from vision_mnv2.models import deeplabv3_mobilenet_v2, mobilenet_v2, ssdlite_mobilenet_v2


class _Data:
    image_size = 96  # a datamodule's training crop


def _classification():
    module = ClassificationTask(mobilenet_v2(num_classes=8, width_mult=0.35), 8, partial(torch.optim.AdamW))
    module.data_description = {"hints": {"image_size": 128}}
    return module, (128, 128)


def _detection():
    return DetectionTask(ssdlite_mobilenet_v2(num_classes=3, width_mult=0.35, image_size=160), partial(torch.optim.AdamW)), (160, 160)  # fmt: skip


def _segmentation_padded():
    model = deeplabv3_mobilenet_v2(num_classes=4, width_mult=0.35, aspp=False)
    module = SegmentationTask(model, 4, partial(torch.optim.AdamW))
    module.data_description = {"hints": {"pad_to": 160}}  # validation pads to this size
    return module, (160, 160)


def _segmentation_unpadded():
    module, _ = _segmentation_padded()
    module.data_description = {"hints": {"pad_to": None}}  # images of one size: the training crop
    return module, (96, 96)


@pytest.mark.parametrize("build", [_classification, _detection, _segmentation_padded, _segmentation_unpadded])
def test_summary_counts_two_flops_per_multiply_add_of_the_evaluation_input(build):
    module, size = build()
    module.example_input_array = module.example_input(_Data())
    summary = ModelSummary(module, max_depth=1)
    assert summary.total_flops > 0
    assert summary.total_flops == 2 * count_macs(module.model, size)
