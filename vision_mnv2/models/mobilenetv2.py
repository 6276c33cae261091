"""MobileNetV2 (Sandler et al., 2018, arXiv:1801.04381) as paper Table 2 defines it.

The network is split the way every head in this project needs it:

* :class:`InvertedResidual` - one bottleneck: 1x1 expansion + BN + ReLU6, 3x3 depthwise + BN + ReLU6,
  1x1 linear projection + BN (no activation), residual add when stride 1 and c_in == c_out. The
  paper's ablations (section 6.4, Figure 6) are switches: a ReLU6 after the projection, and the
  shortcut between expansions or none at all.
* :class:`MobileNetV2Backbone` - the 19 layers of Table 2 up to the 1280-channel 1x1 conv, with a width
  multiplier, any input size, output stride 32/16/8 by dilation, and named feature taps
  (``"layer15/expansion"``, ``"layer18"``, ``"layer19"``, ...) that heads ask for by name.
* :class:`MobileNetV2` - the ImageNet classifier: backbone, global average pool, dropout, linear.

Layer names follow TF-slim's ``layer_1`` .. ``layer_19`` numbering (the paper's 19 layers): layer 1 is
the stem conv, layers 2-18 the 17 bottlenecks, layer 19 the final 1x1 conv. ``backbone.features[k-1]``
is layer k, so the module indices are exactly torchvision's ``features[i]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops.misc import Conv2dNormActivation

from .backbone import BackboneClassifier, FeatureBackbone, FeatureInfo
from .memory_efficient import split_expansion_forward

__all__ = [
    "BOTTLENECK_ACTIVATIONS",
    "BOTTLENECK_SETTINGS",
    "SHORTCUTS",
    "FeatureInfo",
    "InvertedResidual",
    "MobileNetV2",
    "MobileNetV2Backbone",
    "TFSamePadConv2d",
    "make_divisible",
]

# Paper Table 2: (expansion t, output channels c, repeats n, first stride s) of the bottleneck groups.
BOTTLENECK_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
EXPANSION_DIVISOR = 8
VALID_OUTPUT_STRIDES = (8, 16, 32)
# Paper section 6.4, Figure 6a: the linear bottleneck, or a ReLU6 after the projection as well.
BOTTLENECK_ACTIVATIONS = ("linear", "relu6")
# Figure 6b: where the residual connections go (see InvertedResidual).
SHORTCUTS = ("bottleneck", "expansion", "none")


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below 90% of ``value``.

    The rule of TF-slim and torchvision, so that width multipliers give the published channel counts.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


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


def _conv_bn_act(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, tf_padding: bool = False, **kwargs
) -> nn.Sequential:
    """Conv + BN (+ activation). Only strided convs need TF's padding: at stride 1 SAME is symmetric."""
    layer = Conv2dNormActivation(in_channels, out_channels, kernel_size, stride, norm_layer=_bn, **kwargs)
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


