"""Albumentations pipelines. Numbers come from configs; these functions only assemble them."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "classification_train_transform", "classification_eval_transform"]

# torchvision's ImageNet statistics: its pretrained MobileNetV2 expects them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def classification_train_transform(
    image_size: int,
    scale: Sequence[float] = (0.08, 1.0),
    hflip: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Inception-style training crop (random area and aspect ratio), flip, normalise."""
    return A.Compose(
        [
            A.RandomResizedCrop(size=(image_size, image_size), scale=tuple(scale)),
            A.HorizontalFlip(p=hflip),
            A.Normalize(mean=mean, std=std),
            ToTensorV2(),
        ]
    )


def classification_eval_transform(
    image_size: int,
    crop_fraction: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Resize the short side to ``image_size / crop_fraction`` and take the central square.

    At 224 this is the usual 256 resize + 224 centre crop; it scales with the input resolution.
    """
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=int(round(image_size / crop_fraction))),
            A.CenterCrop(height=image_size, width=image_size),
            A.Normalize(mean=mean, std=std),
            ToTensorV2(),
        ]
    )
