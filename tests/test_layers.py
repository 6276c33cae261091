"""The shared pieces: vision_mnv2.layers, the feature-backbone base and the one builder path."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from vision_mnv2.layers import TFSamePadConv2d, batch_norm, conv_bn_act, make_divisible
from vision_mnv2.models import MobileNetV1Backbone, MobileNetV2, MobileNetV2Backbone
from vision_mnv2.models.backbone import FeatureBackbone, FeatureInfo, strides_for_output_stride
from vision_mnv2.models.builder import build_model_with_cfg


def test_make_divisible_rounds_to_the_nearest_multiple_but_keeps_90_percent():
    assert make_divisible(32 * 0.35) == 16  # 11.2: the nearest, 8, is below 90% of it
    assert make_divisible(24 * 0.75) == 24  # 18: the nearest, 16, is 89% of it
    assert make_divisible(96 * 0.75) == 72
    assert make_divisible(1280 * 1.4) == 1792
    assert make_divisible(12.0, 1) == 12 and make_divisible(3, 8, min_value=4) == 4


def test_tf_same_padding_pads_after_at_even_sizes_and_as_torch_at_odd_ones():
    conv = TFSamePadConv2d(3, 4, 3, stride=2)
    assert conv.padding == (0, 0)
    even = torch.randn(1, 3, 8, 8)
    assert torch.allclose(conv(even), F.conv2d(F.pad(even, [0, 1, 0, 1]), conv.weight, conv.bias, 2))
    odd = torch.randn(1, 3, 9, 9)
    assert torch.allclose(conv(odd), F.conv2d(odd, conv.weight, conv.bias, 2, padding=1))
    assert conv(even).shape[-2:] == (4, 4) and conv(odd).shape[-2:] == (5, 5)


def test_conv_bn_act_layout_and_injected_norm():
    layer = conv_bn_act(4, 8, kernel_size=3, stride=2, norm_layer=batch_norm(momentum=0.0003, eps=0.001))
    assert [type(m) for m in layer] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU6]
    assert layer[0].bias is None and (layer[1].momentum, layer[1].eps) == (0.0003, 0.001)
    linear = conv_bn_act(4, 8, kernel_size=1, activation_layer=None)
    assert [type(m) for m in linear] == [nn.Conv2d, nn.BatchNorm2d]
    # SAME padding only where it differs from torch's: strided convs.
    assert isinstance(conv_bn_act(4, 8, 3, stride=2, tf_padding=True)[0], TFSamePadConv2d)
    assert type(conv_bn_act(4, 8, 3, stride=1, tf_padding=True)[0]) is nn.Conv2d
    assert batch_norm() is nn.BatchNorm2d


def test_norm_layer_reaches_every_layer_of_both_backbones():
    norm = batch_norm(momentum=0.01, eps=0.002)
    for backbone in (MobileNetV2Backbone(width_mult=0.35, norm_layer=norm), MobileNetV1Backbone(0.25, norm_layer=norm)):
        norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
        assert norms and {(m.momentum, m.eps) for m in norms} == {(0.01, 0.002)}


def test_strides_turn_into_dilation_past_the_output_stride():
    # stem at 2, then strides 2, 1, 2, 2, 1 at output stride 8
    assert strides_for_output_stride([2, 1, 2, 2, 1], 8) == [(2, 1, 4), (1, 1, 4), (2, 1, 8), (1, 1, 8), (1, 2, 8)]
    assert strides_for_output_stride([2, 2], 32) == [(2, 1, 4), (2, 1, 8)]


class _Tiny(FeatureBackbone):
    """Three convs, each tap counted when reached."""

    def __init__(self, out_features=None, drop_unused=False) -> None:
        layers = [nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 6, 3, 2, 1), nn.Conv2d(6, 8, 3, 2, 1)]
        infos = [FeatureInfo(f"c{i}", conv.out_channels, 2 ** (i + 1), i) for i, conv in enumerate(layers)]
        super().__init__(layers, [0, 1, 2], infos, out_features, drop_unused)
        self.reached: list[str] = []

    def layer_outputs(self, x, taps):
        for index, layer in enumerate(self.features):
            x = layer(x)
            self.reached.append(f"c{index}")
            yield f"c{index}", x


def test_feature_backbone_base_owns_taps_dropping_and_freezing():
    tiny = _Tiny()
    assert tiny.out_features == ("c2",) and tiny.last_channels == 8 and tiny.num_stages == 2
    assert list(tiny(torch.randn(1, 3, 16, 16))) == ["c2"]
    wanted = _Tiny(out_features=["c1", "c0"])
    taps = wanted(torch.randn(1, 3, 16, 16))
    assert list(taps) == ["c1", "c0"] and wanted.reached == ["c0", "c1"]  # stops after the last tap
    assert wanted.out_channels == {"c1": 6, "c0": 4}
    dropped = _Tiny(out_features=["c1"], drop_unused=True)
    assert len(dropped.features) == 2 and "c2" in dropped.feature_info and dropped.num_stages == 2
    with pytest.raises(ValueError, match=r"unknown feature tap\(s\) \['c9'\]"):
        _Tiny(out_features=["c9"])
    dropped.freeze(1)
    assert not any(p.requires_grad for p in dropped.parameters())
    tiny.freeze(0)
    assert [all(p.requires_grad for p in layer.parameters()) for layer in tiny.features] == [False, True, True]


def test_builder_routes_each_argument_by_name_and_refuses_strays():
    torch.manual_seed(0)
    arguments = {"width_mult": 0.35, "num_classes": 3, "dropout": 0.1, "normalization": None, "tf_padding": True}
    model = build_model_with_cfg(MobileNetV2Backbone, MobileNetV2, arguments)
    assert isinstance(model, MobileNetV2) and model.num_classes == 3 and model.backbone.width_mult == 0.35
    assert model.backbone.tf_padding and model.classifier[0].p == 0.1
    with pytest.raises(TypeError, match=r"\['colour'\] reach neither MobileNetV2Backbone nor the model"):
        build_model_with_cfg(MobileNetV2Backbone, MobileNetV2, {**arguments, "colour": "red"})
