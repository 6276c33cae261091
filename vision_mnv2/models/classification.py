"""Public builders of the classifiers: MobileNetV2, and MobileNetV1 for the paper's comparison rows."""

from __future__ import annotations

import os

from .builder import build_model_with_cfg
from .mobilenetv1 import MobileNetV1, MobileNetV1Backbone
from .mobilenetv2 import MobileNetV2, MobileNetV2Backbone
from .registry import register_model

__all__ = ["mobilenet_v1", "mobilenet_v2"]


@register_model("mobilenet_v2", task="classification")
def mobilenet_v2(
    width_mult: float = 1.0,
    num_classes: int = 1000,
    weights: str | os.PathLike | None = None,
    output_stride: int = 32,
    dropout: float = 0.2,
    freeze_backbone: bool | int = False,
    frozen_bn: bool = False,
    expansion_groups: int | list[int] | None = None,
    normalization: str | dict | list | None = "imagenet",
    backbone_weights: str | os.PathLike | None = None,
    round_nearest: int = 8,
    tf_padding: bool = False,
    bottleneck_activation: str = "linear",
    shortcut: str = "bottleneck",
) -> MobileNetV2:
    """MobileNetV2 classifier (paper Table 2), optionally loaded from a weight file.

    Args:
        width_mult: channel multiplier, 0.35 to 1.4 in the paper.
        num_classes: number of output logits.
        weights: ``None``; a torchvision ``mobilenet_v2`` state-dict file (e.g. the
            ``mobilenet_v2-7ebf99e0.pth`` torchvision caches); or a checkpoint / state dict of this
            project's classifier. Every key must fit: missing or unexpected keys raise ``WeightsError``
            naming them.
        output_stride: 32, or 16 / 8 by dilation (same weights).
        dropout: dropout before the linear layer (0.2 in the paper).
        freeze_backbone / frozen_bn: see :meth:`MobileNetV2Backbone.freeze` (fine-tuning).
        expansion_groups: memory-efficient inference (paper section 5.1): k channel groups per
            expansion, one k or one per block; ``None`` the standard path. Eval mode only.
        normalization: the input statistics the weights expect (``"imagenet"``, ``"tf"`` or
            ``{mean, std}``); the model takes RGB in [0, 1] and normalises itself.
        backbone_weights: only the backbone, from a torchvision ``mobilenet_v2`` file or a checkpoint
            of any task of this project (the classifier layer stays initialised).
        round_nearest: layer widths are rounded to multiples of this (8: TF-slim and torchvision).
        tf_padding: TensorFlow's "SAME" padding in the stride-2 convs, for weights trained in TF
            (``vision_mnv2.convert.tflite`` sets it for Google's models).
        bottleneck_activation / shortcut: the paper's ablations (section 6.4, Figure 6): ``"linear"``
            or ``"relu6"`` after each projection; the residual connections ``"bottleneck"`` (the
            paper's), ``"expansion"`` or ``"none"`` (see :class:`InvertedResidual`). Same parameters
            as the default network; ``expansion_groups`` refuses ``shortcut="expansion"``.
    """
    return build_model_with_cfg(MobileNetV2Backbone, MobileNetV2, locals())


@register_model("mobilenet_v1", task="classification")
def mobilenet_v1(
    width_mult: float = 1.0,
    num_classes: int = 1000,
    weights: str | os.PathLike | None = None,
    output_stride: int = 32,
    dropout: float = 0.001,
    freeze_backbone: bool | int = False,
    frozen_bn: bool = False,
    normalization: str | dict | list | None = "imagenet",
    backbone_weights: str | os.PathLike | None = None,
    min_depth: int = 8,
    tf_padding: bool = False,
) -> MobileNetV1:
    """MobileNetV1 classifier as TF-slim builds it (paper Table 4's comparison row: 4.2M parameters,
    575M MAdds; TF-slim and the MobileNetV1 paper count 569M).

    Args:
        width_mult: TF-slim's depth multiplier (0.25 to 1.0); channels ``max(int(c * width_mult), min_depth)``.
        num_classes: number of output logits.
        weights: ``None`` or a checkpoint / state dict of this project's MobileNetV1 classifier (every
            key must fit). There is no torchvision MobileNetV1.
        output_stride: 32, or 16 / 8 by dilation (same weights).
        dropout: dropout before the linear layer (TF-slim keeps 0.999, i.e. drops 0.001).
        freeze_backbone / frozen_bn: see :meth:`MobileNetV1Backbone.freeze` (stages 0-5).
        normalization: the input statistics the weights expect (``"imagenet"``, ``"tf"`` or
            ``{mean, std}``); the model takes RGB in [0, 1] and normalises itself.
        backbone_weights: only the backbone, from a checkpoint of any task of this project with a
            MobileNetV1 backbone.
        min_depth: the fewest channels of a layer (8 in TF-slim's classifier).
        tf_padding: TensorFlow's "SAME" padding in the stride-2 convs, for weights trained in TF.
    """
    return build_model_with_cfg(MobileNetV1Backbone, MobileNetV1, locals())
