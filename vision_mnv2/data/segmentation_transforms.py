"""Joint image + mask pipelines for semantic segmentation (DeepLab's VOC recipe).

Training: random scale 0.5-2.0, pad to the crop size (image with the mean pixel of the model's
normalisation, which normalises to zero as in DeepLab; mask with the ignore label, so padding never
counts as background), random crop, horizontal flip. Images leave as float tensors in [0, 1]; the
network normalises them itself. Evaluation: the whole image, padded at the bottom and right to a fixed size
(DeepLab evaluates VOC at 513x513) so batches stack and padding is ignored by the metric.
Masks are always resampled with nearest neighbour: interpolating class indices invents classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import torch
from torch import Tensor
from torch.nn import functional as F

from .transforms import to_unit_tensor
from .voc import IGNORE_INDEX

__all__ = ["segmentation_train_transform", "segmentation_eval_transform", "segmentation_collate"]


# The mean pixel of ImageNet's statistics (the default normalisation), as 0-255 RGB.
IMAGENET_FILL = (0.485 * 255, 0.456 * 255, 0.406 * 255)


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def segmentation_train_transform(
    crop_size: int | Sequence[int],
    scale: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    fill: Sequence[float] = IMAGENET_FILL,
    ignore_index: int = IGNORE_INDEX,
) -> A.Compose:
    """Random scale in ``scale``, pad to ``crop_size`` (image with ``fill``, 0-255 RGB: the mean
    pixel of the model's normalisation), random crop, flip, [0, 1] tensor."""
    low, high = scale
    if not 0 < low <= high:
        raise ValueError(f"scale must be an increasing pair of positive factors, got {tuple(scale)}")
    height, width = _as_size(crop_size)
    return A.Compose(
        [
            # albumentations' scale_limit is relative to 1: (0.5, 2.0) -> (-0.5, 1.0).
            A.RandomScale(scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR,
                          mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0),
            A.PadIfNeeded(min_height=height, min_width=width, border_mode=cv2.BORDER_CONSTANT,
                          fill=tuple(fill), fill_mask=ignore_index),
            A.RandomCrop(height=height, width=width),
            A.HorizontalFlip(p=hflip),
            *to_unit_tensor(),
        ]
    )  # fmt: skip


def segmentation_eval_transform(
    pad_size: int | Sequence[int] | None = None,
    fill: Sequence[float] = IMAGENET_FILL,
    ignore_index: int = IGNORE_INDEX,
) -> A.Compose:
    """The full image, padded at the bottom and right to ``pad_size`` when given (with ``fill``),
    as a [0, 1] tensor."""
    steps = []
    if pad_size is not None:
        height, width = _as_size(pad_size)
        steps.append(
            A.PadIfNeeded(min_height=height, min_width=width, position="top_left", border_mode=cv2.BORDER_CONSTANT,
                          fill=tuple(fill), fill_mask=ignore_index)
        )  # fmt: skip
    return A.Compose([*steps, *to_unit_tensor()])


def segmentation_collate(
    batch, fill: Sequence[float] = IMAGENET_FILL, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """Stack images and masks (as int64), padding at the bottom and right to the largest in the
    batch when their sizes differ (images with ``fill``, 0-255 RGB; masks with ignore)."""
    images, masks = zip(*batch)
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)

    def pad_image(image: Tensor) -> Tensor:
        if image.shape[-2:] == (height, width):
            return image
        canvas = torch.tensor([v / 255.0 for v in fill], dtype=image.dtype).view(3, 1, 1).repeat(1, height, width)
        canvas[:, : image.shape[-2], : image.shape[-1]] = image
        return canvas

    def pad_mask(mask: Tensor) -> Tensor:
        return F.pad(mask, (0, width - mask.shape[-1], 0, height - mask.shape[-2]), value=ignore_index)

    return (
        torch.stack([pad_image(image) for image in images]),
        torch.stack([pad_mask(torch.as_tensor(mask).long()) for mask in masks]),
    )
