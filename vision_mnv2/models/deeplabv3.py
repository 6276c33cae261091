"""DeepLabv3 on MobileNetV2 (paper section 6.3, Table 7), and on MobileNetV1 for the table's
comparison row.

The head sits on MobileNetV2's 320-channel map (layer 18); the final 1280-channel conv is not used
and not built. On MobileNetV1 it sits on the last layer (``Conv2d_13_pointwise``, 1024 channels).
``aspp=True``: torchvision's ASPP (1x1 conv, three 3x3 atrous convs, image pooling, 256 channels
each, fused by a 1x1 conv). ``aspp=False``: the paper's mobile head, the same module with no atrous
branch (1x1 conv + image pooling). Logits are upsampled bilinearly to the input size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.segmentation.deeplabv3 import ASPP

from .backbone import FeatureBackbone
from .builder import build_model_with_cfg
from .mobilenetv1 import MobileNetV1Backbone
from .mobilenetv2 import MobileNetV2Backbone
from .normalization import InputNormalization, Normalization
from .registry import register_model

__all__ = ["DeepLabV3", "deeplabv3_mobilenet_v1", "deeplabv3_mobilenet_v2", "multi_scale_probabilities"]

# The map the head sits on: MobileNetV2's 320-channel layer 18, MobileNetV1's last layer.
HEAD_TAPS = {MobileNetV2Backbone: "layer18", MobileNetV1Backbone: "Conv2d_13_pointwise"}
# DeepLab's atrous rates at output stride 16; doubled at output stride 8.
ASPP_RATES_OS16 = (6, 12, 18)


class DeepLabV3(nn.Module):
    """Input normalisation -> backbone tap -> ASPP -> 1x1 classifier -> bilinear upsampling to the
    input size. Takes RGB images in [0, 1] of any size."""

    def __init__(
        self,
        backbone: FeatureBackbone,
        num_classes: int,
        atrous_rates: tuple[int, ...],
        channels: int = 256,
        normalization=None,
        align_corners: bool = False,
    ):
        super().__init__()
        self.normalize = InputNormalization(normalization)
        self.backbone = backbone
        (in_channels,) = backbone.out_channels.values()
        self.aspp = ASPP(in_channels, list(atrous_rates), channels)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.num_classes = num_classes
        self.align_corners = align_corners

    @property
    def normalization(self) -> Normalization:
        return self.normalize.normalization

    def forward(self, x: Tensor) -> Tensor:
        (features,) = self.backbone(self.normalize(x)).values()
        logits = self.classifier(self.aspp(features))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)


@register_model("deeplabv3_mobilenet_v2", task="segmentation")
def deeplabv3_mobilenet_v2(
    num_classes: int = 21,
    width_mult: float = 1.0,
    output_stride: int = 16,
    aspp: bool = True,
    weights: str | os.PathLike | None = None,
    backbone_weights: str | os.PathLike | None = None,
    freeze_backbone: bool | int = False,
    frozen_bn: bool = False,
    expansion_groups: int | list[int] | None = None,
    normalization: str | dict | list | None = "imagenet",
    round_nearest: int = 8,
    tf_padding: bool = False,
    align_corners: bool = False,
    bottleneck_activation: str = "linear",
    shortcut: str = "bottleneck",
) -> DeepLabV3:
    """DeepLabv3 + MobileNetV2 (paper Table 7: 4.52M parameters with ASPP, 2.11M without).

    Args:
        num_classes: classes including the background (21 for Pascal VOC).
        output_stride: 16 or 8 (dilation in the backbone; ASPP rates 6/12/18 at 16, 12/24/36 at 8).
        aspp: the ASPP head, or the paper's mobile head (1x1 conv + image pooling).
        weights: a checkpoint of this project's segmenter (all keys must fit).
        backbone_weights: a torchvision ``mobilenet_v2`` state dict or any checkpoint of this project.
        freeze_backbone / frozen_bn: see :meth:`MobileNetV2Backbone.freeze` (fine-tuning).
        expansion_groups: memory-efficient inference (paper section 5.1): k channel groups per
            expansion, one k or one per block; ``None`` the standard path. Eval mode only.
        normalization: the input statistics the weights expect (``"imagenet"``, ``"tf"`` or
            ``{mean, std}``); the model takes RGB in [0, 1] and normalises itself.
        round_nearest: layer widths are rounded to multiples of this; DeepLab's own narrow models
            use 1 (width 0.5: 12 channels where torchvision has 16).
        tf_padding: TensorFlow's "SAME" padding in the stride-2 convs (exact at every input size;
            at odd sizes such as DeepLab's 513 it is the same as PyTorch's).
        align_corners: upsample the logits with ``align_corners=True``, as DeepLab does.
        bottleneck_activation / shortcut: the paper's ablations (section 6.4, Figure 6): ``"linear"``
            or ``"relu6"`` after each projection; the residual connections ``"bottleneck"`` (the
            paper's), ``"expansion"`` or ``"none"`` (see :class:`InvertedResidual`). Same parameters
            as the default network; ``expansion_groups`` refuses ``shortcut="expansion"``.
    """
    return _build_deeplabv3(MobileNetV2Backbone, locals())


@register_model("deeplabv3_mobilenet_v1", task="segmentation")
def deeplabv3_mobilenet_v1(
    num_classes: int = 21,
    width_mult: float = 1.0,
    output_stride: int = 16,
    aspp: bool = True,
    weights: str | os.PathLike | None = None,
    backbone_weights: str | os.PathLike | None = None,
    freeze_backbone: bool | int = False,
    frozen_bn: bool = False,
    normalization: str | dict | list | None = "imagenet",
    tf_padding: bool = False,
    align_corners: bool = False,
) -> DeepLabV3:
    """DeepLabv3 + MobileNetV1, the paper's comparison row (Table 7: OS16 with ASPP, 11.15M
    parameters, 14.25B MAdds): the same head as :func:`deeplabv3_mobilenet_v2`, on MobileNetV1's
    last layer (``Conv2d_13_pointwise``, 1024 channels) at output stride 16 or 8 by dilation.

    Args: as :func:`deeplabv3_mobilenet_v2` (``backbone_weights``: a checkpoint of any task of this
        project with a MobileNetV1 backbone).
    """
    return _build_deeplabv3(MobileNetV1Backbone, locals())


def _build_deeplabv3(backbone_cls: type[FeatureBackbone], arguments: dict) -> DeepLabV3:
    """The segmenter on ``backbone_cls``'s head tap; the layers after it are not built."""
    num_classes, output_stride = arguments["num_classes"], arguments["output_stride"]
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if output_stride not in (8, 16):
        raise ValueError(f"DeepLabv3 output_stride must be 8 or 16, got {output_stride!r}")
    return build_model_with_cfg(
        backbone_cls, _deeplabv3_on_backbone, arguments, out_features=[HEAD_TAPS[backbone_cls]], drop_unused=True
    )


