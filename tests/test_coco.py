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

from tasks.datamodules import DetectionDataModule
from vision_mnv2.data import (
    SHAPES,
    CocoDetection,
    DatasetError,
    coco_category_id,
    write_coco_sized_dataset,
    write_detection_dataset,
)
from vision_mnv2.metrics import COCO_BACKENDS, COCO_STAT_NAMES, CocoMeanAveragePrecision


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
    boxes, labels = dataset.target(1)
    np.testing.assert_allclose(boxes, [[10, 10, 30, 30], [90, 70, 100, 80]])
    assert labels.tolist() == [1, 1]
    assert dataset.target(2)[0].shape == (0, 4), "images without annotations are kept"


def _predictions_from_ground_truth(dataset, jitter):
    rng = np.random.default_rng(0)
    preds, targets = [], []
    for image_id in dataset.image_ids:
        boxes, labels = dataset.target(image_id)
        boxes = boxes + rng.normal(0, jitter, size=boxes.shape) if jitter else boxes
        targets.append({"image_id": torch.tensor(image_id)})
        preds.append(
            {
                "boxes": torch.as_tensor(boxes, dtype=torch.float32),
                "scores": torch.as_tensor(rng.uniform(0.3, 1.0, size=len(labels)), dtype=torch.float32),
                "labels": torch.as_tensor(labels),
            }
        )
    return preds, targets


