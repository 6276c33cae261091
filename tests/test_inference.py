"""Models that describe themselves: checkpoints and exports carry what a model needs, and
predict / export / quantize / eval work from the checkpoint alone."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
import torch
import torchvision
from PIL import Image

import vision_mnv2
from tasks.cli import with_task_from_checkpoint
from tasks.inference import export, predict
from tasks.quantize import run_quantize
from tasks.runner import evaluate, train
from vision_mnv2.checkpoint import CheckpointError, ModelMeta, read_checkpoint, save_model
from vision_mnv2.data import (
    IGNORE_INDEX,
    VOCSegmentation,
    read_rgb,
    write_detection_dataset,
    write_segmentation_dataset,
)
from vision_mnv2.metrics import evaluate_coco_results, segmentation_confusion_matrix, segmentation_scores
from vision_mnv2.models import deeplabv3_mobilenet_v2, mobilenet_v2, ssdlite_mobilenet_v2
from vision_mnv2.models.detection_postprocess import multiclass_nms
from vision_mnv2.pipelines import describe

from .helpers import assert_same_detections, compose_config, miou_bound, realistic_batch_norm, top2_gaps


def _tool_config(name: str, overrides: list[str], output_dir):
    """Compose as the tool does: the checkpoint's task is added when the command names none."""
    return compose_config(name, with_task_from_checkpoint(["tool", *overrides])[1:], output_dir)


# --------------------------------------------------------------------------------------------------
# A tiny fine-tune on custom data, at a size and class count that are not the defaults


@pytest.fixture(scope="module")
def finetuned_detector(tmp_path_factory):
    """SSDLite fine-tuned with the custom-data preset (one class, 128 px, width 0.35) from a
    torchvision-layout ImageNet file, on COCO-format data with a non-contiguous category id."""
    tmp = tmp_path_factory.mktemp("finetune")
    root = write_detection_dataset(
        tmp / "coco", num_classes=1, train_images=8, val_images=4, image_size=(96, 160), seed=5
    )
    imagenet = tmp / "imagenet.pth"
    torch.save(torchvision.models.mobilenet_v2(width_mult=0.35).state_dict(), imagenet)
    overrides = [
        "experiment=finetune_ssdlite_custom",
        f"data.root={root}",
        "data.num_classes=1",
        "data.image_size=128",
        "data.train_images=train2017",
        "data.train_annotations=annotations/instances_train2017.json",
        "data.val_images=val2017",
        "data.val_annotations=annotations/instances_val2017.json",
        "data.batch_size=4",
        "data.num_workers=0",
        "backbone.width_mult=0.35",
        f"init_from={imagenet}",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "+trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
    ]
    result = train(compose_config("train", overrides, tmp / "train"))
    return {"root": root, "checkpoint": result["last_checkpoint"], "result": result, "tmp": tmp}


