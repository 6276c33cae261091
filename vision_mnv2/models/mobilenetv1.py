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

from collections.abc import Sequence

from torch import Tensor, nn

from .backbone import BackboneClassifier, FeatureBackbone, FeatureInfo
from .mobilenetv2 import VALID_OUTPUT_STRIDES, _conv_bn_act

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
        self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1, tf_padding: bool = False
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.dilation = dilation
        self.depthwise = _conv_bn_act(
            in_channels,
            in_channels,
            kernel_size=3,
            stride=stride,
            tf_padding=tf_padding,
            dilation=dilation,
            groups=in_channels,
            activation_layer=nn.ReLU6,
        )
        self.pointwise = _conv_bn_act(in_channels, out_channels, kernel_size=1, activation_layer=nn.ReLU6)

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

    Stages (for :meth:`freeze`): 0 the stem, then the runs of equal width: 1 ``Conv2d_1`` (64
    channels), 2 ``Conv2d_2-3`` (128), 3 ``Conv2d_4-5`` (256), 4 ``Conv2d_6-11`` (512), 5
    ``Conv2d_12-13`` (1024).
    """

    num_stages = 5

    def __init__(
        self,
        width_mult: float = 1.0,
        output_stride: int = 32,
        out_features: Sequence[str] | None = None,
        min_depth: int = 8,
        drop_unused: bool = False,
        tf_padding: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(width_mult, (int, float)) or width_mult <= 0:
            raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
        if output_stride not in VALID_OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {VALID_OUTPUT_STRIDES}, got {output_stride!r}")
        if not isinstance(min_depth, int) or min_depth < 1:
            raise ValueError(f"min_depth must be a positive integer, got {min_depth!r}")
        self.width_mult = float(width_mult)
        self.output_stride = output_stride
        self.min_depth = min_depth
        self.tf_padding = bool(tf_padding)

        in_channels = tf_slim_depth(STEM_CHANNELS, width_mult, min_depth)
        layers: list[nn.Module] = [
            _conv_bn_act(3, in_channels, kernel_size=3, stride=2, tf_padding=tf_padding, activation_layer=nn.ReLU6)
        ]
        infos = [FeatureInfo("Conv2d_0", in_channels, 2, 0)]
        current_stride, rate = 2, 1
        for index, (stride, channels) in enumerate(SEPARABLE_SETTINGS, start=1):
            layer_rate = rate
            if current_stride >= output_stride and stride > 1:
                # TF-slim: stride 1 at this layer's current rate; later layers dilate by the stride.
                stride, rate = 1, rate * stride
            else:
                current_stride *= stride
            out_channels = tf_slim_depth(channels, width_mult, min_depth)
            layers.append(DepthwiseSeparable(in_channels, out_channels, stride, layer_rate, tf_padding=tf_padding))
            infos.append(FeatureInfo(f"Conv2d_{index}_depthwise", in_channels, current_stride, index))
            infos.append(FeatureInfo(f"Conv2d_{index}_pointwise", out_channels, current_stride, index))
            in_channels = out_channels
        self.last_channels = in_channels
        self.features = nn.Sequential(*layers)
        self.feature_info: dict[str, FeatureInfo] = {info.name: info for info in infos}

        last = f"Conv2d_{len(SEPARABLE_SETTINGS)}_pointwise"
        self.out_features: tuple[str, ...] = tuple(out_features) if out_features else (last,)
        unknown = [name for name in self.out_features if name not in self.feature_info]
        if unknown:
            raise ValueError(f"unknown feature tap(s) {unknown}; available: {list(self.feature_info)}")
        if drop_unused:
            deepest = max(self.feature_info[name].module_index for name in self.out_features)
            self.features = self.features[: deepest + 1]
        self._init_weights()

    def stage_of_layer(self) -> list[int]:
        """Stage of each entry of ``features``: 0 the stem, then one stage per run of equal width."""
        stages, widths = [0], []
        for _, channels in SEPARABLE_SETTINGS:
            if channels not in widths:
                widths.append(channels)
            stages.append(len(widths))
        return stages[: len(self.features)]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Return the requested taps by name, running only as many layers as they need."""
        deepest = max(self.feature_info[name].module_index for name in self.out_features)
        taps: dict[str, Tensor] = {}
        for index, layer in enumerate(self.features[: deepest + 1]):
            if index == 0:
                x = taps["Conv2d_0"] = layer(x)
                continue
            if f"Conv2d_{index}_depthwise" in self.out_features:
                x = taps[f"Conv2d_{index}_depthwise"] = layer.depthwise(x)
                x = layer.pointwise(x)
            else:
                x = layer(x)
            taps[f"Conv2d_{index}_pointwise"] = x
        return {name: taps[name] for name in self.out_features}


class MobileNetV1(BackboneClassifier):
    """The MobileNetV1 ImageNet classifier: input normalisation, backbone, global average pool,
    dropout, linear (TF-slim's ``Conv2d_1c_1x1`` on the pooled 1x1 map). Takes RGB images in [0, 1]."""

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        output_stride: int = 32,
        dropout: float = 0.001,
        normalization=None,
        min_depth: int = 8,
        tf_padding: bool = False,
    ) -> None:
        backbone = MobileNetV1Backbone(
            width_mult=width_mult, output_stride=output_stride, min_depth=min_depth, tf_padding=tf_padding
        )
        super().__init__(backbone, num_classes, dropout, normalization)
