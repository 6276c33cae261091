"""TF Object Detection API's SSD training rule (``ssdlite_mobilenet_v2_coco.config``), for
torchvision's ``SSD``: anchors, matching and loss.

- Anchors: ``ssd_anchor_generator`` (``MultipleGridAnchorGenerator``): scales linear from
  ``min_scale`` to ``max_scale`` over the layers, the listed aspect ratios in their order, then
  ratio 1 at the geometric mean of a layer's scale and the next (1.0 after the last); the lowest
  layer holds 3 boxes (``reduce_boxes_in_lowest_layer``). Centres on a grid of the feature map
  ((i + 0.5) / size); boxes are not clipped to the image (torchvision's default clips w, h to 1).
- Matching: ``argmax_matcher`` with matched / unmatched thresholds and ``force_match_for_each_row``
  (each ground-truth box takes its best anchor; a tie between boxes goes to the first box).
- Loss: ``weighted_sigmoid`` classification over all ``C + 1`` columns (background included:
  an unmatched anchor's target is one-hot background), ``weighted_smooth_l1`` on matched anchors,
  ``hard_example_miner`` (loss_type CLASSIFICATION): NMS over the predicted boxes scored by their
  classification loss keeps up to ``num_hard_examples``; of those, every positive and the hardest
  negatives up to ``max(min_negatives_per_image, max_negatives_per_positive x positives)``. Both
  sums are divided by the batch's number of matched anchors (``normalize_loss_by_num_matches``).
  So an image without boxes still adds the loss of its ``min_negatives_per_image`` hardest
  negatives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.ops import nms

__all__ = ["TF_ASPECT_RATIOS", "TFArgMaxMatcher", "TFMultipleGridAnchorGenerator", "TFSSDLoss", "tf_ssd_box_specs"]

# The config's aspect ratios, as written there (0.3333, not 1/3).
TF_ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)


def tf_ssd_box_specs(
    num_layers: int = 6,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    aspect_ratios: Sequence[float] = TF_ASPECT_RATIOS,
    interpolated_scale_aspect_ratio: float = 1.0,
    reduce_boxes_in_lowest_layer: bool = True,
    lowest_scale: float = 0.1,
) -> list[list[tuple[float, float]]]:
    """``(scale, aspect ratio)`` of each box of each layer, in TF's order."""
    if num_layers < 2:
        raise ValueError(f"num_layers must be at least 2, got {num_layers}")
    scales = [min_scale + (max_scale - min_scale) * i / (num_layers - 1) for i in range(num_layers)] + [1.0]
    specs = []
    for layer in range(num_layers):
        scale, scale_next = scales[layer], scales[layer + 1]
        if layer == 0 and reduce_boxes_in_lowest_layer:
            specs.append([(lowest_scale, 1.0), (scale, 2.0), (scale, 0.5)])
            continue
        boxes = [(scale, ratio) for ratio in aspect_ratios]
        if interpolated_scale_aspect_ratio > 0:
            boxes.append((math.sqrt(scale * scale_next), interpolated_scale_aspect_ratio))
        specs.append(boxes)
    return specs


class TFMultipleGridAnchorGenerator(DefaultBoxGenerator):
    """TF's SSD anchors on torchvision's grid code (same centres, location-major order); a box of
    scale s and ratio a is ``s * sqrt(a)`` wide and ``s / sqrt(a)`` high (fractions of the image)."""

    def __init__(
        self,
        num_layers: int = 6,
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        aspect_ratios: Sequence[float] = TF_ASPECT_RATIOS,
        interpolated_scale_aspect_ratio: float = 1.0,
        reduce_boxes_in_lowest_layer: bool = True,
        lowest_scale: float = 0.1,
    ) -> None:
        super().__init__([[]] * num_layers, min_ratio=min_scale, max_ratio=max_scale, clip=False)
        self.box_specs = tf_ssd_box_specs(
            num_layers,
            min_scale,
            max_scale,
            aspect_ratios,
            interpolated_scale_aspect_ratio,
            reduce_boxes_in_lowest_layer,
            lowest_scale,
        )
        self._wh_pairs = [
            torch.tensor([[s * math.sqrt(a), s / math.sqrt(a)] for s, a in layer], dtype=torch.float32)
            for layer in self.box_specs
        ]

    def num_anchors_per_location(self) -> list[int]:
        return [len(layer) for layer in self.box_specs]