def test_checkpoint_describes_the_model_completely(finetuned_detector):
    state, meta = read_checkpoint(finetuned_detector["checkpoint"])
    assert meta.task == "detection" and meta.builder == "ssdlite_mobilenet_v2"
    args = meta.builder_args
    assert args["num_classes"] == 1 and args["width_mult"] == 0.35 and args["image_size"] == 128
    assert args["anchor_min_scale"] == 0.2 and args["nms_thresh"] == 0.6 and "expansion_groups" in args
    assert meta.normalization == {"name": "imagenet", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert meta.preprocessing == {"resize": "stretch", "input_size": [128, 128], "interpolation": "bilinear"}
    assert meta.class_names == ["circle"] and meta.category_ids == [1]
    assert meta.version and meta.training["task_name"] == "finetune_ssdlite"
    assert meta.training["data"]["root"] == str(finetuned_detector["root"])
    assert any(key.startswith("head.") for key in state)


def test_predict_with_only_the_checkpoint_uses_its_size_classes_and_ids(finetuned_detector, tmp_path):
    root, ckpt = finetuned_detector["root"], finetuned_detector["checkpoint"]
    cfg = _tool_config(
        "predict", [f"ckpt_path={ckpt}", f"input={root / 'val2017'}", f"output_dir={tmp_path}"], tmp_path / "run"
    )
    assert cfg.module._target_ == "tasks.detection.DetectionTask", "the tool composes the checkpoint's task"
    results = json.loads(predict(cfg).read_text())
    images = json.loads((tmp_path / "images.json").read_text())
    assert len(images) == 4 and {r["category_id"] for r in results} == {1}
    first = images[0]
    with Image.open(tmp_path / f"00001_{first['file_name'].rsplit('/', 1)[-1].rsplit('.', 1)[0]}.jpg") as drawn:
        assert drawn.size == (first["width"], first["height"])
    # Boxes are in the image's pixels, not the 128 px network input.
    assert max(r["bbox"][0] + r["bbox"][2] for r in results) > 128.5


@pytest.mark.numerics
def test_predict_on_a_coco_file_keeps_its_image_ids_and_scores_with_cocoeval(finetuned_detector, tmp_path):
    root, ckpt = finetuned_detector["root"], finetuned_detector["checkpoint"]
    annotations = root / "annotations" / "instances_val2017.json"
    cfg = _tool_config(
        "predict", [f"ckpt_path={ckpt}", f"input={annotations}", f"output_dir={tmp_path}"], tmp_path / "r"
    )
    results = json.loads(predict(cfg).read_text())
    expected_ids = {image["id"] for image in json.loads(annotations.read_text())["images"]}
    assert {r["image_id"] for r in results} == expected_ids
    from pycocotools.coco import COCO

    # pycocotools takes predict's file as it is (loadRes checks image and category ids).
    stats = evaluate_coco_results(COCO(str(annotations)), results)
    assert 0.0 <= stats["mAP"] <= 1.0
    # And it holds the detections of training's validation (same resize, same post-processing),
    # written for the same weights. Predict folds batch norm and batches otherwise, so they agree to
    # rounding, and both files round boxes to 0.01 px and scores to 1e-5: a value on a rounding
    # boundary may land one step apart. That step, and 1e-4 px / 1e-6 of float32 difference, are
    # the tolerance. (The mAP follows from the records, but one score a step off may reorder
    # near-equal detections and move it: the records are what is compared. That the logged mAP is
    # COCOeval's on the written records is tests/test_detection.py's.)
    validated = json.loads((finetuned_detector["tmp"] / "train" / "detections_val.json").read_text())
    args = read_checkpoint(ckpt)[1].builder_args
    for image_id in expected_ids:
        ours, theirs = (_detections_of(records, image_id) for records in (results, validated))
        assert len(ours["scores"]) > 0
        assert_same_detections(
            ours, theirs, 0.01 + 1e-4, 1e-5 + 1e-6, args["score_thresh"], args["detections_per_img"], "category_ids"
        )


def _detections_of(records: list[dict], image_id: int) -> dict[str, torch.Tensor]:
    """One image's COCO result records as tensors (boxes stay x, y, width, height)."""
    rows = [r for r in records if r["image_id"] == image_id]
    return {
        "boxes": torch.tensor([r["bbox"] for r in rows], dtype=torch.float64).reshape(-1, 4),
        "scores": torch.tensor([r["score"] for r in rows], dtype=torch.float64),
        "category_ids": torch.tensor([r["category_id"] for r in rows], dtype=torch.int64),
    }


@pytest.mark.numerics
def test_eval_with_only_the_checkpoint_reproduces_the_training_run(finetuned_detector, tmp_path):
    ckpt = finetuned_detector["checkpoint"]
    metrics = evaluate(_tool_config("eval", [f"ckpt_path={ckpt}"], tmp_path))
    trained = finetuned_detector["result"]["metrics"]
    # The same computation as training's validation (the checkpoint's weights, batch norm unfolded,
    # the same batches through the same module in this process): the same detections. Evaluation
    # scores them with pycocotools, training with faster-coco-eval, whose numbers are pycocotools'
    # (tests/test_coco.py).
    assert metrics["val/mAP"] == pytest.approx(trained["val/mAP"], abs=1e-6)
    assert metrics["val/mAR_100"] == pytest.approx(trained["val/mAR_100"], abs=1e-6)


def test_overrides_that_contradict_the_checkpoint_are_errors_naming_both(finetuned_detector, tmp_path):
    root, ckpt = finetuned_detector["root"], finetuned_detector["checkpoint"]
    common = [f"ckpt_path={ckpt}", f"input={root / 'val2017'}", f"output_dir={tmp_path}"]
    with pytest.raises(
        CheckpointError, match=r"data.num_classes=3 contradicts the checkpoint, whose model has num_classes=1"
    ):
        predict(_tool_config("predict", [*common, "data.num_classes=3"], tmp_path / "a"))
    with pytest.raises(CheckpointError, match=r"backbone.width_mult=1.0 contradicts .* width_mult=0.35"):
        export(_tool_config("export", [f"ckpt_path={ckpt}", "backbone.width_mult=1.0"], tmp_path / "b"))
    with pytest.raises(CheckpointError, match=r"this checkpoint is a detection model; you asked for segmentation"):
        predict(_tool_config("predict", [*common, "task=deeplabv3"], tmp_path / "c"))
    # Values equal to the checkpoint's are fine, as are inference options.
    predict(_tool_config("predict", [*common, "data.num_classes=1", "head.score_thresh=0.2"], tmp_path / "d"))


def test_an_image_size_given_on_purpose_is_used_and_logged(finetuned_detector, tmp_path, caplog):
    ckpt = finetuned_detector["checkpoint"]
    target = tmp_path / "det160.onnx"
    with caplog.at_level(logging.INFO):
        export(
            _tool_config("export", [f"ckpt_path={ckpt}", "image_size=160", f"export.file={target}"], tmp_path / "run")
        )
    assert "running at 160 px instead of the 128 px it was trained at" in caplog.text
    props = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    assert json.loads(props["input_size"]) == [160, 160]
    (prediction,) = vision_mnv2.load(target)(np.zeros((90, 120, 3), dtype=np.uint8))
    assert prediction["boxes"].shape[1] == 4


def test_detection_export_carries_its_description_and_gives_pytorchs_detections(finetuned_detector, tmp_path):
    ckpt = finetuned_detector["checkpoint"]
    path = export(
        _tool_config("export", [f"ckpt_path={ckpt}", f"export.file={tmp_path / 'det.onnx'}"], tmp_path / "run")
    )
    graph = onnx.load(str(path))
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["task"] == "detection" and json.loads(props["class_names"]) == ["circle"]
    assert json.loads(props["category_ids"]) == [1] and json.loads(props["input_size"]) == [128, 128]
    assert json.loads(props["normalization"])["name"] == "imagenet"
    assert [o.name for o in graph.graph.output] == ["boxes", "scores", "category_ids", "num_detections"]
    assert any(node.op_type == "NonMaxSuppression" for node in graph.graph.node), "NMS inside the graph"

    (prediction,) = vision_mnv2.load(path)(read_rgb(next((finetuned_detector["root"] / "val2017").iterdir())))
    assert set(prediction["category_ids"].tolist()) <= {1} and prediction["boxes"].shape[1] == 4


@pytest.mark.numerics
def test_onnx_with_nms_gives_pytorchs_detections_on_a_batch(tmp_path):
    """The NMS graph in onnxruntime, the PyTorch pipeline and the detector as training evaluates it
    (torchvision's resize and SSD forward) give the same detections for a batch of images."""
    torch.manual_seed(0)
    model = realistic_batch_norm(ssdlite_mobilenet_v2(num_classes=3, width_mult=0.35, image_size=128))
    ckpt = save_model(tmp_path / "det.ckpt", model, describe("detection", model, {}, category_ids=[1, 3, 5]))
    path = vision_mnv2.load(ckpt).export_onnx(tmp_path / "det.onnx")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (100 + 10 * i, 140, 3), dtype=np.uint8) for i in range(4)]
    in_pytorch = vision_mnv2.load(ckpt, fold_bn=False).predict(images, batch_size=4)
    in_onnx = vision_mnv2.load(path).predict(images, batch_size=4)  # one batch of 4 through onnxruntime
    with torch.no_grad():
        eager = model([torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255 for image in images])
    for ours, exported, reference in zip(in_pytorch, in_onnx, eager):
        assert len(ours["boxes"]) == len(exported["boxes"]) == len(reference["boxes"]) == 100
        assert torch.equal(exported["category_ids"], torch.tensor([1, 3, 5])[exported["labels"] - 1])
        # Random weights give many near-equal scores: matched whatever their order, and which of
        # two near-equal ones is the 100th kept may differ. onnxruntime and folded batch norm agree
        # with eager PyTorch to about 1e-6 here; 1e-5 and 1e-3 px are the tolerance.
        for other in (ours, exported):
            assert_same_detections(other, reference, 1e-3, 1e-5, model.score_thresh, model.detections_per_img)


