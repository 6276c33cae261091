"""Memory-efficient inference (paper section 5.1): same outputs as the standard path, less memory."""

from __future__ import annotations

import pytest
import torch

from vision_mnv2.models import (
    deeplabv3_mobilenet_v2,
    largest_activations,
    memory_efficient_inference,
    mobilenet_v2,
    set_expansion_groups,
    ssdlite_mobilenet_v2,
)

from .helpers import compose_config, realistic_batch_norm


@pytest.mark.parametrize("groups", [2, 3, 8, [2, 4, 8, 5, 3, 2, 6, 7, 8, 2, 3, 4, 5, 6, 7, 8, 2]])
def test_classifier_outputs_match_the_standard_path(groups):
    torch.manual_seed(0)
    model = realistic_batch_norm(mobilenet_v2(width_mult=1.0, num_classes=10))
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        expected = model(images)
        with memory_efficient_inference(model, groups):
            assert all(b.expansion_groups > 1 for b in model.backbone.features[1:18])
            got = model(images)
        assert all(b.expansion_groups == 1 for b in model.backbone.features[1:18]), "restored afterwards"
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_segmenter_and_detector_outputs_match(output_stride):
    torch.manual_seed(0)
    segmenter = realistic_batch_norm(deeplabv3_mobilenet_v2(num_classes=5, width_mult=0.5, output_stride=output_stride))
    images = torch.rand(1, 3, 97, 113)
    with torch.no_grad():
        expected = segmenter(images)
        set_expansion_groups(segmenter, 4)
        torch.testing.assert_close(segmenter(images), expected, atol=1e-4, rtol=1e-4)
    detector = realistic_batch_norm(ssdlite_mobilenet_v2(num_classes=3, width_mult=0.5, image_size=128))
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        features = list(detector.backbone(images).values())
        expected = detector.head(features)
        with memory_efficient_inference(detector, 5):
            got = detector.head(list(detector.backbone(images).values()))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4)


def test_training_takes_the_standard_path_and_settings_are_checked():
    model = mobilenet_v2(width_mult=0.35, num_classes=4)
    set_expansion_groups(model, 4)
    model.train()
    images = torch.rand(2, 3, 64, 64)
    model(images).sum().backward()
    assert model.backbone.features[2].expand[0].weight.grad is not None
    with pytest.raises(ValueError, match=">= 1"):
        set_expansion_groups(model, 0)
    with pytest.raises(ValueError, match="17 inverted residual blocks"):
        set_expansion_groups(model, [2, 2])
    assert set_expansion_groups(model, {3: 4})[3] == 4 and set_expansion_groups(model, None) == [1] * 17


def test_largest_activation_per_resolution_as_in_table_3():
    model = mobilenet_v2()
    images = torch.rand(1, 3, 224, 224)
    standard = largest_activations(model, images)
    assert list(standard)[:3] == [(112, 112), (56, 56), (28, 28)]
    # At 112x112 the standard path materialises layer 3's expansion: 96 channels (16 x 6), 16-bit.
    assert standard[(112, 112)]["standard"] == 96 * 112 * 112 * 2
    set_expansion_groups(model, 8)
    efficient = largest_activations(model, images)
    # Memory-efficient: only block inputs/outputs (32 channels, the stem's output) and 1/8 of an expansion.
    assert efficient[(112, 112)]["memory_efficient"] == 32 * 112 * 112 * 2
    assert max(v["memory_efficient"] for v in efficient.values()) < max(v["standard"] for v in standard.values()) / 2


def test_builders_and_configs_take_expansion_groups(tmp_path):
    from hydra.utils import instantiate  # noqa: PLC0415

    model = deeplabv3_mobilenet_v2(num_classes=3, width_mult=0.35, expansion_groups=3)
    assert {b.expansion_groups for b in model.backbone.features[1:]} == {3}
    cfg = compose_config(
        "eval", ["task=ssdlite", "backbone.width_mult=0.35", "backbone.expansion_groups=2", "ckpt_path=x"], tmp_path
    )
    detector = instantiate(cfg.model)
    assert {m.expansion_groups for m in detector.modules() if hasattr(m, "expansion_groups")} == {2}


def test_folded_batch_norm_gives_the_same_outputs_on_both_paths():
    from vision_mnv2.onnx_export import fold_batch_norm  # noqa: PLC0415

    torch.manual_seed(0)
    model = realistic_batch_norm(deeplabv3_mobilenet_v2(num_classes=4, width_mult=0.5))
    images = torch.rand(1, 3, 65, 81)
    with torch.no_grad():
        expected = model(images)
        fold_batch_norm(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
        torch.testing.assert_close(model(images), expected, atol=1e-4, rtol=1e-4)
        with memory_efficient_inference(model, 3):
            torch.testing.assert_close(model(images), expected, atol=1e-4, rtol=1e-4)
        model = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(
            model(images.contiguous(memory_format=torch.channels_last)), expected, atol=1e-4, rtol=1e-4
        )
