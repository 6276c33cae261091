"""MobileNetV1 (Howard et al., 2017, arXiv:1704.04861) as TF-slim's ``mobilenet_v1`` builds it: the
network the MobileNetV2 paper compares against in Tables 4, 6 and 7.

* :class:`DepthwiseSeparable` - one of the 13 separable layers: 3x3 depthwise conv + BN + ReLU6,
  then 1x1 pointwise conv + BN + ReLU6 (TF-slim: ``Conv2d_i_depthwise``, ``Conv2d_i_pointwise``).
* :class:`MobileNetV1Backbone` - the stem (3x3 conv, 32 channels, stride 2) and the 13 separable
  layers, with TF-slim's width rounding, output stride 32/16/8 by dilation and feature taps named as
  TF names its end points (``"Conv2d_11_pointwise"``: stride 16, 512 channels; ``"Conv2d_13_pointwise"``:
  stride 32, 1024 channels).
* :class:`MobileNetV1` - the ImageNet classifier: backbone, global average pool, dropout, linear
  (TF-slim's ``Logits/Conv2d_1c_1x1`` is a 1x1 conv with bias on the pooled vector: the same map).

``backbone.features[i]`` is TF's ``Conv2d_i``. Convolutions have no bias (batch norm follows), batch
norm is affine (TF-slim's ``center`` and ``scale``), as in TF-slim's ``mobilenet_v1_arg_scope``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from ..layers import NormLayer, conv_bn_act
from .backbone import (
    BackboneClassifier,
    FeatureBackbone,
    FeatureInfo,
    check_width_and_output_stride,
    strides_for_output_stride,
)

__all__ = ["SEPARABLE_SETTINGS", "DepthwiseSeparable", "MobileNetV1", "MobileNetV1Backbone", "tf_slim_depth"]

# TF-slim's _CONV_DEFS after the stem: (stride, output channels) of the 13 separable layers.
SEPARABLE_SETTINGS: tuple[tuple[int, int], ...] = (
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
)
STEM_CHANNELS = 32


def tf_slim_depth(channels: int, width_mult: float, min_depth: int = 8) -> int:
    """TF-slim's ``depth_multiplier`` rule for MobileNetV1: ``max(int(channels * width_mult),
    min_depth)``, cut off, not rounded to multiples of 8 (width 0.75: 24, 48, 96, ..., 768).
    ``min_depth`` is 8 in TF-slim's classifier, 16 in the Object Detection API's feature extractor."""
    return max(int(channels * width_mult), min_depth)


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv + BN + ReLU6, then 1x1 pointwise conv + BN + ReLU6."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        tf_padding: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.dilation = dilation
        self.depthwise = conv_bn_act(
            in_channels,
            in_channels,
            kernel_size=3,
            stride=stride,
            groups=in_channels,
            dilation=dilation,
            norm_layer=norm_layer,
            tf_padding=tf_padding,
        )
        self.pointwise = conv_bn_act(in_channels, out_channels, kernel_size=1, norm_layer=norm_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNetV1Backbone(FeatureBackbone):
    """TF-slim's ``mobilenet_v1_base``: the stem and 13 depthwise-separable layers, with named taps.

    Args:
        width_mult: TF-slim's ``depth_multiplier`` (0.25 to 1.0 in its checkpoints); every layer has
            ``max(int(channels * width_mult), min_depth)`` channels.
        output_stride: 32 (classification), 16 or 8 (dense prediction). As TF-slim: the layer that
            would exceed it keeps stride 1 and its current rate, later depthwise convs dilate by the
            skipped stride (same weights at every output stride).
        out_features: tap names that :meth:`forward` returns (``"Conv2d_0"``, ``"Conv2d_{i}_depthwise"``,
            ``"Conv2d_{i}_pointwise"``, i = 1..13). ``None`` returns only ``"Conv2d_13_pointwise"``.
        min_depth: the fewest channels a layer gets (8 in TF-slim's classifier, 16 in the Object
            Detection API's SSD feature extractor).
        drop_unused: remove the layers after the deepest requested tap.
        tf_padding: TensorFlow's "SAME" padding in the stride-2 convs, for weights trained in TF.
        norm_layer: the normalisation after every conv (``norm_layer(channels)``; batch norm).

    Stages (for :meth:`freeze`): 0 the stem, then the runs of equal width: 1 ``Conv2d_1`` (64
    channels), 2 ``Conv2d_2-3`` (128), 3 ``Conv2d_4-5`` (256), 4 ``Conv2d_6-11`` (512), 5
    ``Conv2d_12-13`` (1024).
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        output_stride: int = 32,
        out_features: Sequence[str] | None = None,
        min_depth: int = 8,
        drop_unused: bool = False,
        tf_padding: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        check_width_and_output_stride(width_mult, output_stride)
        if not isinstance(min_depth, int) or min_depth < 1:
            raise ValueError(f"min_depth must be a positive integer, got {min_depth!r}")

        in_channels = tf_slim_depth(STEM_CHANNELS, width_mult, min_depth)
        layers: list[nn.Module] = [
            conv_bn_act(3, in_channels, kernel_size=3, stride=2, norm_layer=norm_layer, tf_padding=tf_padding)
        ]
        stages = [0]
        infos = [FeatureInfo("Conv2d_0", in_channels, 2, 0)]
        widths: list[int] = []  # the distinct widths so far: a stage is a run of equal width
        schedule = strides_for_output_stride([stride for stride, _ in SEPARABLE_SETTINGS], output_stride)
        for index, ((_, channels), (stride, dilation, reduction)) in enumerate(
            zip(SEPARABLE_SETTINGS, schedule), start=1
        ):
            out_channels = tf_slim_depth(channels, width_mult, min_depth)
            layers.append(
                DepthwiseSeparable(
                    in_channels, out_channels, stride, dilation, tf_padding=tf_padding, norm_layer=norm_layer
                )
            )
            if channels not in widths:
                widths.append(channels)
            stages.append(len(widths))
            infos.append(FeatureInfo(f"Conv2d_{index}_depthwise", in_channels, reduction, index))
            infos.append(FeatureInfo(f"Conv2d_{index}_pointwise", out_channels, reduction, index))
            in_channels = out_channels

        super().__init__(layers, stages, infos, out_features, drop_unused)
        self.width_mult = float(width_mult)
        self.output_stride = output_stride
        self.min_depth = min_depth
        self.tf_padding = bool(tf_padding)

    def layer_outputs(self, x: Tensor, taps: frozenset[str]) -> Iterator[tuple[str, Tensor]]:
        """``Conv2d_0`` after the stem, then ``Conv2d_i_depthwise`` and ``Conv2d_i_pointwise`` for
        the two halves of each separable layer."""
        x = self.features[0](x)
        yield "Conv2d_0", x
        for index, layer in enumerate(self.features[1:], start=1):
            x = layer.depthwise(x)
            yield f"Conv2d_{index}_depthwise", x
            x = layer.pointwise(x)
            yield f"Conv2d_{index}_pointwise", x


class MobileNetV1(BackboneClassifier):
    """The MobileNetV1 ImageNet classifier: input normalisation, a :class:`MobileNetV1Backbone`, global
    average pool, dropout, linear (TF-slim's ``Conv2d_1c_1x1`` on the pooled 1x1 map). Takes RGB
    images in [0, 1]. Built by :func:`vision_mnv2.models.mobilenet_v1`."""