@pytest.mark.numerics
def test_raw_detection_graph_without_nms_gives_the_same_detections(tmp_path):
    torch.manual_seed(0)
    model = realistic_batch_norm(ssdlite_mobilenet_v2(num_classes=3, width_mult=0.35, image_size=96))
    ckpt = save_model(tmp_path / "det.ckpt", model, describe("detection", model, {}, category_ids=[2, 4, 6]))
    pipeline = vision_mnv2.load(ckpt)
    raw = pipeline.export_onnx(tmp_path / "raw.onnx", nms=False)
    assert [o.name for o in onnx.load(str(raw)).graph.output] == ["boxes", "scores", "labels"]
    images = [np.random.default_rng(i).integers(0, 255, (80, 100, 3), dtype=np.uint8) for i in range(2)]
    for ours, theirs in zip(pipeline.predict(images), vision_mnv2.load(raw).predict(images)):
        assert set(ours["category_ids"].tolist()) <= {2, 4, 6}
        # onnxruntime against PyTorch (about 1e-6 apart): the same detections, whatever the order
        # of near-equal scores.
        assert_same_detections(
            ours, theirs, 1e-3, 1e-5, model.score_thresh, model.detections_per_img, label="category_ids"
        )


@pytest.mark.parametrize("loss", ["hard_negative_mining", "focal", "tf"])
def test_detector_postprocess_is_torchvisions_and_the_exported_one(loss):
    """The detector's own post-processing (used in validation) gives torchvision SSD's detections,
    and the focal variant selects per class like the export (it used a flat top-k before)."""
    torch.manual_seed(0)
    model = realistic_batch_norm(
        ssdlite_mobilenet_v2(num_classes=4, width_mult=0.35, image_size=96, classification_loss=loss)
    )
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        features = list(model.backbone(model.transform(list(images))[0].tensors).values())
        head = model.head(features)
        anchors = model.anchor_generator(model.transform(list(images))[0], features)
        ours = model.postprocess_detections(head, anchors, [(96, 96)] * 2)
        scores = model.class_scores(head["cls_logits"])
        boxes = torch.stack([model.box_coder.decode_single(r, a) for r, a in zip(head["bbox_regression"], anchors)])
        boxes = torchvision.ops.clip_boxes_to_image(boxes, (96, 96))
    for image, detections in enumerate(ours):
        # Reference: torchvision's rule written out (per class top-k, class-wise NMS, best 100).
        kept_boxes, kept_scores, kept_labels = [], [], []
        for label in range(scores.shape[-1]):
            score = scores[image, :, label]
            keep = torch.where(score > model.score_thresh)[0]
            top = score[keep].topk(min(model.topk_candidates, keep.numel()))
            kept_boxes.append(boxes[image][keep[top.indices]])
            kept_scores.append(top.values)
            kept_labels.append(torch.full_like(top.indices, label + 1))
        all_boxes, all_scores, all_labels = map(torch.cat, (kept_boxes, kept_scores, kept_labels))
        keep = torchvision.ops.batched_nms(all_boxes, all_scores, all_labels, model.nms_thresh)[
            : model.detections_per_img
        ]
        assert torch.equal(detections["labels"], all_labels[keep])
        torch.testing.assert_close(detections["scores"], all_scores[keep])
        # The batched, padded form the export uses gives the same rows.
        out_boxes, out_scores, out_labels, counts = multiclass_nms(
            boxes[image : image + 1], scores[image : image + 1], model.score_thresh, model.nms_thresh, 100, 400
        )
        assert int(counts[0]) == len(keep) and torch.equal(out_labels[0, : len(keep)], all_labels[keep])
        assert (out_labels[0, len(keep) :] == 0).all() and (out_scores[0, len(keep) :] == 0).all()


