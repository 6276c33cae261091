"""Google's models as complete checkpoints (tools/convert.py), and a checkpoint's input conventions
travelling with its weights when another model starts from them (init_from)."""

from __future__ import annotations

import logging
import subprocess
import sys

import hydra
import numpy as np
import pytest
import torch
from PIL import Image

import vision_mnv2
from tasks.runner import train
from vision_mnv2.checkpoint import read_checkpoint, save_model
from vision_mnv2.models import mobilenet_v2
from vision_mnv2.pipelines import describe

from .helpers import GOOGLE_CLASSIFIER as CLASSIFIER
from .helpers import GOOGLE_DEEPLAB as DEEPLAB
from .helpers import GOOGLE_MODELS as GOOGLE
from .helpers import REPO_ROOT, compose_config, needs_google, tiny_task_overrides


def _photo(name: str) -> np.ndarray:
    return np.array(Image.open(GOOGLE / name).convert("RGB"))


@needs_google
def test_converted_classifier_is_a_complete_checkpoint(tmp_path):
    pytest.importorskip("tflite")
    from vision_mnv2.convert.tflite_checkpoint import convert_tflite

    path, _ = convert_tflite(CLASSIFIER, tmp_path / "mnv2.ckpt", labels=GOOGLE / "imagenet_labels.txt", calibrate=False)
    _, meta = read_checkpoint(path)
    assert meta.task == "classification" and meta.builder == "mobilenet_v2" and meta.num_classes == 1000
    assert meta.normalization["name"] == "tf" and meta.builder_args["tf_padding"] is True
    assert meta.preprocessing["input_size"] == [224, 224] and meta.class_names[285] == "Egyptian cat"
    assert meta.training["converted_from"] == CLASSIFIER.name
    pipeline = vision_mnv2.load(path)
    (prediction,) = pipeline(_photo("cat.bmp"))
    assert prediction["top"][0]["class"] == "Egyptian cat" and prediction["top"][0]["label"] == 285
    onnx_file = pipeline.export_onnx(tmp_path / "mnv2.onnx")
    (exported,) = vision_mnv2.load(onnx_file)(_photo("cat.bmp"))
    assert exported["top"][0]["label"] == 285


@needs_google
def test_converted_deeplab_predicts_the_interpreters_labels_through_its_checkpoint(tmp_path):
    pytest.importorskip("tflite")
    interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter
    from vision_mnv2.convert.tflite_checkpoint import convert_tflite

    labels = GOOGLE / "pascal_voc_segmentation_labels.txt"
    path, meta = convert_tflite(DEEPLAB, tmp_path / "deeplab.ckpt", labels=labels, calibrate=False)
    assert meta.preprocessing["pad_to"] == [513, 513] and meta.builder_args["align_corners"] is True
    image = _photo("bird_segmentation.bmp")
    (prediction,) = vision_mnv2.load(path)(image)
    runner = interpreter(model_path=str(DEEPLAB))
    runner.allocate_tensors()
    (entry,) = runner.get_input_details()
    runner.set_tensor(entry["index"], image[None].astype(entry["dtype"]))
    runner.invoke()
    reference = runner.get_tensor(runner.get_output_details()[0]["index"])[0]
    assert (prediction["mask"].numpy() == reference).mean() >= 0.995


