"""Building blocks that the backbones and heads share (timm keeps such pieces in ``timm/layers``).

Models import these rather than each other's internals, so that MobileNetV1 does not depend on
MobileNetV2's file and a head can use the same convolution as a backbone.

* :func:`make_divisible` - TF-slim's and torchvision's channel rounding for width multipliers.
* :class:`TFSamePadConv2d` - a convolution padded as TensorFlow's ``padding="SAME"``.
* :func:`conv_bn_act` - conv + normalisation (+ activation), torchvision's ``Conv2dNormActivation``
  with MobileNet's ReLU6, the normalisation injected as ``norm_layer`` and optionally TF padding.
* :func:`batch_norm` - a ``norm_layer`` with other batch-norm settings (TF's decay and epsilon).

``norm_layer`` follows torchvision: a callable that takes the channel count and returns the
normalisation module (``nn.BatchNorm2d`` or a ``functools.partial`` of it). It is handed down at
construction so that every layer is built with the right settings, instead of being patched after.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops.misc import Conv2dNormActivation

__all__ = ["NormLayer", "TFSamePadConv2d", "batch_norm", "conv_bn_act", "make_divisible"]

NormLayer = Callable[[int], nn.Module]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``min_value`` (default:
    ``divisor``) and never below 90% of ``value``.

    The rule of TF-slim and torchvision, so that width multipliers give the published channel counts.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def batch_norm(*, momentum: float | None = None, eps: float | None = None) -> NormLayer:
    """A ``norm_layer`` that makes ``nn.BatchNorm2d`` with these settings; ``None`` keeps PyTorch's
    own (momentum 0.1, eps 1e-5). PyTorch's momentum is 1 - TF's decay: TF's 0.9997 is 0.0003."""
    settings = {name: value for name, value in (("momentum", momentum), ("eps", eps)) if value is not None}
    return partial(nn.BatchNorm2d, **settings) if settings else nn.BatchNorm2d


class TFSamePadConv2d(nn.Conv2d):
    """``nn.Conv2d`` padded as TensorFlow's ``padding="SAME"``, for networks trained in TensorFlow.

    SAME gives ``ceil(size / stride)`` outputs and puts the odd pixel of padding *after* the input:
    a stride-2 3x3 conv pads (0, 1) at even sizes (224 -> 112), where ``padding=1`` pads (1, 1) and
    shifts every output by half a pixel against TF's weights. At odd sizes (513 -> 257) and at stride
    1 the two agree. The padding depends on the input size, so it is computed in ``forward``; the
    conv's own ``padding`` stays 0 and its parameters are those of ``nn.Conv2d``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, dilation=1, groups=1, bias=True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)

    def pad_input(self, x: Tensor) -> Tensor:
        """``x`` padded as SAME pads it for this conv (public: the memory-efficient path pads slices)."""
        pads: list[int] = []
        for size, kernel, stride, dilation in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), reversed(self.dilation)
        ):
            out = (size + stride - 1) // stride
            total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads += [total // 2, total - total // 2]  # F.pad order: last dim first, (before, after)
        return F.pad(x, pads)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.pad_input(x))


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    *,
    groups: int = 1,
    dilation: int = 1,
    norm_layer: NormLayer = nn.BatchNorm2d,
    activation_layer: Callable[..., nn.Module] | None = nn.ReLU6,
    tf_padding: bool = False,
) -> Conv2dNormActivation:
    """Conv (no bias: the normalisation has one) + ``norm_layer(out_channels)`` + activation.

    The result is torchvision's ``Conv2dNormActivation`` (an ``nn.Sequential``: conv at 0, norm at 1,
    activation at 2), the layout weight files, batch-norm folding and the memory-efficient path
    index. ``activation_layer=None``: no activation (MobileNetV2's linear projection).
    ``tf_padding``: pad as TF's SAME (:class:`TFSamePadConv2d`). Only strided convs need it: at
    stride 1 SAME is symmetric and equals torchvision's padding. torchvision builds the conv; the
    strided one is then swapped for a SAME-padded conv of the same shape.
    """
    layer = Conv2dNormActivation(
        in_channels,
        out_channels,
        kernel_size,
        stride,
        groups=groups,
        dilation=dilation,
        norm_layer=norm_layer,
        activation_layer=activation_layer,
    )
    if tf_padding and stride > 1:
        conv = layer[0]
        layer[0] = TFSamePadConv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        )
    return layer