# --------------------------------------------------------------------------------------------------
# Segmentation and classification from their checkpoints


@pytest.fixture(scope="module")
def trained_segmenter(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    root = write_segmentation_dataset(
        tmp / "voc", num_classes=2, train_images=6, val_images=3, image_size=(64, 80), seed=2
    )
    overrides = [
        "task=deeplabv3", f"data.root={root}", "data.generate=null", "data.num_classes=3", "data.image_size=64",
        "data.batch_size=3", "data.num_workers=0", "backbone.width_mult=0.35", "trainer.max_epochs=1",
        "trainer.accelerator=cpu", "+trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
        "callbacks.model_summary=null", "model.normalization=tf",
    ]  # fmt: skip
    result = train(compose_config("train", overrides, tmp / "train"))
    return {"root": root, "checkpoint": result["last_checkpoint"], "result": result}


@pytest.mark.numerics
def test_segmentation_export_takes_any_size_and_matches_pytorch(trained_segmenter, tmp_path):
    ckpt = trained_segmenter["checkpoint"]
    _, meta = read_checkpoint(ckpt)
    assert meta.normalization["name"] == "tf" and meta.preprocessing["input_size"] is None
    path = export(
        _tool_config("export", [f"ckpt_path={ckpt}", f"export.file={tmp_path / 'seg.onnx'}"], tmp_path / "run")
    )
    exported, in_pytorch = vision_mnv2.load(path), vision_mnv2.load(ckpt)
    for height, width in ((343, 512), (72, 56)):  # a photo's odd size, and a small portrait one
        image = np.random.default_rng(height).integers(0, 255, (height, width, 3), dtype=np.uint8)
        (ours,), (theirs,) = in_pytorch(image), exported(image)
        assert ours["mask"].shape == theirs["mask"].shape == (height, width)
        # Both run the network at the working size (the validation images' longer side).
        tensor, context = exported.preprocess(image)
        assert torch.equal(tensor, in_pytorch.preprocess(image)[0]) and max(tensor.shape[1:]) == 80
        (logits,) = exported.runner(tensor[None])
        with torch.no_grad():
            reference = in_pytorch.model(tensor[None])
        torch.testing.assert_close(logits, reference, atol=1e-3, rtol=1e-3)
        # The masks are the argmax of such logits resized to the photo (bilinear, which moves no
        # value by more than the largest difference among its sources): they may differ only where
        # the two best classes are closer than twice what assert_close allows (and 1e-5 for
        # grid_sample against F.interpolate, which the pipeline's strips and this use).
        allowed = float((1e-3 + 1e-3 * reference.abs()).max()) + 1e-5
        resized = torch.nn.functional.interpolate(reference, size=(height, width), mode="bilinear")[0]
        decided = top2_gaps(resized, dim=0) > 2 * allowed
        expected = resized.argmax(0)
        for mask in (ours["mask"], theirs["mask"]):
            assert torch.equal(mask.long()[decided], expected[decided])
        assert decided.float().mean() > 0.99, "a comparison of almost every pixel"


@pytest.mark.numerics
def test_segmentation_eval_and_quantize_with_only_the_checkpoint(trained_segmenter, tmp_path):
    ckpt = trained_segmenter["checkpoint"]
    metrics = evaluate(_tool_config("eval", [f"ckpt_path={ckpt}"], tmp_path / "eval"))
    assert metrics["val/mIoU"] == pytest.approx(trained_segmenter["result"]["metrics"]["val/mIoU"], abs=1e-6)
    docs = tmp_path / "BENCHMARKS.md"
    overrides = [
        f"ckpt_path={ckpt}",
        "quantize.calibration_images=3",
        "quantize.iters=2",
        "quantize.repeats=1",
        f"quantize.docs={docs}",
    ]
    text = run_quantize(_tool_config("quantize", overrides, tmp_path / "q"))
    assert "| fp32 | " in text and "| int8 | " in text and "mIoU" in text
    assert (tmp_path / "q" / "quantize.md").read_text() == text, "the report goes into the run folder"
    assert not docs.exists(), "the project's recorded numbers change only when asked"
    fp32 = float(text.split("| fp32 | ")[1].split(" |")[0])
    # The exported graph scores what eval scores. Both score the validation images at their own
    # size: eval through the task (batch norm unfolded, batches of 3, channels-last), quantize's
    # fp32 row through onnxruntime (folded, one image at a time); their logits agree to 1e-3 (as
    # test_segmentation_export_takes_any_size_and_matches_pytorch asserts). So the mIoUs differ
    # by what pixels whose two best logits are closer than twice that can move, and the report's
    # 4 decimals.
    pipeline = vision_mnv2.load(ckpt)
    dataset = VOCSegmentation(trained_segmenter["root"], "val", 3)
    confusion, near_ties = segmentation_confusion_matrix(3), 0
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        tensor, _ = pipeline.preprocess(image, resize=False)
        (logits,) = pipeline.run(tensor[None])
        assert logits.shape[-2:] == mask.shape, "scored at the image's own size"
        truth = torch.from_numpy(mask.astype(np.int64))
        confusion.update(logits.argmax(1), truth[None])
        allowed = (1e-3 + 1e-3 * logits[0].abs()).amax(0)
        near_ties += int(((top2_gaps(logits[0], dim=0) <= 2 * allowed) & (truth != IGNORE_INDEX)).sum())
    bound = miou_bound(confusion.compute(), near_ties)
    reference = segmentation_scores(confusion.compute())["mIoU"]
    assert abs(metrics["val/mIoU"] - reference) <= bound + 1e-9, (metrics["val/mIoU"], reference, near_ties)
    assert abs(fp32 - reference) <= bound + 5e-5, (fp32, reference, near_ties)


def test_classification_checkpoint_alone_drives_predict_and_export(tiny_cls_root, tmp_path):
    overrides = [
        "task=classification", f"data.root={tiny_cls_root}", "data.generate=null", "data.num_classes=4",
        "data.image_size=48", "data.batch_size=8", "data.num_workers=0", "backbone.width_mult=0.35",
        "trainer.max_epochs=1", "trainer.accelerator=cpu", "+trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null", "callbacks.model_summary=null",
    ]  # fmt: skip
    ckpt = train(compose_config("train", overrides, tmp_path / "train"))["last_checkpoint"]
    pipeline = vision_mnv2.load(ckpt)
    assert pipeline.meta.input_size == [48, 48] and pipeline.meta.preprocessing["resize_size"] == 55
    names = sorted(p.name for p in (tiny_cls_root / "train").iterdir())
    assert pipeline.class_names == names
    photos = tiny_cls_root / "val" / names[0]
    cfg = _tool_config(
        "predict", [f"ckpt_path={ckpt}", f"input={photos}", f"output_dir={tmp_path / 'out'}"], tmp_path / "p"
    )
    results = json.loads(predict(cfg).read_text())
    assert len(results) == len(list(photos.iterdir())) and {e["class"] for e in results[0]["top5"]} == set(names)
    path = export(_tool_config("export", [f"ckpt_path={ckpt}", f"export.file={tmp_path / 'cls.onnx'}"], tmp_path / "e"))
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["input_size"]) == [48, 48] and json.loads(props["class_names"]) == names
    image = read_rgb(next(photos.iterdir()))
    ours, theirs = pipeline(image)[0], vision_mnv2.load(path)(image)[0]
    torch.testing.assert_close(ours["probabilities"], theirs["probabilities"], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize(
    "build, task, kwargs",
    [
        (mobilenet_v2, "classification", {"num_classes": 5, "width_mult": 0.5, "normalization": "tf"}),
        (ssdlite_mobilenet_v2, "detection", {"num_classes": 2, "width_mult": 0.35, "image_size": 96}),
        (
            deeplabv3_mobilenet_v2,
            "segmentation",
            {"num_classes": 3, "width_mult": 0.35, "aspp": False, "output_stride": 8},
        ),
    ],
)
def test_load_round_trip(build, task, kwargs, tmp_path):
    """A model saved with its description comes back as the same network, predictions included."""
    torch.manual_seed(0)
    model = realistic_batch_norm(build(**kwargs))
    meta = describe(task, model, {"image_size": 64}, class_names=[f"c{i}" for i in range(kwargs["num_classes"])])
    path = save_model(tmp_path / "model.ckpt", model, meta)
    pipeline = vision_mnv2.load(path, fold_bn=False)
    assert isinstance(pipeline.meta, ModelMeta) and pipeline.meta.as_dict() == meta.as_dict()
    assert type(pipeline.model) is type(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, pipeline.model.state_dict()[key]), key
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    folded = vision_mnv2.load(path)  # batch norm folded: the same predictions
    (a,), (b,) = pipeline(image), folded(image)
    for key in a:
        if torch.is_tensor(a[key]) and a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3)
    assert repr(pipeline).startswith(type(pipeline).__name__)