class InvertedResidual(nn.Module):
    """Inverted residual with linear bottleneck (paper Figure 3b, Table 1).

    ``expand`` is absent when the expansion factor is 1, as in the paper and torchvision.

    The paper's ablations (section 6.4, Figure 6) change no parameter, only what is computed:

    * ``bottleneck_activation="relu6"``: a ReLU6 after the projection's batch norm (Figure 6a's
      "ReLU6 in bottleneck"); ``"linear"``, the paper's block, has none.
    * ``shortcut="bottleneck"`` (the paper's): ``output = block(x) + x`` where stride is 1 and the
      channels match. ``"none"``: no residual connection anywhere.
    * ``shortcut="expansion"`` (Figure 6b's "shortcut between expansions"): the residual stream runs
      through the wide layers instead, as in a classic (non-inverted) residual network. The
      expansion output of a block (after its 1x1 conv, BN and ReLU6: the tensor the depthwise conv
      reads) is added to the expansion output of the next block, ``e[k+1] = expand[k+1](x[k]) +
      e[k]``, and the sum is what the next depthwise conv reads and passes on; the bottleneck
      output has no shortcut. The add spans the depthwise conv and projection of block k and the
      expansion of block k+1, so it exists where those keep the shape: block k has stride 1 and
      both blocks expand to the same width. In Table 2's network that is exactly after each of the
      10 blocks that have a bottleneck shortcut (t = 6 throughout and the expansion is 6x the
      block's input, so equal widths mean c_in == c_out), with 10 adds too; the tensors added are
      6x wider. A t = 1 block has no expansion layer, so it neither sends nor receives one (in
      Table 2 only the first block, which has no shortcut either way). The backbone decides where
      the shapes allow it and builds the receiving block with ``expansion_shortcut=True``; such a
      block needs the previous block's expansion (:meth:`forward_with_expansion`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: int,
        dilation: int = 1,
        hidden_channels: int | None = None,
        tf_padding: bool = False,
        bottleneck_activation: str = "linear",
        shortcut: str = "bottleneck",
        expansion_shortcut: bool = False,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        _check_choice("bottleneck_activation", bottleneck_activation, BOTTLENECK_ACTIVATIONS)
        _check_choice("shortcut", shortcut, SHORTCUTS)
        if expansion_shortcut and (shortcut != "expansion" or expand_ratio == 1):
            raise ValueError("expansion_shortcut needs shortcut='expansion' and an expansion layer (expand_ratio != 1)")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.dilation = dilation
        self.expand_ratio = expand_ratio
        hidden = int(round(in_channels * expand_ratio)) if hidden_channels is None else hidden_channels
        self.hidden_channels = hidden
        self.bottleneck_activation = bottleneck_activation
        self.shortcut = shortcut
        self.use_residual = shortcut == "bottleneck" and stride == 1 and in_channels == out_channels
        self.expansion_shortcut = bool(expansion_shortcut)
        # > 1: in eval mode, compute the expansion in this many channel groups (paper section 5.1;
        # see memory_efficient.py); the output is the same, the expanded tensor never whole.
        self.expansion_groups = 1

        self.expand: nn.Module | None = None
        if expand_ratio != 1:
            self.expand = Conv2dNormActivation(
                in_channels, hidden, kernel_size=1, norm_layer=_bn, activation_layer=nn.ReLU6
            )
        self.depthwise = _conv_bn_act(
            hidden,
            hidden,
            kernel_size=3,
            stride=stride,
            tf_padding=tf_padding,
            dilation=dilation,
            groups=hidden,
            activation_layer=nn.ReLU6,
        )
        # Linear bottleneck: no activation after the projection (paper section 3.2), unless the
        # ablation asks for one.
        self.project = Conv2dNormActivation(
            hidden,
            out_channels,
            kernel_size=1,
            norm_layer=_bn,
            activation_layer=nn.ReLU6 if bottleneck_activation == "relu6" else None,
        )

    def forward_with_expansion(self, x: Tensor, previous_expansion: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return the block output and the expansion output (the input of the depthwise conv).

        ``previous_expansion``: the previous block's expansion output, added to this block's when it
        was built with ``expansion_shortcut`` (``shortcut="expansion"``); ignored otherwise.
        """
        expanded = self.expand(x) if self.expand is not None else x
        if self.expansion_shortcut:
            if previous_expansion is None:
                raise ValueError(
                    "this block adds the previous block's expansion (shortcut='expansion'): pass it as "
                    "previous_expansion, as MobileNetV2Backbone does"
                )
            expanded = expanded + previous_expansion
        out = self.project(self.depthwise(expanded))
        if self.use_residual:
            out = out + x
        return out, expanded

    def forward(self, x: Tensor, previous_expansion: Tensor | None = None) -> Tensor:
        if self.expansion_groups > 1 and not self.training:
            return split_expansion_forward(self, x, self.expansion_groups)
        return self.forward_with_expansion(x, previous_expansion)[0]


