"""DeepLabv3 + MobileNetV2: sizes of paper Table 7, heads, output stride, weights."""

from __future__ import annotations

import pytest
import torch

from vision_mnv2.complexity import count_macs, count_parameters
from vision_mnv2.models import WeightsError, deeplabv3_mobilenet_v2, mobilenet_v2


@pytest.mark.parametrize(
    "aspp, params, macs, paper_params, paper_macs",
    [(True, 4_523_541, 5_363_508_928, 4.52, 5.8e9), (False, 2_113_557, 2_740_709_056, 2.11, 2.75e9)],
)
def test_sizes_match_paper_table7(aspp, params, macs, paper_params, paper_macs):
    """Exact counts at 513x513 with 21 classes (batch norm included, MACs of convolutions); the
    paper's rounded Table 7 figures (its 5.8B for ASPP counts more than the convolutions)."""
    model = deeplabv3_mobilenet_v2(num_classes=21, aspp=aspp)
    assert count_parameters(model) == params and count_macs(model, (513, 513)) == macs
    assert round(params / 1e6, 2) == paper_params
    assert abs(macs - paper_macs) / paper_macs < (0.08 if aspp else 0.01)


def test_head_layout_and_output():
    model = deeplabv3_mobilenet_v2(num_classes=5, output_stride=8).eval()
    assert len(model.backbone.features) == 18, "the 1280-channel layer 19 is not built"
    rates = [branch[0].dilation[0] for branch in list(model.aspp.convs)[1:-1]]
    assert rates == [12, 24, 36]
    with torch.no_grad():
        assert model(torch.rand(2, 3, 97, 131)).shape == (2, 5, 97, 131)
    mobile = deeplabv3_mobilenet_v2(aspp=False)
    assert len(mobile.aspp.convs) == 2, "mobile head: 1x1 conv + image pooling only"
    with pytest.raises(ValueError, match="output_stride"):
        deeplabv3_mobilenet_v2(output_stride=32)


def test_backbone_weights_carry_over_from_a_classifier(tmp_path):
    classifier = mobilenet_v2(num_classes=8)
    path = tmp_path / "classifier.pt"
    torch.save(classifier.state_dict(), path)
    model = deeplabv3_mobilenet_v2(num_classes=3, backbone_weights=path)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, classifier.backbone.state_dict()[key]), key
    saved = tmp_path / "seg.pt"
    torch.save(model.state_dict(), saved)
    assert torch.equal(deeplabv3_mobilenet_v2(num_classes=3, weights=saved).classifier.weight, model.classifier.weight)
    with pytest.raises(WeightsError, match="shape mismatch: classifier"):
        deeplabv3_mobilenet_v2(num_classes=21, weights=saved)
