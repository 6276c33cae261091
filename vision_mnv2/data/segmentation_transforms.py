"""Joint image + mask pipelines for semantic segmentation (DeepLab's VOC recipe).

Training: random scale 0.5-2.0, pad to the crop size (image with the mean pixel, which normalises to
zero as in DeepLab; mask with the ignore label, so padding never counts as background), random
crop, horizontal flip. Evaluation: the whole image, padded at the bottom and right to a fixed size
(DeepLab evaluates VOC at 513x513) so batches stack and padding is ignored by the metric.
Masks are always resampled with nearest neighbour: interpolating class indices invents classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import torch
from albumentations.pytorch import ToTensorV2
from torch import Tensor
from torch.nn import functional as F

from .transforms import IMAGENET_MEAN, IMAGENET_STD
from .voc import IGNORE_INDEX

__all__ = ["segmentation_train_transform", "segmentation_eval_transform", "segmentation_collate"]


def _mean_pixel(mean: Sequence[float]) -> tuple[float, ...]:
    return tuple(255.0 * m for m in mean)


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def segmentation_train_transform(
    crop_size: int | Sequence[int],
    scale: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = IGNORE_INDEX,
) -> A.Compose:
    """Random scale in ``scale``, pad to ``crop_size``, random crop, flip, normalise."""
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
                          fill=_mean_pixel(mean), fill_mask=ignore_index),
            A.RandomCrop(height=height, width=width),
            A.HorizontalFlip(p=hflip),
            A.Normalize(mean=mean, std=std),
            ToTensorV2(),
        ]
    )  # fmt: skip


def segmentation_eval_transform(
    pad_size: int | Sequence[int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = IGNORE_INDEX,
) -> A.Compose:
    """The full image, padded at the bottom and right to ``pad_size`` when given, normalised."""
    steps = []
    if pad_size is not None:
        height, width = _as_size(pad_size)
        steps.append(
            A.PadIfNeeded(min_height=height, min_width=width, position="top_left", border_mode=cv2.BORDER_CONSTANT,
                          fill=_mean_pixel(mean), fill_mask=ignore_index)
        )  # fmt: skip
    return A.Compose([*steps, A.Normalize(mean=mean, std=std), ToTensorV2()])


def segmentation_collate(batch, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Stack images and masks (as int64), padding at the bottom and right to the largest in the
    batch when their sizes differ (images with zero, the normalised mean; masks with ignore)."""
    images, masks = zip(*batch)
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)

    def pad(t: Tensor, value: float) -> Tensor:
        return F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value)

    return (
        torch.stack([pad(image, 0.0) for image in images]),
        torch.stack([pad(torch.as_tensor(mask).long(), ignore_index) for mask in masks]),
    )