class MobileNetV2Backbone(FeatureBackbone):
    """The 19 layers of paper Table 2 (no pooling, no classifier) with named feature taps.

    Args:
        width_mult: channel multiplier (paper: 0.35 to 1.4). Channels are rounded to multiples of 8;
            the last 1x1 conv keeps 1280 channels below 1.0 and scales above it.
        output_stride: 32 (classification), 16 or 8 (dense prediction). Strides past the requested
            output stride become dilation of the following depthwise convs (DeepLab convention), so
            the weights are the same for every output stride.
        out_features: tap names that :meth:`forward` returns. ``None`` returns only the last layer.
        round_nearest: the multiple that layer widths are rounded to (stem, block outputs, last conv;
            never below it). 8 as TF-slim and torchvision; 1 as DeepLab builds its narrow models
            (width 0.5: 24 -> 12 channels, not 16). Expansions are rounded to multiples of 8 either
            way, as TF-slim does.
        drop_unused: remove the layers after the deepest requested tap (e.g. layer 19 for a head on
            layer 18), so that they hold no parameters; their names stay in ``feature_info``.
        tf_padding: pad the stride-2 convs as TensorFlow's "SAME" (see :class:`TFSamePadConv2d`), for
            weights trained in TensorFlow; exact at every input size.
        bottleneck_activation: ``"linear"`` (the paper's) or ``"relu6"`` after every projection
            (paper section 6.4, Figure 6a).
        shortcut: ``"bottleneck"`` (the paper's), ``"expansion"`` or ``"none"`` (Figure 6b); see
            :class:`InvertedResidual` for what "between expansions" connects. Neither ablation changes
            the parameters: every variant has the same state-dict layout and loads the same weights.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        output_stride: int = 32,
        out_features: Sequence[str] | None = None,
        round_nearest: int = 8,
        drop_unused: bool = False,
        tf_padding: bool = False,
        bottleneck_activation: str = "linear",
        shortcut: str = "bottleneck",
    ) -> None:
        super().__init__()
        if not isinstance(width_mult, (int, float)) or width_mult <= 0:
            raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
        if output_stride not in VALID_OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {VALID_OUTPUT_STRIDES}, got {output_stride!r}")
        if not isinstance(round_nearest, int) or round_nearest < 1:
            raise ValueError(f"round_nearest must be a positive integer, got {round_nearest!r}")
        _check_choice("bottleneck_activation", bottleneck_activation, BOTTLENECK_ACTIVATIONS)
        _check_choice("shortcut", shortcut, SHORTCUTS)
        self.width_mult = float(width_mult)
        self.output_stride = output_stride
        self.round_nearest = round_nearest
        self.tf_padding = bool(tf_padding)
        self.bottleneck_activation = bottleneck_activation
        self.shortcut = shortcut

        in_channels = make_divisible(STEM_CHANNELS * width_mult, round_nearest)
        self.last_channels = make_divisible(LAST_CHANNELS * max(1.0, width_mult), round_nearest)

        layers: list[nn.Module] = [
            _conv_bn_act(3, in_channels, kernel_size=3, stride=2, tf_padding=tf_padding, activation_layer=nn.ReLU6)
        ]
        infos: list[FeatureInfo] = [FeatureInfo("layer1", in_channels, 2, 0)]
        current_stride, dilation = 2, 1
        previous: InvertedResidual | None = None
        for t, c, n, s in BOTTLENECK_SETTINGS:
            out_channels = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                block_dilation = dilation
                if stride == 2 and current_stride >= output_stride:
                    # The block keeps the dilation it had; every later block dilates twice as much.
                    stride, dilation = 1, dilation * 2
                else:
                    current_stride *= stride
                # TF-slim's rule (expand_input_by_factor); the same as in_channels * t whenever the
                # input is a multiple of 8, i.e. for every round_nearest=8 network.
                hidden = make_divisible(in_channels * t, EXPANSION_DIVISOR) if t != 1 else in_channels
                # Shortcut between expansions: from the previous block's expansion output to this one's,
                # where the previous block keeps the resolution and both expand to the same width.
                expansion_shortcut = (
                    shortcut == "expansion"
                    and t != 1
                    and previous is not None
                    and previous.expand is not None
                    and previous.stride == 1
                    and previous.hidden_channels == hidden
                )
                block = InvertedResidual(
                    in_channels,
                    out_channels,
                    stride,
                    t,
                    block_dilation,
                    hidden_channels=hidden,
                    tf_padding=tf_padding,
                    bottleneck_activation=bottleneck_activation,
                    shortcut=shortcut,
                    expansion_shortcut=expansion_shortcut,
                )
                previous = block
                index = len(layers)
                layers.append(block)
                reduction_in = current_stride // stride  # stride at the block's input
                if block.expand is not None:
                    infos.append(FeatureInfo(f"layer{index + 1}/expansion", block.hidden_channels, reduction_in, index))
                infos.append(FeatureInfo(f"layer{index + 1}", out_channels, current_stride, index))
                in_channels = out_channels
        layers.append(
            Conv2dNormActivation(
                in_channels, self.last_channels, kernel_size=1, norm_layer=_bn, activation_layer=nn.ReLU6
            )
        )
        infos.append(FeatureInfo(f"layer{len(layers)}", self.last_channels, current_stride, len(layers) - 1))
        self.features = nn.Sequential(*layers)
        self.feature_info: dict[str, FeatureInfo] = {info.name: info for info in infos}

        last = f"layer{len(layers)}"
        self.out_features: tuple[str, ...] = tuple(out_features) if out_features else (last,)
        unknown = [name for name in self.out_features if name not in self.feature_info]
        if unknown:
            raise ValueError(f"unknown feature tap(s) {unknown}; available: {list(self.feature_info)}")
        if drop_unused:
            deepest = max(self.feature_info[name].module_index for name in self.out_features)
            self.features = self.features[: deepest + 1]
        self._init_weights()

    num_stages = len(BOTTLENECK_SETTINGS) + 1

    def stage_of_layer(self) -> list[int]:
        """Stage of each entry of ``features``: 0 the stem, 1-7 the bottleneck sequences of paper
        Table 2 (mmdetection's numbering), 8 the final 1x1 conv."""
        stages = [0]
        for stage, (_, _, n, _) in enumerate(BOTTLENECK_SETTINGS, start=1):
            stages += [stage] * n
        stages.append(len(BOTTLENECK_SETTINGS) + 1)
        return stages[: len(self.features)]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Return the requested taps by name, running only as many layers as they need."""
        wanted = {self.feature_info[name].module_index for name in self.out_features}
        expansion_taps = {
            self.feature_info[name].module_index: name for name in self.out_features if name.endswith("/expansion")
        }
        taps: dict[str, Tensor] = {}
        # shortcut="expansion": each block's expansion output goes on to the next block.
        carry_expansion = self.shortcut == "expansion"
        expansion: Tensor | None = None
        for index, layer in enumerate(self.features):
            if index > max(wanted):
                break
            if isinstance(layer, InvertedResidual) and (carry_expansion or index in expansion_taps):
                x, expansion = layer.forward_with_expansion(x, expansion)
                if index in expansion_taps:
                    taps[expansion_taps[index]] = expansion
            else:
                x = layer(x)
            name = f"layer{index + 1}"
            if name in self.out_features:
                taps[name] = x
        return {name: taps[name] for name in self.out_features}


class MobileNetV2(BackboneClassifier):
    """The MobileNetV2 ImageNet classifier: input normalisation, backbone, global average pool,
    dropout, linear. Takes RGB images in [0, 1]."""

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        output_stride: int = 32,
        dropout: float = 0.2,
        normalization=None,
        round_nearest: int = 8,
        tf_padding: bool = False,
        bottleneck_activation: str = "linear",
        shortcut: str = "bottleneck",
    ) -> None:
        backbone = MobileNetV2Backbone(
            width_mult=width_mult,
            output_stride=output_stride,
            round_nearest=round_nearest,
            tf_padding=tf_padding,
            bottleneck_activation=bottleneck_activation,
            shortcut=shortcut,
        )
        super().__init__(backbone, num_classes, dropout, normalization)
