"""Object detection outside training: resize, SSD head, box decoding, NMS, COCO results, COCOeval."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import clip_boxes_to_image

from ..complexity import count_parameters
from ..models.detection_postprocess import multiclass_nms
from ..visualize import draw_detections
from .base import Pipeline, iterate, to_tensor

__all__ = ["DetectionExportModule", "DetectionPipeline"]


class DetectionExportModule(nn.Module):
    """A torchvision ``SSD`` as a batched tensor function of fixed-size images in [0, 1]:
    normalise, backbone, head, decode and clip boxes, class scores, and with ``nms`` the detections.

    With ``nms`` (default) the outputs are per image, padded to ``detections_per_img`` rows:
    ``boxes`` N x D x 4 (x0, y0, x1, y1 in input pixels), ``scores`` N x D, ``category_ids`` N x D
    (the dataset's ids; -1 on padding rows) and ``num_detections`` N; NMS is ONNX's
    ``NonMaxSuppression``, with the PyTorch detector's rules (:func:`multiclass_nms`), keeping
    detections from ``score_thresh`` (default the detector's own, 0.001 for scoring mAP). Without:
    ``boxes`` N x A x 4, ``scores`` N x A x C and ``labels`` N x A (each anchor's best class,
    1-based), for runtimes that bring their own NMS.

    The anchors of the fixed input size are computed once and stored, so the batch axis stays dynamic.
    """

    def __init__(
        self,
        ssd: nn.Module,
        image_size: int,
        nms: bool = True,
        category_ids: Sequence[int] | None = None,
        score_thresh: float | None = None,
    ):
        super().__init__()
        self.ssd = ssd
        self.image_size = int(image_size)
        self.nms = nms
        self.score_thresh = float(ssd.score_thresh if score_thresh is None else score_thresh)
        transform = ssd.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(transform.image_std).view(1, 3, 1, 1))
        with torch.no_grad():
            dummy = torch.zeros(1, 3, self.image_size, self.image_size)
            features = list(ssd.backbone(dummy).values())
            anchors = ssd.anchor_generator(ImageList(dummy, [(self.image_size, self.image_size)]), features)[0]
        self.register_buffer("anchors", anchors)
        num_classes = ssd.head.classification_head.num_columns - 1
        ids = list(category_ids) if category_ids else list(range(1, num_classes + 1))
        if len(ids) != num_classes:
            raise ValueError(f"{len(ids)} category ids for a detector of {num_classes} classes")
        self.register_buffer("category_table", torch.tensor([-1, *ids], dtype=torch.int64))

    def class_scores(self, logits: Tensor) -> Tensor:
        scores = getattr(self.ssd, "class_scores", None)  # ours; torchvision's SSD uses softmax
        return scores(logits) if scores is not None else logits.softmax(-1)[..., 1:]

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        features = list(self.ssd.backbone((images - self.mean) / self.std).values())
        head = self.ssd.head(features)
        regression, logits = head["bbox_regression"], head["cls_logits"]
        batch, num_anchors = regression.shape[:2]
        anchors = self.anchors.unsqueeze(0).expand(batch, -1, -1).reshape(-1, 4)
        boxes = self.ssd.box_coder.decode_single(regression.reshape(-1, 4), anchors)
        boxes = clip_boxes_to_image(boxes, (self.image_size, self.image_size)).reshape(batch, num_anchors, 4)
        scores = self.class_scores(logits)
        if not self.nms:
            return boxes, scores, scores.argmax(-1) + 1
        ssd = self.ssd
        boxes, scores, labels, counts = multiclass_nms(
            boxes, scores, self.score_thresh, ssd.nms_thresh, ssd.detections_per_img, ssd.topk_candidates
        )
        return boxes, scores, self.category_table[labels], counts


class DetectionPipeline(Pipeline):
    """Stretch to the detector's square input (bilinear, as torchvision's SSD transform resizes),
    detect, scale the boxes back to the image. Predictions hold ``boxes`` (x0, y0, x1, y1 in the
    image's pixels), ``scores``, ``labels`` (1-based) and ``category_ids`` (the dataset's)."""

    task = "detection"
    config_name = "ssdlite"
    headline_metric = "mAP"
    builder_takes_image_size = True  # its anchors are computed for the input size
    quantization_note = "NMS inside the graph, kept in float"
    reference_size = 320
    reference_classes = 90
    # score_thresh: detections kept from this score (None: the detector's own, 0.001, right for
    # scoring mAP; an app wants fewer, surer boxes: tools/export.py defaults to 0.3).
    export_option_names = ("nms", "score_thresh")
    # Timed without NMS on both sides in benchmarks: the networks' work, not the selection's.
    benchmark_options = {"nms": False}

    @classmethod
    def reference(cls, image_size: int | None = None) -> tuple[str, nn.Module, int, int]:
        from torchvision.models.detection import ssdlite320_mobilenet_v3_large  # noqa: PLC0415

        model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
        size = image_size or cls.reference_size  # its anchors are computed for the size asked
        function = DetectionExportModule(model, size, nms=False)
        return "torchvision ssdlite320_mobilenet_v3_large", function, count_parameters(model), size

    @classmethod
    def preprocessing(cls, builder_args: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
        size = int(builder_args.get("image_size", 320))
        return {"resize": "stretch", "input_size": [size, size], "interpolation": "bilinear"}

    @property
    def image_size(self) -> int:
        return int(self.meta.input_size[0])

    @property
    def category_ids(self) -> list[int]:
        return list(self.meta.category_ids or range(1, self.num_classes + 1))

    def preprocess(self, image: np.ndarray) -> tuple[Tensor, dict[str, Any]]:
        tensor = to_tensor(image)
        resized = F.interpolate(
            tensor[None], size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        return resized[0], {"size": tuple(image.shape[:2])}

    def export_module(self, nms: bool = True, score_thresh: float | None = None, **options: Any) -> nn.Module:
        return DetectionExportModule(self.model, self.image_size, nms, self.category_ids, score_thresh)

    def dynamic_axes(self, nms: bool = True, **options: Any) -> dict[str, dict[int, str]]:
        if not nms:
            return {"images": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}, "labels": {0: "batch"}}
        rows = {0: "batch", 1: "max_detections"}
        return {
            "images": {0: "batch"},
            "boxes": rows,
            "scores": rows,
            "category_ids": rows,
            "num_detections": {0: "batch"},
        }

    def onnx_metadata(self, nms: bool = True, score_thresh: float | None = None, **options: Any) -> dict[str, str]:
        """What an app needs besides the class names: how to read the outputs."""
        props = super().onnx_metadata(nms=nms, score_thresh=score_thresh, **options)
        props["category_ids"] = json.dumps(self.category_ids)  # class_names[i] is category_ids[i]
        threshold = self.model.score_thresh if score_thresh is None else score_thresh
        height, width = self.meta.input_size
        props["detections"] = json.dumps(
            {
                "boxes": f"x0, y0, x1, y1 (corners) in pixels of the {width} x {height} network input: "
                "multiply x by photo_width / input_width and y by photo_height / input_height",
                "category_ids": "the dataset's category ids; class_names[i] names category_ids[i]; -1 on padding rows",
                "scores": "class probability of each detection, best first; 0 on padding rows",
                "num_detections": "rows of boxes / scores / category_ids that hold detections, per image",
                "score_thresh": float(threshold),
                "max_detections": int(self.model.detections_per_img),
                "nms_thresh": float(self.model.nms_thresh),
            }
            if nms
            else {
                "boxes": f"x0, y0, x1, y1 (corners) of every anchor in pixels of the {width} x {height} network input",
                "scores": "per anchor, the probability of each class (columns in class_names order)",
                "labels": "per anchor, its best class, 1-based (0 would be background)",
                "score_thresh": float(threshold),
                "nms_thresh": float(self.model.nms_thresh),
            }
        )
        return props

    def executorch_options(self, nms: bool = True, **options: Any) -> dict[str, Any]:
        # ExecuTorch has no kernel for torchvision's NMS (its output size depends on the data): the
        # program gives every anchor's boxes and scores, and this pipeline selects, as it does for
        # ONNX graphs exported with nms=false. On a phone the app runs the same selection.
        return {**options, "nms": False}

    def output_names(self, nms: bool = True, **options: Any) -> list[str]:
        return ["boxes", "scores", "category_ids", "num_detections"] if nms else ["boxes", "scores", "labels"]

    def postprocess(self, outputs: tuple[Tensor, ...], contexts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(outputs) == 3:  # a graph without NMS: the same selection, here
            boxes, scores, _ = outputs
            params = self.meta.builder_args
            threshold = self.export_options.get("score_thresh")
            boxes, scores, labels, counts = multiclass_nms(
                boxes.float(),
                scores.float(),
                params.get("score_thresh", 0.001) if threshold is None else float(threshold),
                params.get("nms_thresh", 0.6),
                params.get("detections_per_img", 100),
                params.get("topk_candidates", 400),
            )
            category_ids = torch.tensor([-1, *self.category_ids])[labels]
        else:
            boxes, scores, category_ids, counts = outputs
        label_of = {cid: label for label, cid in enumerate(self.category_ids, start=1)}
        predictions = []
        for image_boxes, image_scores, image_ids, count, context in zip(boxes, scores, category_ids, counts, contexts):
            count = int(count)
            height, width = context["size"]
            scale = torch.tensor([width, height, width, height], dtype=torch.float32) / self.image_size
            ids = image_ids[:count].to(torch.int64)
            predictions.append(
                {
                    "boxes": image_boxes[:count].float() * scale,
                    "scores": image_scores[:count].float(),
                    "category_ids": ids,
                    "labels": torch.tensor([label_of[int(i)] for i in ids], dtype=torch.int64),
                }
            )
        return predictions

    def records(self, prediction: dict[str, Any], image: dict[str, Any]) -> list[dict[str, Any]]:
        """COCO results format (scores with pycocotools' ``loadRes``)."""
        records = []
        for (x0, y0, x1, y1), score, category in zip(
            prediction["boxes"].tolist(), prediction["scores"].tolist(), prediction["category_ids"].tolist()
        ):
            records.append(
                {
                    "image_id": image["id"],
                    "category_id": int(category),
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "score": round(float(score), 5),
                }
            )
        return records

    def draw(self, image: np.ndarray, prediction: dict[str, Any], min_score: float = 0.3, **options: Any):
        drawn = draw_detections(
            image, prediction["boxes"], prediction["scores"], prediction["labels"], self.class_names, min_score
        )
        return {".jpg": drawn}

    def summary(self, prediction: dict[str, Any], min_score: float = 0.3, **options: Any) -> str:
        names = self.class_names
        strong = [
            (names[int(label) - 1], float(s))
            for label, s in zip(prediction["labels"], prediction["scores"])
            if s >= min_score
        ]
        return f"{len(strong)} detection(s) >= {min_score:g}" + (
            ": " + ", ".join(f"{n} {s:.2f}" for n, s in strong[:5]) if strong else ""
        )

    def raw_image(self, dataset: Any, index: int) -> np.ndarray:
        return dataset.load_image(dataset.image_ids[index])

    def evaluate(self, dataset: Any, limit: int | None = None) -> dict[str, float]:
        """COCOeval's 12 numbers (pycocotools, the reference) on a COCO-format split
        (``CocoDetection``); the dataset's categories must be the model's."""
        from ..metrics import CocoMeanAveragePrecision  # noqa: PLC0415

        dataset_ids = [int(dataset.label_to_category_id[label]) for label in sorted(dataset.label_to_category_id)]
        if dataset_ids != self.category_ids:
            raise ValueError(
                f"{dataset.annotation_file}: category ids {dataset_ids} differ from the model's {self.category_ids}"
            )
        metric = CocoMeanAveragePrecision(dataset.coco, self.category_ids, backend="pycocotools")
        for image_id in iterate(dataset.image_ids, limit):
            (prediction,) = self.predict(dataset.load_image(image_id))
            metric.update([prediction], [{"image_id": int(image_id)}])
        return metric.compute()