def test_normalization_is_a_model_setting():
    torch.manual_seed(0)
    imagenet = mobilenet_v2(num_classes=3, width_mult=0.35)
    # Batch-norm statistics of real activations, so that the output depends on the input.
    for module in imagenet.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the batches below
    with torch.no_grad():
        for _ in range(3):
            imagenet.train()(torch.rand(8, 3, 64, 64))
    imagenet.eval()
    tf = mobilenet_v2(num_classes=3, width_mult=0.35, normalization="tf").eval()
    explicit = mobilenet_v2(num_classes=3, width_mult=0.35, normalization=[[0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]).eval()
    torch.nn.init.normal_(imagenet.classifier[1].weight, std=1.0)  # logits far from zero, so a wrong input shows
    tf.load_state_dict(imagenet.state_dict())
    explicit.load_state_dict(imagenet.state_dict())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(tf(images), imagenet(images), atol=0.1), "the setting changes what the network sees"
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        normalised = (images - mean) / std  # what the ImageNet model's backbone sees
        # The TF model sees (x - 128) / 128: feeding it the pixels that give the same network input
        # gives the same logits.
        assert torch.allclose(tf(normalised * (128 / 255) + 128 / 255), imagenet(images), atol=1e-3, rtol=1e-4)
        assert torch.allclose(explicit(normalised * 0.25 + 0.5), imagenet(images), atol=1e-3, rtol=1e-4)
    assert tf.build_config["args"]["normalization"]["mean"] == pytest.approx([128 / 255] * 3)
    assert "normalization" not in "".join(imagenet.state_dict()), "statistics are a setting, not weights"
    with pytest.raises(ValueError, match="image_mean is set by normalization"):
        ssdlite_mobilenet_v2(num_classes=2, image_mean=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="unknown normalization 'caffe'"):
        mobilenet_v2(normalization="caffe")
    with pytest.raises(ValueError, match=r"mean \[128.0, 128.0, 128.0\] must be in \[0, 1\] units"):
        mobilenet_v2(normalization={"mean": [128, 128, 128], "std": [1, 1, 1]})


# --------------------------------------------------------------------------------------------------
# Bad checkpoints and bad images


def test_unreadable_checkpoints_get_the_projects_message(tmp_path):
    garbage, empty = tmp_path / "garbage.ckpt", tmp_path / "empty.ckpt"
    garbage.write_bytes(b"\x00not a checkpoint" * 50)
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"not a checkpoint of this project: .*garbage.ckpt: not a PyTorch file"):
        vision_mnv2.load(garbage)
    with pytest.raises(CheckpointError, match=r"not a checkpoint of this project: .*empty.ckpt: the file is empty"):
        vision_mnv2.load(empty)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "epoch": 3}, other)
    with pytest.raises(
        CheckpointError, match=r"not a checkpoint of this project: .*other.ckpt: no model description, and its weights"
    ):
        vision_mnv2.load(other)
    model = mobilenet_v2(num_classes=2, width_mult=0.35)
    cls = save_model(tmp_path / "cls.ckpt", model, describe("classification", model, {"image_size": 32}))
    with pytest.raises(CheckpointError, match=r"this checkpoint is a classification model; you asked for detection"):
        vision_mnv2.load(cls, task="detection")


