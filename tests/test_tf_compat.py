"""The TensorFlow-compatible switches of the builders (for Google's weights) and that their defaults
leave this project's networks as they were."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from vision_mnv2.layers import TFSamePadConv2d
from vision_mnv2.models import InvertedResidual, MobileNetV2Backbone, deeplabv3_mobilenet_v2, mobilenet_v2

from .helpers import realistic_batch_norm


def _layout_digest(model: nn.Module) -> str:
    return hashlib.sha256(
        "\n".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items()).encode()
    ).hexdigest()


# Recorded with the code before the switches existed (commit f3c22c3): state-dict layout digest,
# and mean |output| and std of the output for seed 0, random batch-norm statistics, a 64 x 96 input.
BEFORE = {
    "classifier": (mobilenet_v2, {}, "61ccab68a35da032", 0.056011, 0.0701827),
    "classifier_0.35_os16": (
        mobilenet_v2,
        {"width_mult": 0.35, "num_classes": 10, "output_stride": 16},
        "11546faa4af24dbd",
        0.030498,
        0.0317655,
    ),
    "deeplab_aspp": (deeplabv3_mobilenet_v2, {}, "20cd512ccfc2df57", 0.052749, 0.0678147),
    "deeplab_mobile_0.5_os8": (
        deeplabv3_mobilenet_v2,
        {"width_mult": 0.5, "aspp": False, "output_stride": 8},
        "5630e4cfb6c85383",
        0.0557113,
        0.0685705,
    ),
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_defaults_leave_the_networks_unchanged(name):
    builder, kwargs, digest, mean_abs, std = BEFORE[name]
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 96)
    torch.manual_seed(0)
    model = builder(**kwargs).eval()
    realistic_batch_norm(model, with_shifts=True)
    assert _layout_digest(model)[:16] == digest
    with torch.no_grad():
        y = model(x).double()
    assert y.abs().mean().item() == pytest.approx(mean_abs, rel=1e-4)
    assert y.std().item() == pytest.approx(std, rel=1e-4)
    # The TF switches change the outputs at this even input size (the check above can fail).
    torch.manual_seed(0)
    tf_model = builder(**kwargs, tf_padding=True).eval()
    realistic_batch_norm(tf_model, with_shifts=True)
    assert _layout_digest(tf_model) == _layout_digest(model)
    with torch.no_grad():
        assert tf_model(x).double().abs().mean().item() != pytest.approx(mean_abs, rel=1e-4)


@pytest.mark.parametrize("size, pad", [(224, (0, 1)), (225, (1, 1)), (513, (1, 1)), (8, (0, 1))])
def test_tf_same_padding(size, pad):
    torch.manual_seed(0)
    conv = TFSamePadConv2d(3, 4, 3, stride=2)
    x = torch.randn(1, 3, size, size + 1)
    y = conv(x)
    assert y.shape[-2:] == ((size + 1) // 2, (size + 2) // 2)  # ceil(size / stride), as TF
    pad_w = (0, 1) if (size + 1) % 2 == 0 else (1, 1)
    expected = F.conv2d(F.pad(x, (*pad_w, *pad)), conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(y, expected)
    # Dilated stride-1 convs pad symmetrically in TF too: same as PyTorch's padding.
    dilated = TFSamePadConv2d(3, 4, 3, stride=1, dilation=2)
    torch.testing.assert_close(dilated(x), F.conv2d(x, dilated.weight, dilated.bias, padding=2, dilation=2))


def test_tf_padding_only_changes_strided_convs_and_not_the_weights():
    plain = MobileNetV2Backbone()
    tf = MobileNetV2Backbone(tf_padding=True)
    assert _layout_digest(plain) == _layout_digest(tf)
    tf.load_state_dict(plain.state_dict())
    same_pad = [name for name, m in tf.named_modules() if isinstance(m, TFSamePadConv2d)]
    assert same_pad == ["features.0.0"] + [f"features.{i}.depthwise.0" for i in (2, 4, 7, 14)]
    realistic_batch_norm(plain, with_shifts=True)
    tf.load_state_dict(plain.state_dict())
    plain.eval(), tf.eval()
    with torch.no_grad():
        odd = torch.randn(1, 3, 65, 65)  # 65 -> 33 -> 17 -> 9 -> 5: every stride-2 input is odd
        torch.testing.assert_close(tf(odd)["layer19"], plain(odd)["layer19"])
        even = torch.randn(1, 3, 64, 64)
        assert (tf(even)["layer19"] - plain(even)["layer19"]).abs().max() > 1e-3


def test_memory_efficient_path_pads_like_tf():
    model = mobilenet_v2(num_classes=5, tf_padding=True).eval()
    realistic_batch_norm(model, with_shifts=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        for block in model.modules():
            if isinstance(block, InvertedResidual):
                block.expansion_groups = 3
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_round_nearest_1_builds_deeplabs_narrow_widths():
    # TF DeepLab builds MobileNetV2 with divisible_by=1 and min_depth=1 when depth_multiplier != 1.0
    # (core/feature_extractor.py); expansions stay multiples of 8 (expand_input_by_factor).
    model = deeplabv3_mobilenet_v2(width_mult=0.5, aspp=False, round_nearest=1)
    blocks = [m for m in model.backbone.features if isinstance(m, InvertedResidual)]
    assert model.backbone.feature_info["layer1"].channels == 16
    assert [b.out_channels for b in blocks] == [8, 12, 12, 16, 16, 16, 32, 32, 32, 32, 48, 48, 48, 80, 80, 80, 160]
    assert [b.hidden_channels for b in blocks[:4]] == [16, 48, 72, 72]
    rounded = deeplabv3_mobilenet_v2(width_mult=0.5, aspp=False)
    assert rounded.backbone.feature_info["layer4"].channels == 16  # torchvision / TF-slim: 12 -> 16
    # A width where the expansion rule shows: 32 * 0.35 -> 11 channels, 11 * 6 = 66 -> 64 in TF.
    narrow = MobileNetV2Backbone(width_mult=0.35, round_nearest=1)
    assert narrow.feature_info["layer6"].channels == 11 and narrow.feature_info["layer7/expansion"].channels == 64
    assert narrow.last_channels == 1280
    with pytest.raises(ValueError, match="round_nearest"):
        MobileNetV2Backbone(round_nearest=0)


def test_align_corners_upsampling():
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v2(num_classes=3, aspp=False, align_corners=True).eval()
    logits = {}
    model.classifier.register_forward_hook(lambda module, inputs, output: logits.setdefault("x", output))
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        y = model(x)
    expected = F.interpolate(logits["x"], size=(65, 65), mode="bilinear", align_corners=True)
    torch.testing.assert_close(y, expected)
    assert not deeplabv3_mobilenet_v2(aspp=False).align_corners
