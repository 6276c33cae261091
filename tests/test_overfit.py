"""A tiny MobileNetV2 must memorise a handful of images: the basic check that gradients flow."""

from __future__ import annotations

import torch

from vision_mnv2.data import ImageFolderClassification, classification_eval_transform
from vision_mnv2.models import mobilenet_v2


def test_tiny_model_overfits_a_few_images(tiny_cls_root):
    torch.manual_seed(0)
    dataset = ImageFolderClassification(tiny_cls_root, "train", classification_eval_transform(64, crop_fraction=1.0))
    images = torch.stack([dataset[i][0] for i in range(0, 32, 4)])  # 8 images, 2 of each class
    labels = torch.tensor([dataset[i][1] for i in range(0, 32, 4)])
    model = mobilenet_v2(width_mult=0.35, num_classes=4, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first_loss = None
    for _ in range(80):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first_loss = first_loss if first_loss is not None else loss.item()
    assert loss.item() < 0.05 * first_loss
    # Also in eval mode, with the running batch-norm statistics.
    for _ in range(20):  # settle the running statistics on this batch
        with torch.no_grad():
            model(images)
    model.eval()
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).all()