def test_legacy_checkpoints_still_load_from_the_configuration(tmp_path, caplog):
    """Checkpoints written before models described themselves (weights + class names only) work as
    before: the command's configuration builds the network, with a warning."""
    model = realistic_batch_norm(mobilenet_v2(num_classes=4, width_mult=0.35))
    legacy = tmp_path / "legacy.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "vision_mnv2": {"class_names": ["a", "b", "c", "d"]}}, legacy)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 50, 3), 120, dtype=np.uint8)).save(photo)
    overrides = ["task=classification", "backbone.width_mult=0.35", "data.num_classes=4", "data.image_size=32",
                 f"ckpt_path={legacy}", f"input={photo}", f"output_dir={tmp_path / 'out'}"]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        results = json.loads(predict(compose_config("predict", overrides, tmp_path / "run")).read_text())
    assert "written before checkpoints described their model" in caplog.text
    assert {entry["class"] for entry in results[0]["top5"]} == {"a", "b", "c", "d"}
    with pytest.raises(CheckpointError, match="written before checkpoints described their model"):
        vision_mnv2.load(legacy)


def test_predict_skips_and_lists_bad_images(tmp_path):
    model = realistic_batch_norm(deeplabv3_mobilenet_v2(num_classes=3, width_mult=0.35, aspp=False))
    ckpt = save_model(tmp_path / "seg.ckpt", model, describe("segmentation", model, {}))
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "c.png"):
        Image.fromarray(np.full((30, 40, 3), 90, dtype=np.uint8)).save(folder / name)
    (folder / "b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "d.png").write_bytes(b"")
    overrides = [f"ckpt_path={ckpt}", f"input={folder}", f"output_dir={tmp_path / 'out'}"]
    results = json.loads(predict(_tool_config("predict", overrides, tmp_path / "run")).read_text())
    assert [r["file"].rsplit("/", 1)[-1] for r in results] == ["a.jpg", "c.png"]
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert [s["file"].rsplit("/", 1)[-1] for s in skipped] == ["b.jpg", "d.png"]
    assert all("cannot read image" in s["problem"] for s in skipped)
    with Image.open(tmp_path / "out" / "00003_c_mask.png") as mask:
        assert mask.mode == "P" and mask.size == (40, 30)
    with pytest.raises(Exception, match="b.jpg: cannot read image"):
        predict(_tool_config("predict", [*overrides, "skip_bad_images=false"], tmp_path / "strict"))
