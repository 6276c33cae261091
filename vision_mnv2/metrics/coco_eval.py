"""COCO box evaluation with pycocotools' ``COCOeval``: the official numbers, from a results file."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..files import atomic_write_text

__all__ = ["COCO_STAT_NAMES", "CocoEvaluator", "evaluate_coco_results"]

# The 12 numbers COCOeval.summarize() prints, in its order.
COCO_STAT_NAMES = (
    "mAP",
    "mAP_50",
    "mAP_75",
    "mAP_small",
    "mAP_medium",
    "mAP_large",
    "mAR_1",
    "mAR_10",
    "mAR_100",
    "mAR_small",
    "mAR_medium",
    "mAR_large",
)


def evaluate_coco_results(
    coco_gt: COCO, results: list[dict], image_ids: Iterable[int] | None = None
) -> dict[str, float]:
    """Run COCOeval (bbox) on detections in COCO results format; returns the 12 summary numbers.

    ``image_ids`` restricts evaluation to the images that were predicted (all of them by default).
    With no detection at all every number is 0 (pycocotools cannot load an empty result list).
    """
    if not results:
        return {name: 0.0 for name in COCO_STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds keys (id, area, ...) to the dicts it is given: give it copies.
        coco_dt = coco_gt.loadRes([dict(result) for result in results])
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}


class CocoEvaluator:
    """Collects a model's detections, writes them as a COCO results file and scores them.

    Args:
        coco_gt: the dataset's own annotations (crowd boxes included: COCOeval ignores matches to them).
        label_to_category_id: contiguous model labels back to the dataset's category ids.
    """

    def __init__(self, coco_gt: COCO, label_to_category_id: Mapping[int, int]) -> None:
        self.coco_gt = coco_gt
        self.label_to_category_id = dict(label_to_category_id)
        self.reset()

    def reset(self) -> None:
        self.results: list[dict] = []
        self.image_ids: set[int] = set()

    def update(self, image_ids: Iterable[int], predictions: Iterable[Mapping[str, torch.Tensor]]) -> None:
        """``predictions``: per image, ``boxes`` (x0, y0, x1, y1 in the original image's pixels),
        ``scores`` and ``labels`` (contiguous)."""
        for image_id, pred in zip(image_ids, predictions):
            image_id = int(image_id)
            self.image_ids.add(image_id)
            boxes = pred["boxes"].detach().cpu().numpy().astype(np.float64)
            scores = pred["scores"].detach().cpu().numpy().tolist()
            labels = pred["labels"].detach().cpu().numpy().tolist()
            for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels):
                self.results.append(
                    {
                        "image_id": image_id,
                        "category_id": self.label_to_category_id[int(label)],
                        "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                        "score": round(float(score), 5),
                    }
                )

    def synchronize(self) -> None:
        """Under ``torch.distributed``, gather every process's detections on rank 0 (each image was
        predicted once, on one process); the others hand theirs over. :meth:`compute` runs COCOeval
        there only."""
        if not _distributed():
            return
        gathered: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object((self.results, sorted(self.image_ids)), gathered, dst=0)
        if gathered is None:
            self.reset()
            return
        self.results = [result for results, _ in gathered for result in results]
        self.image_ids = {image_id for _, image_ids in gathered for image_id in image_ids}

    def write_results(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, json.dumps(self.results))

    def compute(self) -> dict[str, float]:
        """COCOeval's numbers. Under ``torch.distributed`` (after :meth:`synchronize`) rank 0 alone
        evaluates and sends the numbers to the others, so that every process returns the same."""
        if not _distributed():
            return evaluate_coco_results(self.coco_gt, self.results, self.image_ids)
        stats = [evaluate_coco_results(self.coco_gt, self.results, self.image_ids) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(stats, src=0)
        return stats[0]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
