"""COCO box evaluation: COCOeval's 12 numbers of a detector on a COCO-format split.

:class:`CocoMeanAveragePrecision` is a torchmetrics metric: ``update`` takes each batch's detections,
the states are gathered across DDP processes, and ``compute`` scores them with COCOeval on rank 0 and
shares the numbers, so that every process logs the same. Two implementations of COCOeval give the
same numbers on the same inputs: faster-coco-eval's (C++; scoring every training epoch) and
pycocotools' (the reference; the official number of ``tools/eval.py``).

torchmetrics' own ``MeanAveragePrecision`` is not used: it renumbers images in the order they were
updated, so detections of equal score on different images are ranked in another order than
COCOeval ranks them on a results file (by image id; under DDP the update order is per process), and
it keeps boxes in float32. On a split with ties that moved mAP by 0.01.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import faster_coco_eval
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from ..files import atomic_write_text

__all__ = [
    "COCO_BACKENDS",
    "COCO_STAT_NAMES",
    "CocoMeanAveragePrecision",
    "coco_results",
    "evaluate_coco_results",
    "index_coco_ground_truth",
]

log = logging.getLogger(__name__)

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
COCO_BACKENDS = ("faster_coco_eval", "pycocotools")

# A detection as the results file writes it, in integers: image id, category id, x, y, width and
# height in hundredths of a pixel, score in units of 1e-5. Integers keep the state exact on every
# device (MPS has no float64), and the file and the score are made from the same numbers.
_ROW = 7
_BOX_UNIT = 100.0
_SCORE_UNIT = 1e5


def index_coco_ground_truth(data: Mapping[str, Any], backend: str = "pycocotools"):
    """The ``COCO`` index of ``backend`` over annotations in COCO format (a dict of ``images``,
    ``annotations`` and ``categories``). COCOeval marks ground truth as ignored (crowd) in place."""
    _check_backend(backend)
    if backend == "faster_coco_eval":
        return faster_coco_eval.COCO(dict(data), print_function=log.debug)
    coco = COCO()
    coco.dataset = dict(data)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def evaluate_coco_results(coco_gt, results: list[dict], image_ids: Iterable[int] | None = None) -> dict[str, float]:
    """COCOeval (bbox) of detections in COCO results format; returns the 12 summary numbers.

    ``coco_gt`` is a ``COCO`` of pycocotools or of faster-coco-eval, and is scored by that library's
    COCOeval. ``image_ids`` restricts evaluation to the images that were predicted (all of them by
    default). With no detection at all every number is 0 (pycocotools cannot load an empty list).
    """
    if not results:
        return {name: 0.0 for name in COCO_STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds keys (id, area, ...) to the dicts it is given: give it copies.
        coco_dt = coco_gt.loadRes([dict(result) for result in results])
        if isinstance(coco_gt, faster_coco_eval.COCO):
            evaluator = faster_coco_eval.COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=log.debug)
        else:
            evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}


def coco_results(detections: torch.Tensor) -> list[dict]:
    """Detections in COCO results format from :class:`CocoMeanAveragePrecision`'s integer rows."""
    rows = detections.reshape(-1, _ROW).tolist()
    return [
        {
            "image_id": image_id,
            "category_id": category_id,
            "bbox": [x / _BOX_UNIT, y / _BOX_UNIT, w / _BOX_UNIT, h / _BOX_UNIT],
            "score": score / _SCORE_UNIT,
        }
        for image_id, category_id, x, y, w, h, score in rows
    ]


