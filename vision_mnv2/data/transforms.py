"""Albumentations pipelines. Numbers come from configs; these functions only assemble them.

They end with RGB float tensors in [0, 1]: the networks normalise their input themselves (their
``normalization`` setting), so the data pipeline does not depend on the weights' statistics."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2

__all__ = ["EVAL_MODES", "classification_train_transform", "classification_eval_transform", "to_unit_tensor"]


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


# How a classifier's evaluation fits a photo to its input: ``crop`` the central fraction (torchvision's
# and TF-slim's evaluation, which published accuracies use) or ``resize`` the whole photo, its
# aspect ratio not kept (as TF's label_image and the Coral examples feed Google's models).
EVAL_MODES = ("crop", "resize")


def classification_eval_transform(
    image_size: int,
    crop_fraction: float = 0.875,
    mode: str = "crop",
) -> A.Compose:
    """``mode="crop"``: resize the short side to ``image_size / crop_fraction`` and take the
    central square (at 224 the usual 256 resize + 224 centre crop; it scales with the input
    resolution). ``mode="resize"``: the whole image resized to ``image_size`` square.
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"the evaluation preprocessing is one of {EVAL_MODES}, got {mode!r}")
    if mode == "resize":
        return A.Compose([A.Resize(height=image_size, width=image_size), *to_unit_tensor()])
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=int(round(image_size / crop_fraction))),
            A.CenterCrop(height=image_size, width=image_size),
            *to_unit_tensor(),
        ]
    )
