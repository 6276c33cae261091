"""SSD augmentation keeps boxes on their objects; the SSDLite task trains and evaluates end to end."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from tasks.datamodules import DetectionDataModule
from tasks.runner import evaluate, train
from vision_mnv2.data import write_detection_dataset
from vision_mnv2.data.detection_transforms import SSDTrainTransform, iou_random_crop, zoom_out
from vision_mnv2.metrics import COCO_STAT_NAMES, evaluate_coco_results

from .conftest import compose_config, tiny_task_overrides


def _white_boxes_image(boxes, size=(120, 160)):
    image = np.zeros((*size, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes.astype(int):
        image[y0:y1, x0:x1] = 255
    return image


def _assert_boxes_cover_white(image, boxes):
    for x0, y0, x1, y1 in np.round(boxes).astype(int):
        patch = image[y0:y1, x0:x1]
        assert patch.size and patch.mean() > 200, (x0, y0, x1, y1)


BOXES = np.array([[10, 20, 50, 60], [90, 30, 150, 100]], dtype=np.float32)


def test_zoom_out_and_crop_keep_boxes_on_their_objects():
    rng = np.random.default_rng(0)
    image = _white_boxes_image(BOXES)
    for _ in range(20):
        zoomed, boxes = zoom_out(rng, image, BOXES, 3.0, fill=(0, 0, 0))
        assert zoomed.shape[0] >= 120 and zoomed.shape[1] >= 160
        _assert_boxes_cover_white(zoomed, boxes)
        cropped, cboxes, labels = iou_random_crop(rng, zoomed, boxes, np.array([1, 2]))
        assert len(cboxes) == len(labels) >= 1
        assert (
            (cboxes[:, :2] >= 0).all()
            and (cboxes[:, 2] <= cropped.shape[1]).all()
            and (cboxes[:, 3] <= cropped.shape[0]).all()
        )
        _assert_boxes_cover_white(cropped, cboxes)


def test_full_train_transform_output():
    transform = SSDTrainTransform(96, zoom_out_prob=1.0, max_zoom_out=2.0, crop_prob=1.0, photometric_prob=0.0, seed=3)
    survived = 0
    for _ in range(20):
        tensor, boxes, labels = transform(_white_boxes_image(BOXES), BOXES, np.array([1, 2]))
        assert tensor.shape == (3, 96, 96) and tensor.dtype == torch.float32 and 0 <= tensor.min() <= tensor.max() <= 1
        assert len(boxes) == len(labels)
        survived += len(boxes)
        image = (tensor.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        for x0, y0, x1, y1 in np.round(boxes).astype(int):
            assert image[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].mean() > 150  # resize blurs the edges
    assert survived >= 20, "boxes must survive augmentation (albumentations can silently drop them)"


@pytest.fixture(scope="module")
def det_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("det") / "shapes"
    root = write_detection_dataset(root, num_classes=3, train_images=8, val_images=4, image_size=(96, 128), seed=4)
    # Crowd regions in the validation split: kept out of targets, scored as COCOeval scores them.
    annotations = root / "annotations" / "instances_val2017.json"
    data = json.loads(annotations.read_text())
    for ann in data["annotations"][::3]:
        ann["iscrowd"] = 1
    annotations.write_text(json.dumps(data))
    return root


def test_datamodule_batches_are_lists(det_root):
    dm = DetectionDataModule(det_root, num_classes=3, image_size=128, batch_size=4, num_workers=0)
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == 4 and images[0].shape == (3, 128, 128)
    assert set(targets[0]) == {"boxes", "labels", "image_id"}
    val_images, _ = next(iter(dm.val_dataloader()))
    assert val_images[0].shape == (3, 96, 128), "evaluation keeps the original size"
    with pytest.raises(ValueError, match="lists 3 categories but data.num_classes is 80"):
        DetectionDataModule(det_root, num_classes=80, num_workers=0).setup("fit")


def _first_batch(root, seed, workers, start_epoch=0):
    L.seed_everything(seed)
    datamodule = DetectionDataModule(root, num_classes=3, image_size=64, batch_size=4, num_workers=workers)
    datamodule.setup("fit")
    datamodule.start_epoch = start_epoch
    loader = datamodule.train_dataloader()
    batches = iter(loader)  # as Lightning does: the workers start drawing before set_epoch
    loader.sampler.set_epoch(start_epoch)
    return next(batches)


def test_augmented_batches_depend_on_the_seed_and_epoch_only(det_root):
    """Per-sample seeding reaches torchvision's transforms in the loader workers: the same seed gives
    the same images and boxes with 0 or 2 workers; a loader told to start at epoch 2 gives epoch 2's
    first batch (a resumed run with persistent workers)."""
    images, targets = _first_batch(det_root, 3, workers=0)
    for other_images, other_targets in (_first_batch(det_root, 3, workers=2), _first_batch(det_root, 3, workers=0)):
        assert all(torch.equal(a, b) for a, b in zip(images, other_images))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets, other_targets))
    other_images, _ = _first_batch(det_root, 4, workers=0)
    assert not all(torch.equal(a, b) for a, b in zip(images, other_images))

    L.seed_everything(3)
    uninterrupted = DetectionDataModule(det_root, num_classes=3, image_size=64, batch_size=4, num_workers=0)
    uninterrupted.setup("fit")
    loader = uninterrupted.train_dataloader()
    loader.sampler.set_epoch(2)
    epoch_2_images, epoch_2_targets = next(iter(loader))
    resumed_images, resumed_targets = _first_batch(det_root, 3, workers=2, start_epoch=2)
    assert [int(t["image_id"]) for t in resumed_targets] == [int(t["image_id"]) for t in epoch_2_targets]
    assert all(torch.equal(a, b) for a, b in zip(resumed_images, epoch_2_images))
    assert [int(t["image_id"]) for t in targets] != [int(t["image_id"]) for t in epoch_2_targets]


def test_ssdlite_task_trains_and_evaluates(det_root, tmp_path):
    overrides = tiny_task_overrides("ssdlite", det_root, 3, 128)
    cfg = compose_config(
        "train", overrides + ["callbacks.progress_bar=null", "callbacks.model_summary=null"], tmp_path / "train"
    )
    result = train(cfg)
    metrics = result["metrics"]
    assert {
        "train/loss",
        "train/classification",
        "train/bbox_regression",
        "val/mAP",
        "val/mAP_50",
        "val/mAR_100",
    } <= set(metrics)
    detections = json.loads((tmp_path / "train" / "detections_val.json").read_text())
    # The 12 numbers logged (faster-coco-eval) are pycocotools' on the written results file of that epoch.
    annotations = COCO(str(det_root / "annotations" / "instances_val2017.json"))
    reference = evaluate_coco_results(annotations, detections)
    assert {name: metrics[f"val/{name}"] for name in COCO_STAT_NAMES} == pytest.approx(reference, abs=1e-6)
    assert detections and {"image_id", "category_id", "bbox", "score"} == set(detections[0])
    assert {d["category_id"] for d in detections} <= {1, 3, 5}, "results carry the dataset's category ids"

    eval_cfg = compose_config("eval", overrides + [f"ckpt_path={result['best_checkpoint']}"], tmp_path / "eval")
    eval_metrics = evaluate(eval_cfg)
    assert eval_metrics["val/mAP"] == pytest.approx(result["best_score"]["val/mAP"], abs=1e-9)
    assert (tmp_path / "eval" / "detections_val.json").is_file()
