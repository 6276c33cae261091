"""int8 static quantisation through onnxruntime: the quantised graph runs and stays close to fp32."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from tasks.quantize import run_quantize
from vision_mnv2.data import write_segmentation_dataset
from vision_mnv2.export import export_onnx
from vision_mnv2.models import deeplabv3_mobilenet_v2, mobilenet_v2
from vision_mnv2.quantize import quantize_static_onnx

from .conftest import compose_config, realistic_batch_norm


def test_int8_classifier_agrees_with_fp32(tmp_path):
    torch.manual_seed(0)
    model = realistic_batch_norm(mobilenet_v2(width_mult=0.5, num_classes=10))
    fp32 = export_onnx(model, "classification", tmp_path / "fp32.onnx", 64)
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


def test_quantize_tool_reports_accuracy_and_latency(tmp_path):
    root = write_segmentation_dataset(
        tmp_path / "voc", num_classes=2, train_images=6, val_images=3, image_size=(64, 96), seed=2
    )
    model = deeplabv3_mobilenet_v2(num_classes=3, width_mult=0.35, aspp=False)
    ckpt = tmp_path / "seg.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in realistic_batch_norm(model).state_dict().items()}}, ckpt)
    overrides = [
        "task=deeplabv3", f"data.root={root}", "data.generate=null", "data.num_classes=3", "data.num_workers=0",
        "backbone.width_mult=0.35", f"ckpt_path={ckpt}", "quantize.calibration_images=4", "quantize.iters=2",
        "quantize.repeats=1", "quantize.write=false",
    ]  # fmt: skip
    text = run_quantize(compose_config("quantize", overrides, tmp_path / "run"))
    assert "| fp32 | " in text and "| int8 | " in text and "**int8 vs fp32**" in text
    assert (tmp_path / "run" / "deeplabv3_int8.onnx").is_file() and (tmp_path / "run" / "deeplabv3_fp32.onnx").is_file()


def test_quantize_tool_scores_detection_with_cocoeval(tmp_path):
    from vision_mnv2.data import write_detection_dataset  # noqa: PLC0415
    from vision_mnv2.models import ssdlite_mobilenet_v2  # noqa: PLC0415

    root = write_detection_dataset(
        tmp_path / "coco", num_classes=2, train_images=4, val_images=3, image_size=(96, 128), seed=3
    )
    model = realistic_batch_norm(ssdlite_mobilenet_v2(num_classes=2, width_mult=0.35, image_size=96))
    ckpt = tmp_path / "det.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    overrides = [
        "task=ssdlite", f"data.root={root}", "data.generate=null", "data.num_classes=2", "data.image_size=96",
        "data.num_workers=0", "backbone.width_mult=0.35", f"ckpt_path={ckpt}", "quantize.calibration_images=3",
        "quantize.iters=2", "quantize.repeats=1", "quantize.write=false",
    ]  # fmt: skip
    text = run_quantize(compose_config("quantize", overrides, tmp_path / "run"))
    assert "| graph | mAP |" in text and "**int8 vs fp32**" in text