class TFArgMaxMatcher:
    """IoU ``num_boxes x num_anchors`` -> per anchor the matched box, -1 (background) or -2
    (between the thresholds: ignored)."""

    def __init__(
        self, matched_threshold: float = 0.5, unmatched_threshold: float = 0.5, force_match_for_each_row: bool = True
    ) -> None:
        if unmatched_threshold > matched_threshold:
            raise ValueError(f"unmatched_threshold {unmatched_threshold} exceeds matched_threshold {matched_threshold}")
        self.matched_threshold = matched_threshold
        self.unmatched_threshold = unmatched_threshold
        self.force_match_for_each_row = force_match_for_each_row

    def __call__(self, iou: Tensor) -> Tensor:
        if iou.numel() == 0 or iou.shape[0] == 0:
            return torch.full((iou.shape[1],), -1, dtype=torch.int64, device=iou.device)
        best, matches = iou.max(dim=0)
        matches = matches.clone()
        matches[best < self.matched_threshold] = -2
        matches[best < self.unmatched_threshold] = -1
        if self.force_match_for_each_row:
            best_anchor = iou.argmax(dim=1)
            # Written from the last box to the first, so that the first box wins a shared anchor.
            for box in range(iou.shape[0] - 1, -1, -1):
                matches[best_anchor[box]] = box
        return matches


class TFSSDLoss:
    """The loss of TF's SSD config for torchvision's ``SSD.compute_loss`` arguments; returns
    ``{"bbox_regression", "classification"}`` already weighted and normalised."""

    def __init__(
        self,
        classification_weight: float = 1.0,
        localization_weight: float = 1.0,
        num_hard_examples: int = 3000,
        iou_threshold: float = 0.99,
        max_negatives_per_positive: float = 3.0,
        min_negatives_per_image: int = 3,
    ) -> None:
        self.classification_weight = classification_weight
        self.localization_weight = localization_weight
        self.num_hard_examples = num_hard_examples
        self.iou_threshold = iou_threshold
        self.max_negatives_per_positive = max_negatives_per_positive
        self.min_negatives_per_image = min_negatives_per_image

    def mine(self, cls_losses: Tensor, boxes: Tensor, matched: Tensor) -> Tensor:
        """Indices of the anchors one image's loss keeps (TF's ``HardExampleMiner``, loss_type
        CLASSIFICATION): NMS of the predicted ``boxes`` ranked by loss, then the negative:positive cap."""
        kept = nms(boxes.float(), cls_losses.float(), self.iou_threshold)[: self.num_hard_examples]
        positive = matched[kept] >= 0
        negative = matched[kept] == -1
        max_negatives = max(self.min_negatives_per_image, int(self.max_negatives_per_positive * int(positive.sum())))
        # As TF: past the cap no further anchor is taken but positives; ignored ones (-2) weigh 0.
        return kept[positive | (negative.cumsum(0) <= max_negatives)]

    def __call__(self, targets, head_outputs, anchors, matched_idxs, box_coder) -> dict[str, Tensor]:
        cls_logits, bbox_regression = head_outputs["cls_logits"], head_outputs["bbox_regression"]
        cls_total = cls_logits.new_zeros(())
        loc_total = cls_logits.new_zeros(())
        num_matches = 0
        for target, logits, regression, anchors_per_image, matched in zip(
            targets, cls_logits, bbox_regression, anchors, matched_idxs
        ):
            foreground = torch.where(matched >= 0)[0]
            num_matches += foreground.numel()
            one_hot = torch.zeros_like(logits)
            one_hot[:, 0] = 1.0  # background
            one_hot[foreground, 0] = 0.0
            one_hot[foreground, target["labels"][matched[foreground]]] = 1.0
            cls_losses = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none").sum(-1)
            cls_losses = cls_losses * (matched != -2)  # ignored anchors weigh 0
            loc_losses = torch.zeros_like(cls_losses)
            if foreground.numel():
                encoded = box_coder.encode_single(target["boxes"][matched[foreground]], anchors_per_image[foreground])
                loc_losses = loc_losses.index_put(
                    (foreground,), F.smooth_l1_loss(regression[foreground], encoded, reduction="none").sum(-1)
                )
            with torch.no_grad():
                boxes = box_coder.decode_single(regression.detach(), anchors_per_image)
                selected = self.mine(cls_losses.detach(), boxes, matched)
            cls_total = cls_total + cls_losses[selected].sum()
            loc_total = loc_total + loc_losses[selected].sum()
        normalizer = max(1, num_matches)
        return {
            "bbox_regression": self.localization_weight * loc_total / normalizer,
            "classification": self.classification_weight * cls_total / normalizer,
        }