def _deeplabv3_on_backbone(
    backbone: FeatureBackbone, *, num_classes: int, output_stride: int, aspp: bool, normalization, align_corners: bool
) -> DeepLabV3:
    """DeepLabv3 around ``backbone``: ASPP with DeepLab's rates for the output stride, or the
    paper's mobile head (no atrous branch)."""
    rates = tuple(r * 16 // output_stride for r in ASPP_RATES_OS16) if aspp else ()
    return DeepLabV3(backbone, num_classes, rates, normalization=normalization, align_corners=align_corners)


def multi_scale_probabilities(
    model: nn.Module, images: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False
) -> Tensor:
    """Class probabilities averaged over input scales and, with ``flip``, their mirror images (the
    paper's "MF" evaluation; DeepLab uses scales 0.5 to 1.75 in steps of 0.25).

    ``model`` maps N x 3 x h x w images to N x C x h x w logits. Each scaled (and flipped) copy's
    logits are resized back to the input size before the softmax, so every copy votes per pixel.
    """
    if not scales or any(scale <= 0 for scale in scales):
        raise ValueError(f"scales must be positive factors, got {list(scales)}")
    size = images.shape[-2:]
    total = None
    count = 0
    for scale in scales:
        scaled = images
        if scale != 1.0:
            scaled_size = [max(1, int(round(side * scale))) for side in size]
            scaled = F.interpolate(images, size=scaled_size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            inputs = torch.flip(scaled, dims=[-1]) if mirrored else scaled
            logits = model(inputs)
            if mirrored:
                logits = torch.flip(logits, dims=[-1])
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            probabilities = logits.softmax(dim=1)
            total = probabilities if total is None else total + probabilities
            count += 1
    return total / count
