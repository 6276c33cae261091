"""ONNX export run in onnxruntime against PyTorch, and prediction on a folder of images."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from tasks.inference import export, predict
from vision_mnv2.data import DatasetError
from vision_mnv2.export import SSDExportWrapper, detection_postprocess, export_onnx
from vision_mnv2.models import deeplabv3_mobilenet_v2, mobilenet_v2, ssdlite_mobilenet_v2

from .conftest import compose_config, realistic_batch_norm


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_onnx_matches_pytorch_with_dynamic_batch(task, tmp_path):
    torch.manual_seed(0)
    if task == "classification":
        model = mobilenet_v2(width_mult=0.5, num_classes=7)
    else:
        model = deeplabv3_mobilenet_v2(num_classes=5, width_mult=0.5)
    model = realistic_batch_norm(model)
    path = export_onnx(model, task, tmp_path / f"{task}.onnx", 96)
    session = _session(path)
    for batch in (1, 3):
        images = torch.rand(batch, 3, 96, 96)
        (onnx_out,) = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            expected = model((images - IMAGENET_MEAN) / IMAGENET_STD).numpy()
        assert onnx_out.shape == expected.shape
        np.testing.assert_allclose(onnx_out, expected, atol=2e-4, rtol=1e-3)


def test_detection_onnx_gives_the_same_detections(tmp_path):
    torch.manual_seed(0)
    model = realistic_batch_norm(ssdlite_mobilenet_v2(num_classes=3, width_mult=0.5, image_size=128))
    path = export_onnx(model, "detection", tmp_path / "det.onnx", 128)
    session = _session(path)
    images = torch.rand(3, 3, 128, 128)
    boxes, scores, labels = session.run(None, {"images": images.numpy()})
    np.testing.assert_array_equal(labels, scores.argmax(-1) + 1)
    assert boxes.shape[0] == scores.shape[0] == 3 and boxes.shape[2] == 4 and scores.shape[2] == 3
    with torch.no_grad():
        eager_boxes, eager_scores, _ = SSDExportWrapper(model, 128)(images)
        reference = model(list(images))
    np.testing.assert_allclose(boxes, eager_boxes.numpy(), atol=1e-3)
    np.testing.assert_allclose(scores, eager_scores.numpy(), atol=1e-5)
    detections = detection_postprocess(
        torch.from_numpy(boxes),
        torch.from_numpy(scores),
        model.score_thresh,
        model.nms_thresh,
        model.detections_per_img,
        model.topk_candidates,
    )
    for ours, theirs in zip(detections, reference):
        top = 20  # the best detections, well apart in score, must be identical
        assert torch.equal(ours["labels"][:top], theirs["labels"][:top])
        torch.testing.assert_close(ours["scores"][:top], theirs["scores"][:top], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours["boxes"][:top], theirs["boxes"][:top], atol=1e-3, rtol=1e-4)


def _fake_checkpoint(model, path, class_names, category_ids=None):
    meta = {"class_names": class_names}
    if category_ids:
        meta["category_ids"] = category_ids
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "vision_mnv2": meta}, path)
    return path


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, size in (("a.jpg", (90, 120)), ("b.png", (128, 100))):
        Image.fromarray(rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_detection_writes_drawn_images_and_coco_results(photo_folder, tmp_path):
    model = realistic_batch_norm(ssdlite_mobilenet_v2(num_classes=3, width_mult=0.35, image_size=128))
    ckpt = _fake_checkpoint(model, tmp_path / "det.ckpt", ["circle", "square", "star"], [1, 3, 5])
    overrides = ["task=ssdlite", "backbone.width_mult=0.35", "data.num_classes=3", "data.image_size=128",
                 f"ckpt_path={ckpt}", f"input={photo_folder}", f"output_dir={tmp_path / 'out'}", "draw_score_thresh=0.0"]  # fmt: skip
    output = predict(compose_config("predict", overrides, tmp_path / "run"))
    results = json.loads(output.read_text())
    images = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [image["file_name"].rsplit("/", 1)[-1] for image in images] == ["a.jpg", "b.png"]
    assert results and {"image_id", "category_id", "bbox", "score"} == set(results[0])
    assert {r["category_id"] for r in results} <= {1, 3, 5} and {r["image_id"] for r in results} == {1, 2}
    drawn = sorted(p.name for p in (tmp_path / "out").glob("*.jpg"))
    assert drawn == ["00001_a.jpg", "00002_b.jpg"]
    with Image.open(tmp_path / "out" / "00002_b.jpg") as image:
        assert image.size == (100, 128)


def test_predict_segmentation_and_classification(photo_folder, tmp_path):
    seg = realistic_batch_norm(deeplabv3_mobilenet_v2(num_classes=4, width_mult=0.35, aspp=False))
    ckpt = _fake_checkpoint(seg, tmp_path / "seg.ckpt", ["background", "a", "b", "c"])
    cfg = compose_config("predict", ["task=deeplabv3", "backbone.width_mult=0.35", "data.num_classes=4",
                                     f"ckpt_path={ckpt}", f"input={photo_folder / 'a.jpg'}", f"output_dir={tmp_path / 'seg'}"], tmp_path / "r1")  # fmt: skip
    results = json.loads(predict(cfg).read_text())
    assert len(results) == 1 and abs(sum(results[0]["class_fraction"].values()) - 1) < 1e-3
    with Image.open(tmp_path / "seg" / results[0]["mask"]) as mask:
        assert mask.mode == "P" and mask.size == (120, 90)
    assert (tmp_path / "seg" / "00001_a_overlay.jpg").is_file()

    cls = realistic_batch_norm(mobilenet_v2(width_mult=0.35, num_classes=6))
    names = [f"n{i}" for i in range(6)]
    ckpt = _fake_checkpoint(cls, tmp_path / "cls.ckpt", names)
    cfg = compose_config("predict", ["task=classification", "backbone.width_mult=0.35", "data.num_classes=6", "data.image_size=64",
                                     f"ckpt_path={ckpt}", f"input={photo_folder}", f"output_dir={tmp_path / 'cls'}"], tmp_path / "r2")  # fmt: skip
    results = json.loads(predict(cfg).read_text())
    assert len(results) == 2 and len(results[0]["top5"]) == 5
    scores = [entry["score"] for entry in results[0]["top5"]]
    assert scores == sorted(scores, reverse=True) and {e["class"] for e in results[0]["top5"]} <= set(names)

    with pytest.raises(DatasetError, match="nothing' does not exist"):
        predict(
            compose_config(
                "predict",
                ["task=classification", f"ckpt_path={ckpt}", f"input={tmp_path / 'nothing'}"],
                tmp_path / "r3",
            )
        )


def test_export_tool_writes_a_working_file(tmp_path):
    seg = realistic_batch_norm(deeplabv3_mobilenet_v2(num_classes=4, width_mult=0.35, aspp=False))
    ckpt = _fake_checkpoint(seg, tmp_path / "seg.ckpt", ["background", "a", "b", "c"])
    cfg = compose_config("export", ["task=deeplabv3", "backbone.width_mult=0.35", "data.num_classes=4", "data.image_size=64",
                                    f"ckpt_path={ckpt}", f"export_file={tmp_path / 'seg.onnx'}"], tmp_path / "run")  # fmt: skip
    path = export(cfg)
    (logits,) = _session(path).run(None, {"images": np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)})
    assert logits.shape == (2, 4, 64, 64)
