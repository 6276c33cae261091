"""Detection augmentation of SSD (Liu et al., 2016; TF OD API's ssd_random_crop): photometric
distortion, zoom-out, IoU-constrained random crop, flip, resize. Boxes are x0, y0, x1, y1 pixels.

Photometric distortion, flip and resize are albumentations'; zoom-out and the IoU-constrained crop
(which albumentations does not have) are written here as small numpy steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["SSDTrainTransform", "SSDEvalTransform", "zoom_out", "iou_random_crop"]

# SSD's crop sampler: minimum IoU of the crop with some box (None: keep the whole image).
MIN_IOUS = (None, 0.1, 0.3, 0.5, 0.7, 0.9)


def zoom_out(
    rng: np.random.Generator, image: np.ndarray, boxes: np.ndarray, max_ratio: float, fill: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Place the image at a random spot of a canvas up to ``max_ratio`` times larger (small objects)."""
    height, width = image.shape[:2]
    ratio = rng.uniform(1.0, max_ratio)
    canvas_h, canvas_w = int(height * ratio), int(width * ratio)
    top, left = int(rng.uniform(0, canvas_h - height)), int(rng.uniform(0, canvas_w - width))
    canvas = np.empty((canvas_h, canvas_w, 3), dtype=image.dtype)
    canvas[...] = np.asarray(fill, dtype=np.float32).astype(image.dtype)
    canvas[top : top + height, left : left + width] = image
    return canvas, boxes + np.array([left, top, left, top], dtype=boxes.dtype)


def iou_random_crop(
    rng: np.random.Generator, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, trials: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SSD's crop: a random patch (0.3-1 of each side, aspect 0.5-2) whose IoU with at least one box
    reaches a randomly chosen minimum; boxes whose centre falls outside the patch are dropped."""
    height, width = image.shape[:2]
    min_iou = MIN_IOUS[int(rng.integers(len(MIN_IOUS)))]
    if min_iou is None or len(boxes) == 0:
        return image, boxes, labels
    for _ in range(trials):
        w, h = rng.uniform(0.3, 1.0) * width, rng.uniform(0.3, 1.0) * height
        if not 0.5 <= h / w <= 2.0:
            continue
        left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
        patch = np.array([left, top, left + w, top + h], dtype=np.float32)
        ious = box_iou(torch.from_numpy(patch[None]), torch.from_numpy(boxes)).numpy()[0]
        if ious.max() < min_iou:
            continue
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = (centres > patch[:2]).all(axis=1) & (centres < patch[2:]).all(axis=1)
        if not inside.any():
            continue
        x0, y0, x1, y1 = (int(v) for v in patch)
        kept = boxes[inside].copy()
        kept[:, :2] = np.maximum(kept[:, :2], [x0, y0])
        kept[:, 2:] = np.minimum(kept[:, 2:], [x1, y1])
        return image[y0:y1, x0:x1], kept - np.array([x0, y0, x0, y0], dtype=kept.dtype), labels[inside]
    return image, boxes, labels


def _to_tensor(image: np.ndarray) -> Tensor:
    """uint8 HWC -> float CHW in [0, 1]; torchvision's SSD normalises and resizes itself."""
    return torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)


class SSDTrainTransform:
    """SSD training augmentation; ``(image, boxes, labels) -> (tensor, boxes, labels)``.

    Args:
        image_size: square output size (the detector's input).
        zoom_out_prob / max_zoom_out: probability and largest canvas ratio of the zoom-out.
        crop_prob: probability of the IoU-constrained crop.
        hflip: flip probability.
        seed: optional seed (each DataLoader worker still draws its own numbers when None).
    """

    def __init__(
        self,
        image_size: int,
        zoom_out_prob: float = 0.5,
        max_zoom_out: float = 4.0,
        crop_prob: float = 1.0,
        hflip: float = 0.5,
        photometric_prob: float = 0.5,
        fill: Sequence[float] = (124, 116, 104),
        seed: int | None = None,
    ) -> None:
        self.image_size = image_size
        self.zoom_out_prob = zoom_out_prob
        self.max_zoom_out = max_zoom_out
        self.crop_prob = crop_prob
        self.fill = tuple(fill)
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self.photometric = A.Compose(
            [
                A.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05, p=photometric_prob),
            ]
        )
        self.geometric = A.Compose(
            [A.HorizontalFlip(p=hflip), A.Resize(image_size, image_size)],
            bbox_params=A.BboxParams(
                format="pascal_voc", label_fields=["labels"], clip=True, min_area=1.0, min_visibility=0.0
            ),
        )

    def set_random_seed(self, seed: int) -> None:
        """Seed every random choice of this pipeline (albumentations' generators included, which
        otherwise draw fresh entropy from the OS and make runs irreproducible)."""
        self._rng = np.random.default_rng(seed)
        self.photometric.set_random_seed(seed + 1)
        self.geometric.set_random_seed(seed + 2)

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:  # created lazily, so each worker process seeds its own from torch
            self._rng = np.random.default_rng(self.seed if self.seed is not None else torch.initial_seed() % 2**32)
        return self._rng

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64)
        image = self.photometric(image=image)["image"]
        if self.rng.random() < self.zoom_out_prob:
            image, boxes = zoom_out(self.rng, image, boxes, self.max_zoom_out, self.fill)
        if self.rng.random() < self.crop_prob:
            image, boxes, labels = iou_random_crop(self.rng, image, boxes, labels)
        out = self.geometric(image=image, bboxes=boxes, labels=labels)
        boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        return _to_tensor(out["image"]), boxes, np.asarray(out["labels"], dtype=np.int64)


class SSDEvalTransform:
    """Evaluation: the image as it is (the detector resizes it and maps boxes back to it)."""

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
        return _to_tensor(image), boxes, labels
