"""Each task trained through the real configs, then evaluated from its best checkpoint: evaluation
reproduces the score that training's validation gave it, and each task writes what it promises."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO

from tasks.runner import evaluate, train
from vision_mnv2.data import IGNORE_INDEX, VOCSegmentation
from vision_mnv2.data.segmentation_transforms import segmentation_collate, segmentation_eval_transform
from vision_mnv2.metrics import (
    COCO_STAT_NAMES,
    evaluate_coco_results,
    segmentation_confusion_matrix,
    segmentation_scores,
)
from vision_mnv2.models import deeplabv3_mobilenet_v2, multi_scale_probabilities

from .helpers import SEGMENTATION_SHAPES, compose_config, miou_bound, tiny_task_overrides, top2_gaps


@dataclass(frozen=True)
class Run:
    """A finished training run and what made it."""

    root: Path  # the dataset
    overrides: list[str]  # those that training and evaluation share
    result: dict  # what tasks.runner.train returned
    folder: Path  # holds the training run's folder "train" and the evaluations' folders


def check_classification_training(run: Run) -> None:
    assert (run.folder / "train" / "checkpoints" / "last.ckpt").is_file()
    assert run.result["best_checkpoint"] and os.path.isfile(run.result["best_checkpoint"])
    assert {"train/loss", "val/top1", "val/top4"} <= set(run.result["metrics"])
    assert (run.folder / "train" / "train_metrics.json").is_file()
    assert list((run.folder / "train" / "tensorboard").glob("events.out.tfevents.*"))
    assert (run.folder / "train" / "csv" / "metrics.csv").is_file()
    # Checkpoints hold only tensors and plain values: they load without unpickling code.
    torch.load(run.result["best_checkpoint"], map_location="cpu", weights_only=True)


def check_classification_evaluation(run: Run, metrics: dict) -> None:
    written = json.loads((run.folder / "eval" / "metrics.json").read_text())
    assert written["metrics"]["val/top1"] == metrics["val/top1"]


def check_ssdlite_training(run: Run) -> None:
    metrics = run.result["metrics"]
    assert {
        "train/loss",
        "train/classification",
        "train/bbox_regression",
        "val/mAP",
        "val/mAP_50",
        "val/mAR_100",
    } <= set(metrics)
    detections = json.loads((run.folder / "train" / "detections_val.json").read_text())
    # The 12 numbers logged (faster-coco-eval) are pycocotools' on the written results file of that epoch.
    annotations = COCO(str(run.root / "annotations" / "instances_val2017.json"))
    reference = evaluate_coco_results(annotations, detections)
    assert {name: metrics[f"val/{name}"] for name in COCO_STAT_NAMES} == pytest.approx(reference, abs=1e-6)
    assert detections and {"image_id", "category_id", "bbox", "score"} == set(detections[0])
    assert {d["category_id"] for d in detections} <= {1, 3, 5}, "results carry the dataset's category ids"


def check_ssdlite_evaluation(run: Run, metrics: dict) -> None:
    assert (run.folder / "eval" / "detections_val.json").is_file()


def check_deeplab_training(run: Run) -> None:
    metrics = run.result["metrics"]
    assert {
        "train/loss",
        "val/loss",
        "val/mIoU",
        "val/pixel_acc",
        "val/mean_acc",
        "val/IoU/background",
        "val/IoU/triangle",
    } <= set(metrics)
    per_class = [value for name, value in metrics.items() if name.startswith("val/IoU/") and not math.isnan(value)]
    assert len(per_class) == SEGMENTATION_SHAPES + 1
    assert metrics["val/mIoU"] == pytest.approx(sum(per_class) / len(per_class))


def check_deeplab_evaluation(run: Run, metrics: dict) -> None:
    written = json.loads((run.folder / "eval" / "metrics.json").read_text())["metrics"]
    assert written["val/IoU/circle"] == pytest.approx(metrics["val/IoU/circle"])

    scales = "module.eval_scales=[0.75,1.0,1.25]"
    best = run.result["best_checkpoint"]
    mf_overrides = run.overrides + [f"ckpt_path={best}", scales, "module.eval_flip=true"]
    mf_metrics = evaluate(compose_config("eval", mf_overrides, run.folder / "eval_mf"))
    # The same numbers computed here directly from the checkpoint's weights, image by image.
    state = torch.load(best, weights_only=True)["state_dict"]
    model = deeplabv3_mobilenet_v2(num_classes=SEGMENTATION_SHAPES + 1, width_mult=0.35, aspp=False)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    model.eval()
    dataset = VOCSegmentation(run.root, "val", SEGMENTATION_SHAPES + 1, segmentation_eval_transform())
    images, masks = segmentation_collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        direct = torch.cat(
            [multi_scale_probabilities(model, image[None], (0.75, 1.0, 1.25), flip=True) for image in images]
        )
        # As the task evaluates: the 4 images in one batch, channels-last (another summation order).
        batched = multi_scale_probabilities(
            model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last),
            (0.75, 1.0, 1.25), flip=True,
        )  # fmt: skip
    # Measured: the two differ by at most 6e-8 (float32 rounding), on both kernel paths and
    # thread counts; 1e-5 is the tolerance of equal probabilities.
    tolerance = 1e-5
    torch.testing.assert_close(batched, direct, atol=tolerance, rtol=0)
    metric = segmentation_confusion_matrix(SEGMENTATION_SHAPES + 1)
    metric.update(direct.argmax(1), masks)
    confusion = metric.compute()
    # A pixel's class may come out otherwise only where its two best probabilities are within
    # twice the tolerance; the mIoU may differ by what those pixels can move, and no more.
    near_ties = int(((top2_gaps(direct) <= 2 * tolerance) & (masks != IGNORE_INDEX)).sum())
    bound = miou_bound(confusion, near_ties)
    # (and 1e-7: Lightning logs the mIoU as a float32)
    assert abs(mf_metrics["val/mIoU"] - segmentation_scores(confusion)["mIoU"]) <= bound + 1e-7, (near_ties, bound)


def check_mobilenet_v1_training(run: Run) -> None:
    state = torch.load(run.result["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert any(key.endswith("features.13.pointwise.0.weight") for key in state)


def check_nothing_more(run: Run, metrics: dict) -> None:
    pass


@dataclass(frozen=True)
class Case:
    dataset: str  # the fixture that writes the data
    overrides: Callable[[Path], list[str]]  # given the dataset; for training and evaluation
    headline: str
    # How far evaluation may be from training's validation. Both are the same computation (the
    # checkpoint's weights, the same batches through the same module in this process), equal to
    # the last bit on any CPU; detection's are scored by pycocotools here and faster-coco-eval in
    # training, whose numbers are pycocotools' (check_ssdlite_training).
    tolerance: float
    check_training: Callable[[Run], None]
    check_evaluation: Callable[[Run, dict], None]
    training_only: list[str] = field(default_factory=list)


def tiny_classification(root: Path) -> list[str]:
    return tiny_task_overrides("classification", root, 4, 64, batch_size=8)


CASES = [
    pytest.param(
        Case(
            "tiny_cls_root", tiny_classification,
            "val/top1", 1e-6, check_classification_training, check_classification_evaluation,
        ),
        id="classification",
    ),
    pytest.param(
        Case(
            "det_root", lambda root: tiny_task_overrides("ssdlite", root, 3, 128),
            "val/mAP", 1e-9, check_ssdlite_training, check_ssdlite_evaluation,
        ),
        id="ssdlite",
    ),
    pytest.param(
        Case(
            "seg_root", lambda root: tiny_task_overrides("deeplabv3", root, SEGMENTATION_SHAPES + 1, 64),
            "val/mIoU", 1e-9, check_deeplab_training, check_deeplab_evaluation,
        ),
        id="deeplabv3",
    ),
    # The checkpoint rebuilds MobileNetV1 at evaluation, whatever the evaluation config's default backbone.
    pytest.param(
        Case(
            "tiny_cls_root", tiny_classification, "val/top1", 1e-6, check_mobilenet_v1_training, check_nothing_more,
            training_only=["backbone=mobilenet_v1", "trainer.max_epochs=1"],
        ),
        id="mobilenet_v1", marks=pytest.mark.slow,
    ),
]  # fmt: skip


@pytest.mark.numerics
@pytest.mark.parametrize("case", CASES)
def test_train_then_eval_reproduces_the_best_checkpoint_score(case: Case, request, tmp_path):
    root = request.getfixturevalue(case.dataset)
    overrides = case.overrides(root)
    quiet = ["callbacks.progress_bar=null", "callbacks.model_summary=null"]  # the evaluation config has none
    result = train(compose_config("train", overrides + quiet + case.training_only, tmp_path / "train"))
    run = Run(root, overrides, result, tmp_path)
    case.check_training(run)

    best = result["best_checkpoint"]
    metrics = evaluate(compose_config("eval", overrides + [f"ckpt_path={best}"], tmp_path / "eval"))
    assert metrics[case.headline] == pytest.approx(result["best_score"][case.headline], abs=case.tolerance)
    case.check_evaluation(run, metrics)