class CocoMeanAveragePrecision(Metric):
    """COCOeval's 12 numbers (``mAP``, ``mAP_50``, ... ``mAR_large``) of a detector on one split.

    ``update(preds, target)`` takes, per image, the model's detections (``boxes`` x0, y0, x1, y1 in
    the original image's pixels, ``scores``, ``labels`` 1..K) and the target holding its
    ``image_id``; boxes are kept to 0.01 pixel and scores to 1e-5, as the results file writes them.
    Ground truth is the split's own annotation data, scored as COCOeval scores it: crowd boxes
    ignored rather than missed, object sizes from each annotation's ``area``, boxes as annotated
    (not clipped). Images that were predicted count, also those without detections.

    Under torch.distributed the detections of every process are gathered (each image was predicted
    by one of them); COCOeval runs on rank 0 alone, which also writes ``results_file``, and the
    others receive its numbers.

    Args:
        ground_truth: the split's annotations: a COCO-format dict, or a pycocotools ``COCO`` of them.
        category_ids: the dataset's category id of each model label, in label order.
        backend: ``"faster_coco_eval"`` (C++, much faster on large splits) or ``"pycocotools"``
            (the reference implementation); both give the same numbers.
        results_file: where :meth:`compute` writes the detections in COCO results format (the
            dataset's category ids); ``None`` writes nothing.
        kwargs: torchmetrics ``Metric`` options.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        ground_truth: Mapping[str, Any] | COCO,
        category_ids: Sequence[int],
        backend: str = "faster_coco_eval",
        results_file: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_backend(backend)
        self.backend = backend
        self.results_file = results_file
        self.category_ids = [int(category_id) for category_id in category_ids]
        self._ground_truth = ground_truth
        self._coco_gt = None  # indexed at the first compute, then kept
        # Flat integer rows (see _ROW): a 1-d state gathers across processes whatever each one holds.
        self.add_state("image_ids", default=[], dist_reduce_fx="cat")
        self.add_state("detections", default=[], dist_reduce_fx="cat")

    def update(self, preds: Sequence[Mapping[str, torch.Tensor]], target: Sequence[Mapping[str, Any]]) -> None:
        if len(preds) != len(target):
            raise ValueError(f"{len(preds)} predictions for {len(target)} targets")
        category_of_label = torch.tensor([-1, *self.category_ids], dtype=torch.int64)
        image_ids, rows = [], []
        for prediction, image in zip(preds, target):
            image_id = int(image["image_id"])
            image_ids.append(image_id)
            boxes = prediction["boxes"].detach().to("cpu", torch.float64).reshape(-1, 4)
            columns = [
                torch.full((len(boxes), 1), image_id, dtype=torch.int64),
                category_of_label[prediction["labels"].detach().to("cpu", torch.int64)].reshape(-1, 1),
                torch.round(torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1) * _BOX_UNIT).to(torch.int64),
                torch.round(prediction["scores"].detach().to("cpu", torch.float64) * _SCORE_UNIT)
                .to(torch.int64)
                .reshape(-1, 1),
            ]
            rows.append(torch.cat(columns, dim=1).reshape(-1))
        self.image_ids.append(torch.tensor(image_ids, dtype=torch.int64, device=self.device))
        self.detections.append(
            torch.cat(rows).to(self.device) if rows else torch.zeros(0, dtype=torch.int64, device=self.device)
        )

    def compute(self) -> dict[str, float]:
        image_ids = _concatenated(self.image_ids)
        detections = _concatenated(self.detections)
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self._score(image_ids, detections)
        stats = [self._score(image_ids, detections) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(stats, src=0)
        return stats[0]

    @property
    def coco_gt(self):
        """The ground truth indexed for this metric's backend."""
        if self._coco_gt is None:
            given_pycocotools = isinstance(self._ground_truth, COCO)
            if given_pycocotools and self.backend == "pycocotools":
                self._coco_gt = self._ground_truth
            else:
                data = self._ground_truth.dataset if given_pycocotools else self._ground_truth
                self._coco_gt = index_coco_ground_truth(data, self.backend)
        return self._coco_gt

    def _score(self, image_ids: torch.Tensor, detections: torch.Tensor) -> dict[str, float]:
        results = coco_results(detections.cpu())
        if self.results_file is not None:
            atomic_write_text(self.results_file, json.dumps(results))
        return evaluate_coco_results(self.coco_gt, results, image_ids.cpu().tolist())


def _concatenated(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    # A list of per-batch tensors on one process; one tensor once gathered across processes.
    if isinstance(state, torch.Tensor):
        return state.to(torch.int64)
    return dim_zero_cat(state) if state else torch.zeros(0, dtype=torch.int64)


def _check_backend(backend: str) -> None:
    if backend not in COCO_BACKENDS:
        raise ValueError(f"COCO evaluation backend must be one of {COCO_BACKENDS}, got {backend!r}")
