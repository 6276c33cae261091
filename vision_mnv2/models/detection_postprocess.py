"""Detection post-processing shared by the PyTorch detector and its exported graph.

One function, :func:`multiclass_nms`, turns decoded boxes and per-class scores into each image's
detections with torchvision SSD's rules: per class, the ``topk_candidates`` best anchors scoring
above ``score_thresh``; class-wise NMS at ``nms_thresh``; the ``detections_per_img`` best overall.
The detector's ``postprocess_detections`` calls it, and so does the export wrapper, where its NMS
becomes ONNX's ``NonMaxSuppression`` operator: eager and exported detections are the same
computation, not two implementations that can drift apart.

Everything is batched with fixed output shapes (N x D, padded, with a count per image), so the
exported graph needs no per-image Python loop.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

__all__ = ["multiclass_nms"]


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX's ``NonMaxSuppression``: for every image and class, greedy NMS over the boxes scoring
    above the threshold, at most ``max_output`` per class. Returns ``[K, 3]`` int64 rows
    ``(image, class, box)``. In eager mode torchvision's NMS computes the same selection."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_output: Tensor, iou: Tensor, score_thresh: Tensor) -> Tensor:
        # boxes N x A x 4, scores N x C x A.
        rows = []
        limit, threshold, iou_value = int(max_output), float(score_thresh), float(iou)
        for image in range(scores.shape[0]):
            for label in range(scores.shape[1]):  # ONNX's order: per image, per class, best first
                class_scores = scores[image, label]
                candidates = torch.where(class_scores > threshold)[0]
                if candidates.numel() == 0:
                    continue
                kept = candidates[nms(boxes[image, candidates], class_scores[candidates], iou_value)][:limit]
                rows.append(torch.stack([torch.full_like(kept, image), torch.full_like(kept, label), kept], 1))
        if not rows:
            return torch.zeros((0, 3), dtype=torch.int64, device=scores.device)
        return torch.cat(rows).to(torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_output, iou, score_thresh):
        return g.op("NonMaxSuppression", boxes, scores, max_output, iou, score_thresh)


def multiclass_nms(
    boxes: Tensor,
    scores: Tensor,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    topk_candidates: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Detections of a batch.

    Args:
        boxes: N x A x 4 decoded boxes (x0, y0, x1, y1), one per anchor, shared by the classes.
        scores: N x A x C class scores (background excluded), each in [0, 1].

    Returns ``boxes`` N x D x 4, ``scores`` N x D, ``labels`` N x D (1-based class, as the
    detector's; 0 on padding rows) and ``counts`` N, with D = ``detections_per_img``; each image's
    detections come first, best score first, the rest of its rows are zero.
    """
    batch, num_anchors, num_classes = scores.shape
    per_class = scores.transpose(1, 2)  # N x C x A, ONNX's layout
    # torchvision keeps only each class's topk_candidates best anchors before NMS: give the others
    # score 0, which the threshold (>= 0) then removes.
    k = min(int(topk_candidates), num_anchors)
    kth_best = per_class.topk(k, dim=2).values[..., -1:]
    per_class = torch.where(per_class >= kth_best, per_class, torch.zeros_like(per_class))
    selected = _NonMaxSuppression.apply(
        boxes.contiguous(),
        per_class.contiguous(),
        torch.tensor([int(detections_per_img)], dtype=torch.int64),
        torch.tensor([float(nms_thresh)], dtype=torch.float32),
        torch.tensor([float(score_thresh)], dtype=torch.float32),
    )
    image, label, anchor = selected[:, 0], selected[:, 1], selected[:, 2]
    # Scatter the survivors' scores into a dense N x (C * A) table; its top D per image, best first,
    # are the detections (every survivor scores above score_thresh >= 0, padding scores 0).
    table = torch.zeros(batch, num_classes * num_anchors, dtype=scores.dtype, device=scores.device)
    table = table.index_put((image, label * num_anchors + anchor), per_class[image, label, anchor])
    top = table.topk(min(int(detections_per_img), num_classes * num_anchors), dim=1)
    valid = top.values > 0
    best_anchor = top.indices % num_anchors
    out_boxes = torch.gather(boxes, 1, best_anchor.unsqueeze(-1).expand(-1, -1, 4))
    out_boxes = out_boxes * valid.unsqueeze(-1).to(boxes.dtype)
    out_labels = (top.indices // num_anchors + 1) * valid.to(torch.int64)
    return out_boxes, top.values, out_labels, valid.sum(dim=1)
