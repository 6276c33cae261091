"""The MobileNetV2 backbone and classifier: fidelity to torchvision, sizes, taps, strides, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from vision_mnv2.complexity import count_macs, count_parameters
from vision_mnv2.models import InvertedResidual, MobileNetV2Backbone, WeightsError, mobilenet_v2

from .helpers import realistic_batch_norm


@pytest.mark.parametrize("width_mult", [1.0, 0.5])
def test_logits_equal_torchvision_with_its_weights(tmp_path, width_mult):
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2(weights=None, width_mult=width_mult).eval()
    realistic_batch_norm(reference, with_shifts=True)
    path = tmp_path / "mobilenet_v2-7ebf99e0.pth"
    torch.save(reference.state_dict(), path)

    model = mobilenet_v2(width_mult=width_mult, weights=path).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (model(x) - reference(x)).abs().max().item()
    assert diff < 1e-4


def test_torchvision_sizes_reproduced():
    model = mobilenet_v2()
    reference = torchvision.models.mobilenet_v2(weights=None)
    assert count_parameters(model) == count_parameters(reference) == 3_504_872
    assert count_macs(model, (224, 224)) == 300_774_272


# TF-slim checkpoint table: millions of MACs at 224/192/160/128/96, and millions of parameters
# (1001 classes, batch norm not counted). The MACs there are whole millions, cut off, not rounded.
TF_TABLE = {
    1.4: ((582, None, None, None, None), 6.06),
    1.0: ((300, 221, 154, 99, 56), 3.47),
    0.75: ((209, 153, 107, 69, 39), 2.61),
    0.5: ((97, 71, 50, 32, 18), 1.95),
    0.35: ((59, 43, 30, 20, 11), 1.66),
}
RESOLUTIONS = (224, 192, 160, 128, 96)


@pytest.mark.parametrize("width_mult", sorted(TF_TABLE))
def test_sizes_match_tf_checkpoint_table(width_mult):
    macs_table, params_table = TF_TABLE[width_mult]
    model = mobilenet_v2(width_mult=width_mult, num_classes=1001)
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert round((count_parameters(model) - bn) / 1e6, 2) == params_table
    for resolution, expected in zip(RESOLUTIONS, macs_table):
        if expected is None:
            continue
        macs = count_macs(model, (resolution, resolution)) / 1e6
        assert math.floor(macs) == expected, (width_mult, resolution, macs)
        # Within 2% wherever the table's whole-million resolution allows such a statement.
        assert abs(macs - expected) / expected < max(0.02, 1.0 / expected)


def test_paper_table2_structure():
    backbone = MobileNetV2Backbone()
    blocks = [m for m in backbone.features if isinstance(m, InvertedResidual)]
    assert len(backbone.features) == 19 and len(blocks) == 17
    assert [b.out_channels for b in blocks] == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
    assert [b.stride for b in blocks] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert sum(b.use_residual for b in blocks) == 10
    assert blocks[0].expand is None and all(b.expand is not None for b in blocks[1:])
    for block in blocks:
        # Linear bottleneck: the projection is conv + BN, no non-linearity.
        assert [type(m) for m in block.project] == [nn.Conv2d, nn.BatchNorm2d]
        assert isinstance(block.depthwise[2], nn.ReLU6)
        assert block.depthwise[0].groups == block.hidden_channels
    assert blocks[5].hidden_channels == 32 * 6


def test_projection_output_is_linear():
    block = InvertedResidual(16, 24, stride=2, expand_ratio=6).eval()
    with torch.no_grad():
        out = block(torch.randn(1, 16, 32, 32))
    assert (out < 0).any(), "a ReLU after the projection would remove negative values"


def test_width_multiplier_rounding():
    assert MobileNetV2Backbone(width_mult=0.35).features[0].out_channels == 16
    assert MobileNetV2Backbone(width_mult=0.5).last_channels == 1280
    assert MobileNetV2Backbone(width_mult=1.4).last_channels == 1792
    assert MobileNetV2Backbone(width_mult=1.4).feature_info["layer18"].channels == 448


TAPS = ["layer15/expansion", "layer18", "layer19", "layer4"]


@pytest.mark.parametrize(
    "output_stride, expected",
    [
        (32, {"layer15/expansion": (576, 14), "layer18": (320, 7), "layer19": (1280, 7), "layer4": (24, 56)}),
        (16, {"layer15/expansion": (576, 14), "layer18": (320, 14), "layer19": (1280, 14), "layer4": (24, 56)}),
        (8, {"layer15/expansion": (576, 28), "layer18": (320, 28), "layer19": (1280, 28), "layer4": (24, 56)}),
    ],
)
def test_feature_taps_and_output_stride(output_stride, expected):
    backbone = MobileNetV2Backbone(output_stride=output_stride, out_features=TAPS).eval()
    with torch.no_grad():
        taps = backbone(torch.randn(1, 3, 224, 224))
    assert list(taps) == TAPS
    for name, (channels, size) in expected.items():
        assert tuple(taps[name].shape) == (1, channels, size, size)
        info = backbone.feature_info[name]
        assert info.channels == channels and info.reduction == 224 // size


def test_output_stride_uses_dilation_with_the_same_weights():
    reference = MobileNetV2Backbone(output_stride=32, out_features=["layer19"])
    dilated = MobileNetV2Backbone(output_stride=16, out_features=["layer19"])
    # Same keys and shapes: one checkpoint serves every output stride.
    assert {k: v.shape for k, v in reference.state_dict().items()} == {
        k: v.shape for k, v in dilated.state_dict().items()
    }
    # DeepLab convention: the block that would stride keeps its rate, later blocks dilate by 2.
    dw = [m.depthwise[0] for m in dilated.features if isinstance(m, InvertedResidual)]
    assert (dw[13].stride, dw[13].dilation) == ((1, 1), (1, 1))
    assert all(conv.dilation == (2, 2) and conv.padding == (2, 2) for conv in dw[14:])
    dilated8 = MobileNetV2Backbone(output_stride=8)
    dw8 = [m.depthwise[0] for m in dilated8.features if isinstance(m, InvertedResidual)]
    assert [c.dilation[0] for c in dw8[6:]] == [1, 2, 2, 2, 2, 2, 2, 2, 4, 4, 4]


def test_any_input_resolution():
    model = mobilenet_v2(num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 161, 203)).shape == (2, 7)


def test_invalid_settings_fail_clearly():
    with pytest.raises(ValueError, match="width_mult"):
        mobilenet_v2(width_mult=0)
    with pytest.raises(ValueError, match="output_stride"):
        mobilenet_v2(output_stride=12)
    with pytest.raises(ValueError, match="unknown feature tap"):
        MobileNetV2Backbone(out_features=["layer99"])
    with pytest.raises(ValueError, match="num_classes"):
        mobilenet_v2(num_classes=0)


def test_own_checkpoints_round_trip(tmp_path):
    model = mobilenet_v2(num_classes=5).eval()
    realistic_batch_norm(model, with_shifts=True)
    plain = tmp_path / "model.pt"
    torch.save(model.state_dict(), plain)
    lightning_style = tmp_path / "task.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, lightning_style)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        expected = model(x)
        for path in (plain, lightning_style):
            assert torch.equal(mobilenet_v2(num_classes=5, weights=path).eval()(x), expected)


def test_weight_errors_name_the_problem(tmp_path):
    reference = torchvision.models.mobilenet_v2(weights=None, num_classes=10)
    wrong_classes = tmp_path / "ten_classes.pth"
    torch.save(reference.state_dict(), wrong_classes)
    with pytest.raises(WeightsError, match=r"shape mismatch: classifier\.1\.bias \(file \(10,\), model \(1000,\)\)"):
        mobilenet_v2(weights=wrong_classes)

    state = reference.state_dict()
    state.pop("features.18.1.running_var")
    state["extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(WeightsError) as info:
        mobilenet_v2(num_classes=10, weights=broken)
    message = str(info.value)
    assert "missing keys: backbone.features.18.1.running_var" in message
    assert "unexpected keys: extra.weight" in message and "broken.pth" in message

    with pytest.raises(WeightsError, match="does not exist"):
        mobilenet_v2(weights=tmp_path / "nowhere.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="cannot read weights file .*corrupt.pth"):
        mobilenet_v2(weights=corrupt)
