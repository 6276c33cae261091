"""ONNX export of the three networks, with a dynamic batch axis.

Every exported graph takes ``images``: float32, N x 3 x H x W, RGB scaled to [0, 1] (the model's own
normalisation is inside the graph, so callers only resize and divide by 255).

* classification: ``logits`` N x classes.
* segmentation: ``logits`` N x classes x H x W (already upsampled to the input size).
* detection: ``boxes`` N x anchors x 4 (x0, y0, x1, y1 in input pixels, decoded and clipped),
  ``scores`` N x anchors x classes (softmax, or sigmoid for the focal-loss variant; background
  dropped) and ``labels`` N x anchors (each anchor's best class, 1-based). **NMS is not in the graph**: it is data-dependent per image and batch, and every runtime
  has a fast one; :func:`detection_postprocess` is the same score threshold + per-class NMS + top-k
  that the PyTorch model applies, so exported and eager detections agree.

The detector's input size is fixed at export (its anchors depend on it); classifier and segmenter
graphs also accept other sizes when ``dynamic_size=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.ops import batched_nms, clip_boxes_to_image

__all__ = ["ImageNormalize", "SSDExportWrapper", "export_onnx", "detection_postprocess", "fold_batch_norm"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """Fold every batch norm that directly follows a convolution in a ``Sequential`` (all of them in
    these networks) into that convolution, in place, for inference: one op less per layer, same
    outputs. The model must be in eval mode (running statistics are what gets folded)."""
    if model.training:
        raise ValueError("fold_batch_norm needs a model in eval mode")
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            conv, bn = module[index], module[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[index] = fuse_conv_bn_eval(conv, bn)
                module[index + 1] = nn.Identity()
    return model


class ImageNormalize(nn.Module):
    """[0, 1] RGB -> the network's normalised input, then the network."""

    def __init__(self, model: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.model((images - self.mean) / self.std)


class SSDExportWrapper(nn.Module):
    """A torchvision ``SSD`` as a batched tensor function: normalise, backbone, head, decode.

    The anchors of the fixed ``image_size`` are computed once and stored, so the graph has no
    Python-side list handling and the batch axis stays dynamic.
    """

    def __init__(self, ssd: SSD, image_size: int) -> None:
        super().__init__()
        self.ssd = ssd
        self.image_size = image_size
        transform = ssd.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(transform.image_std).view(1, 3, 1, 1))
        with torch.no_grad():
            dummy = torch.zeros(1, 3, image_size, image_size)
            features = list(ssd.backbone(dummy).values())
            anchors = ssd.anchor_generator(ImageList(dummy, [(image_size, image_size)]), features)[0]
        self.register_buffer("anchors", anchors)
        self.sigmoid_scores = type(ssd).postprocess_detections is not SSD.postprocess_detections

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = list(self.ssd.backbone((images - self.mean) / self.std).values())
        head = self.ssd.head(features)
        regression, logits = head["bbox_regression"], head["cls_logits"]
        batch, num_anchors = regression.shape[:2]
        anchors = self.anchors.unsqueeze(0).expand(batch, -1, -1).reshape(-1, 4)
        boxes = self.ssd.box_coder.decode_single(regression.reshape(-1, 4), anchors)
        boxes = clip_boxes_to_image(boxes, (self.image_size, self.image_size)).reshape(batch, num_anchors, 4)
        scores = torch.sigmoid(logits[..., 1:]) if self.sigmoid_scores else logits.softmax(-1)[..., 1:]
        labels = scores.argmax(-1) + 1  # each anchor's best class, 1-based like the PyTorch detector
        return boxes, scores, labels


def detection_postprocess(
    boxes: Tensor,
    scores: Tensor,
    score_thresh: float = 0.001,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    topk_candidates: int = 400,
) -> list[dict[str, Tensor]]:
    """torchvision SSD's post-processing on exported outputs: per class, the ``topk_candidates``
    best anchors above ``score_thresh``, then class-wise NMS and the ``detections_per_img`` best.
    Labels are 1-based, as the PyTorch detector returns them."""
    results = []
    for image_boxes, image_scores in zip(torch.as_tensor(boxes), torch.as_tensor(scores)):
        kept_boxes, kept_scores, kept_labels = [], [], []
        for label in range(image_scores.shape[1]):
            score = image_scores[:, label]
            keep = torch.where(score > score_thresh)[0]
            score = score[keep]
            top = score.topk(min(topk_candidates, score.numel()))
            kept_boxes.append(image_boxes[keep[top.indices]])
            kept_scores.append(top.values)
            kept_labels.append(torch.full_like(top.indices, label + 1))
        all_boxes, all_scores, all_labels = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
        keep = batched_nms(all_boxes, all_scores, all_labels, nms_thresh)[:detections_per_img]
        results.append({"boxes": all_boxes[keep], "scores": all_scores[keep], "labels": all_labels[keep]})
    return results


def export_onnx(
    model: nn.Module,
    task: str,
    path: str | os.PathLike,
    image_size: int | tuple[int, int],
    opset: int = 17,
    dynamic_size: bool = False,
) -> Path:
    """Write ``model`` (a network of this project, in eval mode) as ONNX for ``task``
    (``classification``, ``detection`` or ``segmentation``); returns the file path."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    model = model.eval()
    if task == "detection":
        if height != width:
            raise ValueError("the detector takes square inputs")
        wrapper, outputs = SSDExportWrapper(model, height), ["boxes", "scores", "labels"]
        dynamic_size = False
    elif task in ("classification", "segmentation"):
        wrapper, outputs = ImageNormalize(model), ["logits"]
    else:
        raise ValueError(f"unknown task {task!r}; expected classification, detection or segmentation")
    axes = {0: "batch"}
    if dynamic_size:
        axes = {0: "batch", 2: "height", 3: "width"}
    dynamic_axes = {"images": axes}
    for name in outputs:
        dynamic_axes[name] = {0: "batch"}
        if task == "segmentation" and dynamic_size:
            dynamic_axes[name] = {0: "batch", 2: "height", 3: "width"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with torch.no_grad():
        torch.onnx.export(
            wrapper.eval(),
            (torch.rand(2, 3, height, width),),
            str(tmp),
            input_names=["images"],
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,  # the TorchScript exporter: no onnxscript needed, matches onnxruntime
        )
    tmp.replace(path)  # never a half-written model file
    return path