def _pycocotools_stats(annotation_file, results_file) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        reference = COCOeval(gt, gt.loadRes(str(results_file)), iouType="bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    return [float(value) for value in reference.stats]


@pytest.mark.parametrize("backend", COCO_BACKENDS)
def test_perfect_detections_score_one(tiny_coco, tmp_path, backend):
    dataset = _val(tiny_coco)
    metric = CocoMeanAveragePrecision(dataset.coco, [1, 3, 5, 7], backend=backend, results_file=tmp_path / "d.json")
    metric.update(*_predictions_from_ground_truth(dataset, jitter=0))
    stats = metric.compute()
    assert list(stats) == list(COCO_STAT_NAMES)
    assert stats["mAP"] == pytest.approx(1.0) and stats["mAP_50"] == pytest.approx(1.0)
    results = json.loads((tmp_path / "d.json").read_text())
    assert {r["category_id"] for r in results} == {coco_category_id(i) for i in range(4)}
    metric.reset()
    with pytest.warns(UserWarning, match="called before the ``update``"):
        assert metric.compute()["mAP"] == 0.0


def _crowds_ties_and_areas(root, path):
    """The generated validation annotations made harder to score: every third object a crowd
    region, one more crowd region per image, annotated areas that put objects in another size range
    than their boxes would (COCO's areas are the masks'), a box reaching past its image."""
    data = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    next_id = max(ann["id"] for ann in data["annotations"]) + 1
    for index, ann in enumerate(list(data["annotations"])):
        ann["iscrowd"] = int(index % 3 == 0)
        ann["area"] = [ann["area"], 32.0**2 - 0.5, 5000.0, 96.0**2 + 0.5][index % 4]  # small, medium, large
    for image in data["images"]:
        data["annotations"].append(
            {"id": next_id, "image_id": image["id"], "category_id": 3, "bbox": [60.5, 40.25, 30.0, 50.0],
             "area": 700.0, "iscrowd": 1}
        )  # fmt: skip
        next_id += 1
    x, y, w, h = data["annotations"][1]["bbox"]
    data["annotations"][1]["bbox"] = [x, y, w + 500.0, h]
    path.write_text(json.dumps(data))
    return path


def test_training_metric_equals_pycocotools_on_the_written_results_file(tiny_coco, tmp_path):
    """The 12 numbers of every epoch (faster-coco-eval) are pycocotools' on the results file, with
    crowd regions (detections on them are neither hits nor false positives), areas that are not the
    boxes', scores tied across images, and images predicted in another order than their ids."""
    annotations = _crowds_ties_and_areas(tiny_coco, tmp_path / "instances_val.json")
    datamodule = DetectionDataModule(tiny_coco, num_classes=4, num_workers=0, val_annotations=str(annotations))
    ground_truth = datamodule.coco_ground_truth()
    assert sum(ann["iscrowd"] for ann in ground_truth["annotations"]) > 8, "crowd regions reach evaluation"
    dataset = datamodule.val_set
    rng = np.random.default_rng(1)
    preds, targets = [], []
    for image_id in reversed(dataset.image_ids):
        boxes = np.array([ann["bbox"] for ann in dataset.coco.imgToAnns[image_id]], dtype=np.float64)
        boxes = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
        labels = [dataset.category_id_to_label[ann["category_id"]] for ann in dataset.coco.imgToAnns[image_id]]
        boxes = np.concatenate(
            [boxes + rng.normal(0, 4.0, size=boxes.shape), rng.uniform(0, 90, size=(3, 4)).cumsum(1)]
        )
        labels = labels + rng.integers(1, 5, size=3).tolist()
        preds.append(
            {
                "boxes": torch.as_tensor(boxes, dtype=torch.float32),
                "scores": torch.as_tensor(rng.choice([0.25, 0.5, 0.75], size=len(labels)), dtype=torch.float32),
                "labels": torch.as_tensor(labels),
            }
        )
        targets.append({"image_id": torch.tensor(image_id)})
    numbers = {}
    for backend in COCO_BACKENDS:
        results_file = tmp_path / f"{backend}.json"
        metric = CocoMeanAveragePrecision(ground_truth, [1, 3, 5, 7], backend=backend, results_file=results_file)
        for start in range(0, len(preds), 3):  # batches of 3 images
            metric.update(preds[start : start + 3], targets[start : start + 3])
        stats = metric.compute()
        numbers[backend] = [stats[name] for name in COCO_STAT_NAMES]
        assert numbers[backend] == pytest.approx(_pycocotools_stats(annotations, results_file), abs=1e-12)
    assert numbers["faster_coco_eval"] == pytest.approx(numbers["pycocotools"], abs=1e-12)
    assert all(0.05 < value < 0.95 for value in numbers["faster_coco_eval"]), numbers

    # The crowd regions and areas matter here: scored as plain objects, every number moves.
    plain = json.loads(annotations.read_text())
    for ann in plain["annotations"]:
        ann["iscrowd"], ann["area"] = 0, ann["bbox"][2] * ann["bbox"][3]
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    moved = _pycocotools_stats(tmp_path / "plain.json", tmp_path / "faster_coco_eval.json")
    assert all(abs(a - b) > 1e-3 for a, b in zip(moved, numbers["faster_coco_eval"])), moved


def _reference_targets(annotation_file):
    """Training targets as the dict-based dataset made them: per image (in id order) its
    annotations from pycocotools' index, crowds left out, clipped to the image, under a pixel dropped."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotation_file))
    labels_of = {cid: i + 1 for i, cid in enumerate(sorted(coco.getCatIds()))}
    targets = {}
    for image_id in sorted(coco.getImgIds()):
        width, height = coco.imgs[image_id]["width"], coco.imgs[image_id]["height"]
        boxes, labels = [], []
        for ann in coco.imgToAnns.get(image_id, []):
            if ann["iscrowd"]:
                continue
            x, y, w, h = ann["bbox"]
            x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x1 - x0 >= 1.0 and y1 - y0 >= 1.0:
                boxes.append((x0, y0, x1, y1))
                labels.append(labels_of[ann["category_id"]])
        targets[image_id] = (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64))
    return coco, targets


def test_array_backed_dataset_gives_the_samples_and_ground_truth_of_the_json(tiny_coco, tmp_path):
    """Crowds, boxes reaching past the image, boxes under a pixel, areas that are not the boxes',
    annotations listed out of image order: every sample and the evaluation ground truth are what
    the annotation file says."""
    annotations = _crowds_ties_and_areas(tiny_coco, tmp_path / "instances_val.json")
    data = json.loads(annotations.read_text())
    data["annotations"][2]["bbox"] = [3.25, 4.5, 0.75, 9.0]  # under a pixel wide: dropped
    data["annotations"][4]["bbox"] = [-5.5, 10.0, 20.0, 12.0]  # clipped at the left
    data["annotations"].reverse()  # the file's order is not the images'
    annotations.write_text(json.dumps(data))
    dataset = CocoDetection(tiny_coco / "val2017", annotations)
    coco, reference = _reference_targets(annotations)
    assert dataset.image_ids.tolist() == list(reference)
    for index, (image_id, (boxes, labels)) in enumerate(reference.items()):
        image, target = dataset[index]
        assert int(target["image_id"]) == image_id
        assert torch.equal(target["boxes"], torch.from_numpy(boxes)) and torch.equal(
            target["labels"], torch.from_numpy(labels)
        )
        np.testing.assert_array_equal(
            image, np.asarray(Image.open(tiny_coco / "val2017" / coco.imgs[image_id]["file_name"]))
        )
    assert dataset.stats.dropped == 1 and dataset.stats.clipped == 2 and dataset.stats.crowd > 8  # noqa: PLR2004
    assert dataset.stats.kept == sum(len(labels) for _, labels in reference.values())
    truth = dataset.ground_truth()
    assert [image["id"] for image in truth["images"]] == list(reference)
    by_id = {ann["id"]: ann for ann in data["annotations"]}
    assert sorted(ann["id"] for ann in truth["annotations"]) == sorted(by_id)
    for ann in truth["annotations"]:
        original = by_id[ann["id"]]
        assert {key: ann[key] for key in ("image_id", "category_id", "bbox", "area", "iscrowd")} == {
            key: original[key] for key in ("image_id", "category_id", "bbox", "area", "iscrowd")
        }
    assert dataset.coco.imgToAnns[int(dataset.image_ids[0])], "a pycocotools index of it on demand"


def _scaled_coco(folder, images, boxes_per_image):
    """A COCO file of ``images`` images (hard links to one JPEG) with ``boxes_per_image`` boxes each."""
    folder.mkdir()
    Image.new("RGB", (64, 48)).save(folder / "a.jpg")
    (folder / "images").mkdir()
    entries, annotations = [], []
    for image_id in range(1, images + 1):
        (folder / "images" / f"{image_id}.jpg").hardlink_to(folder / "a.jpg")
        entries.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 64, "height": 48})
        for _ in range(boxes_per_image):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [1.5, 2.0, 30.0, 20.0], "area": 600.0, "iscrowd": 0,
                                "segmentation": [[1.5, 2.0, 31.5, 2.0, 31.5, 22.0]]})  # fmt: skip
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}))
    return folder / "images", path


def test_dataset_holds_no_python_objects_per_image_or_box(tmp_path):
    """Loader workers are forked: every Python object the dataset keeps is copied into each worker
    once reference counts or the garbage collector touch its page. The dataset keeps arrays: the
    objects it holds do not grow with 30x the images and boxes (dicts per entry would add ~20k)."""
    import gc

    held = []
    for name, images in (("small", 20), ("large", 600)):
        image_dir, annotations = _scaled_coco(tmp_path / name, images, boxes_per_image=10)
        gc.collect()
        before = len(gc.get_objects())
        dataset = CocoDetection(image_dir, annotations)
        gc.collect()
        held.append(len(gc.get_objects()) - before)
        assert len(dataset) == images and dataset.stats.kept == 10 * images
        del dataset
    assert held[1] - held[0] < 50, held  # noqa: PLR2004


def test_annotations_of_a_file_whose_every_image_is_bad_are_named(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": "wide", "height": 80}]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 4, "bbox": [1, 1, 5, 5]},  # goes with its image, not counted
        {"id": 2, "image_id": 5, "category_id": 4, "bbox": [1, 1, 5, 5]},
    ]
    path = tmp_path / "instances.json"
    (tmp_path / "images").mkdir()
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 4, "name": "x"}]}))
    with pytest.raises(DatasetError, match=r"2 bad sample.*'width' must be a positive number.*image_id 5 is not in"):
        CocoDetection(tmp_path / "images", path)


def test_coco_sized_benchmark_set_is_valid_coco_and_generated_once(tmp_path):
    """The COCO-sized generator (tools/benchmarks/coco_scale.py's set), at a small size: pycocotools
    reads what it writes, the dataset set-up finds nothing bad in it, images are hard links, and a
    second call reuses it."""
    root = write_coco_sized_dataset(tmp_path / "set", train_images=40, boxes=300, val_images=10)
    annotations = root / "annotations" / "instances_train2017.json"
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotations))
    assert len(coco.imgs) == 40 and 200 < len(coco.anns) < 400 and len(coco.cats) == 80  # noqa: PLR2004
    assert all(len(ann["segmentation"][0]) == 48 for ann in coco.anns.values())  # noqa: PLR2004
    dataset = CocoDetection(root / "train2017", annotations)
    assert len(dataset) == 40 and len(dataset.bad) == 0 and dataset.stats.dropped == 0  # noqa: PLR2004
    assert dataset.stats.kept + dataset.stats.crowd == len(coco.anns)
    assert (root / "train2017" / coco.imgs[1]["file_name"]).stat().st_nlink > 1, "hard links, not copies"
    written = annotations.stat().st_mtime_ns
    assert write_coco_sized_dataset(root, train_images=40, boxes=300, val_images=10) == root
    assert annotations.stat().st_mtime_ns == written
