"""SSDLite + MobileNetV2: layout and size of paper Table 6, anchors as TF, training losses, weights."""

from __future__ import annotations

import pytest
import torch
import torchvision

from vision_mnv2.complexity import count_macs, count_parameters
from vision_mnv2.models import WeightsError, mobilenet_v2, ssdlite_mobilenet_v2


@pytest.fixture(scope="module")
def detector():
    return ssdlite_mobilenet_v2(num_classes=80)


def test_size_matches_paper_table6(detector):
    """Exact counts at 320x320 with 80 classes; the paper's Table 6 rounds them to 4.3M and 0.8B."""
    params = count_parameters(detector)
    macs = count_macs(detector, (320, 320))
    assert params == 4_337_013 and macs == 788_830_144
    assert round(params / 1e6, 1) == 4.3 and round(macs / 1e9, 1) == 0.8


def test_feature_maps_and_anchor_layout(detector):
    with torch.no_grad():
        maps = detector.eval().backbone(torch.zeros(1, 3, 320, 320))
    shapes = [tuple(m.shape[1:]) for m in maps.values()]
    assert shapes == [(576, 20, 20), (1280, 10, 10), (512, 5, 5), (256, 3, 3), (256, 2, 2), (128, 1, 1)]
    assert detector.anchor_generator.num_anchors_per_location() == [3, 6, 6, 6, 6, 6]
    # Scales 0.2..0.95 linearly over the six layers; 0.1 on the lowest layer's square box.
    wh = detector.anchor_generator._wh_pairs
    assert wh[0][0].tolist() == pytest.approx([0.1, 0.1])
    assert wh[1][0].tolist() == pytest.approx([0.35, 0.35])
    assert wh[5][0].tolist() == pytest.approx([0.95, 0.95])
    # Box coder and matcher of TF's config.
    assert detector.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert detector.proposal_matcher.high_threshold == 0.5


def test_training_losses_and_inference(detector):
    torch.manual_seed(0)
    detector.train()
    images = [torch.rand(3, 320, 320), torch.rand(3, 240, 300)]
    targets = [
        {"boxes": torch.tensor([[20.0, 30.0, 120.0, 160.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},  # no objects
    ]
    losses = detector(images, targets)
    assert set(losses) == {"bbox_regression", "classification"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    detector.eval()
    with torch.no_grad():
        (out,) = detector([torch.rand(3, 200, 260)])
    assert out["boxes"].shape[1] == 4 and len(out["boxes"]) <= 100
    assert (out["boxes"][:, 2] <= 260 + 1e-3).all() and (out["labels"] >= 1).all()


def test_backbone_weights_from_torchvision_and_from_a_classifier_checkpoint(tmp_path):
    reference = torchvision.models.mobilenet_v2(weights=None)
    tv_path = tmp_path / "mobilenet_v2-7ebf99e0.pth"
    torch.save(reference.state_dict(), tv_path)
    classifier = mobilenet_v2(num_classes=8)
    ckpt = tmp_path / "classification.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in classifier.state_dict().items()}}, ckpt)

    from_tv = ssdlite_mobilenet_v2(num_classes=3, backbone_weights=tv_path)
    assert torch.equal(from_tv.backbone.backbone.features[5].expand[0].weight, reference.features[5].conv[0][0].weight)
    from_ckpt = ssdlite_mobilenet_v2(num_classes=3, backbone_weights=ckpt)
    for key, value in classifier.backbone.state_dict().items():
        assert torch.equal(from_ckpt.backbone.backbone.state_dict()[key], value), key

    # A detector checkpoint's backbone carries over too, and its full weights load into the same model.
    det_path = tmp_path / "detector.pt"
    torch.save(from_ckpt.state_dict(), det_path)
    again = ssdlite_mobilenet_v2(num_classes=3, backbone_weights=det_path)
    assert torch.equal(again.backbone.backbone.features[0][0].weight, from_ckpt.backbone.backbone.features[0][0].weight)
    full = ssdlite_mobilenet_v2(num_classes=3, weights=det_path)
    assert torch.equal(
        full.head.classification_head.module_list[0][1].weight,
        from_ckpt.head.classification_head.module_list[0][1].weight,
    )

    with pytest.raises(WeightsError, match="shape mismatch"):
        ssdlite_mobilenet_v2(num_classes=5, weights=det_path)
    with pytest.raises(WeightsError, match="does not fit the backbone"):
        ssdlite_mobilenet_v2(num_classes=3, width_mult=0.5, backbone_weights=tv_path)
    with pytest.raises(ValueError, match="num_classes"):
        ssdlite_mobilenet_v2(num_classes=0)


def test_focal_loss_option():
    torch.manual_seed(0)
    model = ssdlite_mobilenet_v2(num_classes=4, width_mult=0.35, image_size=128, classification_loss="focal")
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([4])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
    ]
    model.train()
    losses = model(images, targets)
    assert torch.isfinite(losses["classification"]) and losses["classification"] > 0
    # With the foreground prior, the initial focal loss is small (RetinaNet's ~1 per positive), far
    # below the softmax loss of the same untrained model.
    softmax_model = ssdlite_mobilenet_v2(num_classes=4, width_mult=0.35, image_size=128)
    softmax_model.load_state_dict(model.state_dict())
    assert losses["classification"] < softmax_model(images, targets)["classification"]
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 100, 120)])
    assert len(out["boxes"]) <= 100 and ((out["scores"] > 0) & (out["scores"] < 1)).all()
    assert ((out["labels"] >= 1) & (out["labels"] <= 4)).all()
    with pytest.raises(ValueError, match="classification_loss"):
        ssdlite_mobilenet_v2(classification_loss="hinge")
