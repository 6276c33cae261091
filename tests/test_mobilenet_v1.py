"""MobileNetV1 for the paper's comparison rows (Tables 4, 6, 7): sizes, TF's tap names, output
stride, the three tasks built on it, weights between tasks."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from vision_mnv2.complexity import count_macs, count_parameters
from vision_mnv2.models import (
    DepthwiseSeparable,
    MobileNetV1Backbone,
    WeightsError,
    deeplabv3_mobilenet_v1,
    mobilenet_v1,
    mobilenet_v2,
    ssdlite_mobilenet_v1,
)

from .helpers import compose_config, realistic_batch_norm


def test_classifier_matches_paper_table4():
    """MobileNetV2 paper Table 4's MobileNetV1 row: 4.2M parameters, 575M MAdds at 224. Exact counts
    (1000 classes, batch norm included, MACs of convolutions and the linear layer): the parameters
    round to 4.2M; the MACs are 569M, as the MobileNetV1 paper (Table 6) and TF-slim count them,
    1.1% under Table 4's 575M."""
    model = mobilenet_v1()
    params, macs = count_parameters(model), count_macs(model, (224, 224))
    assert params == 4_231_976 and macs == 568_740_352
    assert round(params / 1e6, 1) == 4.2 and round(macs / 1e6) == 569
    assert abs(macs - 575e6) / 575e6 < 0.012


# MobileNetV1 paper (arXiv:1704.04861) Tables 6 and 7: millions of MACs and parameters by width
# at 224, and millions of MACs of the 1.0 network by resolution.
V1_PAPER_WIDTHS = {1.0: (569, 4.2), 0.75: (325, 2.6), 0.5: (149, 1.3), 0.25: (41, 0.5)}
V1_PAPER_RESOLUTIONS = {224: 569, 192: 418, 160: 290, 128: 186}


@pytest.mark.parametrize("width_mult", sorted(V1_PAPER_WIDTHS))
def test_width_multiplier_matches_the_v1_paper(width_mult):
    macs_paper, params_paper = V1_PAPER_WIDTHS[width_mult]
    model = mobilenet_v1(width_mult=width_mult)
    assert round(count_macs(model, (224, 224)) / 1e6) == macs_paper
    assert round(count_parameters(model) / 1e6, 1) == params_paper
    # TF-slim's depth rule: cut off, not rounded to multiples of 8.
    widths = [layer.out_channels for layer in model.backbone.features[1:]]
    assert widths[-1] == int(1024 * width_mult) and widths[0] == max(8, int(64 * width_mult))


def test_resolutions_match_the_v1_paper():
    model = mobilenet_v1()
    for resolution, expected in V1_PAPER_RESOLUTIONS.items():
        macs = count_macs(model, (resolution, resolution)) / 1e6
        # The paper's whole millions (290.7 is written 290: cut off or rounded, within one million).
        assert abs(macs - expected) < 1, (resolution, macs)


def test_ssdlite_matches_paper_table6():
    """Table 6's SSDLite + MobileNetV1 row: 5.1M parameters, 1.3B MAdds at 320x320, 80 classes, on
    TF's taps Conv2d_11_pointwise and Conv2d_13_pointwise, with the same head and anchors as the
    MobileNetV2 detector."""
    model = ssdlite_mobilenet_v1(num_classes=80)
    params, macs = count_parameters(model), count_macs(model, (320, 320))
    assert params == 5_100_661 and macs == 1_309_162_944
    assert round(params / 1e6, 1) == 5.1 and round(macs / 1e9, 1) == 1.3
    assert model.backbone.backbone.out_features == ("Conv2d_11_pointwise", "Conv2d_13_pointwise")
    with torch.no_grad():
        maps = model.backbone.eval()(torch.zeros(1, 3, 320, 320))
    assert [tuple(m.shape[1:]) for m in maps.values()] == [
        (512, 20, 20),
        (1024, 10, 10),
        (512, 5, 5),
        (256, 3, 3),
        (256, 2, 2),
        (128, 1, 1),
    ]


def test_deeplab_matches_paper_table7():
    """Table 7's MobileNetV1 row (OS16, ASPP): 11.15M parameters, 14.25B MAdds. Exact counts at
    513x513 with 21 classes: the parameters round to 11.15M; the convolutions' MACs are 12.76B,
    10% under the paper's figure, which counts more than the convolutions (the MobileNetV2 row's
    5.8B is 8% over this project's 5.36B count of the same network, tests/test_deeplab_model.py)."""
    model = deeplabv3_mobilenet_v1(num_classes=21)
    params, macs = count_parameters(model), count_macs(model, (513, 513))
    assert params == 11_145_301 and macs == 12_760_886_976
    assert round(params / 1e6, 2) == 11.15
    assert abs(macs - 14.25e9) / 14.25e9 < 0.11
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 65, 97)).shape == (1, 21, 65, 97)