def test_convert_tool_refuses_a_file_that_is_not_tflite(tmp_path):
    pytest.importorskip("tflite")
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"not a flatbuffer at all")
    run = subprocess.run(
        [sys.executable, "tools/convert.py", str(bogus), "--output", str(tmp_path / "out.ckpt")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and "model.tflite" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out.ckpt").exists()


def test_init_from_a_checkpoint_takes_its_input_conventions(tmp_path, caplog):
    """A detector started from a TF-style classifier (normalisation (x-128)/128, TF's padding) must
    be fed as that backbone was: the new model takes these settings from the checkpoint."""
    from vision_mnv2.data import write_detection_dataset

    torch.manual_seed(0)
    source = mobilenet_v2(num_classes=5, width_mult=0.35, normalization="tf", tf_padding=True)
    ckpt = save_model(tmp_path / "tf_style.ckpt", source, describe("classification", source, {"image_size": 64}))
    root = write_detection_dataset(
        tmp_path / "coco", num_classes=2, train_images=4, val_images=2, image_size=(64, 64), seed=1
    )
    overrides = tiny_task_overrides("ssdlite", root, 2, 64, quiet_callbacks=True) + [
        f"init_from={ckpt}", "trainer.max_epochs=1",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO):
        result = train(compose_config("train", overrides, tmp_path / "run"))
    assert "its weights expect normalization=tf, tf_padding=True" in caplog.text
    _, meta = read_checkpoint(result["last_checkpoint"])
    assert meta.normalization["name"] == "tf" and meta.builder_args["tf_padding"] is True
    # Chosen explicitly, a setting stays as given.
    caplog.clear()
    explicit = compose_config("train", overrides + ["model.normalization=imagenet"], tmp_path / "run2")
    from tasks.checkpoint_config import inherit_from_init

    assert inherit_from_init(explicit) == {"tf_padding": True}


def test_a_mobilenet_v1_checkpoint_starts_a_v1_model_of_its_width(tiny_cls_root, tmp_path, caplog):
    """A converted TF-slim MobileNetV1 (here width 0.25, TF's conventions) fine-tunes through
    init_from as a V2 one does: ``backbone=mobilenet_v1`` takes its width and conventions from the
    checkpoint (the width unless given: no other width fits its weights), and its backbone's weights."""
    from tasks.checkpoint_config import inherit_from_init
    from vision_mnv2.models import mobilenet_v1

    torch.manual_seed(0)
    source = mobilenet_v1(num_classes=7, width_mult=0.25, normalization="tf", tf_padding=True)
    ckpt = save_model(tmp_path / "v1.ckpt", source, describe("classification", source, {"image_size": 64}))
    overrides = [o for o in tiny_task_overrides("classification", tiny_cls_root, 4, 64, quiet_callbacks=True) if not o.startswith("backbone.width_mult")]  # fmt: skip
    overrides += ["backbone=mobilenet_v1", f"init_from={ckpt}", "trainer.max_epochs=1", "optimizer.lr=0"]
    with caplog.at_level(logging.INFO):
        result = train(compose_config("train", overrides, tmp_path / "run"))
    assert "its weights expect normalization=tf, tf_padding=True, width_mult=0.25" in caplog.text
    model, meta = vision_mnv2.checkpoint.load_model(result["last_checkpoint"])
    assert meta.builder == "mobilenet_v1" and meta.builder_args["width_mult"] == 0.25 and meta.num_classes == 4
    # lr 0: the backbone is the checkpoint's (batch-norm statistics aside, which training measures).
    trained = {k: v for k, v in model.backbone.state_dict().items() if "running" not in k and "num_batches" not in k}
    for key, value in trained.items():
        torch.testing.assert_close(value, source.backbone.state_dict()[key], msg=key)
    # A width given on the command line is the user's: kept, and the weights then do not fit.
    explicit = compose_config("train", overrides + ["backbone.width_mult=0.5"], tmp_path / "run2")
    assert "width_mult" not in inherit_from_init(explicit) and explicit.backbone.width_mult == 0.5
    # DeepLab on MobileNetV1 takes the width; min_depth, which its builder does not take, stays out.
    segmenter = [o.replace("task=classification", "task=deeplabv3") for o in overrides]
    cfg = compose_config("train", segmenter, tmp_path / "run3")
    taken = inherit_from_init(cfg)
    assert taken["normalization"]["name"] == "tf" and {k: taken[k] for k in ("tf_padding", "width_mult")} == {
        "tf_padding": True,
        "width_mult": 0.25,
    }
    assert "min_depth" not in taken
    assert hydra.utils.instantiate(cfg.model).backbone.width_mult == 0.25
