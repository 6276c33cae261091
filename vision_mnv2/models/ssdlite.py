"""SSDLite on MobileNetV2 (paper section 6.2), as TF's Object Detection API builds it.

torchvision supplies the detector (``SSD``: matching, box coding, hard negative mining, NMS), the
separable prediction head (``SSDLiteHead``) and the extra-layer block; its feature extractor fits
MobileNetV3's layout, so the MobileNetV2 extractor and TF's anchor layout are written here.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block, _normal_init

from .mobilenetv2 import MobileNetV2Backbone, make_divisible
from .weights import load_backbone_weights, load_weights

__all__ = ["SSDLiteMobileNetV2Extractor", "TFSSDAnchorGenerator", "ssdlite_mobilenet_v2"]

# TF OD API `ssdlite_mobilenet_v2_coco`: the two backbone maps and the depths of the 4 extra layers.
BACKBONE_TAPS = ("layer15/expansion", "layer19")
EXTRA_DEPTHS = (512, 256, 256, 128)


def _head_norm() -> partial:
    # TF's batch norm settings for the SSD layers (decay 0.97, epsilon 0.001), as torchvision's SSDLite.
    return partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)


class SSDLiteMobileNetV2Extractor(nn.Module):
    """Six feature maps: the expansion output of layer 15 (stride 16), layer 19 (stride 32, 1280
    channels), then four extra layers (1x1 to half depth, 3x3 stride-2 depthwise, 1x1)."""

    def __init__(self, width_mult: float = 1.0, min_depth: int = 16) -> None:
        super().__init__()
        self.backbone = MobileNetV2Backbone(width_mult=width_mult, out_features=BACKBONE_TAPS)
        channels = [self.backbone.feature_info[name].channels for name in BACKBONE_TAPS]
        depths = [max(min_depth, make_divisible(d * width_mult, 16)) for d in EXTRA_DEPTHS]
        extras = []
        for depth in depths:
            extras.append(_extra_block(channels[-1], depth, _head_norm()))
            channels.append(depth)
        self.extra = nn.ModuleList(extras)
        _normal_init(self.extra)
        self.out_channels = channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        maps = list(self.backbone(x).values())
        for block in self.extra:
            maps.append(block(maps[-1]))
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


class TFSSDAnchorGenerator(DefaultBoxGenerator):
    """torchvision's SSD anchors with TF's ``reduce_boxes_in_lowest_layer``.

    Scales run linearly from ``min_ratio`` to ``max_ratio`` over the layers; each layer has ratios 1,
    2, 1/2, 3, 1/3 plus ratio 1 at the geometric mean of its scale and the next (6 boxes). The lowest
    layer has only 3: scale 0.1 at ratio 1, and ``min_ratio`` at ratios 2 and 1/2.
    """

    def __init__(self, num_layers: int = 6, min_ratio: float = 0.2, max_ratio: float = 0.95, lowest_scale: float = 0.1):
        super().__init__([[2, 3]] * num_layers, min_ratio=min_ratio, max_ratio=max_ratio)
        self.lowest_scale = lowest_scale
        lowest = [
            [lowest_scale, lowest_scale],
            [min_ratio * math.sqrt(2.0), min_ratio / math.sqrt(2.0)],
            [min_ratio / math.sqrt(2.0), min_ratio * math.sqrt(2.0)],
        ]
        self._wh_pairs[0] = torch.tensor(lowest, dtype=torch.float32)

    def num_anchors_per_location(self) -> list[int]:
        return [len(pairs) for pairs in self._wh_pairs]


def ssdlite_mobilenet_v2(
    num_classes: int = 80,
    width_mult: float = 1.0,
    image_size: int = 320,
    weights: str | os.PathLike | None = None,
    backbone_weights: str | os.PathLike | None = None,
    score_thresh: float = 0.001,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    **kwargs,
) -> SSD:
    """SSDLite + MobileNetV2 (paper Table 6: 4.3M parameters, 0.8B MACs at 320x320, 80 classes).

    Args:
        num_classes: object classes, background not counted (the model predicts ``num_classes + 1``).
        width_mult: backbone width multiplier; the extra layers scale with it.
        image_size: the square input every image is resized to.
        weights: a checkpoint of this project's detector (all keys must fit).
        backbone_weights: a torchvision ``mobilenet_v2`` state dict or a checkpoint of any task of this
            project; only its backbone is taken.
        kwargs: passed to torchvision's ``SSD`` (``topk_candidates``, ``positive_fraction``, ...).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    extractor = SSDLiteMobileNetV2Extractor(width_mult)
    if backbone_weights is not None:
        load_backbone_weights(extractor.backbone, backbone_weights)
    anchors = TFSSDAnchorGenerator()
    head = SSDLiteHead(extractor.out_channels, anchors.num_anchors_per_location(), num_classes + 1, _head_norm())
    model = SSD(
        extractor,
        anchors,
        (image_size, image_size),
        num_classes + 1,
        head=head,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        # torchvision's ImageNet statistics, so ImageNet-pretrained backbones see what they saw.
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        **kwargs,
    )
    if weights is not None:
        load_weights(model, weights)
    return model
