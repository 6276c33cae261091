"""COCO-format detection data and COCOeval: generated layout, label mapping, bad annotations, mAP."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vision_mnv2.data import SHAPES, CocoDetection, coco_category_id, write_detection_dataset
from vision_mnv2.metrics import COCO_STAT_NAMES, CocoEvaluator


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco") / "shapes"
    return write_detection_dataset(root, num_classes=4, train_images=12, val_images=8, image_size=(96, 128), seed=2)


def _val(root):
    return CocoDetection(root / "val2017", root / "annotations" / "instances_val2017.json")


def test_generated_dataset_has_the_coco_2017_layout(tiny_coco):
    for split, count in (("train2017", 12), ("val2017", 8)):
        data = json.loads((tiny_coco / "annotations" / f"instances_{split}.json").read_text())
        assert len(data["images"]) == count == len(list((tiny_coco / split).glob("*.jpg")))
        assert [c["id"] for c in data["categories"]] == [1, 3, 5, 7]
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 96
            assert ann["iscrowd"] == 0 and ann["area"] <= w * h


def test_dataset_maps_category_ids_to_contiguous_labels(tiny_coco):
    dataset = _val(tiny_coco)
    assert dataset.num_classes == 4 and dataset.class_names == list(SHAPES[:4])
    assert dataset.label_to_category_id == {1: 1, 2: 3, 3: 5, 4: 7}
    image, target = dataset[0]
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    raw = dataset.coco.imgToAnns[int(target["image_id"])]
    assert [dataset.label_to_category_id[int(label)] for label in target["labels"]] == [a["category_id"] for a in raw]
    assert dataset.stats.kept == sum(len(dataset.coco.imgToAnns.get(i, [])) for i in dataset.image_ids)


def _write(tmp_path, images, annotations, categories=({"id": 4, "name": "thing"},)):
    (tmp_path / "images").mkdir(exist_ok=True)
    for image in images:
        Image.new("RGB", (image["width"], image["height"])).save(tmp_path / "images" / image["file_name"])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}))
    return path


def test_crowd_clipped_tiny_and_empty_images(tmp_path):
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
        {"id": 2, "file_name": "b.jpg", "width": 100, "height": 80},
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 4, "bbox": [10, 10, 20, 20], "iscrowd": 0, "area": 400},
        {"id": 2, "image_id": 1, "category_id": 4, "bbox": [0, 0, 50, 50], "iscrowd": 1, "area": 2500},
        {"id": 3, "image_id": 1, "category_id": 4, "bbox": [90, 70, 30, 30], "iscrowd": 0, "area": 100},  # clipped
        {"id": 4, "image_id": 1, "category_id": 4, "bbox": [30, 30, 0.5, 10], "iscrowd": 0, "area": 5},  # under a pixel
        {
            "id": 5,
            "image_id": 1,
            "category_id": 4,
            "bbox": [99.5, 10, 20, 20],
            "iscrowd": 0,
            "area": 400,
        },  # 0.5 px inside
    ]
    dataset = CocoDetection(tmp_path / "images", _write(tmp_path, images, anns))
    stats = dataset.stats
    assert (stats.kept, stats.crowd, stats.clipped, stats.dropped) == (2, 1, 2, 2)
    assert len(dataset.bad) == 0
    boxes, labels = dataset._targets[1]
    np.testing.assert_allclose(boxes, [[10, 10, 30, 30], [90, 70, 100, 80]])
    assert labels.tolist() == [1, 1]
    assert dataset._targets[2][0].shape == (0, 4), "images without annotations are kept"


def _predictions_from_ground_truth(dataset, jitter):
    rng = np.random.default_rng(0)
    ids, preds = [], []
    for image_id in dataset.image_ids:
        boxes, labels = dataset._targets[image_id]
        boxes = boxes + rng.normal(0, jitter, size=boxes.shape) if jitter else boxes
        ids.append(image_id)
        preds.append(
            {
                "boxes": torch.as_tensor(boxes, dtype=torch.float32),
                "scores": torch.as_tensor(rng.uniform(0.3, 1.0, size=len(labels)), dtype=torch.float32),
                "labels": torch.as_tensor(labels),
            }
        )
    return ids, preds


def test_perfect_detections_score_one(tiny_coco):
    dataset = _val(tiny_coco)
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_category_id)
    evaluator.update(*_predictions_from_ground_truth(dataset, jitter=0))
    stats = evaluator.compute()
    assert list(stats) == list(COCO_STAT_NAMES)
    assert stats["mAP"] == pytest.approx(1.0) and stats["mAP_50"] == pytest.approx(1.0)
    assert {r["category_id"] for r in evaluator.results} <= {coco_category_id(i) for i in range(4)}


def test_numbers_equal_pycocotools_on_the_written_results_file(tiny_coco, tmp_path):
    dataset = _val(tiny_coco)
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_category_id)
    evaluator.update(*_predictions_from_ground_truth(dataset, jitter=3.0))
    ours = evaluator.compute()
    assert 0.1 < ours["mAP"] < 0.95
    results = evaluator.write_results(tmp_path / "detections.json")

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tiny_coco / "annotations" / "instances_val2017.json"))
        reference = COCOeval(gt, gt.loadRes(str(results)), iouType="bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    assert [ours[name] for name in COCO_STAT_NAMES] == pytest.approx(list(reference.stats), abs=1e-12)

    evaluator.reset()
    assert evaluator.compute()["mAP"] == 0.0
