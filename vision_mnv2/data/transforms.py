"""Albumentations pipelines. Numbers come from configs; these functions only assemble them.

They end with RGB float tensors in [0, 1]: the networks normalise their input themselves (their
``normalization`` setting), so the data pipeline does not depend on the weights' statistics."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2

__all__ = ["classification_train_transform", "classification_eval_transform", "to_unit_tensor"]


def to_unit_tensor() -> list:
    """uint8 H x W x 3 -> float32 3 x H x W in [0, 1]."""
    return [A.ToFloat(max_value=255.0), ToTensorV2()]


def classification_train_transform(
    image_size: int,
    scale: Sequence[float] = (0.08, 1.0),
    hflip: float = 0.5,
) -> A.Compose:
    """Inception-style training crop (random area and aspect ratio), flip, [0, 1] tensor."""
    return A.Compose(
        [
            A.RandomResizedCrop(size=(image_size, image_size), scale=tuple(scale)),
            A.HorizontalFlip(p=hflip),
            *to_unit_tensor(),
        ]
    )


def classification_eval_transform(
    image_size: int,
    crop_fraction: float = 0.875,
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
            *to_unit_tensor(),
        ]
    )