def test_tf_tap_names_strides_and_channels():
    backbone = MobileNetV1Backbone(
        out_features=[
            "Conv2d_0",
            "Conv2d_5_pointwise",
            "Conv2d_11_pointwise",
            "Conv2d_13_depthwise",
            "Conv2d_13_pointwise",
        ]
    )
    assert len(backbone.features) == 14 and all(isinstance(m, DepthwiseSeparable) for m in backbone.features[1:])
    info = backbone.feature_info
    assert (info["Conv2d_11_pointwise"].channels, info["Conv2d_11_pointwise"].reduction) == (512, 16)
    assert (info["Conv2d_13_pointwise"].channels, info["Conv2d_13_pointwise"].reduction) == (1024, 32)
    with torch.no_grad():
        taps = backbone.eval()(torch.rand(1, 3, 224, 224))
    assert {k: tuple(v.shape[1:]) for k, v in taps.items()} == {
        "Conv2d_0": (32, 112, 112),
        "Conv2d_5_pointwise": (256, 28, 28),
        "Conv2d_11_pointwise": (512, 14, 14),
        "Conv2d_13_depthwise": (1024, 7, 7),
        "Conv2d_13_pointwise": (1024, 7, 7),
    }
    # The depthwise tap is the pointwise conv's input.
    assert torch.equal(backbone.features[13].pointwise(taps["Conv2d_13_depthwise"]), taps["Conv2d_13_pointwise"])


@pytest.mark.parametrize("output_stride, dilations", [(16, [1] * 12 + [2]), (8, [1] * 6 + [2] * 6 + [4])])
def test_output_stride_by_dilation_with_the_same_weights(output_stride, dilations):
    torch.manual_seed(0)
    reference = realistic_batch_norm(MobileNetV1Backbone(out_features=["Conv2d_13_pointwise"]))
    dense = MobileNetV1Backbone(output_stride=output_stride, out_features=["Conv2d_13_pointwise"]).eval()
    dense.load_state_dict(reference.state_dict())  # same weights at every output stride
    assert [layer.depthwise[0].dilation[0] for layer in dense.features[1:]] == dilations
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        out = dense(x)["Conv2d_13_pointwise"]
        assert out.shape == (1, 1024, 128 // output_stride, 128 // output_stride)
        # Every output-stride-32 position is one of the dense map's, as TF's atrous trick promises
        # away from the borders; the centre is far enough from them.
        sparse = reference(x)["Conv2d_13_pointwise"]
    step = 32 // output_stride
    assert torch.allclose(out[..., ::step, ::step][..., 1:-1, 1:-1], sparse[..., 1:-1, 1:-1], atol=1e-4)


def test_freezing_stages():
    model = mobilenet_v1(num_classes=3, freeze_backbone=2)
    frozen = [all(not p.requires_grad for p in layer.parameters()) for layer in model.backbone.features]
    # Stage 0 the stem, 1 Conv2d_1 (64), 2 Conv2d_2-3 (128).
    assert frozen == [True] * 4 + [False] * 10
    model.train()
    assert not model.backbone.features[3].training and model.backbone.features[4].training
    with pytest.raises(ValueError, match="stage count -1..5"):
        mobilenet_v1(freeze_backbone=6)


def test_backbone_weights_between_tasks_and_families(tmp_path):
    classifier = realistic_batch_norm(mobilenet_v1(num_classes=5))
    path = tmp_path / "v1.pt"
    torch.save(classifier.state_dict(), path)
    detector = ssdlite_mobilenet_v1(num_classes=2, backbone_weights=path)
    for key, value in detector.backbone.backbone.state_dict().items():
        assert torch.equal(value, classifier.backbone.state_dict()[key]), key
    segmenter = deeplabv3_mobilenet_v1(num_classes=2, backbone_weights=path)
    assert torch.equal(
        segmenter.backbone.features[13].pointwise[0].weight, classifier.backbone.features[13].pointwise[0].weight
    )

    v2_path = tmp_path / "v2.pt"
    torch.save(mobilenet_v2(num_classes=5).state_dict(), v2_path)
    with pytest.raises(WeightsError, match="holds a MobileNetV2 backbone; this model's backbone is a MobileNetV1"):
        ssdlite_mobilenet_v1(num_classes=2, backbone_weights=v2_path)
    with pytest.raises(WeightsError, match="holds a MobileNetV1 backbone"):
        mobilenet_v2(num_classes=5, weights=path)


@pytest.mark.parametrize(
    "task, overrides, builder_name",
    [
        ("classification", [], "MobileNetV1"),
        ("ssdlite", [], "SSDLite"),
        ("deeplabv3", ["backbone.output_stride=16"], "DeepLabV3"),
    ],
)
def test_every_task_builds_on_mobilenet_v1(tmp_path, task, overrides, builder_name):
    cfg = compose_config(
        "train", [f"task={task}", "backbone=mobilenet_v1", "backbone.width_mult=0.5", *overrides], tmp_path
    )
    assert "shortcut" not in cfg.backbone and "expansion_groups" not in cfg.backbone  # V2 only
    model = instantiate(cfg.model)
    assert type(model).__name__ == builder_name
    backbones = [m for m in model.modules() if isinstance(m, MobileNetV1Backbone)]
    assert len(backbones) == 1 and backbones[0].width_mult == 0.5
