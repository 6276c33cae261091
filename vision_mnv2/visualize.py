"""Drawing predictions on images (torchvision's drawing utilities; numpy uint8 images in and out)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from .data.voc import voc_palette

__all__ = ["draw_detections", "draw_mask_overlay", "colour_mask"]


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def draw_detections(
    image: np.ndarray, boxes, scores, labels, class_names: Sequence[str], min_score: float = 0.3
) -> np.ndarray:
    """Boxes with "name score" captions for detections scoring at least ``min_score``.
    ``labels`` are 1-based (0 is the detector's background), as the models return them."""
    boxes, scores, labels = (torch.as_tensor(x) for x in (boxes, scores, labels))
    keep = scores >= min_score
    palette = voc_palette()
    colours = [tuple(palette[3 * int(label) : 3 * int(label) + 3]) for label in labels[keep]]
    captions = [f"{class_names[int(label) - 1]} {float(score):.2f}" for label, score in zip(labels[keep], scores[keep])]
    if not captions:
        return image.copy()
    drawn = draw_bounding_boxes(_to_chw(image), boxes[keep].float(), labels=captions, colors=colours, width=2)
    return drawn.permute(1, 2, 0).numpy()


def colour_mask(mask: np.ndarray) -> np.ndarray:
    """Class indices to VOC colours (H x W x 3 uint8)."""
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return palette[np.asarray(mask, dtype=np.uint8)]


def draw_mask_overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.5) -> np.ndarray:
    """The image with every non-background class painted in its VOC colour at ``alpha``."""
    mask_t = torch.as_tensor(np.asarray(mask, dtype=np.int64))
    present = [c for c in range(1, num_classes) if bool((mask_t == c).any())]
    if not present:
        return image.copy()
    masks = torch.stack([mask_t == c for c in present])
    palette = voc_palette()
    colours = [tuple(palette[3 * c : 3 * c + 3]) for c in present]
    drawn = draw_segmentation_masks(_to_chw(image), masks, alpha=alpha, colors=colours)
    return drawn.permute(1, 2, 0).numpy()
