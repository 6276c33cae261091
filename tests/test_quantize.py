"""int8 static quantisation through onnxruntime: the quantised graph runs and stays close to fp32,
and tools/quantize.py scores both from the checkpoint alone."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from tasks.cli import with_task_from_checkpoint
from tasks.quantize import run_quantize
from vision_mnv2.checkpoint import save_model
from vision_mnv2.data import write_detection_dataset
from vision_mnv2.models import mobilenet_v2, ssdlite_mobilenet_v2
from vision_mnv2.pipelines import ClassificationPipeline, describe
from vision_mnv2.quantize import quantize_static_onnx

from .helpers import compose_config, realistic_batch_norm


def test_int8_classifier_agrees_with_fp32(tmp_path):
    torch.manual_seed(0)
    model = realistic_batch_norm(mobilenet_v2(width_mult=0.5, num_classes=10))
    pipeline = ClassificationPipeline(describe("classification", model, {"image_size": 64}), model)
    fp32 = pipeline.export_onnx(tmp_path / "fp32.onnx")
    rng = np.random.default_rng(0)
    int8 = quantize_static_onnx(
        fp32, tmp_path / "int8.onnx", (rng.random((1, 3, 64, 64), dtype=np.float32) for _ in range(16))
    )
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size, "int8 weights"
    images = rng.random((4, 3, 64, 64), dtype=np.float32)
    (reference,) = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"images": images})
    (quantised,) = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, {"images": images})
    assert quantised.shape == reference.shape
    assert np.corrcoef(quantised.ravel(), reference.ravel())[0, 1] > 0.9


def test_quantize_tool_scores_detection_with_cocoeval(tmp_path):
    """Data given explicitly (the checkpoint was not trained here): the NMS graph is scored by
    COCOeval, fp32 and int8, and the report stays in the run folder."""
    root = write_detection_dataset(
        tmp_path / "coco", num_classes=2, train_images=4, val_images=3, image_size=(96, 128), seed=3
    )
    model = realistic_batch_norm(ssdlite_mobilenet_v2(num_classes=2, width_mult=0.35, image_size=96))
    ckpt = save_model(tmp_path / "det.ckpt", model, describe("detection", model, {}, category_ids=[1, 3]))
    overrides = [
        f"ckpt_path={ckpt}", f"data.root={root}", "data.generate=null", "data.num_workers=0",
        "quantize.calibration_images=3", "quantize.iters=2", "quantize.repeats=1",
    ]  # fmt: skip
    cfg = compose_config("quantize", with_task_from_checkpoint(["tool", *overrides])[1:], tmp_path / "run")
    text = run_quantize(cfg)
    assert "| graph | mAP |" in text and "**int8 vs fp32**" in text and "NMS inside the graph" in text
    assert (tmp_path / "run" / "ssdlite_mobilenet_v2_int8.onnx").is_file()
    assert (tmp_path / "run" / "quantize.md").is_file()
