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

from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from ..layers import NormLayer, conv_bn_act, make_divisible
from .backbone import (
    VALID_OUTPUT_STRIDES,
    BackboneClassifier,
    FeatureBackbone,
    FeatureInfo,
    check_width_and_output_stride,
    strides_for_output_stride,
)
from .memory_efficient import split_expansion_forward

__all__ = [
    "BOTTLENECK_ACTIVATIONS",
    "BOTTLENECK_SETTINGS",
    "SHORTCUTS",
    "VALID_OUTPUT_STRIDES",
    "FeatureInfo",
    "InvertedResidual",
    "MobileNetV2",
    "MobileNetV2Backbone",
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
# Paper section 6.4, Figure 6a: the linear bottleneck, or a ReLU6 after the projection as well.
BOTTLENECK_ACTIVATIONS = ("linear", "relu6")
# Figure 6b: where the residual connections go (see InvertedResidual).
SHORTCUTS = ("bottleneck", "expansion", "none")


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


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
        norm_layer: NormLayer = nn.BatchNorm2d,
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
            self.expand = conv_bn_act(in_channels, hidden, kernel_size=1, norm_layer=norm_layer)
        self.depthwise = conv_bn_act(
            hidden,
            hidden,
            kernel_size=3,
            stride=stride,
            groups=hidden,
            dilation=dilation,
            norm_layer=norm_layer,
            tf_padding=tf_padding,
        )
        # Linear bottleneck: no activation after the projection (paper section 3.2), unless the
        # ablation asks for one.
        self.project = conv_bn_act(
            hidden,
            out_channels,
            kernel_size=1,
            norm_layer=norm_layer,
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
        tf_padding: pad the stride-2 convs as TensorFlow's "SAME" (see
            :class:`~vision_mnv2.layers.TFSamePadConv2d`), for weights trained in TensorFlow; exact at
            every input size.
        bottleneck_activation: ``"linear"`` (the paper's) or ``"relu6"`` after every projection
            (paper section 6.4, Figure 6a).
        shortcut: ``"bottleneck"`` (the paper's), ``"expansion"`` or ``"none"`` (Figure 6b); see
            :class:`InvertedResidual` for what "between expansions" connects. Neither ablation changes
            the parameters: every variant has the same state-dict layout and loads the same weights.
        norm_layer: the normalisation after every conv (``norm_layer(channels)``; batch norm).

    Stages (for :meth:`freeze`, mmdetection's numbering): 0 the stem, 1-7 the bottleneck sequences
    of paper Table 2, 8 the final 1x1 conv.
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
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        check_width_and_output_stride(width_mult, output_stride)
        if not isinstance(round_nearest, int) or round_nearest < 1:
            raise ValueError(f"round_nearest must be a positive integer, got {round_nearest!r}")
        _check_choice("bottleneck_activation", bottleneck_activation, BOTTLENECK_ACTIVATIONS)
        _check_choice("shortcut", shortcut, SHORTCUTS)

        in_channels = make_divisible(STEM_CHANNELS * width_mult, round_nearest)
        layers: list[nn.Module] = [
            conv_bn_act(3, in_channels, kernel_size=3, stride=2, norm_layer=norm_layer, tf_padding=tf_padding)
        ]
        stages = [0]
        infos = [FeatureInfo("layer1", in_channels, 2, 0)]
        # Each block's expansion ratio, output width and stage, then its stride and dilation.
        blocks = [(t, c, stage) for stage, (t, c, n, _) in enumerate(BOTTLENECK_SETTINGS, start=1) for _ in range(n)]
        nominal_strides = [s if i == 0 else 1 for _, _, n, s in BOTTLENECK_SETTINGS for i in range(n)]
        schedule = strides_for_output_stride(nominal_strides, output_stride)
        previous: InvertedResidual | None = None
        for (t, c, stage), (stride, dilation, reduction) in zip(blocks, schedule):
            out_channels = make_divisible(c * width_mult, round_nearest)
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
                dilation,
                hidden_channels=hidden,
                tf_padding=tf_padding,
                bottleneck_activation=bottleneck_activation,
                shortcut=shortcut,
                expansion_shortcut=expansion_shortcut,
                norm_layer=norm_layer,
            )
            previous = block
            index = len(layers)
            layers.append(block)
            stages.append(stage)
            if block.expand is not None:
                # The expansion runs at the block's input resolution.
                infos.append(FeatureInfo(f"layer{index + 1}/expansion", hidden, reduction // stride, index))
            infos.append(FeatureInfo(f"layer{index + 1}", out_channels, reduction, index))
            in_channels = out_channels
        last_channels = make_divisible(LAST_CHANNELS * max(1.0, width_mult), round_nearest)
        layers.append(conv_bn_act(in_channels, last_channels, kernel_size=1, norm_layer=norm_layer))
        stages.append(len(BOTTLENECK_SETTINGS) + 1)
        infos.append(FeatureInfo(f"layer{len(layers)}", last_channels, schedule[-1][2], len(layers) - 1))

        super().__init__(layers, stages, infos, out_features, drop_unused)
        self.width_mult = float(width_mult)
        self.output_stride = output_stride
        self.round_nearest = round_nearest
        self.tf_padding = bool(tf_padding)
        self.bottleneck_activation = bottleneck_activation
        self.shortcut = shortcut

    def layer_outputs(self, x: Tensor, taps: frozenset[str]) -> Iterator[tuple[str, Tensor]]:
        """``layerN`` after each layer, and ``layerN/expansion`` inside bottleneck N where asked for.
        With ``shortcut="expansion"`` each block's expansion output goes on to the next block."""
        carry_expansion = self.shortcut == "expansion"
        expansion: Tensor | None = None
        for index, layer in enumerate(self.features):
            name = f"layer{index + 1}"
            if isinstance(layer, InvertedResidual) and (carry_expansion or f"{name}/expansion" in taps):
                x, expansion = layer.forward_with_expansion(x, expansion)
                yield f"{name}/expansion", expansion
            else:
                x = layer(x)
            yield name, x


class MobileNetV2(BackboneClassifier):
    """The MobileNetV2 ImageNet classifier: input normalisation, a :class:`MobileNetV2Backbone`, global
    average pool, dropout, linear. Takes RGB images in [0, 1]. Built by
    :func:`vision_mnv2.models.mobilenet_v2`."""
